"""Store queries per poll round with 1,000 waiting CallStatusTriggers in one process.

A triggerer runs every deferred task's trigger in one event loop. CallStatusTrigger polls
the call store through one shared poller per loop and store URL, which reads every waiting
call_ref with one ``get_calls`` per round (one ``SELECT ... IN`` per 500 refs). As a
baseline, the same run measures what one query per trigger per round would cost.

Counted with a SQLAlchemy ``before_cursor_execute`` listener; timed on this machine.
SQLite always; PostgreSQL too when reachable (``--postgres URL``, default
``$VONAGE_STUDIO_TEST_POSTGRES_URL`` or ``postgresql+psycopg://postgres@127.0.0.1:5432/test``;
the run uses a schema of its own and drops it).

    .venv/bin/python benchmarks/trigger_poll.py [--triggers 1000] [--rounds 5] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
import structlog

from airflow_provider_vonage_studio.outcome import open_store
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.triggers.vonage_studio import (
    CallStatusTrigger,
    _SharedPoller,
)

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GOAL = 10


@dataclass
class Row:
    backend: str
    mode: str
    triggers: int
    rounds: int
    queries_per_round: float
    ms_per_round: float
    loop_lag_ms: float | None


class StatementCounter:
    """Counts SQL statements sent by any engine while active."""

    def __init__(self) -> None:
        self.count = 0

    def _on_execute(self, *args: object) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", self._on_execute)


def seed(store: CallStore, refs: list[str]) -> None:
    """Place ``refs`` in the ledger through the store's public API (as the hook does)."""
    started = datetime.now(timezone.utc)
    for ref in refs:
        store.begin_call(ref, agent_id="agent-1", destination="447700900123")
        store.mark_placed(ref, f"session-{ref}", started)


async def shared_poller(
    url: str, refs: list[str], rounds: int, interval: float
) -> tuple[float, float, float]:
    """Queries per round, store time per round (ms) and the worst event-loop lag (ms)."""
    fetch_times: list[float] = []
    real_fetch = _SharedPoller._fetch

    def timed_fetch(self: _SharedPoller, wanted: list[str]) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            return real_fetch(self, wanted)
        finally:
            fetch_times.append(time.perf_counter() - start)

    _SharedPoller._fetch = timed_fetch  # type: ignore[method-assign,assignment]
    lag = 0.0

    async def ticker() -> None:
        # How late a 10 ms timer fires: > a few ms would mean SQL ran on the event loop.
        nonlocal lag
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.01)
            lag = max(lag, loop.time() - start - 0.01)

    try:
        triggers = [
            CallStatusTrigger(call_ref=ref, answer_window=3600, poll_interval=interval, store_url=url)
            for ref in refs
        ]
        tasks = [asyncio.ensure_future(anext(t.run())) for t in triggers]
        poller = None
        while poller is None or poller.rounds < 1:  # registrations done and one warm-up round
            await asyncio.sleep(0.01)
            poller = _SharedPoller.active(url)
        assert len(poller.waiters) == len(refs), len(poller.waiters)
        fetch_times.clear()
        tick = asyncio.ensure_future(ticker())
        with StatementCounter() as counter:
            first = poller.rounds
            while poller.rounds - first < rounds:
                await asyncio.sleep(0.01)
            done_rounds = poller.rounds - first
            queries = counter.count
        tick.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, tick, return_exceptions=True)
    finally:
        _SharedPoller._fetch = real_fetch  # type: ignore[method-assign]
    return queries / done_rounds, statistics.mean(fetch_times[:done_rounds]) * 1000, lag * 1000


async def one_query_per_trigger(store: CallStore, refs: list[str], rounds: int) -> tuple[float, float]:
    """What 1,000 self-polling triggers would cost: each reads its own row every round."""
    per_round: list[float] = []
    with StatementCounter() as counter:
        for _ in range(rounds):
            start = time.perf_counter()
            await asyncio.gather(*(asyncio.to_thread(store.get_call, ref) for ref in refs))
            per_round.append(time.perf_counter() - start)
        queries = counter.count
    return queries / rounds, statistics.mean(per_round) * 1000


def measure(backend: str, url: str, n: int, rounds: int, interval: float) -> list[Row]:
    store = open_store(url)  # the instance the shared poller uses too
    refs = [f"vs-bench-{i:05d}" for i in range(n)]
    t0 = time.perf_counter()
    seed(store, refs)
    print(f"  {backend}: seeded {n} placed calls in {time.perf_counter() - t0:.1f}s", flush=True)
    q_shared, ms_shared, lag = asyncio.run(shared_poller(url, refs, rounds, interval))
    q_naive, ms_naive = asyncio.run(one_query_per_trigger(store, refs, rounds))
    store.dispose()
    return [
        Row(backend, "shared poller (ours)", n, rounds, q_shared, ms_shared, lag),
        Row(backend, "one query per trigger", n, rounds, q_naive, ms_naive, None),
    ]


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str | None]:
    """A URL on a fresh schema of ``base_url`` (dropped afterwards), or None if unreachable."""
    admin = sa.create_engine(base_url, poolclass=sa.pool.NullPool)
    schema = f"vs_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        print(f"  postgresql: skipped ({type(exc).__name__}: not reachable at {base_url})", flush=True)
        admin.dispose()
        yield None
        return
    try:
        url = sa.engine.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval in seconds")
    parser.add_argument("--postgres", default=os.environ.get("VONAGE_STUDIO_TEST_POSTGRES_URL", DEFAULT_PG))
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    # 1,000 "waiting" lines from the triggers are not the point (Airflow logs through structlog).
    logging.disable(logging.INFO)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += measure(
            "sqlite", f"sqlite:///{tmp}/vonage_studio.db", args.triggers, args.rounds, args.interval
        )
    if not args.no_postgres:
        with postgres_schema(args.postgres) as pg_url:
            if pg_url is not None:
                rows += measure("postgresql", pg_url, args.triggers, args.rounds, args.interval)

    print()
    print(f"{args.triggers} waiting triggers in one event loop, {args.rounds} poll rounds,", end=" ")
    print(f"{os.cpu_count()} CPUs")
    header = f"{'backend':<11} {'mode':<22} {'queries/round':>13} {'ms/round':>9} {'max loop lag ms':>16}"
    print(header)
    print("-" * len(header))
    for row in rows:
        lag = "-" if row.loop_lag_ms is None else f"{row.loop_lag_ms:.1f}"
        queries, ms = f"{row.queries_per_round:.1f}", f"{row.ms_per_round:.1f}"
        print(f"{row.backend:<11} {row.mode:<22} {queries:>13} {ms:>9} {lag:>16}")
    worst = max(r.queries_per_round for r in rows if r.mode.startswith("shared"))
    verdict = "OK" if worst <= GOAL else "MISSED"
    print(f"\nshared poller: {worst:.1f} store queries per round (goal <= {GOAL}): {verdict}")
    print("ms/round: time the store took to answer one round (shared: one get_calls in a worker thread;")
    print("baseline: 1,000 get_call in the default thread pool). Loop lag: worst delay of a 10 ms timer.")


if __name__ == "__main__":
    main()
