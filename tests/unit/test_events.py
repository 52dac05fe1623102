"""Every event a trigger can yield is read by ``events.resume`` into the right result or task
failure. The triggers run for real (asyncio, as the triggerer runs them) against a SQLite
store in tmp_path and the PostgreSQL store (the ``store`` / ``store_url`` fixtures), and the
Insights side against the emulator over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_vonage_studio._compat import AirflowException, AirflowFailException
from airflow_provider_vonage_studio.events import (
    error_event,
    error_from_event,
    resume,
    status_event,
    store_outage_event,
)
from airflow_provider_vonage_studio.exceptions import CallFailed, UnknownCall
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator
from airflow_provider_vonage_studio.outcome import ANSWERED
from airflow_provider_vonage_studio.sensors.vonage_studio import CallResultSensor, CallStatusSensor
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import Emulator
from airflow_provider_vonage_studio.triggers.vonage_studio import CallResultTrigger, CallStatusTrigger

# The autouse fixture closes the stores open_store() cached for each test.
from tests.unit.call_rows import AGENT, NUMBER, dispose_named_stores, placed, reported  # noqa: F401

KEY = "events-key-9d8c7b6a"
# Nothing listens on port 1: connecting is refused at once, every round (a store outage).
UNREACHABLE_STORE = "postgresql+psycopg://postgres@127.0.0.1:1/test"


def _run(trigger: Any, timeout: float = 20) -> dict[str, Any]:
    """The trigger's one event (its payload), run to the end on a fresh event loop."""

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    events = asyncio.run(asyncio.wait_for(collect(), timeout))
    assert len(events) == 1, events
    return events[0]


class Verdicts:
    """Collects what resume() hands to on_verdict."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, call_ref: str, status: str) -> None:
        self.seen.append((call_ref, status))


def _status_trigger(store_url: str, **kwargs: Any) -> CallStatusTrigger:
    kwargs.setdefault("poll_interval", 0.05)
    return CallStatusTrigger(store_url=store_url, **kwargs)


# ------------------------------------------------------------------ CallStatusTrigger, one call


def test_success_for_a_reported_status_returns_it_and_its_verdict(store: CallStore, store_url: str) -> None:
    placed(store, "vs-busy")
    reported(store, "vs-busy")
    event = _run(_status_trigger(store_url, call_ref="vs-busy", fail_on=()))
    verdicts = Verdicts()
    payload = resume(event, "call_status", on_verdict=verdicts)
    assert payload["call_ref"] == "vs-busy" and payload["call_status"] == "busy"
    assert verdicts.seen == [("vs-busy", "busy")]


def test_success_for_an_answered_call(store: CallStore, store_url: str) -> None:
    placed(store, "vs-ok")
    event = _run(_status_trigger(store_url, call_ref="vs-ok", answer_window=0.2))
    assert resume(event, "call_status")["call_status"] == ANSWERED
    # The sensor and the operator read it the same way.
    sensor = CallStatusSensor(task_id="s", call_ref="vs-ok", store_url=store_url)
    assert sensor.execute_complete({}, event) == ANSWERED
    assert store.get_call("vs-ok").outcome == ANSWERED  # type: ignore[union-attr]
    operator = MakeCallOperator(task_id="m", to=NUMBER, agent_id=AGENT)
    call = {"call_ref": "vs-ok", "session_id": "session-vs-ok"}
    assert operator.execute_complete({}, event, call=call) == {
        **call,
        "status": ANSWERED,
        "outcome_source": "inferred",
    }


def test_status_in_fail_on_is_a_final_failure_with_its_verdict(store: CallStore, store_url: str) -> None:
    placed(store, "vs-busy")
    reported(store, "vs-busy")
    event = _run(_status_trigger(store_url, call_ref="vs-busy"))
    verdicts = Verdicts()
    with pytest.raises(AirflowFailException, match="busy"):
        resume(event, "call_status", on_verdict=verdicts)
    assert verdicts.seen == [("vs-busy", "busy")]
    sensor = CallStatusSensor(task_id="s", call_ref="vs-busy", store_url=store_url)
    with pytest.raises(AirflowFailException, match="fail_on"):
        sensor.execute_complete({}, event)
    assert store.get_call("vs-busy").outcome == "busy"  # type: ignore[union-attr]


def _rejected(store: CallStore, ref: str) -> None:
    store.begin_call(ref, agent_id=AGENT, destination=NUMBER)
    store.mark_rejected(ref, 400, "Bad destination number format")


def _unknown(store: CallStore, ref: str) -> None:
    store.begin_call(ref, agent_id=AGENT, destination=NUMBER)
    store.mark_sending(ref)
    store.mark_unknown(ref, "read timed out")


@pytest.mark.parametrize(
    ("make", "error_type", "match"),
    [
        (None, "UnknownCall", "no such call"),
        (_rejected, "CallRejectedEarlier", "Bad destination"),
        (_unknown, "CallOutcomeUnknown", "read timed out"),
    ],
)
def test_calls_that_will_never_have_a_status_fail_the_task_without_verdict(
    store: CallStore, store_url: str, make: Any, error_type: str, match: str
) -> None:
    if make is not None:
        make(store, "vs-x")
    event = _run(_status_trigger(store_url, call_ref="vs-x"))
    assert event["error_type"] == error_type
    verdicts = Verdicts()
    with pytest.raises(AirflowFailException, match=match):
        resume(event, "call_status", on_verdict=verdicts)
    assert verdicts.seen == []


@pytest.mark.parametrize("many", [False, True], ids=["one call", "many calls"])
def test_store_outage_is_a_retryable_task_failure(many: bool) -> None:
    refs = {"call_refs": ["vs-1", "vs-2"]} if many else {"call_ref": "vs-1"}
    event = _run(_status_trigger(UNREACHABLE_STORE, poll_interval=0.01, **refs))
    assert event["retryable"] is True and event["errors"] == {}
    assert event == store_outage_event(5, Exception(), {}) | {"message": event["message"]}
    expect = "call_statuses" if many else "call_status"
    with pytest.raises(AirflowException, match="could not read the call store 5 times") as info:
        resume(event, expect)  # type: ignore[call-overload]
    assert not isinstance(info.value, AirflowFailException)


# ---------------------------------------------------------------- CallStatusTrigger, many calls


def test_batch_success_maps_every_call_to_its_status(store: CallStore, store_url: str) -> None:
    for ref in ("vs-a", "vs-b"):
        placed(store, ref)
    reported(store, "vs-a", "failed")
    event = _run(_status_trigger(store_url, call_refs=["vs-a", "vs-b"], answer_window=0.2, fail_on=()))
    assert resume(event, "call_statuses") == {"vs-a": ("failed", None), "vs-b": (ANSWERED, None)}


def test_batch_errors_map_to_a_reason_per_call(store: CallStore, store_url: str) -> None:
    placed(store, "vs-a")
    reported(store, "vs-a")
    placed(store, "vs-ok")
    _rejected(store, "vs-refused")
    refs = ["vs-a", "vs-ok", "vs-refused", "vs-ghost"]
    # What MakeCallsOperator defers for (fail_on=()): only calls without a status are errors.
    event = _run(_status_trigger(store_url, call_refs=refs, answer_window=0.0, fail_on=()))
    statuses = resume(event, "call_statuses")
    assert statuses["vs-a"] == ("busy", None) and statuses["vs-ok"] == (ANSWERED, None)
    assert statuses["vs-refused"][0] is None and "Bad destination" in str(statuses["vs-refused"][1])
    assert statuses["vs-ghost"][0] is None and "no such call" in str(statuses["vs-ghost"][1])
    # With fail_on, a failed call keeps its status beside the reason.
    event = _run(_status_trigger(store_url, call_refs=refs, answer_window=0.0))
    statuses = resume(event, "call_statuses")
    assert statuses["vs-a"][0] == "busy" and "fail_on" in str(statuses["vs-a"][1])


# ----------------------------------------------------------------------------- CallResultTrigger


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=1000, insights_index_delay=0) as emu:
        yield emu


@pytest.fixture
def emulator(shared_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    shared_emulator.reset()
    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", shared_emulator.connection_json(timeout=5, calls_per_second=5)
    )
    return shared_emulator


def _result_trigger(store_url: str, **kwargs: Any) -> CallResultTrigger:
    kwargs.setdefault("poll_interval", 0.05)
    return CallResultTrigger(store_url=store_url, **kwargs)


def test_result_success_returns_the_parameters(emulator: Emulator, store: CallStore, store_url: str) -> None:
    emulator.script(NUMBER, "answered", {"CONFIRMED": "yes"})
    hook = VonageStudioHook(pace=False, retry_backoff=0.01, store=store)
    call = hook.make_call(NUMBER, AGENT, call_ref="vs-result", session_parameters={"CALLER_NAME": "Diane"})
    event = _run(_result_trigger(store_url, call_ref=call.call_ref, required_parameters=["CONFIRMED"]))
    verdicts = Verdicts()
    payload = resume(event, "call_result", on_verdict=verdicts)
    assert payload["parameters"] == {"CALLER_NAME": "Diane", "CONFIRMED": "yes"}
    assert payload["call_ref"] == "vs-result" and payload["call_status"] is None
    assert verdicts.seen == []
    sensor = CallResultSensor(task_id="r", call_ref="vs-result", store_url=store_url)
    assert sensor.execute_complete({}, event) == {"CALLER_NAME": "Diane", "CONFIRMED": "yes"}


def test_result_for_a_failed_call(store: CallStore, store_url: str) -> None:
    placed(store, "vs-timeout")
    reported(store, "vs-timeout", "timeout")
    # fail_on=(): a success carrying the status (the sensor stores it with the parameters).
    event = _run(_result_trigger(store_url, call_ref="vs-timeout", fail_on=()))
    verdicts = Verdicts()
    payload = resume(event, "call_result", on_verdict=verdicts)
    assert payload["call_status"] == "timeout" and payload["parameters"] is None
    assert verdicts.seen == []
    # The default fail_on: a final failure, with its verdict.
    event = _run(_result_trigger(store_url, call_ref="vs-timeout"))
    assert event["retryable"] is False
    with pytest.raises(AirflowFailException, match="timeout"):
        resume(event, "call_result", on_verdict=verdicts)
    assert verdicts.seen == [("vs-timeout", "timeout")]


def test_result_for_an_unknown_call_is_final(store_url: str) -> None:
    event = _run(_result_trigger(store_url, call_ref="vs-ghost"))
    assert event["error_type"] == "UnknownCall" and event["retryable"] is False
    with pytest.raises(AirflowFailException, match="no such call"):
        resume(event, "call_result")


def test_result_when_the_store_stays_unreachable_is_retryable() -> None:
    event = _run(_result_trigger(UNREACHABLE_STORE, call_ref="vs-1", poll_interval=0.01, max_failures=2))
    assert event["status"] == "error" and event["retryable"] is True
    with pytest.raises(AirflowException) as info:
        resume(event, "call_result")
    assert not isinstance(info.value, AirflowFailException)


# ------------------------------------------------------------------------------- shapes refused


def test_missing_or_malformed_events() -> None:
    for expect in ("call_status", "call_result"):
        with pytest.raises(AirflowException, match="without an event") as info:
            resume(None, expect)  # type: ignore[call-overload]
        assert not isinstance(info.value, AirflowFailException)
    with pytest.raises(AirflowFailException, match="without a usable event"):
        resume({"status": "success"}, "call_statuses")
    with pytest.raises(AirflowFailException, match="call_status"):
        resume({"status": "success", "call_ref": "vs-1"}, "call_status")
    with pytest.raises(AirflowFailException, match="usable event"):
        resume(["not", "a", "dict"], "call_status")


def test_builders_round_trip_errors() -> None:
    event = error_event(CallFailed("ended busy", "busy"), "vs-1")
    assert event == {
        "status": "error",
        "message": "ended busy",
        "error_type": "CallFailed",
        "error_status": None,
        "call_ref": "vs-1",
        "call_status": "busy",
    }
    rebuilt = error_from_event(event)
    assert isinstance(rebuilt, CallFailed) and rebuilt.call_status == "busy"
    single = status_event(["vs-1"], {}, {"vs-1": UnknownCall("gone")}, single=True)
    assert single["status"] == "error" and single["errors"] == {"vs-1": error_event(UnknownCall("gone"))}


# ------------------------------------------------------------------------- paths and layering


def test_public_classes_and_old_names_stay_where_they_were() -> None:
    import importlib

    from airflow_provider_vonage_studio import events, results

    for module, names in {
        "airflow_provider_vonage_studio.operators.vonage_studio": (
            "MakeCallOperator",
            "MakeCallsOperator",
            "ExportSessionsOperator",
        ),
        "airflow_provider_vonage_studio.sensors.vonage_studio": ("CallStatusSensor", "CallResultSensor"),
        "airflow_provider_vonage_studio.triggers.vonage_studio": ("CallStatusTrigger", "CallResultTrigger"),
    }.items():
        for name in names:
            # Serialized DAGs and the trigger table record these modules.
            assert getattr(importlib.import_module(module), name).__module__ == module
    operators = importlib.import_module("airflow_provider_vonage_studio.operators.vonage_studio")
    sensors = importlib.import_module("airflow_provider_vonage_studio.sensors.vonage_studio")
    outcome = importlib.import_module("airflow_provider_vonage_studio.outcome")
    assert operators.fail_task is events.fail_task
    assert outcome.error_event is events.error_event and outcome.error_from_event is events.error_from_event
    assert sensors.check_call_result is results.check_call_result
    assert sensors.record_event_verdict is results.record_event_verdict
    assert (
        sensors.raise_for_trigger_event(
            {"status": "success", "call_ref": "vs-1", "call_status": "busy", "call_statuses": {}}
        )["call_status"]
        == "busy"
    )


def _imports(module: str) -> set[str]:
    """The package modules ``module`` imports, at its top or inside functions (TYPE_CHECKING
    blocks aside)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name.removeprefix("airflow_provider_vonage_studio.") for name in found if "vonage_studio" in name}


@pytest.mark.parametrize(
    ("module", "never"),
    [
        (
            "events",
            ("outcome", "hooks", "results", "triggers", "operators", "sensors", "notifications", "store"),
        ),
        ("results", ("triggers", "operators", "sensors", "notifications")),
        ("triggers.vonage_studio", ("operators", "sensors", "notifications")),
        ("sensors.vonage_studio", ("operators", "notifications")),
    ],
)
def test_imports_run_one_way(module: str, never: tuple[str, ...]) -> None:
    imported = _imports(f"airflow_provider_vonage_studio.{module}")
    upward = sorted(name for name in imported if name.split(".")[0] in never)
    assert upward == [], f"{module} imports {upward}"
