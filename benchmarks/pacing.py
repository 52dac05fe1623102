"""Pacing benchmark: 4 worker processes dialing one agent whose limit is strictly enforced.

For each allowed rate (1 and 5 calls/s by default) the AI Studio emulator enforces the limit
strictly (429 for any call that would put N + 1 accepted calls in a trailing second; no
tolerance) and two clients place the same number of calls from 4 processes at once:

* **ours** — each process runs ``MakeCallOperator.execute`` for its share of mapped task
  instances, as Airflow workers would; the processes share the call store (a SQLite file,
  or PostgreSQL with ``--postgres [URL]``) and so the agent's pacing slots;
* **naive** — each process POSTs its calls back to back with plain ``requests`` and, on a
  429, sleeps 1 s and tries again (the usual HttpOperator glue).

The emulator is the judge: it records when each call arrived and every 429 it answered.
``achieved/allowed`` is (calls - 1) / (last accepted arrival - first) divided by the allowed
rate; the goal for ours is >= 0.95 with zero 429s. Run from the repository root::

    .venv/bin/python benchmarks/pacing.py                 # 100 calls per setting, ~4-5 minutes
    .venv/bin/python benchmarks/pacing.py --calls 20      # a quick look
    .venv/bin/python benchmarks/pacing.py --postgres --clients ours   # the store on PostgreSQL

Under a real scheduler (LocalExecutor, CeleryExecutor): ``benchmarks/pacing_scheduled.py``.

``--postgres`` uses ``$VONAGE_STUDIO_TEST_POSTGRES_URL`` (or the URL given, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-6a5b4c3d"
AGENT = "agent-1"
MAKE_CALL_PATH = "/telephony/make-call"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Row:
    allowed: int
    client: str
    calls: int
    refused: int
    achieved: float
    wall: float

    @property
    def ratio(self) -> float:
        return self.achieved / self.allowed


# ------------------------------------------------------------------------------ workers


def _wait_for_go(ready: Path, go: Path) -> None:
    ready.touch()
    deadline = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal within 120 s")
        time.sleep(0.005)


class _TI:
    """What MakeCallOperator reads from a task instance: identity and xcom_push."""

    def __init__(self, run_id: str, map_index: int) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = "bench_pacing", run_id, "call", map_index

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def worker_ours(args: argparse.Namespace) -> None:
    """Mapped MakeCallOperator task instances, one after another (a worker's share)."""
    from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator

    _wait_for_go(Path(args.ready), Path(args.go))
    for map_index, to in zip(args.map_indexes, args.to, strict=True):
        operator = MakeCallOperator(task_id="call", to=to, agent_id=AGENT)
        operator.execute({"ti": _TI(args.run_id, map_index)})  # type: ignore[arg-type]


def worker_naive(args: argparse.Namespace) -> None:
    """Plain POSTs as fast as possible; on 429 sleep 1 s and retry."""
    import requests

    session = requests.Session()
    session.headers.update({"X-Vgai-Key": KEY})
    _wait_for_go(Path(args.ready), Path(args.go))
    for to in args.to:
        while True:
            response = session.post(args.url + MAKE_CALL_PATH, json={"agent_id": AGENT, "to": to}, timeout=30)
            if response.status_code != 429:
                response.raise_for_status()
                break
            time.sleep(1.0)


# ------------------------------------------------------------------------------ driver


def run_setting(
    allowed: int, client: str, calls: int, processes: int, store_url: str | None, workdir: Path
) -> Row:
    from airflow_provider_vonage_studio.testing.emulator import Emulator

    run_dir = Path(tempfile.mkdtemp(prefix=f"{client}-{allowed}-", dir=workdir))
    url = store_url or f"sqlite:///{run_dir / 'store.db'}"
    numbers = [f"447700900{n:03d}" for n in range(calls)]
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=allowed) as emulator:
        env = {
            **os.environ,
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(),
            "AIRFLOW__VONAGE_STUDIO__STORE_URL": url,
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
        procs = []
        for process in range(processes):
            share = list(range(process, calls, processes))
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                client,
                "--url",
                emulator.url,
                "--run-id",
                f"bench__{client}_{allowed}_{int(time.time())}",
                "--ready",
                str(run_dir / f"ready-{process}"),
                "--go",
                str(run_dir / "go"),
                "--map-indexes",
                *map(str, share),
                "--to",
                *(numbers[i] for i in share),
            ]
            log = (run_dir / f"worker-{process}.log").open("w")
            procs.append(
                (subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
            )
        while not all((run_dir / f"ready-{p}").exists() for p in range(processes)):
            if any(proc.poll() not in (None, 0) for proc, _ in procs):
                raise SystemExit(f"a worker failed; see {run_dir}")
            time.sleep(0.05)
        started = time.monotonic()
        (run_dir / "go").touch()
        for proc, log in procs:
            if proc.wait() != 0:
                raise SystemExit(f"a worker failed; see {run_dir}")
            log.close()
        wall = time.monotonic() - started
        made = [r for r in emulator.requests if r.path == MAKE_CALL_PATH]
        accepted = sorted(c.monotonic for c in emulator.calls)
    if len(accepted) != calls:
        raise SystemExit(f"{client} at {allowed}/s: {len(accepted)} calls placed, expected {calls}")
    span = accepted[-1] - accepted[0]
    achieved = (len(accepted) - 1) / span if span > 0 else float("inf")
    return Row(allowed, client, calls, sum(1 for r in made if r.status == 429), achieved, wall)


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A URL on a fresh schema of ``base_url``, dropped afterwards (the run touches nothing else)."""
    import sqlalchemy as sa

    admin = sa.create_engine(base_url, poolclass=sa.pool.NullPool)
    schema = f"vs_bench_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = sa.engine.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def table(rows: list[Row]) -> str:
    lines = [
        "| allowed calls/s | client | calls | 429s | achieved calls/s | achieved / allowed | wall time |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            r.allowed,
            r.client,
            r.calls,
            r.refused,
            f"{r.achieved:.3f}",
            f"{r.ratio:.3f}",
            f"{r.wall:.1f} s",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[1, 5], help="allowed calls/s (1, 3 or 5)")
    parser.add_argument("--calls", type=int, default=100, help="calls per setting and client (default 100)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--clients", nargs="+", default=["ours", "naive"], choices=["ours", "naive"])
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("VONAGE_STUDIO_TEST_POSTGRES_URL", DEFAULT_PG),
        default=None,
        help="share the call store on PostgreSQL (default: a new SQLite file per setting)",
    )
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    # Worker mode (internal).
    parser.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    parser.add_argument("--map-indexes", type=int, nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--to", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "ours":
        worker_ours(args)
        return 0
    if args.worker == "naive":
        worker_naive(args)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="vonage-studio-pacing-bench-"))
    rows = []
    with postgres_schema(args.postgres) if args.postgres else nullcontext(None) as store_url:
        for allowed in args.rates:
            for client in args.clients:
                row = run_setting(allowed, client, args.calls, args.processes, store_url, workdir)
                print(
                    f"{client:>5} at {allowed}/s: {row.calls} calls, {row.refused} x 429, "
                    f"{row.achieved:.3f} calls/s ({row.ratio:.3f} of allowed) in {row.wall:.1f} s",
                    flush=True,
                )
                rows.append(row)
    store = "PostgreSQL" if args.postgres else "SQLite file"
    print()
    print(f"{args.processes} processes, one agent, emulator strict at the allowed rate; store: {store}")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ | {"ratio": r.ratio} for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
