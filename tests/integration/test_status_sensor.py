"""Emulator → receiver → store → sensor/trigger, over real sockets.

The emulator places the call and posts its scripted status callback to the call's
``status_url``; the callback receiver (the real FastAPI app under uvicorn) verifies the token
and records it in the store; the sensor (poke mode), the trigger (deferrable) and
``MakeCallOperator(wait_for_status=True)`` read it back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from airflow_provider_vonage_studio._compat import AirflowFailException
from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator
from airflow_provider_vonage_studio.sensors.vonage_studio import CallStatusSensor
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import Emulator
from airflow_provider_vonage_studio.testing.servers import ThreadedServer
from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger

KEY = "integration-key-4c3b2a1f"
SECRET = "integration-callback-secret-77d1"
AGENT = "agent-1"
BUSY_TO, BUSY_DIGITS = "+44 7700 900123", "447700900123"
ANSWER_TO = "+44 7700 900456"
TIMEOUT_TO = "+44 7700 900789"


@dataclass
class Stack:
    emulator: Emulator
    receiver_url: str
    store: CallStore


@pytest.fixture
def stack(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    from airflow_provider_vonage_studio.callbacks.app import create_app

    store = CallStore(store_url)
    app = create_app(store=store, secret_provider=lambda: [SECRET], outcome_view="off")
    with (
        Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=5, callback_delay=0.2) as emulator,
        ThreadedServer(app) as receiver,
    ):
        monkeypatch.setenv(
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT",
            emulator.connection_json(callback_base_url=receiver.url, callback_secret=SECRET),
        )
        # Operators open the configured store (CallStore.default()): the same database.
        monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", store_url)
        emulator.script(BUSY_DIGITS, "busy")
        emulator.script("447700900789", "timeout")
        yield Stack(emulator, receiver.url, store)
    store.dispose()


class FakeTI:
    """The slice of a task instance MakeCallOperator uses: identity and xcom_push."""

    def __init__(self, task_id: str) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = "it_dag", "manual__it", task_id, -1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def _context(task_id: str) -> Any:
    return {"ti": FakeTI(task_id)}


def _run_trigger(trigger: CallStatusTrigger) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        event = await anext(trigger.run())
        return event.payload

    return asyncio.run(asyncio.wait_for(first(), 15))


def test_busy_callback_reaches_the_poke_sensor(stack: Stack) -> None:
    call = MakeCallOperator(task_id="call", to=BUSY_TO, agent_id=AGENT).execute(_context("call"))
    (placed,) = stack.emulator.calls
    assert placed.status_url and placed.status_url.startswith(f"{stack.receiver_url}/calls/")

    sensor = CallStatusSensor(
        task_id="wait", call_ref=call["call_ref"], fail_on=(), poke_interval=0.1, answer_window=30, timeout=10
    )
    assert sensor.execute(_context("wait")) == "busy"
    # The emulator's callback went over HTTP to the receiver, which recorded it.
    # The sensor may see the row before the emulator has noted the receiver's answer.
    (attempt,) = stack.emulator.wait_for_callbacks(1)
    assert attempt.status == 200 and attempt.payload["status"] == "busy"
    record = stack.store.get_call(call["call_ref"])
    assert record is not None and record.status == "busy"
    assert record.conversation_uuid == placed.conversation_uuid
    assert record.outcome == "busy"  # the sensor's verdict, stored for the outcome view


def test_answered_after_the_window_through_the_trigger(stack: Stack) -> None:
    from airflow.providers.common.compat.sdk import TaskDeferred

    call = MakeCallOperator(task_id="call", to=ANSWER_TO, agent_id=AGENT).execute(_context("call"))
    started = time.monotonic()
    sensor = CallStatusSensor(
        task_id="wait", call_ref=call["call_ref"], answer_window=1.0, poke_interval=0.1, deferrable=True
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(_context("wait"))
    trigger = deferred.value.trigger
    assert isinstance(trigger, CallStatusTrigger)
    # The trigger is rebuilt from its serialised form, as the triggerer would.
    _classpath, kwargs = trigger.serialize()
    event = _run_trigger(CallStatusTrigger(**kwargs))
    assert event["status"] == "success" and event["call_status"] == "answered"
    assert time.monotonic() - started >= 0.9  # not before the window has passed
    assert sensor.execute_complete(_context("wait"), event) == "answered"
    assert stack.emulator.callbacks == []  # answered calls post nothing
    # Written by the resumed sensor in the worker (never by the trigger).
    record = stack.store.get_call(call["call_ref"])
    assert record is not None and record.outcome == "answered" and record.outcome_at is not None


def test_make_call_waits_in_process_and_fails_on_timeout(stack: Stack) -> None:
    op = MakeCallOperator(
        task_id="call",
        to=TIMEOUT_TO,
        agent_id=AGENT,
        wait_for_status=True,
        poke_interval=0.1,
        deferrable=False,
    )
    context = _context("call")
    with pytest.raises(AirflowFailException, match="timeout"):
        op.execute(context)
    # The call was placed once and its result is readable although the task failed.
    assert len(stack.emulator.calls) == 1
    assert context["ti"].xcoms["call"]["call_ref"]
    assert context["ti"].xcoms["call"]["to"] != "447700900789"  # redacted
    # A status in fail_on fails the task, and is still stored as the call's verdict.
    assert stack.store.get_call(context["ti"].xcoms["call"]["call_ref"]).outcome == "timeout"  # type: ignore[union-attr]


def test_make_call_defers_and_resumes_without_dialing_again(stack: Stack) -> None:
    from airflow.providers.common.compat.sdk import TaskDeferred

    op = MakeCallOperator(
        task_id="call",
        to=BUSY_TO,
        agent_id=AGENT,
        wait_for_status=True,
        fail_on=(),
        poke_interval=0.1,
        deferrable=True,
    )
    context = _context("call")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    assert deferred.value.method_name == "execute_complete"
    kwargs = deferred.value.kwargs or {}
    call = kwargs["call"]
    assert context["ti"].xcoms["call"] == call
    event = _run_trigger(deferred.value.trigger)
    result = op.execute_complete(context, event, **kwargs)
    assert result == {**call, "status": "busy", "outcome_source": "callback"}
    assert stack.store.get_call(call["call_ref"]).outcome == "busy"  # type: ignore[union-attr]
    assert len(stack.emulator.calls) == 1

    # A task retry finds the placed call in the ledger: it waits again, it does not dial again.
    with pytest.raises(TaskDeferred):
        op.execute(_context("call"))
    assert len(stack.emulator.calls) == 1


def test_make_call_answered_in_process(stack: Stack) -> None:
    op = MakeCallOperator(
        task_id="call",
        to=ANSWER_TO,
        agent_id=AGENT,
        wait_for_status=True,
        answer_window=timedelta(seconds=0.5),
        poke_interval=0.1,
        deferrable=False,
    )
    result = op.execute(_context("call"))
    assert result["status"] == "answered" and result["call_ref"]
    assert stack.store.get_call(result["call_ref"]).outcome == "answered"  # type: ignore[union-attr]


def test_sensor_failing_on_busy_stores_the_verdict(stack: Stack) -> None:
    call = MakeCallOperator(task_id="call", to=BUSY_TO, agent_id=AGENT).execute(_context("call"))
    sensor = CallStatusSensor(
        task_id="wait", call_ref=call["call_ref"], poke_interval=0.1, answer_window=30, timeout=10
    )
    with pytest.raises(AirflowFailException, match="busy"):
        sensor.execute(_context("wait"))
    assert stack.store.get_call(call["call_ref"]).outcome == "busy"  # type: ignore[union-attr]


def test_waiting_without_a_status_url_is_refused_before_dialing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", stack.emulator.connection_json())
    op = MakeCallOperator(task_id="call", to=BUSY_TO, agent_id=AGENT, wait_for_status=True, deferrable=False)
    with pytest.raises(AirflowFailException, match="callback_base_url"):
        op.execute(_context("call"))
    assert stack.emulator.requests == []
