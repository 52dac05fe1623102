"""The emulator's ``POST /messaging/conversation`` over real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_vonage_studio.testing.emulator import (
    MESSAGING_PATH,
    AgentConfig,
    Emulator,
    EmulatorConfigError,
    MessageOutcome,
)
from airflow_provider_vonage_studio.testing.pytest_plugin import EmulatorFactory
from tests.integration.emulator_support import CallbackReceiver

KEY = "test-key"
AGENT = "agent-1"
NUMBER = "447700900123"
HEADERS = {"X-Vgai-Key": KEY}
START_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$")
CALLBACK_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
WHATSAPP = {"namespace": "ns-1", "template": "appointment_reminder", "locale": "en_GB"}
COMPONENTS = [{"type": "body", "parameters": [{"type": "text", "text": "Diane"}]}]


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # loopback traffic never goes through an environment proxy
        yield session


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    with Emulator(calls_per_second=1000, callback_delay=0.05) as emulator:
        yield emulator


@pytest.fixture
def emulator(shared_emulator: Emulator) -> Iterator[Emulator]:
    shared_emulator.reset()
    yield shared_emulator
    shared_emulator.reset()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver()
    try:
        yield server
    finally:
        server.close()


def body(channel: str = "sms", **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "to": NUMBER,
        "agent_id": AGENT,
        "channel": channel,
        "status_url": "http://127.0.0.1:9/messages/tok/status",
    }
    if channel == "whatsapp":
        payload.update(WHATSAPP)
    payload.update(fields)
    return {k: v for k, v in payload.items() if v is not None}


def send(
    http: requests.Session, emulator: Emulator, payload: Any, headers: Any = HEADERS
) -> requests.Response:
    return http.post(f"{emulator.url}{MESSAGING_PATH}", json=payload, headers=headers, timeout=5)


def test_sms_and_whatsapp_are_accepted_and_recorded(http: requests.Session, emulator: Emulator) -> None:
    params = [{"name": "CALLER_NAME", "value": "Diane"}]
    sms = send(http, emulator, body(session_parameters=params))
    whatsapp = send(http, emulator, body("whatsapp", components=COMPONENTS))

    for response in (sms, whatsapp):
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"session_id", "session_start_time"}
        assert uuid.UUID(response.json()["session_id"]).version == 4
        assert START_TIME_RE.match(response.json()["session_start_time"])
    first, second = emulator.messages
    assert (first.channel, first.session_id, first.template) == ("sms", sms.json()["session_id"], None)
    assert [dict(p) for p in first.session_parameters] == params
    assert (second.channel, second.namespace, second.template, second.locale) == (
        "whatsapp",
        "ns-1",
        "appointment_reminder",
        "en_GB",
    )
    assert second.components == COMPONENTS
    assert emulator.calls == []
    listed = http.get(f"{emulator.url}/_emulator/messages", timeout=5).json()
    assert [m["channel"] for m in listed] == ["sms", "whatsapp"]
    assert listed[1]["outcome"] == "delivered"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (body(to=None), "to"),
        (body(agent_id=""), "agent_id"),
        (body(channel=None), "channel"),
        (body(channel="voice"), "channel"),
        (body(status_url=None), "status_url"),  # mandatory on both channels
        (body("whatsapp", status_url=None), "status_url"),
        (body("whatsapp", template=None), "template"),
        (body("whatsapp", namespace=None), "namespace"),
        (body("whatsapp", locale=""), "locale"),
        (body("whatsapp", template=7), "template"),
        (body("whatsapp", components={"type": "body"}), "components"),
        (body("whatsapp", components=[{"parameters": []}]), "components"),
        (body(template="appointment_reminder"), "template"),  # WhatsApp-only fields on SMS
        (body(namespace="ns-1"), "namespace"),
        (body(locale="en_GB"), "locale"),
        (body(components=COMPONENTS), "components"),
        (body(session_parameters={"A": "b"}), "session_parameters"),
        (body(session_parameters=[{"name": "A", "value": 1}]), "session_parameters[0].value"),
        ([body()], "object"),
    ],
)
def test_malformed_body_is_400_naming_the_field(
    http: requests.Session, emulator: Emulator, payload: Any, field: str
) -> None:
    response = send(http, emulator, payload)

    assert response.status_code == 400
    assert response.json()["status"] == 400
    assert field in response.json()["message"]
    assert emulator.messages == []


def test_key_agent_and_destination_are_checked(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory
) -> None:
    emulator = vonage_studio_emulator_factory(
        calls_per_second=100, agents={AGENT: None, "unready": AgentConfig(preconfigured=False)}
    )
    assert send(http, emulator, body(), headers={"X-Vgai-Key": "wrong"}).json() == {
        "status": 401,
        "message": "Not Authorised",
    }
    assert send(http, emulator, body(agent_id="nobody")).status_code == 404
    for to in ("+447700900123", "sip:alice@pbx.example.com", "123"):
        refused = send(http, emulator, body(to=to))
        assert refused.json() == {"status": 400, "message": "Bad destination number format"}, to
    assert send(http, emulator, body(agent_id="unready")).status_code == 500
    assert emulator.messages == []


def test_malformed_json_is_400(http: requests.Session, emulator: Emulator) -> None:
    response = http.post(
        f"{emulator.url}{MESSAGING_PATH}",
        data=b"{oops",
        headers={**HEADERS, "Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["message"]


# --------------------------------------------------------------------------- rate limit


def test_messages_share_the_agents_budget_with_calls_by_default(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory
) -> None:
    emulator = vonage_studio_emulator_factory(calls_per_second=1, retry_after=2)
    call = http.post(
        f"{emulator.url}/telephony/make-call",
        json={"agent_id": AGENT, "to": NUMBER},
        headers=HEADERS,
        timeout=5,
    )
    assert call.status_code == 200

    refused = send(http, emulator, body())
    assert refused.status_code == 429
    assert refused.json() == {"status": 429, "message": "Too Many Requests"}
    assert refused.headers["Retry-After"] == "2"
    assert emulator.messages == []
    time.sleep(max(0.0, emulator.calls[0].monotonic + 1.0 - time.monotonic()))
    assert send(http, emulator, body()).status_code == 200
    again = http.post(
        f"{emulator.url}/telephony/make-call",
        json={"agent_id": AGENT, "to": NUMBER},
        headers=HEADERS,
        timeout=5,
    )
    assert again.status_code == 429  # the message took the second's only slot


def test_separate_budget_is_a_knob_and_each_stays_strict(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory
) -> None:
    emulator = vonage_studio_emulator_factory(calls_per_second=1, shared_rate_budget=False)
    call = http.post(
        f"{emulator.url}/telephony/make-call",
        json={"agent_id": AGENT, "to": NUMBER},
        headers=HEADERS,
        timeout=5,
    )

    assert call.status_code == 200
    assert send(http, emulator, body()).status_code == 200
    assert send(http, emulator, body("whatsapp")).status_code == 429  # SMS and WhatsApp share one
    with pytest.raises(EmulatorConfigError, match="shared_rate_budget"):
        Emulator(shared_rate_budget="no")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- status callbacks


def test_status_callbacks_follow_the_scripted_outcomes(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    emulator.script_message(NUMBER, ["failed", "read"])
    status_url = f"{receiver.url}/messages/tok-1/status"

    first = send(http, emulator, body("whatsapp", status_url=status_url)).json()
    assert len(receiver.wait(1)) == 1
    second = send(http, emulator, body("whatsapp", status_url=status_url)).json()
    third = send(http, emulator, body(status_url=status_url)).json()

    received = receiver.wait(5)
    assert {r["path"] for r in received} == {"/messages/tok-1/status"}
    by_session: dict[str, list[str]] = {}
    for item in received:
        payload = item["body"]
        assert set(payload) == {"agent_id", "to", "session_id", "channel", "status", "timestamp"}
        assert (payload["agent_id"], payload["to"]) == (AGENT, NUMBER)
        assert CALLBACK_TS_RE.match(payload["timestamp"])
        by_session.setdefault(payload["session_id"], []).append(payload["status"])
    assert by_session == {
        first["session_id"]: ["failed"],
        second["session_id"]: ["delivered", "read"],  # read is posted after delivered
        third["session_id"]: ["delivered", "read"],  # the last outcome repeats
    }
    assert [m.outcome for m in emulator.messages] == [
        MessageOutcome.FAILED,
        MessageOutcome.READ,
        MessageOutcome.READ,
    ]
    assert [m.attempt for m in emulator.messages] == [1, 2, 3]
    assert [r["body"]["channel"] for r in received if r["body"]["session_id"] == third["session_id"]] == [
        "sms"
    ] * 2
    assert len(emulator.wait_for_message_callbacks(5)) == 5
    assert emulator.callbacks == []
    listed = http.get(f"{emulator.url}/_emulator/message-callbacks", timeout=5).json()
    assert len(listed) == 5 and all(a["status"] == 204 for a in listed)


def test_message_scripts_over_http(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    base = f"{emulator.url}/_emulator"
    ok = http.post(f"{base}/message-script", json=[{"to": NUMBER, "outcome": "rejected"}], timeout=5)
    assert ok.json() == {"status": "ok", "count": 1}
    bad = http.post(f"{base}/message-script", json={"to": NUMBER, "outcome": "answered"}, timeout=5)
    assert bad.status_code == 400 and "outcome" in bad.json()["message"]
    unknown = http.post(f"{base}/message-script", json={"to": NUMBER, "channel": "sms"}, timeout=5)
    assert unknown.status_code == 400 and "channel" in unknown.json()["message"]

    send(http, emulator, body(status_url=f"{receiver.url}/m"))

    (received,) = receiver.wait(1)
    assert received["body"]["status"] == "rejected"


def test_faults_apply_to_messaging(http: requests.Session, emulator: Emulator) -> None:
    emulator.inject("503", path=MESSAGING_PATH)
    emulator.inject(429, to="447700900999", path=MESSAGING_PATH, retry_after=4)
    http.post(
        f"{emulator.url}/_emulator/inject",
        json={"fault": "drop", "path": MESSAGING_PATH, "to": NUMBER},
        timeout=5,
    ).raise_for_status()

    assert send(http, emulator, body(to="447700900999")).status_code == 503
    limited = send(http, emulator, body(to="447700900999"))
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "4")
    with pytest.raises(requests.ConnectionError):
        send(http, emulator, body())
    assert emulator.messages == []
    assert send(http, emulator, body()).status_code == 200
    assert [r.fault for r in emulator.requests] == ["503", "429", "drop", None]
    # A make-call fault does not touch messages, and the other way round.
    emulator.inject("503")
    assert send(http, emulator, body()).status_code == 200


def test_timeout_fault_accepts_the_message_then_holds_the_answer(
    http: requests.Session, emulator: Emulator
) -> None:
    emulator.inject("timeout", delay=3, path=MESSAGING_PATH)

    with pytest.raises(requests.ReadTimeout):
        http.post(f"{emulator.url}{MESSAGING_PATH}", json=body(), headers=HEADERS, timeout=(2, 0.5))

    (message,) = emulator.messages
    assert message.to == NUMBER
    assert json.dumps(emulator.requests[0].to_dict())  # recorded, JSON-safe


def test_bad_message_scripts_are_refused() -> None:
    emulator = Emulator()
    with pytest.raises(EmulatorConfigError, match="message script outcome"):
        emulator.script_message(NUMBER, "busy")
    with pytest.raises(EmulatorConfigError, match="message script to"):
        emulator.script_message("", "read")
    with pytest.raises(EmulatorConfigError, match="message script outcome"):
        Emulator(message_scripts={NUMBER: []})
