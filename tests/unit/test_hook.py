"""Narrow unit tests of VonageStudioHook's HTTP with requests-mock (everything else uses real HTTP)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest
import requests

from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    DoNotCall,
    InvalidDestination,
    InvalidSessionParameter,
    VonageStudioAgentNotFound,
    VonageStudioAuthError,
    VonageStudioBadRequest,
    VonageStudioConfigError,
    VonageStudioConnectionError,
    VonageStudioRateLimited,
    VonageStudioServerError,
)
from airflow_provider_vonage_studio.hooks.vonage_studio import (
    REGION_HOSTS,
    VonageStudioHook,
    parse_api_time,
)
from tests.conftest import TEST_KEY, conn_json

URL = "https://studio.test/telephony/make-call"
OK = {
    "session_id": "5a61cc84-4c89-4ef9-a983-5349c7112fdb",
    "session_start_time": "2020-10-14T09:42:07.151657",
}

# The body of the seed's curl example, as printed there.
SEED_CURL_BODY = """{
"agent_id": "60c09d70e6a68858f4220848",
"to": "9725411116037",
"hangup_on_answer_machine": false,
"session_parameters":[
    {
        "name": "PROPERTY_VALUE",
        "value": "500"
    }
  ]
}"""


@pytest.fixture
def hook(vs_conn, tmp_path):
    from airflow_provider_vonage_studio.store import CallStore

    store = CallStore(f"sqlite:///{tmp_path}/store.db")
    h = VonageStudioHook(store=store, pace=False, retry_backoff=0.01)
    h.waits = []
    h._sleep = h.waits.append
    yield h
    store.dispose()


def test_request_matches_seed_curl_byte_for_byte(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    hook.make_call(
        "9725411116037",
        "60c09d70e6a68858f4220848",
        hangup_on_answer_machine=False,
        session_parameters=[{"name": "PROPERTY_VALUE", "value": "500"}],
    )
    req = requests_mock.request_history[0]
    assert req.body == json.dumps(json.loads(SEED_CURL_BODY)).encode()
    assert list(json.loads(req.body)) == ["agent_id", "to", "hangup_on_answer_machine", "session_parameters"]
    assert req.headers["X-Vgai-Key"] == TEST_KEY
    assert req.headers["Content-Type"] == "application/json"


def test_mapping_parameters_become_seed_list_of_strings(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    hook.make_call(
        "+44 7700 900123", "agent-1", session_parameters={"CALLER_NAME": "Diane", "PROPERTY_VALUE": 500}
    )
    body = requests_mock.request_history[0].json()
    assert body == {
        "agent_id": "agent-1",
        "to": "447700900123",
        "session_parameters": [
            {"name": "CALLER_NAME", "value": "Diane"},
            {"name": "PROPERTY_VALUE", "value": "500"},
        ],
    }


def test_sip_body(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    hook.make_call("sip:sipnumber@sipaddress", "agent-1", status_url="https://cb.example/x")
    assert requests_mock.request_history[0].json() == {
        "agent_id": "agent-1",
        "to": "sip:sipnumber@sipaddress",
        "status_url": "https://cb.example/x",
    }


def test_result_is_typed_and_aware(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    result = hook.make_call("9725411116037", "agent-1")
    assert result.session_id == OK["session_id"]
    assert result.session_start_time == datetime(2020, 10, 14, 9, 42, 7, 151657, tzinfo=timezone.utc)
    xcom = result.to_xcom()
    assert xcom["session_start_time"] == "2020-10-14T09:42:07.151657+00:00"
    assert "9725411116037" not in json.dumps(xcom)


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


@pytest.mark.parametrize(
    "bad", ["", "hello", "+44 12", "12345678901234567890", "sip:", "sip:user@", None, 447700900123]
)
def test_bad_destinations_never_reach_the_network(hook, requests_mock, bad):
    requests_mock.post(URL, json=OK)
    with pytest.raises(InvalidDestination):
        hook.make_call(bad, "agent-1")  # type: ignore[arg-type]
    assert requests_mock.call_count == 0


@pytest.mark.parametrize(
    ("params", "exc"),
    [
        ({"caller_name": "x"}, InvalidSessionParameter),
        ({"CALLER_NAME": None}, InvalidSessionParameter),
        ([{"name": "A"}], InvalidSessionParameter),
        ({"CALLER_NAME": {"nested": 1}}, InvalidSessionParameter),
    ],
)
def test_bad_parameters_never_reach_the_network(hook, requests_mock, params, exc):
    requests_mock.post(URL, json=OK)
    with pytest.raises(exc):
        hook.make_call("9725411116037", "agent-1", session_parameters=params)
    assert requests_mock.call_count == 0


@pytest.mark.parametrize("agent", ["", "   ", None, 42])
def test_empty_agent_id_is_refused_locally(hook, requests_mock, agent):
    requests_mock.post(URL, json=OK)
    with pytest.raises(VonageStudioConfigError, match="agent_id"):
        hook.make_call("9725411116037", agent)  # type: ignore[arg-type]
    assert requests_mock.call_count == 0


# -- connection --------------------------------------------------------------------------------


def _hook_for(monkeypatch, value):
    monkeypatch.setenv("AIRFLOW_CONN_VS_TEST", value)
    return VonageStudioHook("vs_test", pace=False)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"region": "asia"}, "region"),
        ({"calls_per_second": 2}, "calls_per_second"),
        ({"calls_per_second": "lots"}, "calls_per_second"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"pace_scope": "galaxy"}, "pace_scope"),
        ({"callback_base_url": "ftp://x"}, "callback_base_url"),
        ({"callback_base_url": "https://x.example/cb?a=1"}, "callback_base_url"),
    ],
)
def test_connection_errors_name_the_field(monkeypatch, extra, field):
    hook = _hook_for(monkeypatch, conn_json(**extra))
    with pytest.raises(VonageStudioConfigError, match=field):
        hook.config  # noqa: B018


def test_missing_key_names_the_field(monkeypatch):
    hook = _hook_for(monkeypatch, conn_json(key=""))
    with pytest.raises(VonageStudioConfigError, match="password"):
        hook.config  # noqa: B018


def test_region_selects_host_when_no_override(monkeypatch):
    hook = _hook_for(
        monkeypatch, json.dumps({"conn_type": "vonage_studio", "password": "k", "extra": {"region": "us"}})
    )
    assert hook.config.base_url == REGION_HOSTS["us"]
    hook = _hook_for(monkeypatch, json.dumps({"conn_type": "vonage_studio", "password": "k"}))
    assert hook.config.base_url == REGION_HOSTS["eu"]
    assert hook.config.calls_per_second == 1
    assert hook.config.timeout == 30


def test_uri_form(monkeypatch):
    hook = _hook_for(
        monkeypatch, "vonage-studio://:s3cret@127.0.0.1:8765/http?region=us&calls_per_second=3&timeout=5"
    )
    cfg = hook.config
    assert cfg.base_url == "http://127.0.0.1:8765"
    assert cfg.api_key == "s3cret"
    assert (cfg.region, cfg.calls_per_second, cfg.timeout) == ("us", 3, 5.0)


def test_hook_timeout_overrides_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_VS_TEST", conn_json(timeout=7))
    assert VonageStudioHook("vs_test").config.timeout == 7
    assert VonageStudioHook("vs_test", timeout=2.5).config.timeout == 2.5


def test_config_repr_hides_secrets(monkeypatch):
    hook = _hook_for(monkeypatch, conn_json(callback_secret="very-secret-value"))
    assert TEST_KEY not in repr(hook.config)
    assert "very-secret-value" not in repr(hook.config)


@pytest.mark.parametrize(
    ("response", "ok", "text"),
    [
        ({"status_code": 401, "json": {"status": 401, "message": "Not Authorised"}}, False, "refused"),
        (
            {"status_code": 400, "json": {"status": 400, "message": "Bad destination number format"}},
            True,
            "accepted",
        ),
        ({"status_code": 422, "json": {"detail": "x"}}, True, "accepted"),
        ({"status_code": 503, "text": "down"}, False, "503"),
        ({"exc": requests.exceptions.ConnectionError("Connection refused")}, False, "could not reach"),
    ],
)
def test_test_connection_never_dials_and_never_raises(vs_conn, requests_mock, response, ok, text):
    requests_mock.post(URL, **response)
    result = VonageStudioHook().test_connection()
    assert result[0] is ok
    assert text in result[1]
    assert json.loads(requests_mock.request_history[0].body) == {}


def test_test_connection_with_broken_connection(monkeypatch):
    hook = _hook_for(monkeypatch, conn_json(region="mars"))
    ok, message = hook.test_connection()
    assert ok is False
    assert "region" in message


def test_key_never_logged(hook, requests_mock, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    requests_mock.post(URL, [{"status_code": 429, "json": {"status": 429, "message": "x"}}, {"json": OK}])
    hook.make_call("+44 7700 900123", "agent-1", session_parameters={"CALLER_NAME": "Diane"})
    # Airflow may route provider logs to stdout rather than to caplog: read both, and make sure
    # the dial was logged at all, so this cannot pass by seeing nothing.
    logged = caplog.text + capsys.readouterr().out
    assert "Dialing +44•••••0123 from agent agent-1" in logged
    assert "answered 429" in logged
    assert TEST_KEY not in logged
    assert "7700900123" not in logged


def test_parse_api_time_variants():
    assert parse_api_time("2020-10-14T09:42:07.151657").tzinfo is timezone.utc
    assert parse_api_time("2022-05-31T06:40:45.475Z") == datetime(
        2022, 5, 31, 6, 40, 45, 475000, tzinfo=timezone.utc
    )


# -- exactly-once ledger -------------------------------------------------------------------------------


def test_placed_call_is_not_dialed_again(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    first = hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-1")
    second = hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-1")
    assert requests_mock.call_count == 1
    assert second.session_id == first.session_id
    assert second.session_start_time == first.session_start_time


def test_rejected_call_raises_same_error_without_request(hook, requests_mock):
    requests_mock.post(URL, status_code=400, json={"status": 400, "message": "Bad destination number format"})
    for _ in range(2):
        with pytest.raises(VonageStudioBadRequest, match="Bad destination number format"):
            hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-2")
    assert requests_mock.call_count == 1


def test_unknown_call_is_not_redialed_unless_asked(hook, requests_mock):
    requests_mock.post(URL, [{"exc": requests.exceptions.ReadTimeout("slow")}, {"json": OK}])
    with pytest.raises(CallOutcomeUnknown):
        hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-3")
    with pytest.raises(CallOutcomeUnknown, match="may or may not have rung"):
        hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-3")
    assert requests_mock.call_count == 1
    assert hook.store.get_call("vs-ref-3").state.value == "unknown"
    result = hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-3", redial_unknown=True)
    assert requests_mock.call_count == 2
    assert hook.store.get_call("vs-ref-3").state.value == "placed"
    assert result.session_id == OK["session_id"]


def test_stale_sending_is_not_redialed(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    hook.store.begin_call("vs-ref-4", agent_id="agent-1", destination="9725411116037")
    hook.store.mark_sending("vs-ref-4")  # a try killed while its request was on the way
    with pytest.raises(CallOutcomeUnknown, match="sending"):
        hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-4")
    assert requests_mock.call_count == 0
    # The ledger now says what the retry found: a dial whose outcome nobody recorded.
    assert hook.store.get_call("vs-ref-4").state.value == "unknown"


def test_rate_limited_exhausted_may_be_dialed_by_a_later_try(hook, requests_mock):
    hook.max_attempts = 1
    requests_mock.post(URL, [{"status_code": 429, "json": {"status": 429, "message": "x"}}, {"json": OK}])
    with pytest.raises(VonageStudioRateLimited):
        hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-5")
    assert hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-5").session_id == OK["session_id"]
    assert requests_mock.call_count == 2


def test_call_ref_reused_for_another_destination_is_refused(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-6")
    with pytest.raises(VonageStudioConfigError, match="call_key"):
        hook.make_call("447700900123", "agent-1", call_ref="vs-ref-6")
    assert requests_mock.call_count == 1


def test_do_not_call_is_never_dialed(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    hook.store.dnc_add("447700900123", reason="asked")
    with pytest.raises(DoNotCall):
        hook.make_call("+44 7700 900123", "agent-1", call_ref="vs-ref-7")
    with pytest.raises(DoNotCall):
        hook.make_call("9725411116037", "agent-1", extra_do_not_call=["+972 54 111 16037"])
    assert requests_mock.call_count == 0
    assert hook.store.get_call("vs-ref-7") is None


def test_extra_do_not_call_numbers_are_read_with_default_country(hook, requests_mock):
    # The operator's list is typed like `to`: a national number needs the same default_country.
    requests_mock.post(URL, json=OK)
    with pytest.raises(DoNotCall):
        hook.make_call("07700 900123", "agent-1", default_country="GB", extra_do_not_call=["07700 900123"])
    assert requests_mock.call_count == 0
