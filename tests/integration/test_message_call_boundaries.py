"""Messages and calls share the ledger, not their routes: a message's token is refused on the
call routes (status and end-call), and the end-call token rides on calls only.

Real HTTP throughout: the strict emulator, the real receiver, the store on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from airflow_provider_vonage_studio.calls import TaskIdentity
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.signing import sign_token
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import MESSAGING_PATH, Emulator
from airflow_provider_vonage_studio.testing.servers import ThreadedServer

KEY = "boundary-key-5d2c8e1a9f"
SECRET = "boundary-callback-secret-2e7b4c"
AGENT = "boundary-agent"
NUMBER = "447700900123"
IDENTITY = TaskIdentity("boundary_dag", "manual__1", "send")


@pytest.fixture
def live(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Emulator, CallStore, str]]:
    from airflow_provider_vonage_studio.callbacks.app import create_app

    store = CallStore(store_url)
    receiver = ThreadedServer(create_app(store=store, secret_provider=lambda: [SECRET], outcome_view="off"))
    receiver.start()
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=5, end_call_webhook=False) as emulator:
        monkeypatch.setenv(
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT",
            emulator.connection_json(
                callback_base_url=receiver.url, callback_secret=SECRET, end_call_webhook=True
            ),
        )
        yield emulator, store, receiver.url
    receiver.stop()
    store.dispose()
    CallStore._clear_default_cache(store_url)


def _send_sms(store: CallStore, ref: str) -> None:
    VonageStudioHook(store=store, retry_backoff=0.01).send_message(
        NUMBER, AGENT, channel="sms", call_ref=ref, identity=IDENTITY
    )


def test_a_message_token_is_an_unknown_call_on_the_call_status_route(
    live: tuple[Emulator, CallStore, str],
) -> None:
    _emulator, store, receiver = live
    _send_sms(store, "vs-msg-boundary-1")
    token = sign_token("vs-msg-boundary-1", SECRET)
    body = {
        "agent_id": AGENT,
        "to": NUMBER,
        "conversation_uuid": "c-1",
        "status": "failed",
        "timestamp": "2026-01-01T00:00:00Z",
    }
    resp = requests.post(f"{receiver}/calls/{token}/status", json=body, timeout=10)
    assert resp.status_code == 404, resp.text
    record = store.get_call("vs-msg-boundary-1")
    assert record is not None and record.status is None and record.outcome is None
    assert store.status_history("vs-msg-boundary-1") == []


def test_a_message_token_cannot_confirm_an_end_call(live: tuple[Emulator, CallStore, str]) -> None:
    _emulator, store, receiver = live
    _send_sms(store, "vs-msg-boundary-2")
    token = sign_token("vs-msg-boundary-2", SECRET)
    resp = requests.post(f"{receiver}/calls/{token}/ended", json={"VS_CALL_TOKEN": token}, timeout=10)
    assert resp.status_code == 404, resp.text
    record = store.get_call("vs-msg-boundary-2")
    assert record is not None and record.outcome is None and record.outcome_source is None
    assert record.ended_at is None


def test_the_end_call_token_rides_on_calls_only(live: tuple[Emulator, CallStore, str]) -> None:
    emulator, store, _receiver = live
    hook = VonageStudioHook(store=store, retry_backoff=0.01)
    _send_sms(store, "vs-msg-boundary-3")
    hook.make_call(NUMBER, AGENT, call_ref="vs-call-boundary-3", identity=IDENTITY)
    deadline = time.monotonic() + 5
    while len(emulator.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    message = next(r for r in emulator.requests if r.path == MESSAGING_PATH)
    call = next(r for r in emulator.requests if r.path != MESSAGING_PATH)
    names = {p["name"] for p in (message.body or {}).get("session_parameters", [])}
    assert "VS_CALL_TOKEN" not in names
    assert "VS_CALL_TOKEN" in {p["name"] for p in (call.body or {}).get("session_parameters", [])}


def test_a_campaign_attempt_identity_names_the_message_row(live: tuple[Emulator, CallStore, str]) -> None:
    """An identity that carries more than the task (a campaign's attempt) still fills exactly the
    row's four task columns."""
    from airflow_provider_vonage_studio.campaign import AttemptIdentity

    _emulator, store, _receiver = live
    identity = AttemptIdentity("boundary_dag", "manual__1", "send", 2, message=True)
    VonageStudioHook(store=store, retry_backoff=0.01).send_message(
        NUMBER, AGENT, channel="sms", call_ref="vs-msg-boundary-4", identity=identity
    )
    record = store.get_call("vs-msg-boundary-4")
    assert record is not None
    assert (record.dag_id, record.run_id, record.task_id, record.map_index) == (
        "boundary_dag",
        "manual__1",
        "send",
        2,
    )
