"""The AI Studio emulator over real sockets on 127.0.0.1, as an HTTP client sees it."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from airflow_provider_vonage_studio.testing.emulator import (
    AGENT_NUMBER,
    AgentConfig,
    Emulator,
    EmulatorConfigError,
    Fault,
    Outcome,
)
from airflow_provider_vonage_studio.testing.pytest_plugin import EmulatorFactory
from tests.integration.emulator_support import CallbackReceiver

KEY = "test-key"
AGENT = "agent-1"
NUMBER = "447700900123"
HEADERS = {"X-Vgai-Key": KEY}
START_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$")
CALLBACK_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A client that never routes loopback traffic through an environment proxy."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    # One server for the module keeps the suite fast (stopping uvicorn takes ~0.2 s).
    with Emulator(calls_per_second=1000, callback_delay=0.05, insights_index_delay=0.5) as emulator:
        yield emulator


@pytest.fixture
def emulator(shared_emulator: Emulator) -> Iterator[Emulator]:
    """A freshly reset emulator with the rate limit lifted and short delays."""
    shared_emulator.reset()
    shared_emulator.insights_shape = "default"
    yield shared_emulator
    shared_emulator.reset()


def make_call(http: requests.Session, emulator: Emulator, *, headers: Any = HEADERS, **body: Any) -> Any:
    payload = {"agent_id": AGENT, "to": NUMBER, **body}
    return http.post(f"{emulator.url}/telephony/make-call", json=payload, headers=headers, timeout=5)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "message": message}


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver()
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- make-call


def test_success_body_shape(http: requests.Session, emulator: Emulator) -> None:
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    response = make_call(http, emulator, session_parameters=[{"name": "CALLER_NAME", "value": "Diane"}])

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"session_id", "session_start_time"}
    assert uuid.UUID(body["session_id"]).version == 4
    assert START_TIME_RE.match(body["session_start_time"])
    started = datetime.fromisoformat(body["session_start_time"])
    assert before - timedelta(seconds=1) <= started <= datetime.now(timezone.utc).replace(tzinfo=None)
    (call,) = emulator.calls
    assert call.session_id == body["session_id"]
    assert call.to == NUMBER
    assert call.outcome is Outcome.ANSWERED
    assert [dict(p) for p in call.session_parameters] == [{"name": "CALLER_NAME", "value": "Diane"}]


@pytest.mark.parametrize("headers", [{}, {"X-Vgai-Key": "wrong-key"}, {"X-Vgai-Key": ""}])
def test_bad_key_is_401(http: requests.Session, emulator: Emulator, headers: dict[str, str]) -> None:
    response = make_call(http, emulator, headers=headers)

    assert response.status_code == 401
    assert response.json() == error_body(401, "Not Authorised")
    assert emulator.calls == []


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (b"", "object"),
        (json.dumps({"to": NUMBER}).encode(), "agent_id"),
        (json.dumps({"agent_id": AGENT}).encode(), "to"),
        (json.dumps({"agent_id": AGENT, "to": 447700900123}).encode(), "to"),
        (json.dumps({"agent_id": 7, "to": NUMBER}).encode(), "agent_id"),
        (json.dumps({"agent_id": AGENT, "to": NUMBER, "session_parameters": {"A": "b"}}).encode(), "list"),
        (
            json.dumps({"agent_id": AGENT, "to": NUMBER, "session_parameters": [{"name": "A"}]}).encode(),
            "session_parameters[0]",
        ),
        (
            json.dumps(
                {"agent_id": AGENT, "to": NUMBER, "session_parameters": [{"name": "A", "value": 5}]}
            ).encode(),
            "session_parameters[0].value",
        ),
        (
            json.dumps({"agent_id": AGENT, "to": NUMBER, "hangup_on_answer_machine": "false"}).encode(),
            "hangup_on_answer_machine",
        ),
        (json.dumps({"agent_id": AGENT, "to": NUMBER, "status_url": 12}).encode(), "status_url"),
    ],
)
def test_malformed_body_is_400(http: requests.Session, emulator: Emulator, data: bytes, field: str) -> None:
    response = http.post(
        f"{emulator.url}/telephony/make-call",
        data=data,
        headers={**HEADERS, "Content-Type": "application/json"},
        timeout=5,
    )

    assert response.status_code == 400
    body = response.json()
    assert body["status"] == 400
    assert field in body["message"]
    assert emulator.calls == []


def test_unknown_agent_is_404(http: requests.Session, emulator: Emulator) -> None:
    response = make_call(http, emulator, agent_id="no-such-agent")

    assert response.status_code == 404
    assert response.json() == error_body(404, f"Version information for number {AGENT_NUMBER} doesn't exist")


@pytest.mark.parametrize(
    "to",
    [
        "+447700900123",
        "44 7700 900123",
        "44-7700-900123",
        "(44)7700900123",
        "123456",
        "1234567890123456",
        "sip:host.example",
        "sip:user@",
        "sip:user@host:99999",
        "tel:447700900123",
        "",
    ],
)
def test_bad_destination_is_400(http: requests.Session, emulator: Emulator, to: str) -> None:
    response = make_call(http, emulator, to=to)

    assert response.status_code == 400
    if to:  # an empty string fails the field check before the format check
        assert response.json() == error_body(400, "Bad destination number format")


@pytest.mark.parametrize(
    "to", ["9725411116037", "1234567", "sip:sipnumber@sipaddress", "sip:alice@pbx.example.com:5060"]
)
def test_good_destinations_are_accepted(http: requests.Session, emulator: Emulator, to: str) -> None:
    assert make_call(http, emulator, to=to).status_code == 200


def test_agent_without_preconfigured_session_is_500(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory
) -> None:
    emulator = vonage_studio_emulator_factory(agents={AGENT: AgentConfig(preconfigured=False)})

    response = make_call(http, emulator)

    assert response.status_code == 500
    assert response.json() == error_body(500, "Failed to fetch preconfigured session information")
    assert emulator.calls == []


# --------------------------------------------------------------------------- rate limit


def test_rate_limit_per_agent(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory
) -> None:
    emulator = vonage_studio_emulator_factory(agents=(AGENT, "agent-2"), calls_per_second=1)

    first = make_call(http, emulator)
    second = make_call(http, emulator)
    other_agent = make_call(http, emulator, agent_id="agent-2")

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json() == error_body(429, "Too Many Requests")
    assert "Retry-After" not in second.headers
    assert other_agent.status_code == 200
    # Strict by default: 0.97 s after the accepted call is still inside its 1 s window...
    time.sleep(max(0.0, emulator.calls[0].monotonic + 0.97 - time.monotonic()))
    assert make_call(http, emulator).status_code == 429
    # ...and a full second after it the agent may call again.
    time.sleep(max(0.0, emulator.calls[0].monotonic + 1.0 - time.monotonic()))
    assert make_call(http, emulator).status_code == 200
    assert len(emulator.calls) == 3


def test_rate_limit_is_a_sliding_one_second_window(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory
) -> None:
    emulator = vonage_studio_emulator_factory(calls_per_second=3)
    assert [make_call(http, emulator).status_code for _ in range(3)] == [200, 200, 200]
    first = emulator.calls[0].monotonic
    # Not a fixed per-second bucket: until the first call is 1 s old, all three slots are taken.
    time.sleep(max(0.0, first + 0.97 - time.monotonic()))
    assert make_call(http, emulator).status_code == 429
    time.sleep(max(0.0, first + 1.0 - time.monotonic()))
    assert make_call(http, emulator).status_code == 200
    # Any four accepted calls span at least the full second.
    gaps = [b.monotonic - a.monotonic for a, b in zip(emulator.calls, emulator.calls[3:], strict=False)]
    assert min(gaps) >= 1.0


def test_rate_tolerance_is_an_explicit_opt_in(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory
) -> None:
    assert vonage_studio_emulator_factory().rate_tolerance == 0.0
    emulator = vonage_studio_emulator_factory(calls_per_second=1, rate_tolerance=0.05)
    assert make_call(http, emulator).status_code == 200
    time.sleep(max(0.0, emulator.calls[0].monotonic + 0.97 - time.monotonic()))
    assert make_call(http, emulator).status_code == 200  # inside 1 s, outside 0.95 s


def test_rate_limit_per_agent_override_and_retry_after(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory
) -> None:
    emulator = vonage_studio_emulator_factory(
        agents={AGENT: AgentConfig(calls_per_second=3), "agent-2": None}, calls_per_second=1, retry_after=2
    )

    statuses = [make_call(http, emulator).status_code for _ in range(4)]
    limited = make_call(http, emulator)

    assert statuses == [200, 200, 200, 429]
    assert limited.headers["Retry-After"] == "2"
    assert emulator.limit_for(AGENT) == 3
    assert emulator.limit_for("agent-2") == 1


# --------------------------------------------------------------------------- recording


def test_requests_are_recorded_without_the_key(http: requests.Session, emulator: Emulator) -> None:
    make_call(http, emulator)
    make_call(http, emulator, headers={"X-Vgai-Key": "wrong-key"})

    recorded = emulator.requests
    assert [(r.method, r.path, r.status) for r in recorded] == [
        ("POST", "/telephony/make-call", 200),
        ("POST", "/telephony/make-call", 401),
    ]
    assert recorded[0].headers["x-vgai-key"] == Emulator.key_fingerprint(KEY)
    assert recorded[0].body == {"agent_id": AGENT, "to": NUMBER}
    assert recorded[0].fault is None
    assert recorded[0].monotonic <= recorded[1].monotonic
    assert recorded[0].received_at.tzinfo is not None
    over_http = http.get(f"{emulator.url}/_emulator/requests", timeout=5).json()
    for text in (repr(recorded), json.dumps(over_http)):
        assert KEY not in text
        assert "wrong-key" not in text
    assert over_http[0]["headers"]["x-vgai-key"] == Emulator.key_fingerprint(KEY)


def test_control_endpoints(http: requests.Session, emulator: Emulator) -> None:
    base = f"{emulator.url}/_emulator"
    make_call(http, emulator)

    calls = http.get(f"{base}/calls", timeout=5).json()
    assert [c["to"] for c in calls] == [NUMBER]
    assert calls[0]["outcome"] == "answered"
    assert http.get(f"{base}/requests", timeout=5).json()[0]["status"] == 200
    assert http.post(f"{base}/reset", timeout=5).json() == {"status": "ok"}
    assert emulator.calls == [] and emulator.requests == []
    assert http.get(f"{base}/requests", timeout=5).json() == []  # control traffic is not recorded

    scripted = http.post(
        f"{base}/script", json=[{"to": NUMBER, "outcome": "busy"}, {"to": "447700900999"}], timeout=5
    )
    assert scripted.json() == {"status": "ok", "count": 2}
    bad = http.post(f"{base}/script", json={"to": NUMBER, "outcome": "exploded"}, timeout=5)
    assert bad.status_code == 400
    assert "outcome" in bad.json()["message"]
    assert http.post(f"{base}/inject", json={"fault": "nope"}, timeout=5).status_code == 400
    assert http.post(f"{base}/inject", data=b"{", timeout=5).status_code == 400
    added = http.post(f"{base}/sessions", json={"destination": NUMBER, "status": "busy"}, timeout=5)
    assert added.json()["count"] == 1
    assert [s["status"] for s in http.get(f"{base}/sessions", timeout=5).json()] == ["busy"]

    make_call(http, emulator)
    assert emulator.calls[0].outcome is Outcome.BUSY


# --------------------------------------------------------------------------- callbacks


def test_busy_call_posts_the_seed_callback(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    emulator.script(NUMBER, "busy")
    status_url = f"{receiver.url}/calls/token-1/status"

    assert make_call(http, emulator, status_url=status_url).status_code == 200

    (received,) = receiver.wait(1)
    body = received["body"]
    (call,) = emulator.calls
    assert received["path"] == "/calls/token-1/status"
    assert set(body) == {"agent_id", "to", "conversation_uuid", "status", "timestamp"}
    assert body["agent_id"] == AGENT
    assert body["to"] == NUMBER
    assert body["status"] == "busy"
    assert body["conversation_uuid"] == call.conversation_uuid
    assert re.match(r"^CON-[0-9a-f-]{36}$", body["conversation_uuid"])
    assert CALLBACK_TS_RE.match(body["timestamp"])
    (attempt,) = emulator.wait_for_callbacks(1)
    assert (attempt.url, attempt.status, attempt.error, attempt.attempt) == (status_url, 204, None, 1)


def test_scripted_over_http_sip_outcome_posts_callback(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    sip = "sip:alice@pbx.example.com"
    http.post(f"{emulator.url}/_emulator/script", json={"to": sip, "outcome": "rejected"}, timeout=5)

    make_call(http, emulator, to=sip, status_url=f"{receiver.url}/cb")

    (received,) = receiver.wait(1)
    assert received["body"]["to"] == sip
    assert received["body"]["status"] == "rejected"


def test_answered_call_posts_no_callback(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    assert make_call(http, emulator, status_url=f"{receiver.url}/cb").status_code == 200

    time.sleep(emulator.callback_delay + 0.3)
    assert receiver.received == []
    assert emulator.callbacks == []


def test_unreachable_callback_is_retried_once(http: requests.Session, emulator: Emulator) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed: nothing listens there
    emulator.script(NUMBER, "timeout")

    make_call(http, emulator, status_url=f"http://127.0.0.1:{port}/cb")

    attempts = emulator.wait_for_callbacks(2)
    assert [a.attempt for a in attempts] == [1, 2]
    assert all(a.status is None and a.error for a in attempts)
    assert attempts[0].payload["status"] == "timeout"


# --------------------------------------------------------------------------- Insights: parameters


def parameters_url(emulator: Emulator, session_id: str) -> str:
    return f"{emulator.url}/insights/sessions/{session_id}/parameters"


def test_parameters_appear_after_the_index_delay(http: requests.Session, emulator: Emulator) -> None:
    emulator.script(NUMBER, "answered", {"CONFIRMED": "yes", "CALLER_NAME": "Diane M."})
    placed = make_call(http, emulator, session_parameters=[{"name": "CALLER_NAME", "value": "Diane"}]).json()
    url = parameters_url(emulator, placed["session_id"])
    params = {"session_start_time": placed["session_start_time"]}

    early = http.get(url, params=params, headers=HEADERS, timeout=5)
    assert early.status_code == 404
    assert early.json() == error_body(404, "Session not found")

    time.sleep(emulator.insights_index_delay + 0.05)
    late = http.get(url, params=params, headers=HEADERS, timeout=5)
    assert late.status_code == 200
    assert late.json() == {
        "parameters": [{"name": "CALLER_NAME", "value": "Diane M."}, {"name": "CONFIRMED", "value": "yes"}]
    }
    by_date = http.get(url, params={"session_start_time": placed["session_start_time"][:10]}, headers=HEADERS)
    assert by_date.status_code == 200

    emulator.insights_shape = "list"
    assert http.get(url, params=params, headers=HEADERS, timeout=5).json() == [
        {"name": "CALLER_NAME", "value": "Diane M."},
        {"name": "CONFIRMED", "value": "yes"},
    ]
    emulator.insights_shape = "items"
    assert emulator.insights_shape == "items"
    assert http.get(url, params=params, headers=HEADERS, timeout=5).json() == {
        "CALLER_NAME": "Diane M.",
        "CONFIRMED": "yes",
    }


def test_parameters_errors(http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory) -> None:
    emulator = vonage_studio_emulator_factory(calls_per_second=100, insights_index_delay=0)
    emulator.script("447700900999", "busy")
    answered = make_call(http, emulator).json()
    busy = make_call(http, emulator, to="447700900999").json()
    start = {"session_start_time": answered["session_start_time"]}

    def get(session_id: str, params: dict[str, str], headers: dict[str, str] = HEADERS) -> Any:
        return http.get(parameters_url(emulator, session_id), params=params, headers=headers, timeout=5)

    assert get(answered["session_id"], start).status_code == 200
    assert get(busy["session_id"], {"session_start_time": busy["session_start_time"]}).status_code == 404
    assert get(str(uuid.uuid4()), start).json() == error_body(404, "Session not found")
    unauthorised = get(answered["session_id"], start, {"X-Vgai-Key": "wrong-key"})
    assert unauthorised.json() == error_body(401, "Not Authorised")
    missing = get(answered["session_id"], {})
    assert missing.status_code == 401
    assert "session_start_time" in missing.json()["message"]
    assert get(answered["session_id"], {"session_start_time": "yesterday"}).status_code == 401


# --------------------------------------------------------------------------- Insights: search


@pytest.fixture
def seeded(emulator: Emulator) -> Emulator:
    """1,000 sessions an hour apart starting 2024-01-01, every 10th busy, every 4th CONFIRMED."""
    base = datetime(2024, 1, 1)
    for i in range(1000):
        emulator.add_session(
            id=f"s-{i:04d}",
            agent_id=AGENT if i % 2 else "agent-2",
            destination=f"4477009{i:05d}",
            session_start_time=base + timedelta(hours=i),
            status="busy" if i % 10 == 0 else "answered",
            duration=i % 60,
            parameters={"CONFIRMED": "yes" if i % 4 == 0 else "no"},
        )
    return emulator


def search(http: requests.Session, emulator: Emulator, headers: Any = HEADERS, **params: Any) -> Any:
    params.setdefault("from_date", "2024-01-01T00:00:00")
    params.setdefault("to_date", "2024-02-15T00:00:00")
    return http.get(f"{emulator.url}/insights/sessions", params=params, headers=headers, timeout=10)


def test_search_pagination_and_sorting(http: requests.Session, seeded: Emulator) -> None:
    first = search(http, seeded).json()
    assert first["total"] == 1000
    assert (first["page_number"], first["page_size"], len(first["sessions"])) == (0, 100, 100)
    assert first["sessions"][0]["id"] == "s-0000"
    session = first["sessions"][1]
    assert set(session) == {
        "id",
        "agent_id",
        "destination",
        "source",
        "session_start_time",
        "status",
        "channel_data",
        "parameters",
    }
    assert session["source"] == AGENT_NUMBER
    assert session["session_start_time"] == "2024-01-01T01:00:00.000000"
    assert session["channel_data"] == {"duration": 1}

    pages = [search(http, seeded, page_number=n, page_size=300).json()["sessions"] for n in range(4)]
    assert [len(p) for p in pages] == [300, 300, 300, 100]
    assert len({s["id"] for page in pages for s in page}) == 1000
    assert search(http, seeded, page_number=4, page_size=300).json()["sessions"] == []

    newest = search(http, seeded, sort_by="session_start_time:desc", page_size=1).json()
    assert newest["sessions"][0]["id"] == "s-0999"
    by_duration = search(http, seeded, sort_by="channel_data.duration:desc,id:asc", page_size=3).json()
    assert [s["id"] for s in by_duration["sessions"]] == ["s-0059", "s-0119", "s-0179"]


def test_search_window_project_and_filter(http: requests.Session, seeded: Emulator) -> None:
    window = search(http, seeded, from_date="2024-01-02T00:00:00", to_date="2024-01-02T23:59:59").json()
    assert window["total"] == 24

    projected = search(http, seeded, project_fields=["id", "status"], page_size=2).json()
    assert projected["sessions"] == [
        {"id": "s-0000", "status": "busy"},
        {"id": "s-0001", "status": "answered"},
    ]
    comma = search(http, seeded, project_fields="id,channel_data.duration", page_size=1).json()
    assert comma["sessions"] == [{"id": "s-0000", "channel_data": {"duration": 0}}]

    busy = {"bool": {"must": [{"match": {"status": "busy"}}]}}
    assert search(http, seeded, filter_by=json.dumps(busy)).json()["total"] == 100
    busy_not_agent_1 = {
        "bool": {"must": [{"match": {"status": "busy"}}], "must_not": [{"match": {"agent_id": AGENT}}]}
    }
    assert search(http, seeded, filter_by=json.dumps(busy_not_agent_1)).json()["total"] == 100
    either = {"bool": {"should": [{"match": {"id": "s-0001"}}, {"match": {"id": "s-0002"}}]}}
    assert [s["id"] for s in search(http, seeded, filter_by=json.dumps(either)).json()["sessions"]] == [
        "s-0001",
        "s-0002",
    ]
    confirmed = {"must": {"match": {"parameters.CONFIRMED": "yes"}}}  # bool wrapper optional
    assert search(http, seeded, filter_by=json.dumps(confirmed)).json()["total"] == 250


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from_date": ""}, "from_date"),
        ({"to_date": "not a date"}, "to_date"),
        ({"from_date": "2024-01-01T00:00:00", "to_date": "2024-03-02T00:00:01"}, "60 days"),
        ({"from_date": "2024-02-01T00:00:00", "to_date": "2024-01-01T00:00:00"}, "to_date"),
        ({"page_number": "-1"}, "page_number"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "1001"}, "page_size"),
        ({"page_size": "ten"}, "page_size"),
        ({"sort_by": "id:sideways"}, "sort_by"),
        ({"filter_by": "{oops"}, "filter_by"),
        ({"filter_by": json.dumps({"range": {"duration": {"gt": 1}}})}, "filter_by"),
    ],
)
def test_search_bad_parameters_are_401(
    http: requests.Session, emulator: Emulator, params: dict[str, str], field: str
) -> None:
    response = search(http, emulator, **params)

    assert response.status_code == 401
    assert field in response.json()["message"]


def test_search_exactly_60_days_and_auth(http: requests.Session, emulator: Emulator) -> None:
    assert search(http, emulator, to_date="2024-03-01T00:00:00").status_code == 200  # 60 days after
    assert search(http, emulator, headers={}).json() == error_body(401, "Not Authorised")


def test_search_sees_calls_once_indexed_and_other_shapes(http: requests.Session, emulator: Emulator) -> None:
    placed = make_call(http, emulator).json()
    today = placed["session_start_time"][:10]
    window = {"from_date": f"{today}T00:00:00", "to_date": f"{today}T23:59:59.999999"}

    assert search(http, emulator, **window).json()["total"] == 0
    time.sleep(emulator.insights_index_delay + 0.05)
    (session,) = search(http, emulator, **window).json()["sessions"]
    assert (session["id"], session["destination"], session["status"]) == (
        placed["session_id"],
        NUMBER,
        "answered",
    )

    emulator.insights_shape = "list"
    assert [s["id"] for s in search(http, emulator, **window).json()] == [placed["session_id"]]
    emulator.insights_shape = "items"
    items = search(http, emulator, **window).json()
    assert items["count"] == 1
    assert items["items"][0]["id"] == placed["session_id"]


# --------------------------------------------------------------------------- faults


def test_fault_429_and_503_answer_without_processing(http: requests.Session, emulator: Emulator) -> None:
    emulator.inject(Fault.UNAVAILABLE)
    emulator.inject(429, count=2, retry_after=3)

    responses = [make_call(http, emulator) for _ in range(4)]

    assert [r.status_code for r in responses] == [503, 429, 429, 200]
    assert responses[0].json() == error_body(503, "Service Unavailable")
    assert responses[1].json() == error_body(429, "Too Many Requests")
    assert responses[1].headers["Retry-After"] == "3"
    assert len(emulator.calls) == 1
    assert [r.fault for r in emulator.requests] == ["503", "429", "429", None]


def test_fault_matches_destination(http: requests.Session, emulator: Emulator) -> None:
    http.post(
        f"{emulator.url}/_emulator/inject", json={"fault": "503", "to": "447700900999"}, timeout=5
    ).raise_for_status()

    assert make_call(http, emulator).status_code == 200
    assert make_call(http, emulator, to="447700900999").status_code == 503
    assert make_call(http, emulator, to="447700900999").status_code == 200


def test_fault_drop_is_a_connection_error_and_places_nothing(
    http: requests.Session, emulator: Emulator
) -> None:
    emulator.inject("drop")

    with pytest.raises(requests.ConnectionError):
        make_call(http, emulator)

    assert emulator.calls == []
    (recorded,) = emulator.requests
    assert (recorded.fault, recorded.status) == ("drop", None)
    assert make_call(http, emulator).status_code == 200  # the next request is served normally


def test_fault_timeout_places_the_call_then_times_out(http: requests.Session, emulator: Emulator) -> None:
    emulator.inject("timeout", delay=3)

    with pytest.raises(requests.ReadTimeout):
        http.post(
            f"{emulator.url}/telephony/make-call",
            json={"agent_id": AGENT, "to": NUMBER},
            headers=HEADERS,
            timeout=(2, 0.5),
        )

    (call,) = emulator.calls
    assert call.to == NUMBER
    (recorded,) = emulator.requests
    assert (recorded.fault, recorded.status) == ("timeout", 200)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(EmulatorConfigError, match="insights_shape"):
        Emulator(insights_shape="xml")
    with pytest.raises(EmulatorConfigError, match="calls_per_second"):
        Emulator(calls_per_second=0)
    with pytest.raises(EmulatorConfigError, match="rate_tolerance"):
        Emulator(rate_tolerance=1.0)
    emulator = Emulator()
    with pytest.raises(EmulatorConfigError, match="outcome"):
        emulator.script(NUMBER, "exploded")
    with pytest.raises(EmulatorConfigError, match="fault"):
        emulator.inject("500")
    with pytest.raises(RuntimeError):
        _ = emulator.url


def test_in_process_app_records_too() -> None:
    import asyncio

    import httpx

    emulator = Emulator()

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=emulator.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
            body = {"agent_id": AGENT, "to": NUMBER}
            return await client.post("/telephony/make-call", json=body, headers=HEADERS)

    response = asyncio.run(call())

    assert response.status_code == 200
    assert [r.status for r in emulator.requests] == [200]


# --------------------------------------------------------------------------- fixtures, connection, CLI


def test_default_fixture_points_the_connection_at_the_emulator(vonage_studio_emulator: Emulator) -> None:
    conn = json.loads(os.environ["AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT"])

    assert conn == {
        "conn_type": "vonage_studio",
        "host": vonage_studio_emulator.url,
        "password": KEY,
        "extra": {"calls_per_second": 1},
    }
    assert vonage_studio_emulator.api_keys == (KEY,)
    assert list(vonage_studio_emulator.agents) == [AGENT]
    assert vonage_studio_emulator.url.startswith("http://127.0.0.1:")


@pytest.mark.vonage_studio_emulator(calls_per_second=5, agents=("agent-9",))
def test_marker_configures_the_default_fixture(vonage_studio_emulator: Emulator) -> None:
    assert vonage_studio_emulator.calls_per_second == 5
    assert list(vonage_studio_emulator.agents) == ["agent-9"]
    extra = json.loads(os.environ["AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT"])["extra"]
    assert extra == {"calls_per_second": 5}


def test_factory_sets_named_connections(vonage_studio_emulator_factory: EmulatorFactory) -> None:
    emulator = vonage_studio_emulator_factory(
        conn_id="studio_us", connection_extras={"callback_secret": "s3cret", "calls_per_second": None}
    )

    conn = json.loads(os.environ["AIRFLOW_CONN_STUDIO_US"])
    assert conn["host"] == emulator.url
    assert conn["extra"] == {"callback_secret": "s3cret"}


def test_connection_helpers_parse_in_airflow(emulator: Emulator) -> None:
    from airflow.models.connection import Connection

    for conn in (
        Connection(conn_id="a", uri=emulator.connection_uri(timeout=3)),
        Connection.from_json(emulator.connection_json(timeout=3), conn_id="b"),
    ):
        assert conn.conn_type == "vonage_studio"
        assert conn.host == emulator.url
        assert conn.port is None
        assert conn.password == KEY
        assert conn.extra_dejson == {"calls_per_second": 1000, "timeout": 3}


@pytest.mark.parametrize("key_via", ["argument", "environment"])
def test_cli_serves_until_sigterm(http: requests.Session, key_via: str) -> None:
    command = [
        sys.executable,
        "-m",
        "airflow_provider_vonage_studio.testing.emulator",
        "--port",
        "0",
        "--agent",
        AGENT,
        "--script",
        f"{NUMBER}=busy",
    ]
    env = dict(os.environ)
    if key_via == "argument":
        command += ["--key", KEY]
    else:  # kept out of the command line, which every user can read in ps
        env["VONAGE_STUDIO_EMULATOR_KEYS"] = f"another-key, {KEY}"
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        stdout = proc.stdout
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=30)
            match = re.fullmatch(r"emulator listening on (http://127\.0\.0\.1:(\d+))\n", line)
            assert match, line
            url = match.group(1)
            assert int(match.group(2)) > 0

            body = {"agent_id": AGENT, "to": NUMBER}
            placed = http.post(f"{url}/telephony/make-call", json=body, headers=HEADERS, timeout=5)
            assert placed.status_code == 200
            (call,) = http.get(f"{url}/_emulator/calls", timeout=5).json()
            assert call["outcome"] == "busy"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                returncode = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        assert returncode == 0, proc.stderr.read()


# Every top-level name of the single-module emulator (before the package split), importable
# from the package for one release.
OLD_MODULE_NAMES = [
    "AGENT_NUMBER",
    "MAKE_CALL_PATH",
    "CONTROL_PREFIX",
    "KEY_HEADER",
    "MAX_SEARCH_SPAN",
    "MAX_PAGE_SIZE",
    "DEFAULT_PAGE_SIZE",
    "_DIGITS_RE",
    "_SIP_RE",
    "_SENSITIVE_HEADERS",
    "Message",
    "Receive",
    "Send",
    "EmulatorConfigError",
    "Outcome",
    "Fault",
    "InsightsShape",
    "AgentConfig",
    "RecordedRequest",
    "PlacedCall",
    "CallbackAttempt",
    "_PendingFault",
    "_Session",
    "_ApiError",
    "_ConnectionDropped",
    "_utcnow",
    "_format_start_time",
    "_format_callback_timestamp",
    "_parse_datetime",
    "_valid_destination",
    "_as_str_tuple",
    "_check_positive_int",
    "_check_non_negative",
    "_parameters_list",
    "_merge_parameters",
    "_resolve",
    "_project",
    "_sort_key",
    "_sort_key_for",
    "_matches",
    "_clauses",
    "_bool_query",
    "_compile_filter",
    "Emulator",
    "_drop_connection",
    "_build_app",
    "_parse_agent",
    "_parse_script",
    "KEYS_ENV",
    "_keys_from_env",
    "_argument_parser",
    "main",
]
OLD_ALL = [
    "AGENT_NUMBER",
    "AgentConfig",
    "CallbackAttempt",
    "Emulator",
    "EmulatorConfigError",
    "Fault",
    "InsightsShape",
    "Outcome",
    "PlacedCall",
    "RecordedRequest",
    "main",
]


def test_old_module_names_stay_importable() -> None:
    import airflow_provider_vonage_studio.testing.emulator as package

    assert [name for name in OLD_MODULE_NAMES if not hasattr(package, name)] == []
    assert set(OLD_ALL) <= set(package.__all__)
    assert package._valid_destination("sip:alice@pbx.example.com")
    assert package._compile_filter('{"match": {"status": "busy"}}')({"status": "BUSY"})
