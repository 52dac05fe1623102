"""Narrow tests of send_message's body and answer reading with requests-mock (the behaviour over
real HTTP, the ledger and the receiver are in tests/integration/test_messaging.py)."""

from __future__ import annotations

import pytest

from airflow_provider_vonage_studio.calls import CallState
from airflow_provider_vonage_studio.exceptions import VonageStudioBadRequest, VonageStudioConfigError
from airflow_provider_vonage_studio.hooks.messaging import (
    _read_answer,
    check_message_fields,
    elide_message_token,
)
from airflow_provider_vonage_studio.hooks.vonage_studio import MessageResult, VonageStudioHook

URL = "https://studio.test/messaging/conversation"
STATUS_URL = "https://hooks.example.com/messages/tok/status"
WHATSAPP = {"namespace": "ns", "template": "reminder", "locale": "en_GB"}


@pytest.fixture
def hook(vs_conn, tmp_path):
    from airflow_provider_vonage_studio.store import CallStore

    store = CallStore(f"sqlite:///{tmp_path}/store.db")
    h = VonageStudioHook(store=store, pace=False, retry_backoff=0.01)
    h._sleep = lambda seconds: None
    yield h
    store.dispose()


def test_sms_body_is_the_documented_one(hook, requests_mock):
    requests_mock.post(URL, json={"session_id": "s-1", "session_start_time": "2026-01-01T10:00:00.5"})
    result = hook.send_message(
        "+44 7700 900123", "agent", channel="sms", status_url=STATUS_URL, session_parameters={"NAME": "Di"}
    )
    assert requests_mock.request_history[0].json() == {
        "to": "447700900123",
        "agent_id": "agent",
        "channel": "sms",
        "status_url": STATUS_URL,
        "session_parameters": [{"name": "NAME", "value": "Di"}],
    }
    assert isinstance(result, MessageResult)
    assert (result.session_id, result.session_start_time.isoformat()) == (
        "s-1",
        "2026-01-01T10:00:00.500000+00:00",
    )


def test_whatsapp_body_carries_the_template_fields(hook, requests_mock):
    requests_mock.post(URL, json={"session_id": "s-2"})
    components = [{"type": "body", "parameters": [{"type": "text", "text": "Di"}]}]
    hook.send_message(
        "447700900123", "agent", channel="whatsapp", status_url=STATUS_URL, components=components, **WHATSAPP
    )
    body = requests_mock.request_history[0].json()
    assert {k: body[k] for k in ("channel", *WHATSAPP, "components")} == {
        "channel": "whatsapp",
        **WHATSAPP,
        "components": components,
    }


@pytest.mark.parametrize(
    ("answer", "session_id", "started"),
    [
        ({"session_id": "a", "session_start_time": "2026-01-01T00:00:00"}, "a", True),
        ({"sessionId": "b"}, "b", False),
        ({"data": {"conversation_id": "c", "start_time": "2026-01-01T00:00:00Z"}}, "c", True),
        ({"id": 12345}, "12345", False),
        ({"session_id": "d", "session_start_time": "not a time"}, "d", False),
        ({"status": "accepted"}, None, False),
        ([], None, False),
        (None, None, False),
    ],
)
def test_answers_are_read_tolerantly(answer, session_id, started):
    found, start = _read_answer(answer)
    assert found == session_id
    assert (start is not None) == started


def test_an_accepted_message_without_a_readable_body_is_placed_not_unknown(hook, requests_mock):
    requests_mock.post(URL, status_code=202, text="accepted")
    result = hook.send_message("447700900123", "agent", channel="sms", status_url=STATUS_URL, call_ref="vs-m")
    assert (result.session_id, result.session_start_time) == (None, None)
    row = hook.store.get_call("vs-m")
    assert (row.state, row.channel, row.session_id) == (CallState.PLACED, "sms", None)
    # The ledger answers the retry.
    assert (
        hook.send_message("447700900123", "agent", channel="sms", status_url=STATUS_URL, call_ref="vs-m")
        == result
    )
    assert requests_mock.call_count == 1


def test_refusals_map_as_for_calls_and_are_recorded(hook, requests_mock):
    requests_mock.post(URL, status_code=400, json={"status": 400, "message": "template is unknown"})
    with pytest.raises(VonageStudioBadRequest, match="template is unknown"):
        hook.send_message("447700900123", "agent", channel="sms", status_url=STATUS_URL, call_ref="vs-r")
    assert hook.store.get_call("vs-r").state is CallState.REJECTED
    with pytest.raises(VonageStudioBadRequest):
        hook.send_message("447700900123", "agent", channel="sms", status_url=STATUS_URL, call_ref="vs-r")
    assert requests_mock.call_count == 1


def test_retryable_answers_are_retried(hook, requests_mock):
    requests_mock.post(
        URL, [{"status_code": 503, "json": {"message": "busy"}}, {"json": {"session_id": "ok"}}]
    )
    result = hook.send_message(
        "447700900123", "agent", channel="sms", status_url=STATUS_URL, call_ref="vs-503"
    )
    assert result.session_id == "ok" and requests_mock.call_count == 2


def test_fields_are_checked_per_channel():
    assert check_message_fields("sms") == {}
    assert check_message_fields("whatsapp", **WHATSAPP) == WHATSAPP
    with pytest.raises(VonageStudioConfigError, match="WhatsApp needs locale"):
        check_message_fields("whatsapp", namespace="n", template="t")
    with pytest.raises(
        VonageStudioConfigError, match="locale is WhatsApp-only: not allowed with channel 'sms'"
    ):
        check_message_fields("sms", locale="en")
    with pytest.raises(VonageStudioConfigError, match="template: expected a string"):
        check_message_fields("whatsapp", **{**WHATSAPP, "template": 7})
    with pytest.raises(VonageStudioConfigError, match="template: must be at most"):
        check_message_fields("whatsapp", **{**WHATSAPP, "template": "a\u202eb"})


def test_message_tokens_are_elided():
    assert elide_message_token("https://x/messages/vs-1.sig.abc/status") == "https://x/messages/…/status"
