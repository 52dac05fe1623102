"""The Insights side over real HTTP against the emulator: the hook, CallResultSensor (poke) and
CallResultTrigger (asyncio, as the triggerer runs it)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from airflow_provider_vonage_studio._compat import AirflowException, AirflowFailException
from airflow_provider_vonage_studio.exceptions import (
    SessionNotFound,
    VonageStudioAuthError,
    VonageStudioConfigError,
    VonageStudioError,
)
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.sensors.vonage_studio import CallResultSensor
from airflow_provider_vonage_studio.testing.emulator import Emulator, EmulatorConfigError
from airflow_provider_vonage_studio.triggers.vonage_studio import CallResultTrigger

KEY = "insights-key-3c2b1a"
TO = "447700900123"
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def shared_emulator():
    with Emulator(api_keys=(KEY,), agents=("agent-1",), calls_per_second=1000, insights_index_delay=0) as emu:
        yield emu


@pytest.fixture
def emulator(shared_emulator, monkeypatch):
    shared_emulator.reset()
    shared_emulator.insights_shape = "default"
    shared_emulator.insights_wrapper = None
    shared_emulator.insights_index_delay = 0
    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", shared_emulator.connection_json(timeout=5, calls_per_second=5)
    )
    return shared_emulator


@pytest.fixture
def store_url(tmp_path):
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
def store(store_url):
    from airflow_provider_vonage_studio.outcome import open_store

    # The sensor opens the store by URL; share that instance so both see the same rows.
    return open_store(store_url)


def _hook(**kwargs) -> VonageStudioHook:
    return VonageStudioHook(pace=False, retry_backoff=0.01, **kwargs)


def _insights_requests(emulator, path="/insights/sessions"):
    return [r for r in emulator.requests if r.path == path]


# --------------------------------------------------------------------------- hook: shapes and errors


@pytest.mark.parametrize("shape", ["default", "list", "items"])
def test_every_emulator_shape_parses(emulator, shape):
    emulator.insights_shape = shape
    session = emulator.add_session(session_start_time=T0, parameters={"CONFIRMED": "yes", "SLOT": "2"})
    hook = _hook()
    assert hook.get_session_parameters(session["id"], session["session_start_time"]) == {
        "CONFIRMED": "yes",
        "SLOT": "2",
    }
    found = list(hook.search_sessions(T0 - timedelta(hours=1), T0 + timedelta(hours=1)))
    assert found == [session]


@pytest.mark.parametrize(
    ("shape", "wrapper"),
    [
        pytest.param("metadata", None, id="parameters-beside-metadata"),
        pytest.param("default", "data", id="data-wrapper"),
        pytest.param("metadata", "result", id="metadata-in-result"),
        pytest.param("items", ("data", "result"), id="two-wrappers"),
        pytest.param("list", "data", id="bare-lists-in-data"),
        pytest.param("metadata", ("a", "b", "c"), id="three-wrappers"),
    ],
)
def test_wrapped_and_metadata_bodies_parse_over_http(emulator, shape, wrapper):
    emulator.insights_shape = shape
    emulator.insights_wrapper = wrapper
    added = [
        emulator.add_session(session_start_time=T0 + timedelta(minutes=i), parameters={"CONFIRMED": str(i)})
        for i in range(5)
    ]
    hook = _hook()
    assert hook.get_session_parameters(added[3]["id"], added[3]["session_start_time"]) == {"CONFIRMED": "3"}
    # Pages of 2 over 5 sessions: the wrapped total (where the shape has one) drives paging.
    found = list(
        hook.search_sessions(T0, T0 + timedelta(hours=1), page_size=2, sort_by="session_start_time:asc")
    )
    assert found == added
    assert len(_insights_requests(emulator)) == 3
    # What went over the wire really was wrapped.
    raw = requests.get(
        f"{emulator.url}/insights/sessions/{added[0]['id']}/parameters",
        params={"session_start_time": "2026-03-01"},
        headers={"X-Vgai-Key": KEY},
        timeout=5,
    ).json()
    for key in emulator.insights_wrapper:
        assert list(raw) == [key]
        raw = raw[key]
    if shape == "metadata":
        assert raw["session_id"] == added[0]["id"] and raw["parameters"] == [
            {"name": "CONFIRMED", "value": "0"}
        ]


def test_bodies_wrapped_too_deep_are_refused_over_http_by_keys_only(emulator):
    emulator.insights_wrapper = ("a", "b", "c", "d")
    session = emulator.add_session(session_start_time=T0, destination=TO, parameters={"NAME": "Diane Miller"})
    hook = _hook()
    with pytest.raises(VonageStudioError, match="unexpected shape of session parameters") as info:
        hook.get_session_parameters(session["id"], T0)
    assert "inside a.b.c: object with keys d: dict" in str(info.value)
    assert "Diane" not in str(info.value)
    with pytest.raises(VonageStudioError, match="unexpected shape of session search results") as info:
        list(hook.search_sessions(T0 - timedelta(hours=1), T0 + timedelta(hours=1)))
    assert TO not in str(info.value) and "Diane" not in str(info.value)


@pytest.mark.parametrize("wrapper", ["", ["data", ""], [1], {"data": 1}, 7])
def test_emulator_refuses_a_malformed_wrapper(wrapper):
    with pytest.raises(EmulatorConfigError, match="insights_wrapper"):
        Emulator(insights_wrapper=wrapper)


def test_emulator_cli_refuses_a_malformed_wrapper(capsys):
    from airflow_provider_vonage_studio.testing.emulator import main

    with pytest.raises(SystemExit) as info:
        main(["--port", "0", "--insights-wrapper", "data,"])
    assert info.value.code == 2
    assert "insights_wrapper must be a non-empty key" in capsys.readouterr().err


def test_placed_call_is_404_until_indexed_then_readable(emulator):
    emulator.insights_index_delay = 0.3
    emulator.script(TO, "answered", {"CONFIRMED": "yes"})
    hook = _hook()
    call = hook.make_call(TO, "agent-1", session_parameters={"CALLER_NAME": "Diane"})
    with pytest.raises(SessionNotFound) as info:
        hook.get_session_parameters(call.session_id, call.session_start_time)
    assert info.value.status == 404
    time.sleep(0.35)
    assert hook.get_session_parameters(call.session_id, call.session_start_time.date()) == {
        "CALLER_NAME": "Diane",
        "CONFIRMED": "yes",
    }


def test_bad_key_is_401(emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json(key="wrong", calls_per_second=5)
    )
    session = emulator.add_session(session_start_time=T0)
    hook = _hook()
    with pytest.raises(VonageStudioAuthError, match="Not Authorised"):
        hook.get_session_parameters(session["id"], T0)
    with pytest.raises(VonageStudioAuthError, match="Not Authorised"):
        list(hook.search_sessions(T0, T0 + timedelta(days=1)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"filter_by": {"bool": {"sometimes": []}}}, "filter_by"),
        ({"sort_by": "session_start_time:sideways"}, "sort_by"),
    ],
)
def test_parameters_the_api_refuses_are_401(emulator, kwargs, match):
    with pytest.raises(VonageStudioAuthError, match=match) as info:
        list(_hook().search_sessions(T0, T0 + timedelta(days=1), **kwargs))
    assert info.value.status == 401
    assert len(_insights_requests(emulator)) == 1  # not retried


def test_unknown_session_is_session_not_found(emulator):
    with pytest.raises(SessionNotFound, match="Session not found"):
        _hook().get_session_parameters("00000000-0000-4000-8000-000000000000", "2026-03-01")


def test_read_timeout_on_a_get_is_retried(emulator):
    session = emulator.add_session(session_start_time=T0, parameters={"CONFIRMED": "no"})
    emulator.inject("timeout", path="/insights/sessions/", delay=1.5)
    hook = _hook(timeout=0.5)
    assert hook.get_session_parameters(session["id"], T0) == {"CONFIRMED": "no"}
    statuses = [r.fault for r in emulator.requests]
    assert statuses == ["timeout", None]


# --------------------------------------------------------------------------- hook: pages and the 60-day rule


def test_pagination_over_three_pages(emulator):
    added = [emulator.add_session(session_start_time=T0 + timedelta(minutes=i)) for i in range(250)]
    found = list(_hook().search_sessions(T0, T0 + timedelta(days=1), sort_by="session_start_time:asc"))
    assert [s["id"] for s in found] == [s["id"] for s in added]
    pages = [r.query for r in _insights_requests(emulator)]
    assert len(pages) == 3
    assert all(f"page_number={n}" in q and "page_size=100" in q for n, q in enumerate(pages))


def test_over_60_days_is_refused_locally_or_split(emulator):
    hook = _hook()
    end = T0 + timedelta(days=130)
    with pytest.raises(VonageStudioConfigError, match="60 days"):
        hook.search_sessions(T0, end)
    assert emulator.requests == []
    # Sessions on both inner boundaries, at the ends and in between.
    at = [T0, T0 + timedelta(days=1), T0 + timedelta(days=60), T0 + timedelta(days=90)]
    at += [T0 + timedelta(days=120), end]
    added = [emulator.add_session(session_start_time=when) for when in at]
    found = list(hook.search_sessions(T0, end, split_range=True, sort_by="session_start_time:asc"))
    assert [s["id"] for s in found] == [s["id"] for s in added]  # each exactly once, in order
    # The emulator refuses windows over 60 days with 401: every request was accepted.
    assert [r.status for r in _insights_requests(emulator)] == [200, 200, 200]
    # Half-open: the session at `end` is left out; projection still works across windows.
    found = list(
        hook.search_sessions(T0, end, split_range=True, include_to_date=False, project_fields=["id"])
    )
    assert found == [{"id": s["id"]} for s in added[:-1]]


# --------------------------------------------------------------------------- CallResultSensor (poke)


def _place(emulator, store, outcome="answered", parameters=None, call_ref="vs-insights-test-ref"):
    emulator.script(TO, outcome, parameters)
    hook = _hook(store=store)
    return hook.make_call(TO, "agent-1", call_ref=call_ref, session_parameters={"CALLER_NAME": "Diane"})


def _poke(sensor):
    result = sensor.poke({})
    return result.xcom_value if hasattr(result, "xcom_value") else result


def test_sensor_waits_for_indexing_and_required_parameters(emulator, store, store_url):
    emulator.insights_index_delay = 0.2
    call = _place(emulator, store)
    sensor = CallResultSensor(
        task_id="read",
        call_ref={"call_ref": call.call_ref},
        required_parameters="CONFIRMED",
        store_url=store_url,
    )
    assert _poke(sensor) is False  # 404: not indexed yet
    time.sleep(0.25)
    assert _poke(sensor) is False  # readable, but CONFIRMED is not there yet
    # The conversation goes on: the agent sets CONFIRMED (the emulator replaces the session).
    emulator.add_session(
        id=call.session_id,
        session_start_time=call.session_start_time,
        parameters={"CALLER_NAME": "Diane", "CONFIRMED": "yes"},
    )
    assert _poke(sensor) == {"CALLER_NAME": "Diane", "CONFIRMED": "yes"}
    assert store.get_call(call.call_ref).parameters == {"CALLER_NAME": "Diane", "CONFIRMED": "yes"}


def test_sensor_by_session_id(emulator):
    session = emulator.add_session(session_start_time=T0, parameters={"CONFIRMED": "no"})
    sensor = CallResultSensor(task_id="read", session_id=session["id"], session_start_time="2026-03-01")
    assert _poke(sensor) == {"CONFIRMED": "no"}
    missing = CallResultSensor(task_id="read", session_id="nope", session_start_time=T0)
    assert _poke(missing) is False


def test_failed_call_ends_the_sensor_at_once(emulator, store, store_url):
    call = _place(emulator, store, outcome="busy")
    # What the callback receiver does when AI Studio posts the failure.
    store.record_status(
        call.call_ref,
        status="busy",
        conversation_uuid="CON-1",
        timestamp=datetime.now(timezone.utc),
        payload={},
    )
    failing = CallResultSensor(
        task_id="read", call_ref=call.call_ref, required_parameters=["CONFIRMED"], store_url=store_url
    )
    with pytest.raises(AirflowFailException, match="busy"):
        failing.poke({})
    # The failure is stored as the call's verdict, for the outcome view.
    assert store.get_call(call.call_ref).outcome == "busy"
    returning = CallResultSensor(
        task_id="read",
        call_ref=call.call_ref,
        required_parameters=["CONFIRMED"],
        fail_on=(),
        store_url=store_url,
    )
    assert _poke(returning) == {"status": "busy"}
    # The store was read, Insights never asked: a failed call has no parameters to wait for.
    assert _insights_requests(emulator, f"/insights/sessions/{call.session_id}/parameters") == []


def test_unknown_call_ref_is_a_clear_failure(emulator, store_url):
    sensor = CallResultSensor(task_id="read", call_ref="vs-0000000000000000", store_url=store_url)
    with pytest.raises(AirflowFailException, match="no such call in the call store"):
        sensor.poke({})


def test_arguments_are_checked_at_parse_time():
    with pytest.raises(VonageStudioConfigError, match="call_ref"):
        CallResultSensor(task_id="read")
    with pytest.raises(VonageStudioConfigError, match="not both"):
        CallResultSensor(task_id="read", call_ref="x", session_id="y", session_start_time=T0)
    with pytest.raises(VonageStudioConfigError, match="fail_on"):
        CallResultSensor(task_id="read", call_ref="x", fail_on=("answered",))
    with pytest.raises(VonageStudioConfigError, match="required_parameters"):
        CallResultSensor(task_id="read", call_ref="x", required_parameters=["CONFIRMED", ""])


# --------------------------------------------------------------------------- CallResultTrigger


async def _run_with_ticker(trigger, tick=0.02):
    """Run the trigger to its event while a ticker measures the event loop's longest stall."""
    stalls = [0.0]
    done = asyncio.Event()

    async def ticker():
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(tick)
            now = time.monotonic()
            stalls[0] = max(stalls[0], now - last - tick)
            last = now

    task = asyncio.create_task(ticker())
    events = [event async for event in trigger.run()]
    done.set()
    await task
    return events, stalls[0]


def test_trigger_serialises_and_waits_without_blocking_the_loop(emulator, store, store_url):
    emulator.insights_index_delay = 0.3
    call = _place(emulator, store, parameters={"CONFIRMED": "yes"})
    # The first Insights request is held back for 1.2 s: were it made on the loop, it would stall.
    emulator.inject("timeout", path="/insights/sessions/", delay=1.2)
    trigger = CallResultTrigger(
        call_ref=call.call_ref, required_parameters=["CONFIRMED"], poll_interval=0.1, store_url=store_url
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_vonage_studio.triggers.vonage_studio.CallResultTrigger"
    rebuilt = CallResultTrigger(**json.loads(json.dumps(kwargs)))
    events, stall = asyncio.run(_run_with_ticker(rebuilt))
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "success"
    assert payload["parameters"] == {"CALLER_NAME": "Diane", "CONFIRMED": "yes"}
    assert payload["call_ref"] == call.call_ref and payload["call_status"] is None
    assert stall < 0.6, f"the event loop stalled for {stall:.2f}s"
    assert len(_insights_requests(emulator, f"/insights/sessions/{call.session_id}/parameters")) >= 2


def test_trigger_failure_statuses(emulator, store, store_url):
    call = _place(emulator, store, outcome="timeout")
    store.record_status(
        call.call_ref,
        status="timeout",
        conversation_uuid="CON-2",
        timestamp=datetime.now(timezone.utc),
        payload={},
    )
    failing = CallResultTrigger(call_ref=call.call_ref, poll_interval=0.1, store_url=store_url)
    (event,) = asyncio.run(_run_with_ticker(failing))[0]
    assert event.payload["status"] == "error"
    assert event.payload["error_type"] == "CallFailed" and event.payload["call_status"] == "timeout"
    assert event.payload["retryable"] is False
    # Only the worker that resumes writes the verdict; the trigger never does.
    assert store.get_call(call.call_ref).outcome is None
    sensor = CallResultSensor(task_id="read", call_ref=call.call_ref, store_url=store_url)
    with pytest.raises(AirflowFailException, match="timeout"):
        sensor.execute_complete({}, event.payload)
    assert store.get_call(call.call_ref).outcome == "timeout"
    returning = CallResultTrigger(call_ref=call.call_ref, fail_on=(), poll_interval=0.1, store_url=store_url)
    (event,) = asyncio.run(_run_with_ticker(returning))[0]
    assert event.payload == {
        "status": "success",
        "call_ref": call.call_ref,
        "session_id": call.session_id,
        "parameters": None,
        "call_status": "timeout",
    }


def test_trigger_gives_up_on_a_refused_key(emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json(key="wrong", calls_per_second=5)
    )
    trigger = CallResultTrigger(session_id="s-1", session_start_time="2026-03-01", poll_interval=0.1)
    (event,) = asyncio.run(_run_with_ticker(trigger))[0]
    assert event.payload["status"] == "error"
    assert event.payload["error_type"] == "VonageStudioAuthError"
    assert "Not Authorised" in event.payload["message"] and event.payload["retryable"] is False
    # Back in the worker: a final failure, without task retries ...
    sensor = CallResultSensor(task_id="read", session_id="s-1", session_start_time="2026-03-01")
    with pytest.raises(AirflowFailException, match="Not Authorised"):
        sensor.execute_complete({}, event.payload)
    # ... whereas an outage the trigger could not ride out leaves task retries to try again.
    outage = {**event.payload, "message": "could not reach the API", "retryable": True}
    with pytest.raises(AirflowException, match="could not reach") as info:
        sensor.execute_complete({}, outage)
    assert not isinstance(info.value, AirflowFailException)
