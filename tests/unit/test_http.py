"""Narrow unit tests of the hook's HTTP layer with requests-mock: error mapping and the retry
policy (``hooks/http.py``)."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    VonageStudioAgentNotFound,
    VonageStudioAuthError,
    VonageStudioBadRequest,
    VonageStudioConnectionError,
    VonageStudioRateLimited,
    VonageStudioServerError,
)
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

URL = "https://studio.test/telephony/make-call"
OK = {
    "session_id": "5a61cc84-4c89-4ef9-a983-5349c7112fdb",
    "session_start_time": "2020-10-14T09:42:07.151657",
}


@pytest.fixture
def hook(vs_conn, tmp_path):
    from airflow_provider_vonage_studio.store import CallStore

    store = CallStore(f"sqlite:///{tmp_path}/store.db")
    h = VonageStudioHook(store=store, pace=False, retry_backoff=0.01)
    h.waits = []
    h._sleep = h.waits.append
    yield h
    store.dispose()


@pytest.mark.parametrize(
    ("status", "message", "exc_type"),
    [
        (400, "Bad destination number format", VonageStudioBadRequest),
        (401, "Not Authorised", VonageStudioAuthError),
        (404, "Version information for number AGENT_NUMBER doesn't exist", VonageStudioAgentNotFound),
        (500, "Failed to fetch preconfigured session information", VonageStudioServerError),
    ],
)
def test_seed_errors_map_to_exceptions_without_retry(hook, requests_mock, status, message, exc_type):
    requests_mock.post(URL, status_code=status, json={"status": status, "message": message})
    with pytest.raises(exc_type) as info:
        hook.make_call("9725411116037", "agent-1")
    assert info.value.status == status
    assert info.value.message == message
    assert info.value.retryable is False
    assert requests_mock.call_count == 1
    assert hook.waits == []


def test_429_honours_retry_after(hook, requests_mock):
    requests_mock.post(
        URL,
        [
            {
                "status_code": 429,
                "json": {"status": 429, "message": "Too Many Requests"},
                "headers": {"Retry-After": "2"},
            },
            {
                "status_code": 429,
                "json": {"status": 429, "message": "Too Many Requests"},
                "headers": {"Retry-After": "1"},
            },
            {"json": OK},
        ],
    )
    hook.make_call("9725411116037", "agent-1")
    assert requests_mock.call_count == 3
    assert hook.waits == [2.0, 1.0]
    assert hook.rate_limited_count == 2


def test_429_without_retry_after_backs_off_exponentially_and_gives_up(hook, requests_mock):
    hook.retry_backoff = 1.0
    hook.max_attempts = 4
    requests_mock.post(URL, status_code=429, json={"status": 429, "message": "Too Many Requests"})
    with pytest.raises(VonageStudioRateLimited) as info:
        hook.make_call("9725411116037", "agent-1")
    assert info.value.status == 429
    assert requests_mock.call_count == 4
    assert len(hook.waits) == 3
    # wait_random_exponential: uniform in [0, multiplier * 2**n], capped at 30s.
    for n, wait in enumerate(hook.waits):
        assert 0 <= wait <= 2 ** (n + 1)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_retried(hook, requests_mock, status):
    requests_mock.post(URL, [{"status_code": status, "text": "Service Unavailable"}, {"json": OK}])
    assert hook.make_call("9725411116037", "agent-1").session_id == OK["session_id"]
    assert requests_mock.call_count == 2
    assert len(hook.waits) == 1


def test_503_exhausted_raises_server_error(hook, requests_mock):
    hook.max_attempts = 3
    requests_mock.post(URL, status_code=503, json={"status": 503, "message": "busy"})
    with pytest.raises(VonageStudioServerError) as info:
        hook.make_call("9725411116037", "agent-1")
    assert info.value.retryable is True
    assert requests_mock.call_count == 3


def test_connection_refused_is_retried(hook, requests_mock):
    requests_mock.post(
        URL, [{"exc": requests.exceptions.ConnectionError("Connection refused")}, {"json": OK}]
    )
    hook.make_call("9725411116037", "agent-1")
    assert requests_mock.call_count == 2


def test_connection_refused_exhausted(hook, requests_mock):
    hook.max_attempts = 2
    requests_mock.post(URL, exc=requests.exceptions.ConnectionError("Connection refused"))
    with pytest.raises(VonageStudioConnectionError):
        hook.make_call("9725411116037", "agent-1")
    assert requests_mock.call_count == 2


def test_read_timeout_is_never_retried(hook, requests_mock):
    requests_mock.post(URL, exc=requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(CallOutcomeUnknown):
        hook.make_call("9725411116037", "agent-1")
    assert requests_mock.call_count == 1
    assert hook.waits == []


def test_2xx_without_session_is_unknown_not_retried(hook, requests_mock):
    requests_mock.post(URL, json={"oops": 1})
    with pytest.raises(CallOutcomeUnknown):
        hook.make_call("9725411116037", "agent-1")
    assert requests_mock.call_count == 1
