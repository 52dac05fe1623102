"""A campaign of 100,000 recipients through MakeCallsOperator: memory, store rows, provider
overhead per 1,000 calls, XCom size, resume after a SIGKILL at 50 %, and nobody dialed twice.

    python benchmarks/campaign.py [--recipients 100000] [--store sqlite|postgres|both]

What runs, per store:

1. the emulator in a process of its own (its record of every request must not count against
   the task's memory), strict, with its per-agent limit lifted (``--calls-per-second``);
2. a JSON Lines file of N distinct numbers, given to the operator as a ``file://`` URI;
3. try 1: ``MakeCallsOperator.execute`` in a worker process, SIGKILLed once the ledger holds
   half the recipients (a worker crash);
4. try 2: the same task instance again (same dag/run/task/map index), as Airflow's retry:
   it re-reads the ledger chunk by chunk and dials only who try 1 had not reached.

How the rate limit is lifted, honestly: the connection still says 5 calls/s (the API's
ceiling), and the hook is built with ``pace=False``, the hook's documented testing knob (no
pacing slots: otherwise 100,000 calls would take 5.5 hours and measure only the limit). The
emulator's own limit is raised to match. Nothing else changes: the ledger, do-not-call reads,
chunking and results writes are the ones a task runs. The pacing guarantees are tested
elsewhere with pacing on against the strict emulator at 1/3/5 calls/s.

Figures, per store:

* peak RSS above the worker's baseline (``resource.getrusage`` after imports, before execute)
  and the ``tracemalloc`` peak of try 2 (try 2 streams all N recipients: half read back from
  the ledger, half dialed; tracemalloc slows Python down, so try 1, which gives the speed,
  runs without it);
* store rows written (ledger rows, batch-result rows);
* seconds per 1,000 calls in try 1: wall time of the dial loop, the part spent in HTTP
  round trips to the emulator, and the rest, the provider's overhead (planning, ledger writes,
  do-not-call reads, results writes, logging);
* the XCom's size (JSON bytes);
* resume: from try 2's ``execute`` to its first new request (re-reading the ledger of the
  recipients already dialed), and from its process start;
* the emulator's record: every number requested at most once.

Goals (issue 13): peak memory <= 150 MB above baseline, XCom < 64 KB, resume <= 10 s, none
dialed twice.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# dag_id, run_id, task_id, map_index of the benchmark's task instance.
WORKER_TASK = ("bench_campaign", "manual__bench", "dial", -1)
KEY = "campaign-bench-key-7f6e5d4c"
AGENT = "agent-1"
POSTGRES_URL = os.environ.get(
    "VONAGE_STUDIO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------------------ worker


def _snapshot(path: str, http: dict[str, Any], now: float) -> None:
    """Try 1's speed so far (it is killed, so it never writes its stats): atomic replace."""
    data = {"requests": http["requests"], "http_s": http["seconds"], "since_first_s": now - http["first"]}
    Path(path + ".tmp").write_text(json.dumps(data))
    os.replace(path + ".tmp", path)


def worker(args: argparse.Namespace) -> int:
    """One try of the task, in its own process; figures to ``--stats`` as JSON."""
    started = time.monotonic()
    import tracemalloc

    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
    from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator

    http = {"seconds": 0.0, "requests": 0, "first": None}
    executing: list[float] = []

    class BenchHook(VonageStudioHook):
        """The task's hook, unpaced (the testing knob), timing its HTTP round trips."""

        def __init__(self, conn_id: str) -> None:
            super().__init__(conn_id, pace=False, retry_backoff=0.01)
            session = self.session
            send = session.request

            def timed(*a: Any, **k: Any) -> Any:
                t0 = time.monotonic()
                if http["first"] is None:
                    http["first"] = t0
                    if args.snapshots:  # the resume figure, for a try the driver kills
                        first = {
                            "to_first_dial_s": t0 - executing[0],
                            "process_to_first_dial_s": t0 - started,
                        }
                        Path(args.snapshots + ".first").write_text(json.dumps(first))
                try:
                    return send(*a, **k)
                finally:
                    http["seconds"] += time.monotonic() - t0  # type: ignore[operator]
                    http["requests"] += 1  # type: ignore[operator]
                    if args.snapshots and http["requests"] % 200 == 0:  # type: ignore[operator]
                        _snapshot(args.snapshots, http, time.monotonic())

            session.request = timed  # type: ignore[method-assign]

    class BenchOperator(MakeCallsOperator):
        @property
        def hook(self) -> VonageStudioHook:
            if not hasattr(self, "_bench_hook"):
                self._bench_hook = BenchHook(self.vonage_studio_conn_id)
            return self._bench_hook

    class TI:
        dag_id, run_id, task_id, map_index = WORKER_TASK

        def xcom_push(self, key: str, value: Any) -> None:
            pass

    operator = BenchOperator(
        task_id="dial", recipients=args.uri, agent_id=AGENT, fail_on_rejected=False, progress_interval=5.0
    )
    import logging

    # Per-call lines would dominate a 100,000-call run's wall time; progress lines stay.
    logging.getLogger("airflow.task.hooks").setLevel(logging.WARNING)
    baseline_rss = _rss_mb()
    if args.tracemalloc:
        tracemalloc.start()
        traced_base = tracemalloc.get_traced_memory()[0]
    t0 = time.monotonic()
    executing.append(t0)
    value = operator.execute({"ti": TI()})  # type: ignore[arg-type]
    wall = time.monotonic() - t0
    stats = {
        "baseline_rss_mb": baseline_rss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tracemalloc_peak_mb": (tracemalloc.get_traced_memory()[1] - traced_base) / 2**20
        if args.tracemalloc
        else None,
        "wall_s": wall,
        "http_s": http["seconds"],
        "requests": http["requests"],
        "to_first_dial_s": None if http["first"] is None else http["first"] - t0,  # type: ignore[operator]
        "process_to_first_dial_s": None if http["first"] is None else http["first"] - started,  # type: ignore[operator]
        "xcom_bytes": len(json.dumps(value)),
        "xcom": value,
    }
    Path(args.stats).write_text(json.dumps(stats))
    return 0


# ------------------------------------------------------------------------------ driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_emulator(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "airflow_provider_vonage_studio.testing.emulator",
            "--port", str(port), "--calls-per-second", "1000000", "--agent", AGENT, "--no-end-call",
        ],
        cwd=ROOT,
        env={**os.environ, "VONAGE_STUDIO_EMULATOR_KEYS": KEY},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/_emulator/health", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the emulator did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def _ledger_rows(store_url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM vonage_studio_calls")).scalar_one())
    except Exception:
        return 0
    finally:
        engine.dispose()


def _count(store_url: str, table: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(store_url)
    with engine.connect() as conn:
        n = int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    engine.dispose()
    return n


def _try(uri: str, env: dict[str, str], work: Path, n: int, tracemalloc: bool) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--uri", uri]
    command += ["--stats", str(work / f"stats-{n}.json"), "--snapshots", str(work / f"speed-{n}.json")]
    if tracemalloc:
        command.append("--tracemalloc")
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=(work / f"try-{n}.log").open("w"), stderr=subprocess.STDOUT
    )


def run_one(store_name: str, store_url: str, recipients: int, work: Path) -> dict[str, Any]:
    import requests

    numbers = [f"4477{n:08d}" for n in range(recipients)]
    path = work / "campaign.jsonl"
    path.write_text("\n".join(json.dumps(n) for n in numbers) + "\n")
    emulator, url = _start_emulator(work / "emulator.log")
    connection = {
        "conn_type": "vonage_studio",
        "host": url,
        "password": KEY,
        "extra": {"calls_per_second": 5},
    }
    env = {
        **os.environ,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": json.dumps(connection),
        "AIRFLOW__VONAGE_STUDIO__STORE_URL": store_url,
        "PYTHONPATH": str(ROOT),
    }
    try:
        first = _try(path.as_uri(), env, work, 1, tracemalloc=False)
        t0 = time.monotonic()
        while _ledger_rows(store_url) < recipients // 2:
            if first.poll() is not None:
                raise SystemExit(f"try 1 ended early: {(work / 'try-1.log').read_text()[-3000:]}")
            time.sleep(0.2)
        first_wall = time.monotonic() - t0
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
        killed_at = _ledger_rows(store_url)
        second = _try(path.as_uri(), env, work, 2, tracemalloc=True)
        if second.wait(7200) != 0:
            raise SystemExit(f"try 2 failed: {(work / 'try-2.log').read_text()[-3000:]}")
        made = requests.get(f"{url}/_emulator/requests", timeout=600).json()
    finally:
        emulator.terminate()
        emulator.wait(30)
    stats = json.loads((work / "stats-2.json").read_text())
    speed = json.loads((work / "speed-1.json").read_text())
    dialed = Counter(
        r["body"]["to"]
        for r in made
        if r.get("path", "").endswith("/make-call") and isinstance(r.get("body"), dict)
    )
    first_dials = killed_at  # try 1's rows; each was dialed once (or is the one in flight)
    return {
        "store": store_name,
        "recipients": recipients,
        "killed_at_ledger_rows": killed_at,
        "try1_wall_s": first_wall,
        "try1_dials": first_dials,
        "try1_speed": speed,
        "try2": stats,
        "ledger_rows": _count(store_url, "vonage_studio_calls"),
        "result_rows": _count(store_url, "vonage_studio_batch_results"),
        "dialed_twice": sum(1 for v in dialed.values() if v > 1),
        "load_average": os.getloadavg()[0],
        "requested": len(dialed),
    }


def _prefill(store_url: str, numbers: list[str]) -> None:
    """Ledger rows ``placed`` for ``numbers``, as an earlier try of the task would have left them
    (bulk-inserted: the point is what a try does with them, not how they were written)."""
    from datetime import datetime, timezone

    from airflow_provider_vonage_studio.calls import TaskIdentity
    from airflow_provider_vonage_studio.store import CallStore, calls_table

    task = TaskIdentity(*WORKER_TASK)
    store = CallStore(store_url)
    store.dnc_list()  # creates the schema
    now = datetime.now(timezone.utc)
    rows = [
        {
            "call_ref": task.call_ref(f"to:{n}"),
            "dag_id": task.dag_id,
            "run_id": task.run_id,
            "task_id": task.task_id,
            "map_index": task.map_index,
            "agent_id": AGENT,
            "destination": n,
            "state": "placed",
            "session_id": f"prefilled-{n}",
            "session_start_time": now,
            "created_at": now,
            "updated_at": now,
        }
        for n in numbers
    ]
    with store._transaction(write=True) as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(calls_table.insert(), rows[start : start + 5000])
    store.dispose()


def run_scaled(store_name: str, store_url: str, recipients: int, work: Path, new_url: Any) -> dict[str, Any]:
    """At full size without dialing everyone: (a) every recipient already in the ledger, one try
    streams all of them (memory, rows, XCom); (b) half in the ledger, one try until its first
    new dial (the resume time), then SIGKILL."""
    import requests

    numbers = [f"4477{n:08d}" for n in range(recipients)]
    path = work / "campaign.jsonl"
    path.write_text("\n".join(json.dumps(n) for n in numbers) + "\n")
    emulator, url = _start_emulator(work / "emulator.log")
    connection = {
        "conn_type": "vonage_studio",
        "host": url,
        "password": KEY,
        "extra": {"calls_per_second": 5},
    }
    base_env = {
        **os.environ,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": json.dumps(connection),
        "PYTHONPATH": str(ROOT),
    }
    try:
        _prefill(store_url, numbers)
        env = {**base_env, "AIRFLOW__VONAGE_STUDIO__STORE_URL": store_url}
        full = _try(path.as_uri(), env, work, 1, tracemalloc=True)
        if full.wait(7200) != 0:
            raise SystemExit(f"the full pass failed: {(work / 'try-1.log').read_text()[-3000:]}")
        stats = json.loads((work / "stats-1.json").read_text())
        rows = {
            "ledger": _count(store_url, "vonage_studio_calls"),
            "results": _count(store_url, "vonage_studio_batch_results"),
        }
        half_url = new_url()
        _prefill(half_url, numbers[: recipients // 2])
        env = {**base_env, "AIRFLOW__VONAGE_STUDIO__STORE_URL": half_url}
        resume = _try(path.as_uri(), env, work, 2, tracemalloc=False)
        marker = work / "speed-2.json.first"
        deadline = time.monotonic() + 600
        while not marker.exists():
            if resume.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the resumed try never dialed: {(work / 'try-2.log').read_text()[-3000:]}")
            time.sleep(0.05)
        time.sleep(2.0)  # a few new dials, then the crash again
        os.kill(resume.pid, signal.SIGKILL)
        resume.wait(30)
        made = requests.get(f"{url}/_emulator/requests", timeout=600).json()
    finally:
        emulator.terminate()
        emulator.wait(30)
    dialed = Counter(r["body"]["to"] for r in made if isinstance(r.get("body"), dict) and "to" in r["body"])
    prefilled = set(numbers[: recipients // 2])
    return {
        "store": store_name,
        "recipients": recipients,
        "full_pass": stats,
        "rows": rows,
        "resume": json.loads(marker.read_text()),
        "dials_after_resume": sum(dialed.values()),
        "prefilled_dialed_again": sum(1 for n in dialed if n in prefilled),
        "dialed_twice": sum(1 for v in dialed.values() if v > 1),
        "load_average": os.getloadavg()[0],
    }


def _report_scaled(f: dict[str, Any]) -> None:
    t = f["full_pass"]
    lines = [
        f"== {f['store']}, {f['recipients']:,} recipients already in the ledger "
        f"(load average {f['load_average']:.1f} on {os.cpu_count()} cores) ==",
        f"full pass: {t['wall_s']:.1f} s, {t['requests']} requests (expected 0)",
        f"peak RSS above baseline:          {t['peak_rss_mb'] - t['baseline_rss_mb']:8.1f} MB  (goal <= 150)",
        f"tracemalloc peak above baseline:  {t['tracemalloc_peak_mb']:8.1f} MB",
        f"store rows: ledger {f['rows']['ledger']:,}, batch results {f['rows']['results']:,}",
        f"XCom: {t['xcom_bytes']:,} bytes (goal < 65,536)",
        f"resume with {f['recipients'] // 2:,} in the ledger: {f['resume']['to_first_dial_s']:.2f} s "
        f"from execute to the first new dial ({f['resume']['process_to_first_dial_s']:.2f} s from "
        "process start)  (goal <= 10)",
        f"then {f['dials_after_resume']} new dials before the kill; {f['prefilled_dialed_again']} of "
        f"the ledger's recipients dialed again, {f['dialed_twice']} dialed twice (goal 0)",
    ]
    print("\n" + "\n".join(lines), flush=True)


def _postgres_schema_url() -> tuple[str, Any]:
    import uuid

    import sqlalchemy as sa

    schema = f"vs_bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()

    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", drop


def _report(figures: dict[str, Any]) -> None:
    t2, speed = figures["try2"], figures["try1_speed"]
    per_k = 1000 * speed["since_first_s"] / speed["requests"]
    http_k = 1000 * speed["http_s"] / speed["requests"]
    rss = t2["peak_rss_mb"] - t2["baseline_rss_mb"]
    lines = [
        f"== {figures['store']}: {figures['recipients']:,} recipients "
        f"(load average {figures['load_average']:.1f} on {os.cpu_count()} cores) ==",
        f"try 1 SIGKILLed at {figures['killed_at_ledger_rows']:,} ledger rows, "
        f"{figures['try1_wall_s']:.1f} s in",
        f"peak RSS above baseline (try 2):  {rss:8.1f} MB  (goal <= 150)",
        f"tracemalloc peak above baseline:  {t2['tracemalloc_peak_mb']:8.1f} MB",
        f"store rows written: ledger {figures['ledger_rows']:,}, batch results {figures['result_rows']:,}",
        f"per 1,000 calls (try 1, {speed['requests']:,} dials): {per_k:.2f} s wall, {http_k:.2f} s in HTTP "
        f"round trips, {per_k - http_k:.2f} s provider overhead",
        f"XCom: {t2['xcom_bytes']:,} bytes (goal < 65,536): {json.dumps(t2['xcom']['counts'])}",
        f"resume: {t2['to_first_dial_s']:.2f} s from execute to the first new dial "
        f"({t2['process_to_first_dial_s']:.2f} s from process start)  (goal <= 10)",
        f"emulator: {figures['requested']:,} numbers requested, "
        f"{figures['dialed_twice']} dialed twice (goal 0)",
    ]
    print("\n" + "\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--scaled",
        action="store_true",
        help="at full size without dialing everyone: all recipients already in the ledger (memory, rows, "
        "XCom), then half (resume time); for machines where N real dials take too long",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--snapshots", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    results = []
    for name in ("sqlite", "postgres") if args.store == "both" else (args.store,):
        with tempfile.TemporaryDirectory(prefix="vs-campaign-") as tmp:
            work = Path(tmp)
            drops: list[Any] = []

            def new_url(name: str = name, work: Path = work, drops: list[Any] = drops) -> str:
                if name == "sqlite":
                    drops.append(lambda: None)
                    return f"sqlite:///{work / f'store-{len(drops)}.db'}"
                url, drop = _postgres_schema_url()
                drops.append(drop)
                return url

            try:
                if args.scaled:
                    figures = run_scaled(name, new_url(), args.recipients, work, new_url)
                else:
                    figures = run_one(name, new_url(), args.recipients, work)
            finally:
                for drop in drops:
                    drop()
        (_report_scaled if args.scaled else _report)(figures)
        results.append(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
