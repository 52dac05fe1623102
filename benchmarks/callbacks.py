"""Callbacks recorded per second by the receiver under uvicorn, and how many were lost.

The receiver runs as a real server (a uvicorn subprocess on 127.0.0.1, the app built by
``create_app`` from the environment, as ``airflow vonage-studio callbacks serve`` builds
it); ``--clients`` threads, each with its own keep-alive connection, post one signed
``busy`` callback for each of ``--calls`` distinct calls. Afterwards the rows with a
status are counted in the store: ``lost`` is calls minus rows.

Run from the repository root::

    .venv/bin/python benchmarks/callbacks.py                 # SQLite, and PostgreSQL if reachable
    .venv/bin/python benchmarks/callbacks.py --calls 5000 --clients 32 --rounds 3 --backend sqlite

PostgreSQL is used when a server answers at ``--postgres-url`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); the benchmark works in a schema of
its own and drops it afterwards.

The same run first measures the machine's ceiling: a bare FastAPI endpoint on the same
route (``POST /calls/{token}/status``), under the same uvicorn settings and the same client
harness, that parses the JSON body and answers 200 without verifying or storing anything
(:func:`bare_app`). Each backend runs ``--rounds`` times (default 3), each round right beside
a bare run with fresh calls (after it in the first, third, ... round, before it in the
others, so that a drifting load favours neither); the receiver's figures are printed as
ratios of the bare ones, callbacks/s and server CPU per callback, per round and their
median, so that the comparison holds whatever else loads the machine.
Goals on a 2-core machine: >= 500 callbacks/s with 0 lost, and >= 0.5x the bare endpoint
on SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from airflow_provider_vonage_studio.callbacks.tokens import sign_token
from airflow_provider_vonage_studio.store import CallStore, calls_table

SECRET = "benchmark-callback-secret-0123456789"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NUMBER = "447700900123"


@dataclass(frozen=True)
class Result:
    backend: str
    calls: int
    clients: int
    seconds: float
    ok: int
    errors: int
    rows: int | None  # None for the bare endpoint, which stores nothing
    server_cpu: float

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_callback(self) -> float:
        return 1000 * self.server_cpu / self.calls if self.calls else 0.0

    @property
    def lost(self) -> int:
        return 0 if self.rows is None else self.calls - self.rows


def bare_app() -> FastAPI:
    """The ceiling: a FastAPI app whose callback route parses the JSON body and answers 200.

    Same route and response shape as the receiver, nothing verified or stored. Served by
    uvicorn in a subprocess (``callbacks:bare_app`` from this directory).
    """
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/calls/{token}/status")
    async def status(token: str, request: Request) -> JSONResponse:
        json.loads(await request.body())
        return JSONResponse({"result": "recorded"})

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A URL whose connections use a fresh schema, dropped on exit."""
    schema = f"vs_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = sa.engine.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def postgres_reachable(url: str) -> bool:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def seed_calls(url: str, refs: list[str]) -> None:
    """Create the schema and insert one placed call per ref (one bulk insert)."""
    store = CallStore(url)
    store.get_call("schema-check")  # creates the tables
    store.dispose()
    now = datetime.now(timezone.utc)
    rows = [
        {
            "call_ref": ref,
            "agent_id": "agent-bench",
            "destination": NUMBER,
            "state": "placed",
            "dag_id": "bench",
            "run_id": "bench-run",
            "task_id": "call",
            "map_index": i,
            "session_id": str(uuid.uuid4()),
            "session_start_time": now,
            "created_at": now,
            "updated_at": now,
        }
        for i, ref in enumerate(refs)
    ]
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(calls_table.insert(), rows)
    engine.dispose()


def count_recorded(url: str, refs: list[str]) -> int:
    """How many of ``refs`` have a status in the store."""
    store = CallStore(url)
    try:
        return sum(1 for record in store.get_calls(refs).values() if record.status)
    finally:
        store.dispose()


@contextlib.contextmanager
def receiver(
    url: str, port: int, home: Path, *, access_log: bool, bare: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """The receiver (or, with ``bare``, :func:`bare_app`) under uvicorn in a subprocess.

    The receiver is configured through the environment, as ``callbacks serve`` configures it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__VONAGE_STUDIO__STORE_URL": url,
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": json.dumps(
                {"conn_type": "vonage_studio", "password": "bench-key", "extra": {"callback_secret": SECRET}}
            ),
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        *(
            ["--app-dir", str(Path(__file__).resolve().parent), "callbacks:bare_app"]
            if bare
            else ["airflow_provider_vonage_studio.callbacks.app:create_app"]
        ),
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    if not access_log:
        cmd.append("--no-access-log")
    log_path = home / "receiver.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_healthy(port, proc, log_path)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"receiver not healthy after {timeout} s:\n{log_path.read_text()[-3000:]}")


def post_all(port: int, refs: list[str], clients: int) -> tuple[float, int, int]:
    """Post one callback per ref from ``clients`` threads; returns (seconds, ok, errors)."""
    bodies = [
        (
            f"/calls/{sign_token(ref, SECRET)}/status",
            json.dumps(
                {
                    "agent_id": "agent-bench",
                    "to": NUMBER,
                    "conversation_uuid": f"CON-{ref}",
                    "status": "busy",
                    "timestamp": "2024-05-31T06:40:45.475Z",
                }
            ).encode(),
        )
        for ref in refs
    ]
    lock = threading.Lock()
    next_index = [0]
    ok = [0]
    errors = [0]
    start_gate = threading.Barrier(clients + 1)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start_gate.wait()
        good = bad = 0
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(bodies):
                break
            path, body = bodies[i]
            for attempt in range(3):
                try:
                    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status == 200:
                        good += 1
                    else:
                        bad += 1
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    if attempt == 2:
                        bad += 1
        conn.close()
        with lock:
            ok[0] += good
            errors[0] += bad

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, ok[0], errors[0]


def run(backend: str, url: str, calls: int, clients: int, *, access_log: bool) -> Result:
    refs = [f"vs-bench{uuid.uuid4().hex[:24]}" for _ in range(calls)]
    seed_calls(url, refs)
    with tempfile.TemporaryDirectory(prefix="vs-bench-home-") as home:
        port = free_port()
        with receiver(url, port, Path(home), access_log=access_log) as proc:
            cpu_before = cpu_seconds(proc.pid)
            seconds, ok, errors = post_all(port, refs, clients)
            server_cpu = cpu_seconds(proc.pid) - cpu_before
    return Result(backend, calls, clients, seconds, ok, errors, count_recorded(url, refs), server_cpu)


def run_bare(calls: int, clients: int, *, access_log: bool) -> Result:
    """The same clients against :func:`bare_app`: the ceiling the receiver is compared with."""
    refs = [f"vs-bench{uuid.uuid4().hex[:24]}" for _ in range(calls)]
    with tempfile.TemporaryDirectory(prefix="vs-bench-home-") as home:
        port = free_port()
        with receiver("", port, Path(home), access_log=access_log, bare=True) as proc:
            cpu_before = cpu_seconds(proc.pid)
            seconds, ok, errors = post_all(port, refs, clients)
            server_cpu = cpu_seconds(proc.pid) - cpu_before
    return Result("bare", calls, clients, seconds, ok, errors, None, server_cpu)


def measure_pair(
    index: int, args: argparse.Namespace, run_receiver: Callable[[], Result]
) -> tuple[Result, Result]:
    """One round: the bare endpoint and the receiver back to back, as ``(bare, receiver)``.

    Odd rounds run the receiver first: when the machine's load drifts during a run (other
    processes starting or ending), neither side is always the one measured later.
    """
    if index % 2:
        receiver_result = run_receiver()
        return run_bare(args.calls, args.clients, access_log=args.access_log), receiver_result
    bare_result = run_bare(args.calls, args.clients, access_log=args.access_log)
    return bare_result, run_receiver()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=3, help="bare/receiver pairs per backend (median ratio)"
    )
    parser.add_argument("--backend", choices=["all", "sqlite", "postgres"], default="all")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("VONAGE_STUDIO_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    )
    parser.add_argument("--access-log", action="store_true", help="keep uvicorn's access log on")
    args = parser.parse_args(argv)

    # Each backend is measured right beside a bare run (see measure_pair), so a pair shares the
    # machine's load, and in --rounds pairs (fresh calls each), whose median ratio is the figure:
    # under load from other processes one pair alone can land on a quiet and a busy moment.
    pairs: dict[str, list[tuple[Result, Result]]] = {}
    if args.backend in ("all", "sqlite"):
        with tempfile.TemporaryDirectory(prefix="vs-bench-db-") as tmp:
            url = f"sqlite:///{tmp}/vonage_studio.db"
            pairs["sqlite"] = [
                measure_pair(
                    i, args, lambda: run("sqlite", url, args.calls, args.clients, access_log=args.access_log)
                )
                for i in range(args.rounds)
            ]
    if args.backend in ("all", "postgres"):
        if postgres_reachable(args.postgres_url):
            with postgres_schema(args.postgres_url) as url:
                pairs["postgresql"] = [
                    measure_pair(
                        i,
                        args,
                        lambda: run("postgresql", url, args.calls, args.clients, access_log=args.access_log),
                    )
                    for i in range(args.rounds)
                ]
        else:
            print(f"PostgreSQL not reachable at {args.postgres_url}: skipped", file=sys.stderr)

    print(
        f"callbacks: {args.calls} distinct calls, {args.clients} concurrent clients, one uvicorn worker; "
        f"{args.rounds} round(s) per backend, each right after the bare endpoint"
    )
    print(
        f"{'server':<11} {'seconds':>8} {'callbacks/s':>12} {'200 OK':>7} {'errors':>7} {'rows':>6} "
        f"{'lost':>5} {'server CPU ms/cb':>17}"
    )
    for rounds in pairs.values():
        for pair in rounds:
            for r in pair:
                rows = "-" if r.rows is None else str(r.rows)
                lost = "-" if r.rows is None else str(r.lost)
                print(
                    f"{r.backend:<11} {r.seconds:>8.2f} {r.per_second:>12.0f} {r.ok:>7} {r.errors:>7} "
                    f"{rows:>6} {lost:>5} {r.cpu_ms_per_callback:>17.2f}"
                )
    print("receiver / bare endpoint (callbacks/s: higher is better; CPU per callback: 1.0 is the ceiling)")
    for backend, rounds in pairs.items():
        rates = [r.per_second / bare.per_second if bare.per_second else 0.0 for bare, r in rounds]
        cpus = [
            r.cpu_ms_per_callback / bare.cpu_ms_per_callback if bare.cpu_ms_per_callback else 0.0
            for bare, r in rounds
        ]
        print(
            f"{backend:<11} callbacks/s {statistics.median(rates):.2f}x (rounds "
            f"{', '.join(f'{x:.2f}' for x in rates)})   server CPU per callback "
            f"{statistics.median(cpus):.2f}x (rounds {', '.join(f'{x:.2f}' for x in cpus)})"
        )
    results = [r for rounds in pairs.values() for pair in rounds for r in pair]
    return 0 if all(r.lost == 0 and r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
