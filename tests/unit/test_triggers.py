"""CallStatusTrigger and its shared poller, driven for real against a SQLite store in
tmp_path and the PostgreSQL store (the ``store`` / ``store_url`` fixtures)."""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio import outcome as outcome_module
from airflow_provider_vonage_studio.exceptions import CallFailed, VonageStudioConfigError
from airflow_provider_vonage_studio.outcome import ANSWERED, error_from_event
from airflow_provider_vonage_studio.store import CallStore, calls_table
from airflow_provider_vonage_studio.triggers.vonage_studio import (
    MAX_STORE_FAILURES,
    CallStatusTrigger,
    _SharedPoller,
)

# The autouse fixture closes the stores open_store() cached for each test.
from tests.unit.call_rows import AGENT, NUMBER, dispose_named_stores  # noqa: F401
from tests.unit.call_rows import placed as _placed
from tests.unit.call_rows import reported as _busy

UTC = timezone.utc


def test_trigger_serialisation_round_trip() -> None:
    trigger = CallStatusTrigger(
        call_ref="vs-1",
        answer_window=timedelta(seconds=3),
        fail_on=("busy",),
        poll_interval=0.5,
        store_url="sqlite:////tmp/x.db",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_vonage_studio.triggers.vonage_studio.CallStatusTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs  # JSON-safe: durations as seconds
    assert kwargs["answer_window"] == 3.0 and kwargs["fail_on"] == ["busy"] and kwargs["call_ref"] == "vs-1"
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.answer_window == timedelta(seconds=3) and rebuilt.fail_on == ("busy",)

    batch = CallStatusTrigger(call_refs=["vs-1", "vs-2", "vs-1"], fail_on=())
    classpath, kwargs = batch.serialize()
    assert kwargs["call_refs"] == ["vs-1", "vs-2"] and "call_ref" not in kwargs
    assert CallStatusTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_trigger_validates_arguments() -> None:
    with pytest.raises(VonageStudioConfigError, match="exactly one"):
        CallStatusTrigger()
    with pytest.raises(VonageStudioConfigError, match="exactly one"):
        CallStatusTrigger(call_ref="a", call_refs=["b"])
    with pytest.raises(VonageStudioConfigError, match="call_refs"):
        CallStatusTrigger(call_refs=[])
    with pytest.raises(VonageStudioConfigError, match="call_refs"):
        CallStatusTrigger(call_refs="vs-1")
    with pytest.raises(VonageStudioConfigError, match="poll_interval"):
        CallStatusTrigger(call_ref="a", poll_interval=0)
    with pytest.raises(VonageStudioConfigError, match="fail_on"):
        CallStatusTrigger(call_ref="a", fail_on=["answered"])


async def _events(trigger: CallStatusTrigger, timeout: float = 10) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return await asyncio.wait_for(collect(), timeout)


def test_trigger_event_for_a_failure_status(store: CallStore, store_url: str) -> None:
    _placed(store, "vs-busy")
    _busy(store, "vs-busy")
    events = asyncio.run(
        _events(CallStatusTrigger(call_ref="vs-busy", fail_on=(), poll_interval=0.05, store_url=store_url))
    )
    assert events == [
        {
            "status": "success",
            "call_ref": "vs-busy",
            "call_status": "busy",
            "call_statuses": {"vs-busy": "busy"},
            "call_source": "callback",
            "call_sources": {"vs-busy": "callback"},
        }
    ]
    # With the default fail_on the same call ends in an error event that rebuilds CallFailed.
    (event,) = asyncio.run(
        _events(CallStatusTrigger(call_ref="vs-busy", poll_interval=0.05, store_url=store_url))
    )
    assert (
        event["status"] == "error" and event["error_type"] == "CallFailed" and event["call_status"] == "busy"
    )
    rebuilt = error_from_event(event)
    assert isinstance(rebuilt, CallFailed) and rebuilt.call_status == "busy"


def test_trigger_event_for_an_answered_call(store: CallStore, store_url: str) -> None:
    _placed(store, "vs-ok")
    trigger = CallStatusTrigger(call_ref="vs-ok", answer_window=0.3, poll_interval=0.05, store_url=store_url)
    (event,) = asyncio.run(_events(trigger))
    assert event["status"] == "success" and event["call_status"] == ANSWERED


def test_trigger_event_for_a_callback_arriving_while_waiting(store: CallStore, store_url: str) -> None:
    _placed(store, "vs-late")

    async def scenario() -> list[dict[str, Any]]:
        trigger = CallStatusTrigger(call_ref="vs-late", fail_on=(), poll_interval=0.05, store_url=store_url)
        task = asyncio.ensure_future(_events(trigger))
        await asyncio.sleep(0.2)
        assert not task.done()
        await asyncio.to_thread(_busy, store, "vs-late", "timeout")
        return await task

    assert asyncio.run(scenario())[0]["call_status"] == "timeout"


def test_trigger_event_for_an_unknown_call(store_url: str) -> None:
    (event,) = asyncio.run(
        _events(CallStatusTrigger(call_ref="vs-nowhere", poll_interval=0.05, store_url=store_url))
    )
    assert event["status"] == "error" and event["error_type"] == "UnknownCall"
    assert "vs-nowhere" in event["message"]


def test_trigger_event_for_a_rejected_placement(store: CallStore, store_url: str) -> None:
    store.begin_call("vs-refused", agent_id=AGENT, destination=NUMBER)
    store.mark_rejected("vs-refused", 400, "Bad destination number format")
    (event,) = asyncio.run(
        _events(CallStatusTrigger(call_ref="vs-refused", poll_interval=0.05, store_url=store_url))
    )
    assert event["error_type"] == "CallRejectedEarlier" and "Bad destination" in event["message"]


def test_batch_trigger_waits_for_all(store: CallStore, store_url: str) -> None:
    for ref in ("vs-a", "vs-b", "vs-c"):
        _placed(store, ref)
    _busy(store, "vs-a")
    _busy(store, "vs-b", "failed")
    trigger = CallStatusTrigger(
        call_refs=["vs-a", "vs-b", "vs-c"],
        answer_window=0.3,
        fail_on=(),
        poll_interval=0.05,
        store_url=store_url,
    )
    (event,) = asyncio.run(_events(trigger))
    assert event == {
        "status": "success",
        "call_statuses": {"vs-a": "busy", "vs-b": "failed", "vs-c": ANSWERED},
        "call_sources": {"vs-a": "callback", "vs-b": "callback", "vs-c": "inferred"},
    }

    # fail_on for a batch: errors are per call; the others are still reported.
    trigger = CallStatusTrigger(
        call_refs=["vs-a", "vs-b", "vs-c", "vs-ghost"],
        answer_window=0.0,
        poll_interval=0.05,
        store_url=store_url,
    )
    (event,) = asyncio.run(_events(trigger))
    assert event["status"] == "error"
    assert event["call_statuses"] == {"vs-c": ANSWERED}
    assert {ref: e["error_type"] for ref, e in event["errors"].items()} == {
        "vs-a": "CallFailed",
        "vs-b": "CallFailed",
        "vs-ghost": "UnknownCall",
    }
    assert event["error_type"] == "VonageStudioError"  # mixed kinds
    assert "3 of 4 calls" in event["message"]


def test_trigger_gives_up_when_the_store_stays_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(self: _SharedPoller, cursor: Any, refs: list[str]) -> Any:
        calls.append(refs)
        raise sa.exc.OperationalError("SELECT", {}, Exception("database is down"))

    monkeypatch.setattr(_SharedPoller, "_fetch", broken)
    (event,) = asyncio.run(
        _events(CallStatusTrigger(call_ref="vs-1", poll_interval=0.02, store_url="sqlite://"))
    )
    assert event["status"] == "error" and "database is down" in event["message"]
    assert len(calls) == MAX_STORE_FAILURES


def test_trigger_rides_out_a_short_store_outage(
    monkeypatch: pytest.MonkeyPatch, store: CallStore, store_url: str
) -> None:
    _placed(store, "vs-1")
    _busy(store, "vs-1")
    real = _SharedPoller._fetch
    failures = iter([True, True])

    def flaky(self: _SharedPoller, cursor: Any, refs: list[str]) -> Any:
        if next(failures, False):
            raise sa.exc.OperationalError("SELECT", {}, Exception("restarting"))
        return real(self, cursor, refs)

    monkeypatch.setattr(_SharedPoller, "_fetch", flaky)
    (event,) = asyncio.run(
        _events(CallStatusTrigger(call_ref="vs-1", fail_on=(), poll_interval=0.02, store_url=store_url))
    )
    assert event["call_status"] == "busy"


# ------------------------------------------------------------------------- shared poller


def _bulk_placed(store: CallStore, refs: list[str], started: datetime) -> None:
    """Insert many placed calls in one statement (the public API would take one write per call)."""
    now = datetime.now(UTC)
    rows = [
        {
            "call_ref": ref,
            "agent_id": AGENT,
            "destination": NUMBER,
            "state": "placed",
            "map_index": -1,
            "session_id": f"session-{ref}",
            "session_start_time": started,
            "created_at": now,
            "updated_at": now,
        }
        for ref in refs
    ]
    with store._transaction(write=True) as conn:
        conn.execute(calls_table.insert(), rows)


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine sends while the test runs."""
    seen: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", listener)
    yield seen
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", listener)


def test_thousand_triggers_share_one_poller(store: CallStore, store_url: str, statements: list[str]) -> None:
    refs = [f"vs-{i:04d}" for i in range(1000)]
    _bulk_placed(store, refs, datetime.now(UTC))
    # The poller's own store instance checks the schema once, on first use: not a poll cost.
    outcome_module.open_store(store_url).get_calls(refs[:1])

    async def scenario() -> tuple[int, int, int]:
        triggers = [
            CallStatusTrigger(call_ref=ref, answer_window=3600, poll_interval=0.2, store_url=store_url)
            for ref in refs
        ]
        tasks = [asyncio.ensure_future(_events(t, timeout=60)) for t in triggers]
        await asyncio.sleep(0.05)
        poller = _SharedPoller.active(store_url)
        assert poller is not None and len(poller.waiters) == 1000
        statements.clear()
        rounds_before = poller.rounds
        await asyncio.sleep(1.1)
        rounds = poller.rounds - rounds_before
        queries = len(statements)

        # All are still waiting (answer window of an hour); now half of them get a callback.
        def report_busy() -> None:
            for ref in refs[:20]:  # a few suffice to see them end
                _busy(store, ref)

        await asyncio.to_thread(report_busy)
        await asyncio.sleep(0.5)
        done = sum(task.done() for task in tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.3)  # the poller notices it is alone and stops
        assert _SharedPoller.active(store_url) is None
        return rounds, queries, done

    rounds, queries, done = asyncio.run(scenario())
    assert rounds >= 3
    # After the first full read, one change-feed SELECT per round for all 1,000 waiters.
    assert queries <= rounds + 3, (queries, rounds)
    assert done == 20


def test_cancellation_unregisters(store: CallStore, store_url: str) -> None:
    _bulk_placed(store, ["vs-1", "vs-2", "vs-3"], datetime.now(UTC))

    async def scenario() -> None:
        triggers = [
            CallStatusTrigger(call_ref=ref, answer_window=3600, poll_interval=0.05, store_url=store_url)
            for ref in ("vs-1", "vs-2", "vs-3")
        ]
        tasks = [asyncio.ensure_future(_events(t)) for t in triggers]
        await asyncio.sleep(0.15)
        poller = _SharedPoller.active(store_url)
        assert poller is not None and len(poller.waiters) == 3
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        assert {w.refs.pop() for w in set(poller.waiters)} == {"vs-2", "vs-3"}
        # cleanup() (what the triggerer calls) unregisters as well, and is idempotent.
        await triggers[1].cleanup()
        await triggers[1].cleanup()
        assert len(poller.waiters) == 1
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert not poller.waiters
        await asyncio.sleep(0.1)
        assert _SharedPoller.active(store_url) is None

    asyncio.run(scenario())


def test_rounds_follow_the_poll_interval(store: CallStore, store_url: str) -> None:
    _bulk_placed(store, ["vs-1", "vs-2"], datetime.now(UTC))

    async def scenario() -> tuple[int, int]:
        fast = CallStatusTrigger(call_ref="vs-1", answer_window=3600, poll_interval=0.1, store_url=store_url)
        slow = CallStatusTrigger(call_ref="vs-2", answer_window=3600, poll_interval=0.25, store_url=store_url)
        tasks = [asyncio.ensure_future(_events(t)) for t in (fast, slow)]
        await asyncio.sleep(0.3)
        poller = _SharedPoller.active(store_url)
        assert poller is not None
        rounds, refs = poller.rounds, poller.refs_polled
        await asyncio.sleep(1.0)
        rounds, refs = poller.rounds - rounds, poller.refs_polled - refs
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return rounds, refs

    rounds, refs = asyncio.run(scenario())
    # ~10 rounds on the grid of the 0.1 s waiter, which the 0.25 s one shares (one query a
    # round serves both), and no grid instant twice.
    assert 4 <= rounds <= 12, rounds  # upper bound is the point; a loaded machine gives fewer
    # Nothing changed after the first full read: no row is read again, however many rounds.
    assert refs == 0, refs


def test_pollers_are_per_store_url(tmp_path: Any) -> None:
    async def scenario() -> None:
        a = _SharedPoller.for_store(f"sqlite:///{tmp_path}/a.db")
        b = _SharedPoller.for_store(f"sqlite:///{tmp_path}/b.db")
        assert a is not b and a is _SharedPoller.for_store(f"sqlite:///{tmp_path}/a.db")

    asyncio.run(scenario())
