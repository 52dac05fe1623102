"""The outcome check, CallStatusTrigger and its shared poller, CallStatusSensor's modes."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio import outcome as outcome_module
from airflow_provider_vonage_studio import store as store_module
from airflow_provider_vonage_studio._compat import AirflowException, AirflowFailException
from airflow_provider_vonage_studio.exceptions import (
    CallFailed,
    CallOutcomeUnknown,
    CallRejectedEarlier,
    UnknownCall,
    VonageStudioConfigError,
    VonageStudioError,
)
from airflow_provider_vonage_studio.outcome import (
    ANSWERED,
    FAILURE_STATUSES,
    PENDING_TIMEOUT,
    CallOutcome,
    error_event,
    error_from_event,
    evaluate_call,
    evaluate_round,
    next_delay,
    normalize_answer_window,
    normalize_fail_on,
    wait_for_call,
    wait_for_calls,
)
from airflow_provider_vonage_studio.sensors.vonage_studio import CallStatusSensor, resolve_call_ref
from airflow_provider_vonage_studio.store import CallRecord, CallState, CallStore, calls_table
from airflow_provider_vonage_studio.triggers.vonage_studio import (
    MAX_STORE_FAILURES,
    CallStatusTrigger,
    _SharedPoller,
)

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=90)
AGENT = "agent-1"
NUMBER = "447700900123"


@pytest.fixture(autouse=True)
def _dispose_named_stores() -> Iterator[None]:
    """Close the stores open_store() cached for this test's URLs (their databases go away)."""
    yield
    with outcome_module._STORES_LOCK:
        stores = list(outcome_module._STORES.values())
        outcome_module._STORES.clear()
    for opened in stores:
        opened.dispose()


def _record(state: str = "placed", **fields: Any) -> CallRecord:
    base = CallRecord(
        call_ref="vs-test",
        agent_id=AGENT,
        destination=NUMBER,
        state=CallState(state),
        dag_id="d",
        run_id="r",
        task_id="t",
        map_index=-1,
        recipient_key=None,
        session_id="5a61cc84-4c89-4ef9-a983-5349c7112fdb" if state == "placed" else None,
        session_start_time=T0 if state == "placed" else None,
        error_status=None,
        error_message=None,
        status=None,
        status_at=None,
        conversation_uuid=None,
        callback_payload=None,
        parameters=None,
        created_at=T0,
        updated_at=T0,
    )
    return replace(base, **fields)


def _eval(record: CallRecord | None, at: timedelta, fail_on: Any = (), **kwargs: Any) -> CallOutcome | None:
    return evaluate_call(record, now=T0 + at, answer_window=WINDOW, fail_on=fail_on, **kwargs)


# --------------------------------------------------------------------------- evaluate_call


def test_failure_statuses_match_the_store() -> None:
    # Repeated in outcome.py so that DAG parsing does not import SQLAlchemy.
    assert FAILURE_STATUSES == store_module.FAILURE_STATUSES


@pytest.mark.parametrize(
    ("record", "at", "expected"),
    [
        # placed, no callback: waiting until the window has fully passed, then "answered"
        (_record(), timedelta(0), None),
        (_record(), WINDOW - timedelta(microseconds=1), None),
        (_record(), WINDOW, ANSWERED),
        (_record(), WINDOW * 10, ANSWERED),
        # a failure callback decides at once, inside the window...
        (_record(status="busy", status_at=T0 + timedelta(seconds=20)), timedelta(seconds=21), "busy"),
        # ...and still wins when it is read only after the window (it arrived in time)
        (_record(status="timeout", status_at=T0 + timedelta(seconds=61)), WINDOW * 2, "timeout"),
        *[(_record(status=s), timedelta(seconds=1), s) for s in FAILURE_STATUSES],
        # sending is "not yet" until PENDING_TIMEOUT; queued (not sent yet) is "not yet"
        (_record("sending"), timedelta(0), None),
        (_record("sending"), PENDING_TIMEOUT, None),
        (_record("queued"), PENDING_TIMEOUT * 3, None),
        # no session_start_time: the moment it was marked placed stands in
        (_record(session_start_time=None, updated_at=T0 + timedelta(seconds=30)), WINDOW, None),
        (_record(session_start_time=None, updated_at=T0 + timedelta(seconds=30)), WINDOW * 2, ANSWERED),
    ],
)
def test_evaluate_call_table(record: CallRecord, at: timedelta, expected: str | None) -> None:
    result = _eval(record, at)
    assert (result.status if result else None) == expected
    if result is not None:
        assert result.call_ref == "vs-test"
        assert result.inferred is (expected == ANSWERED)
        assert result.answered is (expected == ANSWERED)


def test_inferred_answer_is_dated_at_the_window_end() -> None:
    result = _eval(_record(), WINDOW * 3)
    assert result is not None and result.status_at == T0 + WINDOW
    assert "no failure reported" in result.describe()


def test_zero_window_means_answered_unless_reported() -> None:
    assert evaluate_call(_record(), now=T0, answer_window=timedelta(0), fail_on=()) == CallOutcome(
        "vs-test", ANSWERED, True, T0
    )


def test_unknown_call_is_an_error_naming_the_ref() -> None:
    with pytest.raises(UnknownCall, match="vs-missing") as info:
        _eval(None, timedelta(0), call_ref="vs-missing")
    assert "store_url" in info.value.message
    assert not info.value.retryable


def test_rejected_placement_fails_with_the_rejection() -> None:
    record = _record(
        "rejected", error_status=404, error_message="Version information for number x doesn't exist"
    )
    with pytest.raises(CallRejectedEarlier, match="404: Version information") as info:
        _eval(record, timedelta(0))
    assert info.value.status == 404
    # fail_on=() is for callback statuses: a refused placement is never "branchable".
    with pytest.raises(CallRejectedEarlier):
        _eval(record, WINDOW * 2, fail_on=())


def test_unknown_outcome_fails_clearly() -> None:
    with pytest.raises(CallOutcomeUnknown, match="whether the phone rang is unknown"):
        _eval(_record("unknown", error_message="ReadTimeout"), timedelta(0))


def test_stale_pending_fails_instead_of_waiting_for_ever() -> None:
    with pytest.raises(CallOutcomeUnknown, match="'sending' for 10 min"):
        _eval(_record("sending"), PENDING_TIMEOUT + timedelta(seconds=1))
    # A row written by a release before the ledger's two phases reads "pending" = sending.
    with pytest.raises(CallOutcomeUnknown, match="'sending' for 10 min"):
        _eval(_record("pending"), PENDING_TIMEOUT + timedelta(seconds=1))
    assert _eval(_record("sending"), timedelta(minutes=30), pending_timeout=timedelta(hours=1)) is None


@pytest.mark.parametrize("status", FAILURE_STATUSES)
def test_fail_on_raises_call_failed(status: str) -> None:
    with pytest.raises(CallFailed) as info:
        _eval(_record(status=status), timedelta(seconds=5), fail_on=FAILURE_STATUSES)
    assert info.value.call_status == status
    assert "fail_on=()" in info.value.message  # says how to branch instead
    assert not info.value.retryable  # a finished call cannot change: no task retries


def test_fail_on_subset_and_answered() -> None:
    assert _eval(_record(status="busy"), timedelta(1), fail_on=("failed",)).status == "busy"  # type: ignore[union-attr]
    # "answered" is never a failure
    assert _eval(_record(), WINDOW, fail_on=FAILURE_STATUSES).status == ANSWERED  # type: ignore[union-attr]
    assert _eval(_record(), WINDOW, fail_on=None).status == ANSWERED  # type: ignore[union-attr]


def test_normalize_fail_on() -> None:
    assert normalize_fail_on(None) == ()
    assert normalize_fail_on(()) == ()
    assert normalize_fail_on("busy") == ("busy",)
    assert normalize_fail_on(["busy", "timeout", "busy"]) == ("busy", "timeout")
    with pytest.raises(VonageStudioConfigError, match="fail_on"):
        normalize_fail_on(["answered"])
    with pytest.raises(VonageStudioConfigError, match="fail_on"):
        normalize_fail_on(["BUSY"])


def test_normalize_answer_window() -> None:
    assert normalize_answer_window(3) == timedelta(seconds=3)
    assert normalize_answer_window(2.5) == timedelta(seconds=2.5)
    assert normalize_answer_window(WINDOW) == WINDOW
    for bad in (-1, timedelta(seconds=-1), "90", True, None):
        with pytest.raises(VonageStudioConfigError, match="answer_window"):
            normalize_answer_window(bad)  # type: ignore[arg-type]


def test_error_events_round_trip() -> None:
    for exc in (
        UnknownCall("no such call"),
        CallFailed("busy!", "busy"),
        CallRejectedEarlier("refused", 404),
        CallOutcomeUnknown("who knows"),
        VonageStudioError("other", 500),
    ):
        event = error_event(exc, "vs-1")
        assert json.loads(json.dumps(event)) == event
        back = error_from_event(event)
        assert type(back) is type(exc) and back.message == exc.message and back.status == exc.status
        if isinstance(exc, CallFailed):
            assert isinstance(back, CallFailed) and back.call_status == "busy"
    assert type(error_from_event({"status": "error", "error_type": "SystemExit", "message": "x"})) is (
        VonageStudioError
    )


def test_wait_for_call_sleeps_until_the_window_end() -> None:
    started = datetime.now(UTC) - timedelta(seconds=1.0)

    class Store:
        reads = 0

        def get_call(self, ref: str) -> CallRecord:
            self.reads += 1
            return _record(session_start_time=started)

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    store = Store()
    # Window ends ~0.2 s from now; polling every 30 s must not make the wait last 30 s.
    result = wait_for_call(
        store,  # type: ignore[arg-type]
        "vs-test",
        answer_window=timedelta(seconds=1.2),
        poll_interval=30,
        sleep=sleep,
    )
    assert result.status == ANSWERED
    assert sleeps and max(sleeps) < 0.5
    assert store.reads == len(sleeps) + 1


def test_wait_for_call_timeout() -> None:
    class Store:
        def get_call(self, ref: str) -> CallRecord:
            return _record(session_start_time=datetime.now(UTC))

    with pytest.raises(TimeoutError, match="vs-test"):
        wait_for_call(
            Store(),  # type: ignore[arg-type]
            "vs-test",
            answer_window=timedelta(hours=1),
            poll_interval=0.01,
            timeout=0.05,
            sleep=lambda s: None,
        )


def test_evaluate_round_decides_errors_and_earliest_deadline() -> None:
    records = {
        "vs-busy": _record(call_ref="vs-busy", status="busy", status_at=T0),
        "vs-late": _record(call_ref="vs-late", session_start_time=T0 + timedelta(seconds=30)),
        "vs-early": _record(call_ref="vs-early", session_start_time=T0 + timedelta(seconds=10)),
        "vs-queued": _record(call_ref="vs-queued", state="queued"),
    }
    refs = ["vs-busy", "vs-late", "vs-missing", "vs-early", "vs-queued"]
    result = evaluate_round(records, refs, now=T0 + timedelta(seconds=20), answer_window=WINDOW, fail_on=())
    assert list(result.decided) == ["vs-busy"] and result.decided["vs-busy"].status == "busy"
    assert list(result.errors) == ["vs-missing"] and isinstance(result.errors["vs-missing"], UnknownCall)
    # The earliest deadline among the undecided placed calls (the queued one has none).
    assert result.next_deadline == T0 + timedelta(seconds=10) + WINDOW
    failing = evaluate_round(records, ["vs-busy"], now=T0, answer_window=WINDOW, fail_on=("busy",))
    assert isinstance(failing.errors["vs-busy"], CallFailed) and not failing.decided


def test_next_delay_wakes_just_past_the_deadline_and_within_what_is_left() -> None:
    assert next_delay(5.0, T0, None) == 5.0
    assert next_delay(5.0, T0, T0 + timedelta(seconds=2)) == pytest.approx(2.01)
    assert next_delay(5.0, T0, T0 - timedelta(seconds=2)) == pytest.approx(0.01)
    assert next_delay(5.0, T0, T0 + timedelta(seconds=2), left=1.0) == 1.0


def test_wait_for_calls_returns_status_or_why_for_each_call() -> None:
    clock = [T0]
    rows = {
        "vs-silent": _record(call_ref="vs-silent"),
        "vs-unknown": _record(call_ref="vs-unknown", state="unknown", error_message="read timed out"),
    }
    reads: list[list[str]] = []

    class Store:
        def get_calls(self, refs: list[str]) -> dict[str, CallRecord]:
            reads.append(list(refs))
            return {ref: rows[ref] for ref in refs if ref in rows}

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += timedelta(seconds=seconds)
        if len(sleeps) == 1:  # a failure callback arrives during the first wait
            rows["vs-late-busy"] = _record(call_ref="vs-late-busy", status="busy", status_at=clock[0])

    rows["vs-late-busy"] = _record(call_ref="vs-late-busy")
    result = wait_for_calls(
        Store(),  # type: ignore[arg-type]
        ["vs-silent", "vs-unknown", "vs-missing", "vs-late-busy", "vs-silent"],
        answer_window=WINDOW,
        poll_interval=40,
        sleep=sleep,
        now=lambda: clock[0],
    )
    assert result["vs-silent"] == (ANSWERED, None)
    assert result["vs-late-busy"] == ("busy", None)
    assert result["vs-unknown"][0] is None and "read timed out" in str(result["vs-unknown"][1])
    assert result["vs-missing"][0] is None and "no such call" in str(result["vs-missing"][1])
    assert reads[0] == ["vs-silent", "vs-unknown", "vs-missing", "vs-late-busy"]
    assert reads[1] == ["vs-silent", "vs-late-busy"]  # decided calls are not read again
    # Polls every 40 s until the answer window (90 s) is near its end, then wakes just past it.
    assert sleeps == [40, 40, pytest.approx(10.01)]


# ------------------------------------------------------------------------------- trigger


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


def _placed(store: CallStore, ref: str, *, started: datetime | None = None) -> None:
    created, _ = store.begin_call(ref, agent_id=AGENT, destination=NUMBER)
    assert created
    store.mark_placed(ref, f"session-{ref}", started or datetime.now(UTC))


def _busy(store: CallStore, ref: str, status: str = "busy") -> None:
    store.record_status(
        ref,
        status=status,
        conversation_uuid=f"CON-{ref}",
        timestamp=datetime.now(UTC),
        payload={"status": status},
    )


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


def test_sensor_stores_the_verdict_of_a_trigger_event(store: CallStore, store_url: str) -> None:
    _placed(store, "vs-a")
    _placed(store, "vs-b")
    sensor = CallStatusSensor(task_id="s", call_ref="vs-a", store_url=store_url, deferrable=True)
    ok = {"status": "success", "call_ref": "vs-a", "call_status": ANSWERED, "call_statuses": {}}
    assert sensor.execute_complete({}, ok) == ANSWERED
    with pytest.raises(AirflowFailException, match="busy"):
        sensor.execute_complete({}, error_event(CallFailed("ended busy", "busy"), "vs-b"))
    assert store.get_call("vs-a").outcome == ANSWERED  # type: ignore[union-attr]
    assert store.get_call("vs-b").outcome == "busy"  # type: ignore[union-attr]


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

    def broken(self: _SharedPoller, refs: list[str]) -> dict[str, CallRecord]:
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

    def flaky(self: _SharedPoller, refs: list[str]) -> dict[str, CallRecord]:
        if next(failures, False):
            raise sa.exc.OperationalError("SELECT", {}, Exception("restarting"))
        return real(self, refs)

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
    # 1,000 refs are two IN (...) chunks of 500: two SELECTs per round, never 1,000.
    assert queries / rounds <= 10, (queries, rounds)
    assert queries <= 2 * rounds + 2
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
    # ~10 rounds for the 0.1 s waiter; the 0.25 s one rides along on them (~4 times), and
    # nobody is served twice for one grid instant.
    assert 4 <= rounds <= 12, rounds  # upper bound is the point; a loaded machine gives fewer
    assert rounds < refs <= 17, refs


def test_pollers_are_per_store_url(tmp_path: Any) -> None:
    async def scenario() -> None:
        a = _SharedPoller.for_store(f"sqlite:///{tmp_path}/a.db")
        b = _SharedPoller.for_store(f"sqlite:///{tmp_path}/b.db")
        assert a is not b and a is _SharedPoller.for_store(f"sqlite:///{tmp_path}/a.db")

    asyncio.run(scenario())


# -------------------------------------------------------------------------------- sensor


def test_resolve_call_ref() -> None:
    assert resolve_call_ref(" vs-1 ") == "vs-1"
    assert resolve_call_ref({"call_ref": "vs-2", "session_id": "x"}) == "vs-2"
    for bad in (None, "", {"session_id": "x"}, 3):
        with pytest.raises(AirflowFailException, match="call_ref"):
            resolve_call_ref(bad)


def test_sensor_validates_at_parse_time() -> None:
    with pytest.raises(VonageStudioConfigError, match="fail_on"):
        CallStatusSensor(task_id="s", call_ref="x", fail_on=["nope"])
    with pytest.raises(VonageStudioConfigError, match="answer_window"):
        CallStatusSensor(task_id="s", call_ref="x", answer_window=-1)
    sensor = CallStatusSensor(task_id="s", call_ref="x")
    assert sensor.answer_window == timedelta(seconds=90) and sensor.fail_on == FAILURE_STATUSES
    assert sensor.poke_interval == 5 and "call_ref" in sensor.template_fields


def test_sensor_poke(store: CallStore, store_url: str) -> None:
    _placed(store, "vs-1")
    sensor = CallStatusSensor(
        task_id="s", call_ref="vs-1", fail_on=(), store_url=store_url, answer_window=3600
    )
    assert not sensor.poke({})
    _busy(store, "vs-1")
    result = sensor.poke({})
    assert result and getattr(result, "xcom_value", None) == "busy"

    failing = CallStatusSensor(task_id="s2", call_ref="vs-1", store_url=store_url)
    with pytest.raises(AirflowFailException, match="busy"):
        failing.poke({})
    unknown = CallStatusSensor(task_id="s3", call_ref="vs-none", store_url=store_url)
    with pytest.raises(AirflowFailException, match="no such call"):
        unknown.poke({})


def test_sensor_reschedule_mode(store: CallStore, store_url: str) -> None:
    from airflow_provider_vonage_studio._compat import AirflowRescheduleException

    class TI:
        def get_first_reschedule_date(self, context: Any) -> None:
            return None

    _placed(store, "vs-1")
    sensor = CallStatusSensor(
        task_id="s", call_ref="vs-1", fail_on=(), store_url=store_url, mode="reschedule", poke_interval=30
    )
    # Undecided: the worker slot is given back until the next poke.
    with pytest.raises(AirflowRescheduleException):
        sensor.execute({"ti": TI()})  # type: ignore[typeddict-item]
    _busy(store, "vs-1")
    assert sensor.execute({"ti": TI()}) == "busy"  # type: ignore[typeddict-item]


def test_sensor_soft_fail_skips_instead_of_failing(store: CallStore, store_url: str) -> None:
    from airflow.providers.common.compat.sdk import AirflowSkipException

    _placed(store, "vs-1")
    _busy(store, "vs-1")
    sensor = CallStatusSensor(task_id="s", call_ref="vs-1", store_url=store_url, soft_fail=True)
    with pytest.raises(AirflowSkipException):
        sensor.execute({})


def test_sensor_defers_only_while_undecided(store: CallStore, store_url: str) -> None:
    from airflow.providers.common.compat.sdk import TaskDeferred

    _placed(store, "vs-1")
    sensor = CallStatusSensor(
        task_id="s",
        call_ref="vs-1",
        fail_on=(),
        store_url=store_url,
        deferrable=True,
        poke_interval=2,
        timeout=600,
    )
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})
    trigger = info.value.trigger
    assert isinstance(trigger, CallStatusTrigger)
    assert trigger.call_refs == ["vs-1"] and trigger.poll_interval == 2 and trigger.fail_on == ()
    assert trigger.store_url == store_url
    assert info.value.method_name == "execute_complete"
    assert info.value.timeout == timedelta(seconds=600)

    _busy(store, "vs-1")
    assert sensor.execute({}) == "busy"  # decided: no deferral


def test_sensor_execute_complete() -> None:
    sensor = CallStatusSensor(task_id="s", call_ref="vs-1", deferrable=True)
    ok = {"status": "success", "call_ref": "vs-1", "call_status": "answered", "call_statuses": {}}
    assert sensor.execute_complete({}, ok) == "answered"
    with pytest.raises(AirflowFailException, match="busy"):
        sensor.execute_complete({}, error_event(CallFailed("ended busy", "busy"), "vs-1"))
    with pytest.raises(AirflowException, match="without an event"):
        sensor.execute_complete({}, None)


def test_outcome_module_stays_light() -> None:
    # Imported at DAG parse time by operators and sensors: no store (SQLAlchemy engines), no
    # trigger machinery, no FastAPI, no phonenumbers. (Airflow itself imports SQLAlchemy, and
    # on Airflow 3.1 phonenumbers too, through sqlalchemy_utils: only what we add counts.)
    import subprocess
    import sys

    code = (
        "import sys; import airflow; before = set(sys.modules); "
        "import airflow_provider_vonage_studio.outcome, "
        "airflow_provider_vonage_studio.sensors.vonage_studio; "
        "print(sorted(m for m in ('fastapi', 'phonenumbers', 'airflow_provider_vonage_studio.store', "
        "'airflow_provider_vonage_studio.triggers.vonage_studio') if m in set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
