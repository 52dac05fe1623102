"""Messages over real HTTP: the hook and the operators against the strict emulator, the status
callbacks through the real receiver, the ledger on SQLite and on PostgreSQL.

"Sent twice" and "refused before any request" are observed where they would show: in the
requests the emulator received.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_vonage_studio._compat import AirflowFailException
from airflow_provider_vonage_studio.calls import CallState, TaskIdentity
from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    DoNotCall,
    InvalidDestination,
    VonageStudioConfigError,
)
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.operators.messaging import SendMessageOperator, SendMessagesOperator
from airflow_provider_vonage_studio.signing import sign_token
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import MAKE_CALL_PATH, MESSAGING_PATH, Emulator
from airflow_provider_vonage_studio.testing.servers import ThreadedServer
from tests.integration.dial_workers import FakeTI

ROOT = Path(__file__).resolve().parents[2]
KEY = "messaging-key-4c1e9a7b2d"
SECRET = "messaging-callback-secret-8f3a2b"
AGENT = "msg-agent"
NUMBER, OTHER = "447700900123", "447700900124"
WHATSAPP = {"namespace": "ns-1", "template": "appointment_reminder", "locale": "en_GB"}
COMPONENTS = [{"type": "body", "parameters": [{"type": "text", "text": "Diane"}]}]
IDENTITY = TaskIdentity("msg_dag", "manual__1", "send")


class Live:
    def __init__(self, emulator: Emulator, store: CallStore, receiver_url: str, store_url: str) -> None:
        self.emulator, self.store, self.receiver_url, self.store_url = (
            emulator,
            store,
            receiver_url,
            store_url,
        )

    def hook(self, **kwargs: Any) -> VonageStudioHook:
        return VonageStudioHook(store=self.store, retry_backoff=0.01, **kwargs)

    def messaging_requests(self) -> list[Any]:
        return [r for r in self.emulator.requests if r.path == MESSAGING_PATH]


@pytest.fixture
def live(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """The strict emulator (1 session/s per agent, calls and messages on one budget), the real
    receiver in front of the store, and the connection pointing at both."""
    from airflow_provider_vonage_studio.callbacks.app import create_app

    store = CallStore(store_url)
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", store_url)
    receiver = ThreadedServer(create_app(store=store, secret_provider=lambda: [SECRET], outcome_view="off"))
    receiver.start()
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=1, callback_delay=0.05) as emulator:
        monkeypatch.setenv(
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT",
            emulator.connection_json(callback_base_url=receiver.url, callback_secret=SECRET),
        )
        yield Live(emulator, store, receiver.url, store_url)
    receiver.stop()
    store.dispose()
    CallStore._clear_default_cache(store_url)


def _wait_history(store: CallStore, ref: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        history = store.status_history(ref)
        if len(history) >= count or time.monotonic() > deadline:
            return history
        time.sleep(0.05)


# -- sent, recorded, statuses ------------------------------------------------------------------------


def test_sms_and_whatsapp_are_sent_and_their_statuses_recorded(live: Live) -> None:
    live.emulator.script_message(OTHER, "read")  # posts delivered, then read
    hook = live.hook()
    sms = hook.send_message(
        "+44 7700 900123",
        AGENT,
        channel="sms",
        session_parameters={"CALLER_NAME": "Diane"},
        call_ref="vs-sms-1",
        identity=IDENTITY,
    )
    wa = hook.send_message(
        OTHER,
        AGENT,
        channel="whatsapp",
        components=COMPONENTS,
        call_ref="vs-wa-1",
        identity=IDENTITY,
        **WHATSAPP,
    )

    first, second = live.emulator.messages
    assert (first.channel, first.to, first.template) == ("sms", NUMBER, None)
    assert [dict(p) for p in first.session_parameters] == [{"name": "CALLER_NAME", "value": "Diane"}]
    assert (second.channel, second.namespace, second.template, second.locale) == (
        "whatsapp",
        *WHATSAPP.values(),
    )
    assert second.components == COMPONENTS
    assert first.status_url.startswith(f"{live.receiver_url}/messages/vs-sms-1.")
    assert (sms.session_id, wa.session_id) == (first.session_id, second.session_id)
    assert sms.to_xcom()["to"] == "+44•••••0123" and sms.to_xcom()["channel"] == "sms"
    json.dumps(wa.to_xcom())

    rows = {ref: live.store.get_call(ref) for ref in ("vs-sms-1", "vs-wa-1")}
    assert {ref: (r.channel, r.state, r.dag_id) for ref, r in rows.items()} == {
        "vs-sms-1": ("sms", CallState.PLACED, "msg_dag"),
        "vs-wa-1": ("whatsapp", CallState.PLACED, "msg_dag"),
    }
    assert [h["status"] for h in _wait_history(live.store, "vs-sms-1", 1)] == ["delivered"]
    history = _wait_history(live.store, "vs-wa-1", 2)
    assert [h["status"] for h in history] == ["delivered", "read"]
    assert history[0]["conversation_uuid"] == wa.session_id
    assert history[1]["payload"]["channel"] == "whatsapp"
    assert live.store.message_status("vs-wa-1") == "read"
    # A message's statuses never become a call status (call readers must not see them).
    assert live.store.get_call("vs-wa-1").status is None
    assert [a.status for a in live.emulator.wait_for_message_callbacks(3)] == [200] * 3


@pytest.mark.parametrize(
    ("channel", "fields", "named"),
    [
        ("whatsapp", {"namespace": "ns-1", "locale": "en_GB"}, "WhatsApp needs template"),
        ("whatsapp", {"template": "t", "locale": "en_GB"}, "WhatsApp needs namespace"),
        ("whatsapp", {**WHATSAPP, "locale": "  "}, "WhatsApp needs locale"),
        (
            "sms",
            {"template": "appointment_reminder"},
            "template is WhatsApp-only: not allowed with channel 'sms'",
        ),
        ("sms", {"namespace": "ns-1"}, "namespace is WhatsApp-only"),
        ("sms", {"components": COMPONENTS}, "components is WhatsApp-only"),
        ("whatsapp", {**WHATSAPP, "components": {"type": "body"}}, "components: expected a list"),
        ("whatsapp", {**WHATSAPP, "components": [{"parameters": []}]}, "components[0].type"),
        ("whatsapp", {**WHATSAPP, "components": [{"type": "body"}]}, "components[0].parameters"),
        ("whatsapp", {**WHATSAPP, "components": [{"type": "body", "parameters": ["x"]}]}, "parameters[0]"),
        ("voice", {}, "channel: expected 'sms' or 'whatsapp'"),
    ],
)
def test_bad_template_fields_are_refused_before_any_request(
    live: Live, channel: str, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(VonageStudioConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        live.hook().send_message(NUMBER, AGENT, channel=channel, call_ref="vs-bad", **fields)

    assert live.emulator.requests == []
    assert live.store.get_call("vs-bad") is None


def test_sip_a_missing_status_url_and_bad_input_are_refused_before_any_request(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = live.hook()
    with pytest.raises(InvalidDestination, match="not a SIP URI"):
        hook.send_message("sip:desk@pbx.example.com", AGENT, channel="sms", call_ref="vs-x")
    with pytest.raises(VonageStudioConfigError, match="agent_id"):
        hook.send_message(NUMBER, " ", channel="sms", call_ref="vs-x")
    with pytest.raises(VonageStudioConfigError, match="status_url"):
        hook.send_message(NUMBER, AGENT, channel="sms")  # no ref: no token to build one for
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", live.emulator.connection_json())
    with pytest.raises(VonageStudioConfigError, match="status_url: AI Studio requires one"):
        live.hook().send_message(NUMBER, AGENT, channel="sms", call_ref="vs-x")
    assert live.emulator.requests == []
    assert live.store.get_call("vs-x") is None


# -- exactly once --------------------------------------------------------------------------------------


def test_a_retried_task_instance_does_not_send_twice(live: Live) -> None:
    op = SendMessageOperator(task_id="send", to="+44 7700 900123", agent_id=AGENT, channel="sms")
    context = {"ti": FakeTI("msg_dag", "manual__1", "send", -1)}
    first = op.execute(context)
    again = op.execute(context)  # the task's next try: the ledger answers

    assert first == again
    assert len(live.emulator.messages) == 1 and len(live.messaging_requests()) == 1
    assert live.store.get_call(first["message_ref"]).channel == "sms"
    # Another map index is another message.
    op.execute({"ti": FakeTI("msg_dag", "manual__1", "send", 1)})
    assert len(live.emulator.messages) == 2


def test_a_read_timeout_is_unknown_and_never_sent_again(live: Live) -> None:
    live.emulator.inject("timeout", delay=1.0, path=MESSAGING_PATH)
    with pytest.raises(CallOutcomeUnknown):
        live.hook(timeout=0.3).send_message(NUMBER, AGENT, channel="sms", call_ref="vs-slow")
    assert live.store.get_call("vs-slow").state is CallState.UNKNOWN

    with pytest.raises(CallOutcomeUnknown, match="not sent again"):
        live.hook().send_message(NUMBER, AGENT, channel="sms", call_ref="vs-slow")
    assert len(live.messaging_requests()) == 1 and len(live.emulator.messages) == 1


_KILLED_SENDER = """
import sys
from airflow_provider_vonage_studio.calls import TaskIdentity
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.store import CallStore
hook = VonageStudioHook(store=CallStore(sys.argv[1]))
hook.send_message("447700900123", "msg-agent", channel="sms", call_ref="vs-killed",
                  identity=TaskIdentity("msg_dag", "manual__1", "send"))
"""


def test_a_sender_killed_mid_request_leaves_unknown_not_a_resend(live: Live) -> None:
    # The emulator accepts the message, then holds the answer: the sender is killed waiting for it.
    live.emulator.inject("timeout", delay=30.0, path=MESSAGING_PATH)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SENDER, live.store_url], cwd=ROOT, env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 60
        while not live.emulator.messages and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert live.emulator.messages, "the sender never reached the emulator"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert live.store.get_call("vs-killed").state is CallState.SENDING

    with pytest.raises(CallOutcomeUnknown, match="not sent again"):
        live.hook().send_message(NUMBER, AGENT, channel="sms", call_ref="vs-killed", identity=IDENTITY)
    assert live.store.get_call("vs-killed").state is CallState.UNKNOWN
    assert len(live.messaging_requests()) == 1


def test_a_ref_used_for_a_call_or_another_channel_is_not_reused(live: Live) -> None:
    hook = live.hook()
    hook.send_message(NUMBER, AGENT, channel="sms", call_ref="vs-one")
    with pytest.raises(VonageStudioConfigError, match="channel 'sms'"):
        hook.send_message(NUMBER, AGENT, channel="whatsapp", call_ref="vs-one", **WHATSAPP)
    hook.make_call(NUMBER, AGENT, call_ref="vs-call")
    with pytest.raises(VonageStudioConfigError, match="channel 'voice'"):
        hook.send_message(NUMBER, AGENT, channel="sms", call_ref="vs-call")
    assert len(live.messaging_requests()) == 1


def test_do_not_call_stops_a_message(live: Live) -> None:
    live.store.dnc_add(NUMBER, reason="opted out")
    with pytest.raises(DoNotCall):
        live.hook().send_message("+44 7700 900123", AGENT, channel="sms", call_ref="vs-dnc")
    with pytest.raises(DoNotCall):
        live.hook().send_message(OTHER, AGENT, channel="sms", call_ref="vs-dnc2", extra_do_not_call=[OTHER])
    assert live.emulator.requests == []


# -- pacing shared with calls --------------------------------------------------------------------------


def test_calls_and_messages_of_one_agent_share_its_pacing(live: Live) -> None:
    """The strict emulator counts calls and messages on one budget of 1/s: the hook's pacing
    must space them all, or the second request inside a second would be a 429."""
    hook = live.hook()
    hook.make_call(NUMBER, AGENT, call_ref="vs-c1")
    hook.send_message(OTHER, AGENT, channel="sms", call_ref="vs-m1")
    hook.send_message(NUMBER, AGENT, channel="whatsapp", call_ref="vs-m2", **WHATSAPP)
    hook.make_call(OTHER, AGENT, call_ref="vs-c2")

    assert [(r.path, r.status) for r in live.emulator.requests] == [
        (MAKE_CALL_PATH, 200),
        (MESSAGING_PATH, 200),
        (MESSAGING_PATH, 200),
        (MAKE_CALL_PATH, 200),
    ]
    assert hook.rate_limited_count == 0


# -- the receiver's rules --------------------------------------------------------------------------------


def _post(live: Live, token: str, body: Any) -> requests.Response:
    return requests.post(f"{live.receiver_url}/messages/{token}/status", json=body, timeout=5)


def test_the_receiver_refuses_what_it_cannot_verify_and_stores_nothing(live: Live) -> None:
    hook = live.hook()
    sent = hook.send_message(NUMBER, AGENT, channel="sms", call_ref="vs-r1")
    hook.make_call(OTHER, AGENT, call_ref="vs-rc")
    live.store.begin_message("vs-queued", agent_id=AGENT, destination=NUMBER, channel="sms")
    _wait_history(live.store, "vs-r1", 1)
    good = {"agent_id": AGENT, "to": NUMBER, "session_id": sent.session_id, "status": "read"}
    token = sign_token("vs-r1", SECRET)

    forged = sign_token("vs-r1", "another-secret-of-16-chars")
    assert _post(live, forged, good).status_code == 401
    assert _post(live, token[:-3] + "abc", good).status_code == 401
    assert _post(live, sign_token("vs-nope", SECRET), good).status_code == 404
    assert _post(live, sign_token("vs-rc", SECRET), {**good, "to": OTHER}).status_code == 404  # a call
    assert _post(live, sign_token("vs-queued", SECRET), good).status_code == 409  # never accepted
    assert _post(live, token, {**good, "to": OTHER}).status_code == 409
    assert _post(live, token, {**good, "status": "re\nad"}).status_code == 422
    assert _post(live, token, {**good, "status": "x" * 65}).status_code == 422
    assert _post(live, token, {**good, "timestamp": "yesterday"}).status_code == 422
    assert _post(live, token, [good]).status_code == 422
    old = sign_token("vs-r1", SECRET, issued_at=sent.session_start_time.replace(year=2020))
    assert _post(live, old, good).status_code == 410
    assert [h["status"] for h in live.store.status_history("vs-r1")] == ["delivered"]
    assert live.store.status_history("vs-rc") == [] == live.store.status_history("vs-queued")

    accepted = _post(live, token, {**good, "extra": {"price": "0.05"}})
    assert (accepted.status_code, accepted.json()) == (200, {"result": "recorded"})
    assert _post(live, token, good).json() == {"result": "duplicate"}
    assert live.store.status_history("vs-r1")[-1]["payload"]["extra"] == {"price": "0.05"}


def test_the_history_of_a_message_is_capped(live: Live) -> None:
    from airflow_provider_vonage_studio.store import MAX_STATUS_HISTORY

    live.hook().send_message(NUMBER, AGENT, channel="sms", call_ref="vs-flood")
    _wait_history(live.store, "vs-flood", 1)
    token = sign_token("vs-flood", SECRET)
    answers = [_post(live, token, {"status": f"s{n}", "session_id": "x"}).status_code for n in range(25)]
    assert answers.count(200) == MAX_STATUS_HISTORY - 1
    assert answers[-1] == 409
    assert len(live.store.status_history("vs-flood")) == MAX_STATUS_HISTORY


# -- the operators -------------------------------------------------------------------------------------


def test_send_message_operator_checks_its_arguments_when_the_dag_is_parsed() -> None:
    with pytest.raises(VonageStudioConfigError, match="WhatsApp needs template"):
        SendMessageOperator(
            task_id="t", to=NUMBER, agent_id=AGENT, channel="whatsapp", namespace="n", locale="l"
        )
    with pytest.raises(VonageStudioConfigError, match="template is WhatsApp-only"):
        SendMessageOperator(task_id="t", to=NUMBER, agent_id=AGENT, channel="sms", template="{{ params.t }}")
    with pytest.raises(VonageStudioConfigError, match="channel"):
        SendMessagesOperator(task_id="t", recipients=[NUMBER], agent_id=AGENT, channel="{{ params.c }}")
    # Templates are left for execute.
    SendMessageOperator(
        task_id="t",
        to="{{ params.to }}",
        agent_id=AGENT,
        channel="whatsapp",
        template="{{ params.t }}",
        namespace="n",
        locale="l",
        components="{{ params.c }}",
    )


def test_send_message_operator_checks_rendered_fields_before_any_request(live: Live) -> None:
    op = SendMessageOperator(
        task_id="send",
        to=NUMBER,
        agent_id=AGENT,
        channel="whatsapp",
        template="{{ params.t }}",
        namespace="ns-1",
        locale="en_GB",
    )
    op.template = ""  # what the template rendered to
    with pytest.raises(AirflowFailException, match="WhatsApp needs template"):
        op.execute({"ti": FakeTI("msg_dag", "manual__1", "send", -1)})
    assert live.emulator.requests == []


def test_send_messages_operator_reports_each_recipient_and_resumes(live: Live) -> None:
    live.store.dnc_add("447700900003", reason="opted out")
    recipients = [
        "+44 7700 900001",
        {"to": "447700900002", "key": "cust-2", "session_parameters": {"CALLER_NAME": "Ann"}},
        "not a number",
        "0044 7700 900001",  # the first again
        "447700900003",  # do-not-call
        "sip:desk@pbx.example.com",
    ]
    op = SendMessagesOperator(
        task_id="send_all",
        recipients=recipients,
        agent_id=AGENT,
        channel="whatsapp",
        components=COMPONENTS,
        **WHATSAPP,
    )
    context = {"ti": FakeTI("msg_dag", "manual__1", "send_all", -1)}
    with pytest.raises(AirflowFailException, match="2 of 6"):
        op.execute(context)
    results = context["ti"].xcoms["results"]
    assert [(r["result"], r["reason"]) for r in results][3:5] == [
        ("skipped", "duplicate"),
        ("skipped", "do-not-call"),
    ]
    assert [r["result"] for r in results] == ["sent", "sent", "rejected", "skipped", "skipped", "rejected"]
    assert results[1]["key"] == "cust-2" and results[0]["to"] == "+44•••••0001"
    json.dumps(results)
    assert "447700900001" not in json.dumps(results)
    assert [m.to for m in live.emulator.messages] == ["447700900001", "447700900002"]
    assert [dict(p) for p in live.emulator.messages[1].session_parameters] == [
        {"name": "CALLER_NAME", "value": "Ann"}
    ]
    assert live.store.get_call(results[1]["message_ref"]).recipient_key == "cust-2"

    # The task's retry sends nobody a second message.
    with pytest.raises(AirflowFailException):
        op.execute(context)
    assert len(live.messaging_requests()) == 2


def test_send_messages_operator_after_a_crash_sends_only_the_rest(live: Live) -> None:
    op = SendMessagesOperator(
        task_id="send_all",
        recipients=["447700900001", "447700900002", "447700900003"],
        agent_id=AGENT,
        channel="sms",
        fail_on_rejected=False,
    )
    context = {"ti": FakeTI("msg_dag", "manual__2", "send_all", -1)}
    identity = TaskIdentity("msg_dag", "manual__2", "send_all")
    # The crashed try: the first was accepted, the second was on its way when the worker died.
    live.hook().send_message(
        "447700900001", AGENT, channel="sms", call_ref=identity.call_ref("message/to:447700900001")
    )
    cut = identity.call_ref("message/to:447700900002")
    live.store.begin_message(cut, agent_id=AGENT, destination="447700900002", channel="sms")
    live.store.mark_sending(cut)

    results = op.execute(context)

    assert [r["result"] for r in results] == ["sent", "unknown", "sent"]
    assert [m.to for m in live.emulator.messages] == ["447700900001", "447700900003"]


def test_a_refused_key_stops_the_batch_and_a_server_outage_is_retryable(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_vonage_studio.exceptions import VonageStudioServerError

    recipients = ["447700900001", "447700900002"]
    context = {"ti": FakeTI("msg_dag", "manual__3", "send_all", -1)}
    op = SendMessagesOperator(task_id="send_all", recipients=recipients, agent_id=AGENT, channel="sms")
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", live.emulator.connection_json())
    with pytest.raises(AirflowFailException, match="status_url: AI Studio requires one"):
        op.execute(context)  # no receiver configured: refused once, before any request
    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT",
        live.emulator.connection_json(
            key="wrong-key", callback_base_url=live.receiver_url, callback_secret=SECRET
        ),
    )
    with pytest.raises(AirflowFailException, match="Not Authorised"):
        op.execute(context)
    results = context["ti"].xcoms["results"]
    assert [r["result"] for r in results] == ["rejected", "skipped"]
    assert results[1]["reason"].startswith("not sent: the batch stopped")
    assert live.emulator.messages == [] and len(live.messaging_requests()) == 1  # one request, not two

    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT",
        live.emulator.connection_json(callback_base_url=live.receiver_url, callback_secret=SECRET),
    )
    live.emulator.inject("503", count=2, path=MESSAGING_PATH, to="447700900002")  # both attempts
    monkeypatch.setattr(VonageStudioHook, "__init__", _quick_retries(VonageStudioHook.__init__))
    with pytest.raises(VonageStudioServerError):  # retryable: Airflow retries the task
        op.execute(context)
    # The key fixed: the first recipient's refusal is history (reported, not re-sent, not a stop).
    op.fail_on_rejected = False
    assert [r["result"] for r in op.execute(context)] == ["rejected", "sent"]
    assert [m.to for m in live.emulator.messages] == recipients[1:]


def _quick_retries(init: Any) -> Any:
    def quick(self: VonageStudioHook, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "max_attempts": 2, "retry_backoff": 0.01})

    return quick
