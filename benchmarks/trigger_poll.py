"""Cost of waiting: N waiting CallStatusTriggers in one event loop, three ways, one run.

A triggerer runs every deferred task's trigger in one event loop. This measures, at each
``--triggers`` count, on SQLite and PostgreSQL:

* **change feed (ours)**: the shared poller as shipped (``triggers/poller.py``): one full
  read when it starts, then one ``changes_since`` query per round, waking only the triggers
  whose rows changed (none, here: every call is placed and silent, answer window an hour);
* **IN chunks (before)**: the previous shared poller, kept verbatim below as
  ``_LegacyPoller``: every round reads every waiting ref (one ``SELECT ... IN`` per 500
  refs) and wakes every trigger to evaluate its row;
* **one query per trigger**: each trigger reads its own row every round.

Per round: store queries (a SQLAlchemy ``before_cursor_execute`` listener), ms of the round
(store read plus hand-out to the triggers), and the worst lag of a 10 ms timer on the same
event loop (what every other trigger of the triggerer suffers). Timed on this machine.
PostgreSQL when reachable (``--postgres URL``, default ``$VONAGE_STUDIO_TEST_POSTGRES_URL``
or ``postgresql+psycopg://postgres@127.0.0.1:5432/test``; a schema of its own, dropped after).

    .venv/bin/python benchmarks/trigger_poll.py [--triggers 1000,10000,50000] [--rounds 3] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import statistics
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import sqlalchemy as sa
import structlog

from airflow_provider_vonage_studio.outcome import evaluate_round, open_store
from airflow_provider_vonage_studio.store import CallRecord, CallStore, calls_table
from airflow_provider_vonage_studio.triggers.poller import _SharedPoller
from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: Goals at 10,000 waiters (50,000: within twice these).
GOAL_QUERIES, GOAL_MS, GOAL_LAG_MS = 2, 20.0, 25.0


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
    """Placed, silent calls, inserted in bulk (Core insert: the change feed numbers them too)."""
    now = datetime.now(timezone.utc)
    store.get_call("vs-none")  # create the tables
    for start in range(0, len(refs), 5000):
        rows = [
            {
                "call_ref": ref,
                "agent_id": "agent-1",
                "destination": "447700900123",
                "state": "placed",
                "map_index": -1,
                "session_id": f"session-{ref}",
                "session_start_time": now,
                "created_at": now,
                "updated_at": now,
            }
            for ref in refs[start : start + 5000]
        ]
        with store._transaction(write=True) as conn:
            conn.execute(calls_table.insert(), rows)


# ------------------------------------------------------------- the previous shared poller
# Kept verbatim (renamed) from the release before the change feed: the baseline.


class _LegacyWaiter:
    """One trigger's registration with a :class:`_LegacyPoller`.

    ``refs`` are the call_refs the trigger still waits for (it removes decided ones);
    ``due`` is the poller-clock instant of its next round.
    """

    def __init__(self, poller: _LegacyPoller, refs: Iterable[str], interval: float, due: float) -> None:
        self.poller = poller
        self.refs: set[str] = set(refs)
        self.interval = interval
        self.due = due
        self._ready = asyncio.Event()
        self._result: dict[str, CallRecord] | BaseException | None = None

    def deliver(self, result: dict[str, CallRecord] | BaseException) -> None:
        """Hand over a round's rows (or the error that round hit); only the latest is kept."""
        self._result = result
        self._ready.set()

    async def next_round(self) -> dict[str, CallRecord]:
        """Rows of ``refs`` from the next poll round (refs without a row are absent).

        :raises Exception: whatever reading the store raised in that round.
        """
        await self._ready.wait()
        self._ready.clear()
        result, self._result = self._result, None
        if isinstance(result, BaseException):
            raise result
        return result or {}

    def close(self) -> None:
        """Stop taking part in poll rounds (idempotent)."""
        self.poller.unregister(self)


class _LegacyPoller:
    """Polls the store for all registered waiters of one event loop and one store URL.

    Rounds fall on a grid (multiples of each waiter's interval on the loop's clock), so
    waiters with the same interval are served by the same round however staggered their
    registrations were. Each round issues one ``store.get_calls`` over the union of the due
    waiters' refs. The poller task ends when its last waiter leaves.
    """

    # loop -> store URL (None: the configured store) -> poller. Keyed by loop because
    # asyncio primitives belong to one loop; weak so a closed loop's pollers vanish with it.
    _registry: ClassVar[
        weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, _LegacyPoller]]
    ] = weakref.WeakKeyDictionary()

    def __init__(self, store_url: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.store_url = store_url
        self.loop = loop
        self.waiters: set[_LegacyWaiter] = set()
        self.rounds = 0  # poll rounds run (benchmarks and tests read it)
        self.refs_polled = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_store(cls, store_url: str | None) -> _LegacyPoller:
        """The running loop's poller for ``store_url``, created on first use."""
        loop = asyncio.get_running_loop()
        pollers = cls._registry.setdefault(loop, {})
        poller = pollers.get(store_url)
        if poller is None:
            poller = pollers[store_url] = cls(store_url, loop)
        return poller

    @classmethod
    def active(cls, store_url: str | None = None) -> _LegacyPoller | None:
        """The running loop's poller for ``store_url`` if one exists (for tests and benchmarks)."""
        return cls._registry.get(asyncio.get_running_loop(), {}).get(store_url)

    def register(self, refs: Iterable[str], interval: float) -> _LegacyWaiter:
        """Join the poll rounds; the first round for the new waiter is the next grid instant."""
        waiter = _LegacyWaiter(self, refs, interval, self._next_due(self.loop.time(), interval))
        self.waiters.add(waiter)
        if self._task is None or self._task.done():
            # A poller that stopped has left the registry; take the slot again if it is free.
            self._registry.setdefault(self.loop, {}).setdefault(self.store_url, self)
            self._task = self.loop.create_task(self._run(), name=f"vonage-studio-poller:{id(self):x}")
        self._wakeup.set()  # the new waiter may be due before the poller's current sleep ends
        return waiter

    def unregister(self, waiter: _LegacyWaiter) -> None:
        """Leave the poll rounds (idempotent); the poller stops by itself when nobody is left."""
        self.waiters.discard(waiter)
        if not self.waiters:
            self._wakeup.set()

    @staticmethod
    def _next_due(now: float, interval: float) -> float:
        return (math.floor(now / interval) + 1) * interval

    def _fetch(self, refs: list[str]) -> dict[str, CallRecord]:
        # Runs in a worker thread: opening the store may create tables, get_calls blocks.
        return open_store(self.store_url).get_calls(refs)

    async def _run(self) -> None:
        try:
            while self.waiters:
                now = self.loop.time()
                next_due = min(w.due for w in self.waiters)
                if next_due > now:
                    self._wakeup.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), next_due - now)
                    continue  # re-plan: waiters may have come or gone meanwhile
                # Serve every waiter due now or within a quarter of its interval, so that
                # waiters on different grids still share rounds when they can.
                due = [w for w in self.waiters if w.due - now <= min(0.5, 0.25 * w.interval)]
                refs = sorted(set().union(*(w.refs for w in due)))
                result: dict[str, CallRecord] | BaseException
                try:
                    result = await asyncio.to_thread(self._fetch, refs) if refs else {}
                except Exception as exc:  # delivered to the waiters, who decide how long to tolerate it
                    result = exc
                self.rounds += 1
                self.refs_polled += len(refs)
                done = self.loop.time()
                for waiter in due:
                    # From its own due instant too: a waiter served a little early must not
                    # land on the grid point it was just served for.
                    waiter.due = self._next_due(max(done, waiter.due), waiter.interval)
                    if waiter not in self.waiters:
                        continue
                    if isinstance(result, BaseException):
                        waiter.deliver(result)
                    else:
                        waiter.deliver({ref: result[ref] for ref in waiter.refs if ref in result})
        finally:
            # No await between the emptiness check above and here: a register() cannot slip
            # in unseen. On cancellation (loop shutdown) the poller is forgotten as well.
            pollers = self._registry.get(self.loop)
            if pollers is not None and pollers.get(self.store_url) is self:
                del pollers[self.store_url]


async def legacy_wait(ref: str, url: str, interval: float) -> None:
    """The previous CallStatusTrigger.run loop, on the previous poller (never decides here)."""
    waiter = _LegacyPoller.for_store(url).register([ref], interval)
    try:
        while waiter.refs:
            records = await waiter.next_round()
            result = evaluate_round(
                records, sorted(waiter.refs), now=datetime.now(timezone.utc), answer_window=timedelta(hours=1)
            )
            waiter.refs.difference_update(result.errors, result.decided)
    finally:
        waiter.close()


# --------------------------------------------------------------------------- measuring


class Ticker:
    """The worst delay of a 10 ms timer on the running loop while active."""

    def __init__(self) -> None:
        self.lag = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.01)
            self.lag = max(self.lag, loop.time() - start - 0.01)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._tick())

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.lag * 1000


async def run_rounds(
    poller_of: Callable[[], Any], round_times: list[float], rounds: int, n: int
) -> tuple[float, float, float]:
    """Wait for the poller (all ``n`` registered, one warm-up round), then measure ``rounds``."""
    poller = None
    while poller is None or poller.rounds < 1 or len(poller.waiters) < n:
        await asyncio.sleep(0.01)
        poller = poller_of()
    first = poller.rounds
    while poller.rounds == first:  # the round in flight (may still be the full read) ends
        await asyncio.sleep(0.005)
    round_times.clear()
    ticker = Ticker()
    ticker.start()
    with StatementCounter() as counter:
        first = poller.rounds
        while poller.rounds - first < rounds:
            await asyncio.sleep(0.005)
        done = poller.rounds - first
        queries = counter.count
    lag = await ticker.stop()
    return queries / done, statistics.mean(round_times[:done] or [0.0]) * 1000, lag


async def ours(url: str, refs: list[str], rounds: int, interval: float) -> tuple[float, float, float]:
    round_times: list[float] = []
    real = _SharedPoller._round

    async def timed(self: _SharedPoller) -> None:
        start = time.perf_counter()
        try:
            await real(self)
        finally:
            round_times.append(time.perf_counter() - start)

    _SharedPoller._round = timed  # type: ignore[method-assign]
    try:
        triggers = [
            CallStatusTrigger(call_ref=ref, answer_window=3600, poll_interval=interval, store_url=url)
            for ref in refs
        ]
        tasks = [asyncio.ensure_future(anext(t.run())) for t in triggers]
        result = await run_rounds(lambda: _SharedPoller.active(url), round_times, rounds, len(refs))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        _SharedPoller._round = real  # type: ignore[method-assign]
    return result


async def before(url: str, refs: list[str], rounds: int, interval: float) -> tuple[float, float, float]:
    round_times: list[float] = []
    real = _LegacyPoller._fetch

    def timed(self: _LegacyPoller, wanted: list[str]) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            return real(self, wanted)
        finally:
            round_times.append(time.perf_counter() - start)

    _LegacyPoller._fetch = timed  # type: ignore[method-assign]
    try:
        tasks = [asyncio.ensure_future(legacy_wait(ref, url, interval)) for ref in refs]
        result = await run_rounds(lambda: _LegacyPoller.active(url), round_times, rounds, len(refs))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        _LegacyPoller._fetch = real  # type: ignore[method-assign]
    return result


async def one_query_per_trigger(store: CallStore, refs: list[str], rounds: int) -> tuple[float, float, float]:
    """Each trigger reads its own row every round (in the default thread pool)."""
    per_round: list[float] = []
    ticker = Ticker()
    ticker.start()
    with StatementCounter() as counter:
        for _ in range(rounds):
            start = time.perf_counter()
            await asyncio.gather(*(asyncio.to_thread(store.get_call, ref) for ref in refs))
            per_round.append(time.perf_counter() - start)
        queries = counter.count
    lag = await ticker.stop()
    return queries / rounds, statistics.mean(per_round) * 1000, lag


def measure(backend: str, url: str, n: int, rounds: int, interval: float) -> list[Row]:
    store = open_store(url)  # the instance the pollers use too
    refs = [f"vs-bench-{n}-{i:05d}" for i in range(n)]
    t0 = time.perf_counter()
    seed(store, refs)
    print(f"  {backend}: seeded {n} placed calls in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []
    for mode, run in (("change feed (ours)", ours), ("IN chunks (before)", before)):
        q, ms, lag = asyncio.run(run(url, refs, rounds, interval))
        rows.append(Row(backend, mode, n, rounds, q, ms, lag))
        print(f"    {mode}: {q:.1f} queries/round, {ms:.1f} ms/round, lag {lag:.1f} ms", flush=True)
    naive_rounds = 1 if n > 10_000 else rounds  # 50,000 reads a round: one round tells enough
    q, ms, lag = asyncio.run(one_query_per_trigger(store, refs, naive_rounds))
    rows.append(Row(backend, "one query per trigger", n, naive_rounds, q, ms, lag))
    return rows


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


def print_table(rows: list[Row], rounds: int) -> None:
    print()
    print(f"waiting CallStatusTriggers in one event loop, {rounds} poll rounds each, {os.cpu_count()} CPUs")
    header = f"{'backend':<11} {'waiters':>8} {'mode':<22} {'queries/round':>13} {'ms/round':>9}"
    header += f" {'loop lag ms':>12}"
    print(header)
    print("-" * len(header))
    for row in rows:
        lag = "-" if row.loop_lag_ms is None else f"{row.loop_lag_ms:.1f}"
        print(
            f"{row.backend:<11} {row.triggers:>8} {row.mode:<22} {row.queries_per_round:>13.1f} "
            f"{row.ms_per_round:>9.1f} {lag:>12}"
        )
    for row in rows:
        if row.mode.startswith("change feed") and row.triggers in (10_000, 50_000):
            scale = 1 if row.triggers == 10_000 else 2
            met = (
                row.queries_per_round <= GOAL_QUERIES * scale
                and row.ms_per_round <= GOAL_MS * scale
                and (row.loop_lag_ms or 0) <= GOAL_LAG_MS * scale
            )
            print(
                f"goal at {row.triggers} ({row.backend}): <= {GOAL_QUERIES * scale} queries, "
                f"<= {GOAL_MS * scale:g} ms, lag <= {GOAL_LAG_MS * scale:g} ms: {'OK' if met else 'MISSED'}"
            )
    print("ms/round: one poll round (ours: the change-feed read and waking the triggers concerned;")
    print(
        "before: its get_calls; per trigger: all reads of a round). Loop lag: worst delay of a 10 ms timer."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--triggers", default="1000,10000", help="comma-separated waiter counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval in seconds")
    parser.add_argument("--postgres", default=os.environ.get("VONAGE_STUDIO_TEST_POSTGRES_URL", DEFAULT_PG))
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    counts = [int(part) for part in str(args.triggers).split(",") if part.strip()]
    # Thousands of "waiting" lines from the triggers are not the point (Airflow logs through structlog).
    logging.disable(logging.INFO)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    rows: list[Row] = []
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            rows += measure("sqlite", f"sqlite:///{tmp}/vonage_studio.db", n, args.rounds, args.interval)
        if not args.no_postgres:
            with postgres_schema(args.postgres) as pg_url:
                if pg_url is not None:
                    rows += measure("postgresql", pg_url, n, args.rounds, args.interval)
    rows.sort(key=lambda r: (r.backend != "sqlite", r.triggers))
    print_table(rows, args.rounds)


if __name__ == "__main__":
    main()
