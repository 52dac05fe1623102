"""The outcome check (one call, one round, the waiting loops) and CallStatusSensor's modes."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

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
from airflow_provider_vonage_studio.store import CallRecord, CallState, CallStore
from airflow_provider_vonage_studio.triggers.vonage_studio import (
    CallStatusTrigger,
)

# The autouse fixture closes the stores open_store() cached for each test.
from tests.unit.call_rows import dispose_named_stores  # noqa: F401
from tests.unit.call_rows import placed as _placed
from tests.unit.call_rows import reported as _busy

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=90)
AGENT = "agent-1"
NUMBER = "447700900123"


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


# -------------------------------------------------------------------------------- sensor


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
