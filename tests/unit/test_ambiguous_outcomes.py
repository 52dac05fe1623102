"""A 2xx make-call answer that cannot be read is "unknown", never a refusal; a store outage seen
by the status trigger is a retryable task failure, not a verdict on the call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio._compat import AirflowException, AirflowFailException
from airflow_provider_vonage_studio.exceptions import CallOutcomeUnknown
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.sensors.vonage_studio import raise_for_trigger_event
from airflow_provider_vonage_studio.store import CallState, CallStore
from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger, _SharedPoller

URL = "https://studio.test/telephony/make-call"
OK = {"session_id": "5a61cc84-4c89-4ef9-a983-5349c7112fdb", "session_start_time": "2020-10-14T09:42:07"}


@pytest.fixture
def hook(vs_conn, tmp_path):
    store = CallStore(f"sqlite:///{tmp_path}/store.db")
    h = VonageStudioHook(store=store, pace=False, retry_backoff=0.01)
    h._sleep = lambda seconds: None
    yield h
    store.dispose()


def test_2xx_with_a_non_json_body_is_unknown_not_rejected(hook, requests_mock):
    requests_mock.post(URL, status_code=200, text="<html>ok</html>")
    with pytest.raises(CallOutcomeUnknown, match="not JSON"):
        hook.make_call("9725411116037", "agent-1", call_ref="vs-html")
    # "rejected" would claim the call was definitely not placed.
    assert hook.store.get_call("vs-html").state is CallState.UNKNOWN


def test_store_outage_event_is_a_retryable_task_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: _SharedPoller, refs: list[str]) -> dict[str, Any]:
        raise sa.exc.OperationalError("SELECT", {}, Exception("database is down"))

    monkeypatch.setattr(_SharedPoller, "_fetch", broken)

    async def first_event() -> dict[str, Any]:
        trigger = CallStatusTrigger(call_ref="vs-1", poll_interval=0.02, store_url="sqlite://")
        async for event in trigger.run():
            return event.payload
        raise AssertionError("no event")

    event = asyncio.run(asyncio.wait_for(first_event(), 10))
    assert event["status"] == "error" and event["retryable"] is True
    with pytest.raises(AirflowException) as info:
        raise_for_trigger_event(event)
    assert not isinstance(info.value, AirflowFailException)


def test_call_error_event_still_fails_without_retries() -> None:
    event = {"status": "error", "message": "busy", "error_type": "CallFailed", "call_status": "busy"}
    with pytest.raises(AirflowFailException):
        raise_for_trigger_event(event)
