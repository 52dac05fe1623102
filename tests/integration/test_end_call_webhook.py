"""The end-call webhook over real sockets: emulator → receiver (uvicorn) → store → sensor.

With the connection's extra ``end_call_webhook`` on, every placed call carries its signed token as
the session parameter ``VS_CALL_TOKEN``; the emulator, playing the agent's End Call Event webhook
node, posts ``<callback_base_url>/calls/<token>/ended`` after the scripted talk time, and the
receiver records the call answered (source ``end_call``) with its parameters. Every store test
runs on SQLite and on the PostgreSQL server (``store_url``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from airflow_provider_vonage_studio._compat import AirflowFailException
from airflow_provider_vonage_studio.exceptions import InvalidSessionParameter, VonageStudioConfigError
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator
from airflow_provider_vonage_studio.sensors.vonage_studio import OUTCOME_SOURCE_KEY, CallStatusSensor
from airflow_provider_vonage_studio.signing import sign_token
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import Emulator
from airflow_provider_vonage_studio.testing.servers import ThreadedServer

KEY = "integration-key-4c3b2a1f"
SECRET = "integration-callback-secret-77d1"
AGENT = "agent-1"
ANSWER_TO, ANSWER_DIGITS = "+44 7700 900456", "447700900456"
BUSY_TO, BUSY_DIGITS = "+44 7700 900123", "447700900123"

log = logging.getLogger(__name__)


@dataclass
class Stack:
    emulator: Emulator
    receiver_url: str
    store: CallStore
    monkeypatch: pytest.MonkeyPatch

    def connect(self, **extras: Any) -> None:
        self.monkeypatch.setenv(
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT",
            self.emulator.connection_json(
                callback_base_url=self.receiver_url, callback_secret=SECRET, **extras
            ),
        )


@pytest.fixture
def stack(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    from airflow_provider_vonage_studio.callbacks.app import create_app

    store = CallStore(store_url)
    app = create_app(store=store, secret_provider=lambda: [SECRET], outcome_view="off")
    with (
        Emulator(
            api_keys=(KEY,), agents=(AGENT,), calls_per_second=5, callback_delay=0.2, talk_time=0.3
        ) as emulator,
        ThreadedServer(app) as receiver,
    ):
        monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", store_url)
        result = Stack(emulator, receiver.url, store, monkeypatch)
        result.connect(end_call_webhook=True)
        emulator.script(ANSWER_DIGITS, "answered", {"CALLER_NAME": "Ada", "CONFIRMED": "yes"})
        emulator.script(BUSY_DIGITS, "busy")
        yield result
    store.dispose()


class FakeTI:
    def __init__(self, task_id: str) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = "it_end_call", "manual__it", task_id, -1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def _context(task_id: str) -> dict[str, Any]:
    return {"ti": FakeTI(task_id)}


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False
        yield session


def _placed(store: CallStore, ref: str, *, started: datetime | None = None) -> None:
    store.begin_call(ref, agent_id=AGENT, destination=ANSWER_DIGITS)
    store.mark_sending(ref)
    store.mark_placed(ref, f"session-{ref}", started or datetime.now(timezone.utc))


def _ended(
    http: requests.Session, stack: Stack, token: str, body: Any = None, **kwargs: Any
) -> requests.Response:
    return http.post(
        f"{stack.receiver_url}/calls/{token}/ended",
        json=body if body is not None else {},
        timeout=10,
        **kwargs,
    )


# ------------------------------------------------------------------------- (a) end to end


def test_answered_call_is_confirmed_by_the_end_call_webhook_before_the_answer_window(stack: Stack) -> None:
    call = MakeCallOperator(task_id="call", to=ANSWER_TO, agent_id=AGENT).execute(_context("call"))
    (placed,) = stack.emulator.calls
    # The token in the session parameter is the one in the status URL, never a user's.
    tokens = [p["value"] for p in placed.session_parameters if p["name"] == "VS_CALL_TOKEN"]
    assert len(tokens) == 1 and placed.status_url == f"{stack.receiver_url}/calls/{tokens[0]}/status"

    answer_window = timedelta(seconds=60)
    context = _context("wait")
    sensor = CallStatusSensor(
        task_id="wait", call_ref=call["call_ref"], answer_window=answer_window, poke_interval=0.05, timeout=30
    )
    assert sensor.execute(context) == "answered"
    assert context["ti"].xcoms[OUTCOME_SOURCE_KEY] == "end_call"

    record = stack.store.get_call(call["call_ref"])
    assert record is not None and record.session_start_time is not None and record.ended_at is not None
    deadline = record.session_start_time + answer_window
    log.info(
        "end-call recorded %s (ended_at %s); answer deadline %s", record.outcome_at, record.ended_at, deadline
    )
    assert record.outcome_at is not None and record.outcome_at < deadline
    assert record.ended_at < deadline
    assert (record.outcome, record.outcome_source, record.status) == ("answered", "end_call", None)
    assert record.parameters is not None
    assert record.parameters["CALLER_NAME"] == "Ada" and record.parameters["CONFIRMED"] == "yes"
    assert "VS_CALL_TOKEN" not in record.parameters and "ended_at" not in record.parameters
    (delivery,) = stack.emulator.wait_for_end_calls(1)
    assert delivery.status == 200


def test_waiting_operator_returns_the_end_call_source(stack: Stack) -> None:
    result = MakeCallOperator(
        task_id="call",
        to=ANSWER_TO,
        agent_id=AGENT,
        wait_for_status=True,
        answer_window=60,
        poke_interval=0.05,
    ).execute(_context("call"))
    assert (result["status"], result["outcome_source"]) == ("answered", "end_call")


def test_failure_callback_source_is_callback(stack: Stack) -> None:
    result = MakeCallOperator(
        task_id="call", to=BUSY_TO, agent_id=AGENT, wait_for_status=True, fail_on=(), poke_interval=0.05
    ).execute(_context("call"))
    assert (result["status"], result["outcome_source"]) == ("busy", "callback")
    record = stack.store.get_call(result["call_ref"])
    assert record is not None and (record.outcome, record.outcome_source) == ("busy", "callback")


# ------------------------------------------------------------------------------ (b) inferred


def test_without_the_webhook_a_silent_call_is_inferred(stack: Stack) -> None:
    stack.connect()  # end_call_webhook off
    call = MakeCallOperator(task_id="call", to=ANSWER_TO, agent_id=AGENT).execute(_context("call"))
    (placed,) = stack.emulator.calls
    assert all(p["name"] != "VS_CALL_TOKEN" for p in placed.session_parameters)
    context = _context("wait")
    sensor = CallStatusSensor(
        task_id="wait", call_ref=call["call_ref"], answer_window=0.5, poke_interval=0.05, timeout=30
    )
    assert sensor.execute(context) == "answered"
    assert context["ti"].xcoms[OUTCOME_SOURCE_KEY] == "inferred"
    record = stack.store.get_call(call["call_ref"])
    assert record is not None and (record.outcome, record.outcome_source, record.ended_at) == (
        "answered",
        "inferred",
        None,
    )


# ------------------------------------------------------------------------ (d) require_confirmed


def test_require_confirmed_fails_on_an_inferred_answer(stack: Stack) -> None:
    stack.connect()
    call = MakeCallOperator(task_id="call", to=ANSWER_TO, agent_id=AGENT).execute(_context("call"))
    sensor = CallStatusSensor(
        task_id="wait",
        call_ref=call["call_ref"],
        answer_window=0.3,
        poke_interval=0.05,
        timeout=30,
        require_confirmed=True,
    )
    with pytest.raises(AirflowFailException, match=r"only inferred.*require_confirmed=True"):
        sensor.execute(_context("wait"))


def test_require_confirmed_passes_on_an_end_call(stack: Stack) -> None:
    call = MakeCallOperator(task_id="call", to=ANSWER_TO, agent_id=AGENT).execute(_context("call"))
    sensor = CallStatusSensor(
        task_id="wait",
        call_ref=call["call_ref"],
        answer_window=60,
        poke_interval=0.05,
        timeout=30,
        require_confirmed=True,
    )
    assert sensor.execute(_context("wait")) == "answered"


def test_require_confirmed_must_be_a_bool() -> None:
    with pytest.raises(VonageStudioConfigError, match="require_confirmed"):
        CallStatusSensor(task_id="wait", call_ref="vs-x", require_confirmed="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------- (e) reserved parameter


def test_a_user_parameter_named_vs_call_token_is_refused_before_any_request(stack: Stack) -> None:
    with pytest.raises(AirflowFailException, match="VS_CALL_TOKEN"):
        MakeCallOperator(
            task_id="call", to=ANSWER_TO, agent_id=AGENT, session_parameters={"VS_CALL_TOKEN": "mine"}
        ).execute(_context("call"))
    with pytest.raises(InvalidSessionParameter, match="'VS_CALL_TOKEN' is reserved"):
        VonageStudioHook().make_call(
            ANSWER_TO, AGENT, session_parameters=[{"name": "VS_CALL_TOKEN", "value": "x"}]
        )
    assert stack.emulator.calls == []
    assert stack.store.recent_calls(10) == []


def test_the_token_is_not_logged(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    MakeCallOperator(task_id="call", to=ANSWER_TO, agent_id=AGENT).execute(_context("call"))
    (placed,) = stack.emulator.calls
    (token,) = [p["value"] for p in placed.session_parameters if p["name"] == "VS_CALL_TOKEN"]
    assert token not in caplog.text


# ------------------------------------------------------------------------- (c) refusals


def test_end_call_refusals_store_nothing(stack: Stack, http: requests.Session) -> None:
    ref, other = "vs-end-call-a", "vs-end-call-b"
    _placed(stack.store, ref)
    _placed(stack.store, other)
    before = stack.store.get_call(ref)
    good = sign_token(ref, SECRET)
    cases = {
        "forged": (sign_token(ref, "another-secret-of-enough-length"), {}, 401),
        "malformed": ("not-a-token", {}, 401),
        "old": (sign_token(ref, SECRET, issued_at=datetime.now(timezone.utc) - timedelta(hours=7)), {}, 410),
        "unknown call": (sign_token("vs-no-such-call", SECRET), {}, 404),
        "other call's token in the body": (good, {"VS_CALL_TOKEN": sign_token(other, SECRET)}, 409),
        "nested object": (good, {"CALLER_NAME": {"first": "Ada"}}, 422),
        "array": (good, {"CHOICES": ["a", "b"]}, 422),
        "not an object": (good, ["x"], 422),
        "too many fields": (good, {f"F_{i}": "x" for i in range(101)}, 422),
    }
    for what, (token, body, expected) in cases.items():
        answer = _ended(http, stack, token, body)
        assert answer.status_code == expected, (what, answer.text)
        assert "detail" in answer.json()
    oversize = http.post(
        f"{stack.receiver_url}/calls/{good}/ended",
        data=b'{"X": "' + b"a" * (17 * 1024) + b'"}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert oversize.status_code == 413
    assert stack.store.get_call(ref) == before
    assert stack.store.get_call(other) is not None and stack.store.get_call(other).outcome is None  # type: ignore[union-attr]


def test_end_call_for_a_call_not_placed_or_too_old_is_refused(stack: Stack, http: requests.Session) -> None:
    stack.store.begin_call("vs-queued", agent_id=AGENT, destination=ANSWER_DIGITS)
    assert _ended(http, stack, sign_token("vs-queued", SECRET)).status_code == 409
    _placed(stack.store, "vs-old", started=datetime.now(timezone.utc) - timedelta(hours=7))
    assert _ended(http, stack, sign_token("vs-old", SECRET)).status_code == 410
    for ref in ("vs-queued", "vs-old"):
        record = stack.store.get_call(ref)
        assert record is not None and record.outcome is None and record.ended_at is None


def test_end_call_is_recorded_once_and_a_repeat_is_a_duplicate(stack: Stack, http: requests.Session) -> None:
    ref = "vs-end-call-dup"
    _placed(stack.store, ref)
    token = sign_token(ref, SECRET)
    first = _ended(
        http,
        stack,
        token,
        {
            "VS_CALL_TOKEN": token,
            "CALLER_NAME": "Ada",
            "AGE": 36,
            "OK": True,
            "NOTE": None,
            "ended_at": "2020-01-01T00:00:00Z",
        },
    )
    assert (first.status_code, first.json()) == (200, {"result": "recorded"})
    record = stack.store.get_call(ref)
    assert record is not None
    assert record.parameters == {"CALLER_NAME": "Ada", "AGE": "36", "OK": "true", "NOTE": ""}
    assert record.ended_at == datetime(2020, 1, 1, tzinfo=timezone.utc)
    again = _ended(http, stack, token, {"CALLER_NAME": "Someone else"})
    assert (again.status_code, again.json()) == (200, {"result": "duplicate"})
    assert stack.store.get_call(ref) == record


def test_a_failure_recorded_first_wins_over_a_later_end_call(stack: Stack, http: requests.Session) -> None:
    ref = "vs-busy-first"
    _placed(stack.store, ref)
    stack.store.record_status(ref, status="busy", conversation_uuid="c-1", timestamp=None, payload={})
    answer = _ended(http, stack, sign_token(ref, SECRET), {"CALLER_NAME": "Ada"})
    assert answer.status_code == 409 and "failure status" in answer.json()["detail"]
    record = stack.store.get_call(ref)
    assert record is not None and (
        record.status,
        record.outcome_source,
        record.outcome,
        record.parameters,
    ) == (
        "busy",
        "callback",
        None,
        None,
    )


def test_a_failure_after_the_end_call_goes_to_the_history_only(stack: Stack, http: requests.Session) -> None:
    ref = "vs-ended-first"
    _placed(stack.store, ref)
    assert _ended(http, stack, sign_token(ref, SECRET)).status_code == 200
    outcome = stack.store.record_status(
        ref, status="busy", conversation_uuid="c-1", timestamp=None, payload={}
    )
    assert outcome.value == "history"
    record = stack.store.get_call(ref)
    assert record is not None and (record.status, record.outcome, record.outcome_source) == (
        None,
        "answered",
        "end_call",
    )


def test_an_end_call_upgrades_an_inferred_verdict(stack: Stack, http: requests.Session) -> None:
    ref = "vs-inferred-then-ended"
    _placed(stack.store, ref)
    stack.store.record_outcome(ref, "answered", source="inferred")
    assert _ended(http, stack, sign_token(ref, SECRET)).status_code == 200
    record = stack.store.get_call(ref)
    assert record is not None and (record.outcome, record.outcome_source) == ("answered", "end_call")


def test_an_empty_body_is_accepted(stack: Stack, http: requests.Session) -> None:
    ref = "vs-empty-body"
    _placed(stack.store, ref)
    answer = http.post(f"{stack.receiver_url}/calls/{sign_token(ref, SECRET)}/ended", timeout=10)
    assert answer.status_code == 200
    record = stack.store.get_call(ref)
    assert record is not None and record.parameters == {} and record.ended_at is not None


# ------------------------------------------------------------------------- store sources


def test_record_outcomes_take_sources(stack: Stack) -> None:
    for ref in ("vs-s1", "vs-s2", "vs-s3"):
        _placed(stack.store, ref)
    written = stack.store.record_outcomes(
        {"vs-s1": "answered", "vs-s2": "answered", "vs-s3": "busy"},
        source={"vs-s1": "inferred", "vs-s2": "insights"},
    )
    assert written == 3
    got = stack.store.get_calls(["vs-s1", "vs-s2", "vs-s3"])
    assert [got[r].outcome_source for r in ("vs-s1", "vs-s2", "vs-s3")] == ["inferred", "insights", None]
    with pytest.raises(VonageStudioConfigError, match="source"):
        stack.store.record_outcome("vs-s3", "busy", source="guess")


# ------------------------------------------------------------------------- access log


def test_the_ended_path_is_elided_before_the_access_log(stack: Stack) -> None:
    from airflow_provider_vonage_studio.callbacks.app import create_app

    seen: list[str] = []
    inner = create_app(store=stack.store, secret_provider=lambda: [SECRET], outcome_view="off")

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        await inner(scope, receive, send)
        seen.append(scope["path"])

    token = sign_token("vs-elided", SECRET)
    with ThreadedServer(spy) as server, requests.Session() as http:
        http.trust_env = False
        assert http.post(f"{server.url}/calls/{token}/ended", json={}, timeout=10).status_code == 404
    assert seen == ["/calls/***/ended"]


def test_sensor_ends_before_the_window_when_deferrable(stack: Stack) -> None:
    """The trigger's round ends the wait at the end-call record too (one waiting rule)."""
    import asyncio

    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger

    call = MakeCallOperator(task_id="call", to=ANSWER_TO, agent_id=AGENT).execute(_context("call"))
    sensor = CallStatusSensor(
        task_id="wait", call_ref=call["call_ref"], answer_window=60, poke_interval=0.05, deferrable=True
    )
    started = time.monotonic()
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(_context("wait"))
    trigger = deferred.value.trigger
    assert isinstance(trigger, CallStatusTrigger)

    async def first() -> dict[str, Any]:
        return (await anext(trigger.run())).payload

    event = asyncio.run(asyncio.wait_for(first(), 30))
    log.info("trigger event after %.2fs of a 60 s answer window", time.monotonic() - started)
    context = _context("wait")
    assert sensor.execute_complete(context, event) == "answered"
    assert context["ti"].xcoms[OUTCOME_SOURCE_KEY] == "end_call"
