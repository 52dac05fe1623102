"""The emulator's end-call webhook, per-attempt scripts and Insights for answered calls,
over real sockets on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests

from airflow_provider_vonage_studio.testing.emulator import (
    END_CALL_TOKEN_PARAMETER,
    Emulator,
    EmulatorConfigError,
    Outcome,
)
from airflow_provider_vonage_studio.testing.pytest_plugin import EmulatorFactory
from tests.integration.emulator_support import CallbackReceiver

KEY = "test-key"
AGENT = "agent-1"
NUMBER = "447700900123"
HEADERS = {"X-Vgai-Key": KEY}


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # loopback traffic never goes through an environment proxy
        yield session


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    with Emulator(
        calls_per_second=1000, callback_delay=0.05, talk_time=0.2, insights_index_delay=0
    ) as emulator:
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


def make_call(
    http: requests.Session, emulator: Emulator, *, token: str | None = "tok-1", to: str = NUMBER, **body: Any
) -> Any:
    payload: dict[str, Any] = {"agent_id": AGENT, "to": to, **body}
    if token is not None:
        payload.setdefault("session_parameters", []).append(
            {"name": END_CALL_TOKEN_PARAMETER, "value": token}
        )
    response = http.post(f"{emulator.url}/telephony/make-call", json=payload, headers=HEADERS, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- end-call webhook


def test_answered_call_posts_the_end_call_webhook_after_its_talk_time(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    emulator.script(NUMBER, "answered", {"CONFIRMED": "yes", "SLOT": 3})
    placed = make_call(
        http,
        emulator,
        status_url=f"{receiver.url}/hooks/calls/status-token/status",
        session_parameters=[{"name": "CALLER_NAME", "value": "Diane"}],
    )

    (received,) = receiver.wait(1)
    assert received["path"] == "/hooks/calls/tok-1/ended"
    body = received["body"]
    assert body == {
        "VS_CALL_TOKEN": "tok-1",
        "CONFIRMED": "yes",
        "SLOT": "3",
        "session_id": placed["session_id"],
        "ended_at": body["ended_at"],
    }
    started = datetime.fromisoformat(placed["session_start_time"])
    ended = datetime.fromisoformat(body["ended_at"])
    assert ended.tzinfo is not None
    assert ended.replace(tzinfo=None) - started >= timedelta(seconds=0.19)  # the talk time, from the start
    (attempt,) = emulator.wait_for_end_calls(1)
    assert (attempt.url, attempt.status, attempt.attempt) == (
        f"{receiver.url}/hooks/calls/tok-1/ended",
        204,
        1,
    )
    assert emulator.callbacks == []  # an answered call posts no status callback
    listed = http.get(f"{emulator.url}/_emulator/end-calls", timeout=5).json()
    assert [a["payload"]["session_id"] for a in listed] == [placed["session_id"]]


def test_end_call_waits_for_the_talk_time(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    emulator.script(NUMBER, "answered", talk_time=30)
    make_call(http, emulator, status_url=f"{receiver.url}/calls/t/status")

    time.sleep(0.5)
    assert receiver.received == []
    assert emulator.end_calls == []


@pytest.mark.parametrize(
    ("end_call_url", "path"),
    [
        (None, "/calls/tok-1/ended"),
        ("{receiver}/studio", "/studio/calls/tok-1/ended"),
        ("{receiver}/hook?token=$VS_CALL_TOKEN", "/hook?token=tok-1"),
    ],
)
def test_end_call_url_template_base_or_derived(
    http: requests.Session,
    vonage_studio_emulator_factory: EmulatorFactory,
    receiver: CallbackReceiver,
    end_call_url: str | None,
    path: str,
) -> None:
    emulator = vonage_studio_emulator_factory(
        talk_time=0, end_call_url=None if end_call_url is None else end_call_url.format(receiver=receiver.url)
    )
    make_call(http, emulator, status_url=f"{receiver.url}/calls/other/status")

    (received,) = receiver.wait(1)
    assert received["path"] == path


def test_no_webhook_without_the_token_the_switch_or_a_url(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory, receiver: CallbackReceiver
) -> None:
    status_url = f"{receiver.url}/calls/t/status"
    plain = vonage_studio_emulator_factory(calls_per_second=100, talk_time=0)
    make_call(http, plain, token=None, status_url=status_url)  # no VS_CALL_TOKEN
    make_call(http, plain, to="447700900124")  # no status_url, no end_call_url: nowhere to post
    switched_off = vonage_studio_emulator_factory(talk_time=0, end_call_webhook=False)
    make_call(http, switched_off, status_url=status_url)

    time.sleep(0.4)
    assert receiver.received == []
    assert plain.end_calls == [] and switched_off.end_calls == []


def test_scripted_never_and_late(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    emulator.script(NUMBER, "answered", end_call=False, talk_time=0)
    emulator.script("447700900124", "answered", talk_time=0, end_call_delay=0.6)
    make_call(http, emulator, status_url=f"{receiver.url}/calls/a/status", token="never")
    late = make_call(
        http, emulator, to="447700900124", status_url=f"{receiver.url}/calls/b/status", token="late"
    )

    (attempt,) = emulator.wait_for_end_calls(1)
    assert attempt.payload["VS_CALL_TOKEN"] == "late"
    # ended_at says when the call ended (right at its start here), not when the late POST left.
    ended = datetime.fromisoformat(attempt.payload["ended_at"])
    assert attempt.sent_at - ended >= timedelta(seconds=0.55)
    assert late["session_id"] == attempt.payload["session_id"]
    time.sleep(0.2)
    assert [a.payload["VS_CALL_TOKEN"] for a in emulator.end_calls] == ["late"]


def test_end_call_to_an_unreachable_receiver_is_retried_once(
    http: requests.Session, emulator: Emulator
) -> None:
    closed = CallbackReceiver()
    closed.close()  # bound, then closed: nothing listens there
    emulator.script(NUMBER, "answered", talk_time=0)

    make_call(http, emulator, status_url=f"{closed.url}/calls/t/status")

    attempts = emulator.wait_for_end_calls(2)
    assert [a.attempt for a in attempts] == [1, 2]
    assert all(a.status is None and a.error for a in attempts)


def test_reset_abandons_a_pending_end_call(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    emulator.script(NUMBER, "answered", talk_time=0.3)
    make_call(http, emulator, status_url=f"{receiver.url}/calls/t/status")
    emulator.reset()

    time.sleep(0.6)
    assert receiver.received == []
    assert emulator.end_calls == []


# --------------------------------------------------------------------------- Insights for answered calls


def parameters(http: requests.Session, emulator: Emulator, placed: dict[str, str]) -> requests.Response:
    return http.get(
        f"{emulator.url}/insights/sessions/{placed['session_id']}/parameters",
        params={"session_start_time": placed["session_start_time"]},
        headers=HEADERS,
        timeout=5,
    )


def search(http: requests.Session, emulator: Emulator, placed: dict[str, str]) -> list[dict[str, Any]]:
    day = placed["session_start_time"][:10]
    response = http.get(
        f"{emulator.url}/insights/sessions",
        params={"from_date": f"{day}T00:00:00", "to_date": f"{day}T23:59:59.999999"},
        headers=HEADERS,
        timeout=5,
    )
    return list(response.json()["sessions"])


def test_answered_session_is_404_until_its_scripted_index_delay(
    http: requests.Session, emulator: Emulator
) -> None:
    emulator.script(NUMBER, "answered", {"CONFIRMED": "yes"}, index_delay=0.4)
    placed = make_call(
        http, emulator, token=None, session_parameters=[{"name": "CALLER_NAME", "value": "Di"}]
    )

    assert parameters(http, emulator, placed).status_code == 404
    assert search(http, emulator, placed) == []
    time.sleep(0.45)
    assert parameters(http, emulator, placed).json() == {
        "parameters": [{"name": "CALLER_NAME", "value": "Di"}, {"name": "CONFIRMED", "value": "yes"}]
    }
    (session,) = search(http, emulator, placed)
    assert (session["id"], session["status"]) == (placed["session_id"], "answered")
    assert {"name": "CONFIRMED", "value": "yes"} in session["parameters"]


# --------------------------------------------------------------------------- scripts across attempts


def test_outcomes_follow_the_attempts_and_the_last_repeats(
    http: requests.Session, emulator: Emulator, receiver: CallbackReceiver
) -> None:
    emulator.script(NUMBER, ["busy", "timeout", "answered"], {"CONFIRMED": "yes"}, talk_time=0)
    status_url = f"{receiver.url}/calls/t/status"

    placed = [make_call(http, emulator, status_url=status_url, token=f"tok-{n}") for n in range(4)]

    assert [(c.outcome, c.attempt) for c in emulator.calls] == [
        (Outcome.BUSY, 1),
        (Outcome.TIMEOUT, 2),
        (Outcome.ANSWERED, 3),
        (Outcome.ANSWERED, 4),
    ]
    assert sorted(a.payload["status"] for a in emulator.wait_for_callbacks(2)) == ["busy", "timeout"]
    ended = emulator.wait_for_end_calls(2)
    assert sorted(a.payload["session_id"] for a in ended) == sorted(p["session_id"] for p in placed[2:])
    time.sleep(0.2)
    assert len(emulator.callbacks) == 2 and len(emulator.end_calls) == 2


def test_scripting_again_starts_over_and_rejected_calls_do_not_count(
    http: requests.Session, vonage_studio_emulator_factory: EmulatorFactory
) -> None:
    emulator = vonage_studio_emulator_factory(calls_per_second=1, talk_time=0)
    emulator.script(NUMBER, ["busy", "answered"])
    make_call(http, emulator, token=None)
    over_limit = http.post(
        f"{emulator.url}/telephony/make-call",
        json={"agent_id": AGENT, "to": NUMBER},
        headers=HEADERS,
        timeout=5,
    )
    assert over_limit.status_code == 429
    time.sleep(max(0.0, emulator.calls[0].monotonic + 1.0 - time.monotonic()))
    make_call(http, emulator, token=None)
    emulator.script(NUMBER, ["rejected", "answered"])
    time.sleep(max(0.0, emulator.calls[1].monotonic + 1.0 - time.monotonic()))
    make_call(http, emulator, token=None)

    assert [(c.outcome.value, c.attempt) for c in emulator.calls] == [
        ("busy", 1),
        ("answered", 2),
        ("rejected", 1),
    ]


def test_script_over_http_with_a_list_and_its_settings(http: requests.Session, emulator: Emulator) -> None:
    base = f"{emulator.url}/_emulator"
    ok = http.post(
        f"{base}/script",
        json={
            "to": NUMBER,
            "outcome": ["busy", "answered"],
            "talk_time": 5,
            "end_call": False,
            "index_delay": 2,
        },
        timeout=5,
    )
    assert ok.json() == {"status": "ok", "count": 1}
    for bad, field in [
        ({"to": NUMBER, "outcome": []}, "outcome"),
        ({"to": NUMBER, "outcome": ["busy", "exploded"]}, "outcome"),
        ({"to": NUMBER, "talk_time": -1}, "talk_time"),
        ({"to": NUMBER, "end_call": "no"}, "end_call"),
        ({"to": NUMBER, "end_call_delay": "late"}, "end_call_delay"),
        ({"to": NUMBER, "index_delay": -2}, "index_delay"),
        ({"to": NUMBER, "attempts": 3}, "attempts"),
    ]:
        refused = http.post(f"{base}/script", json=bad, timeout=5)
        assert refused.status_code == 400, bad
        assert field in refused.json()["message"]

    make_call(http, emulator, token=None)
    make_call(http, emulator, token=None)
    calls = http.get(f"{base}/calls", timeout=5).json()
    assert [(c["outcome"], c["attempt"]) for c in calls] == [("busy", 1), ("answered", 2)]


def test_bad_end_call_settings_are_refused() -> None:
    with pytest.raises(EmulatorConfigError, match="talk_time"):
        Emulator(talk_time=-1)
    with pytest.raises(EmulatorConfigError, match="end_call_url"):
        Emulator(end_call_url="calls/ended")
    with pytest.raises(EmulatorConfigError, match="end_call_webhook"):
        Emulator(end_call_webhook="yes")  # type: ignore[arg-type]
    with pytest.raises(EmulatorConfigError, match="outcome"):
        Emulator(scripts={NUMBER: ["busy", "maybe"]})


def test_cli_scripts_attempts_and_end_call_knobs(http: requests.Session) -> None:
    from airflow_provider_vonage_studio.testing.emulator import cli

    argv = ["--script", f"{NUMBER}=busy,answered", "--talk-time", "0.5", "--no-end-call"]
    argv += ["--end-call-url", "http://h/$VS_CALL_TOKEN", "--message-script", f"{NUMBER}=read"]
    args = cli._argument_parser().parse_args([*argv, "--separate-messaging-budget"])
    emulator = cli._emulator_from(args)

    assert emulator._scripts[NUMBER].outcomes == (Outcome.BUSY, Outcome.ANSWERED)
    assert [o.value for o in emulator._message_scripts[NUMBER].outcomes] == ["read"]
    assert (emulator.talk_time, emulator.end_call_url, emulator.end_call_webhook) == (
        0.5,
        "http://h/$VS_CALL_TOKEN",
        False,
    )
    assert emulator.shared_rate_budget is False
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_provider_vonage_studio.testing.emulator",
            "--script",
            f"{NUMBER}=busy,",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "TO=OUTCOME" in refused.stderr


def test_session_ids_are_uuids(http: requests.Session, emulator: Emulator) -> None:
    assert uuid.UUID(make_call(http, emulator)["session_id"]).version == 4


@pytest.mark.vonage_studio_emulator(
    talk_time=0, end_call_url="http://127.0.0.1:9/base", shared_rate_budget=False
)
def test_marker_takes_the_new_knobs(vonage_studio_emulator: Emulator) -> None:
    assert vonage_studio_emulator.talk_time == 0
    assert vonage_studio_emulator.end_call_url == "http://127.0.0.1:9/base"
    assert vonage_studio_emulator.shared_rate_budget is False
