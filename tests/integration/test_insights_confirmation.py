"""CallStatusSensor(confirm_answered="insights") over real HTTP: the emulator places the call and
indexes its session after a scripted delay (404 until then); the sensor reads it through the
hook before it accepts an inferred ``answered``. Webhook off, no failure callback: the only
other source is the inference. SQLite and PostgreSQL stores (the ``store_url`` fixture)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from airflow_provider_vonage_studio._compat import AirflowFailException
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.sensors.vonage_studio import CallStatusSensor
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import Emulator
from airflow_provider_vonage_studio.triggers.vonage_studio import CallResultTrigger, CallStatusTrigger

KEY = "confirm-key-9a8b7c"
AGENT = "agent-1"
TO = "447700900123"
WINDOW = 0.3  # answer window (s): short, the inference is not what is under test


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=1000, insights_index_delay=0) as emu:
        yield emu


@pytest.fixture
def emulator(
    shared_emulator: Emulator, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Emulator]:
    shared_emulator.reset()
    # No callback_base_url, no end_call_webhook: nothing but Insights can confirm an answer.
    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", shared_emulator.connection_json(timeout=5, calls_per_second=5)
    )
    # The sensor, the hooks' Insights pacing and the trigger all open this store.
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", store_url)
    yield shared_emulator
    shared_emulator.reset()


@pytest.fixture
def calls(store_url: str) -> Iterator[CallStore]:
    from airflow_provider_vonage_studio.outcome import open_store

    yield open_store(store_url)


class FakeTI:
    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def _place(emulator: Emulator, store: CallStore, ref: str, *, index_delay: float) -> Any:
    emulator.script(TO, "answered", {"CONFIRMED": "yes"}, index_delay=index_delay)
    hook = VonageStudioHook(pace=False, retry_backoff=0.01, store=store)
    return hook.make_call(TO, AGENT, call_ref=ref, session_parameters={"CALLER_NAME": "Diane"})


def _sensor(ref: str, store_url: str, **kwargs: Any) -> CallStatusSensor:
    kwargs.setdefault("answer_window", WINDOW)
    return CallStatusSensor(task_id="wait", call_ref=ref, store_url=store_url, poke_interval=0.05, **kwargs)


def _parameter_reads(emulator: Emulator, session_id: str) -> list[int]:
    path = f"/insights/sessions/{session_id}/parameters"
    return [r.status for r in emulator.requests if r.path == path]


def test_inferred_without_the_option_insights_with_it(
    emulator: Emulator, calls: CallStore, store_url: str
) -> None:
    plain = _place(emulator, calls, "vs-confirm-plain", index_delay=0)
    ti = FakeTI()
    assert _sensor(plain.call_ref, store_url, timeout=20).execute({"ti": ti}) == "answered"
    assert ti.xcoms["outcome_source"] == "inferred"
    assert _parameter_reads(emulator, plain.session_id) == []  # no option: Insights never asked

    # Indexed 0.8 s after the start: 404 for a while past the answer window, then readable.
    confirmed = _place(emulator, calls, "vs-confirm-insights", index_delay=0.8)
    ti = FakeTI()
    sensor = _sensor(
        confirmed.call_ref, store_url, confirm_answered="insights", require_confirmed=True, timeout=20
    )
    assert sensor.execute({"ti": ti}) == "answered"
    assert ti.xcoms["outcome_source"] == "insights"
    reads = _parameter_reads(emulator, confirmed.session_id)
    assert reads[0] == 404 and reads[-1] == 200
    record = calls.get_call(confirmed.call_ref)
    assert record is not None
    assert (record.outcome, record.outcome_source) == ("answered", "insights")
    assert record.parameters == {"CALLER_NAME": "Diane", "CONFIRMED": "yes"}
    assert calls.get_call(plain.call_ref).outcome_source == "inferred"  # type: ignore[union-attr]


def test_each_reschedule_poke_starts_afresh_and_stores_nothing_while_waiting(
    emulator: Emulator, calls: CallStore, store_url: str
) -> None:
    call = _place(emulator, calls, "vs-confirm-reschedule", index_delay=60)

    def poke() -> Any:
        # A new sensor per poke, as a rescheduled task instance is a new process.
        return _sensor(call.call_ref, store_url, confirm_answered="insights", mode="reschedule").poke({})

    assert poke() is False  # inside the answer window
    time.sleep(WINDOW + 0.05)
    assert poke() is False  # inferred, but Insights answers 404: keep waiting
    assert _parameter_reads(emulator, call.session_id) == [404]
    assert calls.get_call(call.call_ref).outcome is None  # type: ignore[union-attr]  # no verdict yet
    emulator.add_session(
        id=call.session_id, session_start_time=call.session_start_time, parameters={"OK": "1"}
    )
    done = poke()
    assert done.is_done and done.xcom_value == "answered"
    assert calls.get_call(call.call_ref).outcome_source == "insights"  # type: ignore[union-attr]


def test_an_index_delay_past_the_bound_keeps_inferred(
    emulator: Emulator, calls: CallStore, store_url: str
) -> None:
    call = _place(emulator, calls, "vs-confirm-bound", index_delay=60)
    ti = FakeTI()
    sensor = _sensor(call.call_ref, store_url, confirm_answered="insights", confirm_timeout=0.4, timeout=20)
    assert sensor.execute({"ti": ti}) == "answered"
    assert ti.xcoms["outcome_source"] == "inferred"
    reads = _parameter_reads(emulator, call.session_id)
    assert reads and set(reads) == {404}  # asked until the bound, never found
    assert calls.get_call(call.call_ref).outcome_source == "inferred"  # type: ignore[union-attr]


def test_the_bound_passed_with_require_confirmed_fails(
    emulator: Emulator, calls: CallStore, store_url: str
) -> None:
    call = _place(emulator, calls, "vs-confirm-required", index_delay=60)
    sensor = _sensor(
        call.call_ref,
        store_url,
        confirm_answered="insights",
        confirm_timeout=timedelta(seconds=0.3),
        require_confirmed=True,
        timeout=20,
    )
    with pytest.raises(AirflowFailException, match="only inferred"):
        sensor.execute({"ti": FakeTI()})
    assert _parameter_reads(emulator, call.session_id)


# --------------------------------------------------------------------------- deferrable


def _first_event(trigger: Any) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        event = await anext(trigger.run())
        return event.payload

    return asyncio.run(asyncio.wait_for(first(), 20))


def _defer(call: Any) -> Any:
    from airflow.providers.common.compat.sdk import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        call()
    return deferred.value


def test_deferrable_defers_a_second_time_to_the_result_trigger(
    emulator: Emulator, calls: CallStore, store_url: str
) -> None:
    call = _place(emulator, calls, "vs-confirm-deferred", index_delay=1.0)
    sensor = _sensor(call.call_ref, store_url, confirm_answered="insights", deferrable=True)
    ti = FakeTI()
    first = _defer(lambda: sensor.execute({"ti": ti}))
    assert isinstance(first.trigger, CallStatusTrigger)
    event = _first_event(CallStatusTrigger(**first.trigger.serialize()[1]))
    assert event["call_status"] == "answered"
    # The inferred answer is not accepted: the worker reads once (404), then defers again.
    second = _defer(lambda: sensor.execute_complete({"ti": ti}, event))
    assert isinstance(second.trigger, CallResultTrigger) and second.method_name == "execute_confirmed"
    assert second.timeout is not None and second.timeout <= sensor.confirm_timeout
    assert calls.get_call(call.call_ref).outcome is None  # type: ignore[union-attr]
    result = _first_event(CallResultTrigger(**second.trigger.serialize()[1]))
    assert sensor.execute_confirmed({"ti": ti}, result) == "answered"
    assert ti.xcoms["outcome_source"] == "insights"
    record = calls.get_call(call.call_ref)
    assert record is not None and record.outcome_source == "insights"
    assert record.parameters == {"CALLER_NAME": "Diane", "CONFIRMED": "yes"}


@pytest.mark.parametrize("require_confirmed", [False, True])
def test_deferrable_bound_reached_is_a_trigger_timeout_that_keeps_inferred(
    emulator: Emulator, calls: CallStore, store_url: str, require_confirmed: bool
) -> None:
    call = _place(emulator, calls, f"vs-confirm-timeout-{require_confirmed}", index_delay=60)
    sensor = _sensor(
        call.call_ref,
        store_url,
        confirm_answered="insights",
        confirm_timeout=0.5,
        require_confirmed=require_confirmed,
        deferrable=True,
    )
    ti = FakeTI()
    first = _defer(lambda: sensor.execute({"ti": ti}))
    event = _first_event(first.trigger)
    second = _defer(lambda: sensor.execute_complete({"ti": ti}, event))
    assert second.timeout is not None
    time.sleep(second.timeout.total_seconds() + 0.05)
    # What Airflow resumes a task with when its trigger timed out.
    resume = lambda: sensor.resume_execution("__fail__", {"error": "Trigger timeout"}, {"ti": ti})  # noqa: E731
    if require_confirmed:
        with pytest.raises(AirflowFailException, match="only inferred"):
            resume()
    else:
        assert resume() == "answered"
        assert ti.xcoms["outcome_source"] == "inferred"
    assert calls.get_call(call.call_ref).outcome_source == "inferred"  # type: ignore[union-attr]


def test_without_the_option_a_trigger_timeout_stays_a_timeout(store_url: str) -> None:
    from airflow.providers.common.compat.sdk import AirflowSensorTimeout

    sensor = _sensor("vs-none", store_url, deferrable=True)
    with pytest.raises(AirflowSensorTimeout):
        sensor.resume_execution("__fail__", {"error": "Trigger timeout"}, {})


def test_the_options_are_checked_at_parse_time() -> None:
    with pytest.raises(VonageStudioConfigError, match="confirm_answered"):
        CallStatusSensor(task_id="wait", call_ref="x", confirm_answered="end_call")
    with pytest.raises(VonageStudioConfigError, match="confirm_answered"):
        CallStatusSensor(task_id="wait", call_ref="x", confirm_answered=True)  # type: ignore[arg-type]
    with pytest.raises(VonageStudioConfigError, match="confirm_timeout"):
        CallStatusSensor(task_id="wait", call_ref="x", confirm_answered="insights", confirm_timeout=-1)


# ------------------------------------------------------------------ MakeCallOperator(wait_for_status)


class OperatorTI(FakeTI):
    def __init__(self, task_id: str) -> None:
        super().__init__()
        self.dag_id, self.run_id, self.task_id, self.map_index = "confirm_dag", "manual__confirm", task_id, -1

    def xcom_pull(self, task_ids: str, key: str) -> Any:
        return self.xcoms.get(key)


def _operator(task_id: str, **kwargs: Any) -> Any:
    from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator

    return MakeCallOperator(
        task_id=task_id,
        to=TO,
        agent_id=AGENT,
        # Answered calls post nothing there; only the presence of a status_url matters here.
        status_url="http://127.0.0.1:9/calls/unused/status",
        wait_for_status=True,
        answer_window=WINDOW,
        poke_interval=0.05,
        **{"confirm_answered": "insights", **kwargs},
    )


def test_make_call_waiting_in_process_confirms_through_insights(emulator: Emulator, calls: CallStore) -> None:
    emulator.script(TO, "answered", {"CONFIRMED": "yes"}, index_delay=0.8)
    result = _operator("call", deferrable=False).execute({"ti": OperatorTI("call")})
    assert (result["status"], result["outcome_source"]) == ("answered", "insights")
    record = calls.get_call(result["call_ref"])
    assert (
        record is not None and record.outcome_source == "insights" and record.parameters["CONFIRMED"] == "yes"
    )
    reads = _parameter_reads(emulator, record.session_id or "")
    assert reads[0] == 404 and reads[-1] == 200


def test_make_call_deferred_confirms_or_keeps_inferred_at_the_bound(
    emulator: Emulator, calls: CallStore
) -> None:
    emulator.script(TO, "answered", {"CONFIRMED": "yes"}, index_delay=60)
    op = _operator("call", deferrable=True, confirm_timeout=0.5)
    ti = OperatorTI("call")
    first = _defer(lambda: op.execute({"ti": ti}))
    event = _first_event(first.trigger)
    second = _defer(lambda: op.execute_complete({"ti": ti}, event, **(first.kwargs or {})))
    assert isinstance(second.trigger, CallResultTrigger) and second.method_name == "execute_confirmed"
    call = (second.kwargs or {})["call"]
    assert calls.get_call(call["call_ref"]).outcome is None  # type: ignore[union-attr]
    # Indexed now: the result trigger reads it and the resumed task confirms.
    emulator.add_session(
        id=call["session_id"], session_start_time=call["session_start_time"], parameters={"A": "1"}
    )
    result = op.execute_confirmed({"ti": ti}, _first_event(second.trigger), call=call)
    assert result == {**call, "status": "answered", "outcome_source": "insights"}
    assert len(emulator.calls) == 1  # waiting never dials

    # Another task instance whose session is never indexed: the deferral times out at the bound.
    other = _operator("call_2", deferrable=True, confirm_timeout=0.4)
    ti2 = OperatorTI("call_2")
    first = _defer(lambda: other.execute({"ti": ti2}))
    second = _defer(
        lambda: other.execute_complete({"ti": ti2}, _first_event(first.trigger), **(first.kwargs or {}))
    )
    time.sleep(second.timeout.total_seconds() + 0.05)
    result = other.resume_execution("__fail__", {"error": "Trigger timeout"}, {"ti": ti2})
    assert (result["status"], result["outcome_source"]) == ("answered", "inferred")
    assert result["call_ref"] == ti2.xcoms["call"]["call_ref"]
    assert calls.get_call(result["call_ref"]).outcome_source == "inferred"  # type: ignore[union-attr]


def test_make_call_refuses_a_bad_confirm_option() -> None:  # no store, no emulator
    with pytest.raises(VonageStudioConfigError, match="confirm_answered"):
        _operator("call", confirm_answered="webhook")
