"""Narrow unit tests of VonageStudioHook's HTTP with requests-mock (everything else uses real HTTP)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest
import requests

from airflow_provider_vonage_studio.calls import TaskIdentity
from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    DoNotCall,
    InvalidDestination,
    InvalidSessionParameter,
    VonageStudioBadRequest,
    VonageStudioConfigError,
    VonageStudioRateLimited,
)
from airflow_provider_vonage_studio.hooks.vonage_studio import (
    VonageStudioHook,
    parse_api_time,
)
from tests.conftest import TEST_KEY

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


def test_identity_names_the_ledger_row(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    task = TaskIdentity("dag", "run-1", "call_one", map_index=3)
    hook.make_call("9725411116037", "agent-1", call_ref=task.call_ref("k"), identity=task, recipient_key="k")
    row = hook.store.get_call(task.call_ref("k"))
    assert (row.dag_id, row.run_id, row.task_id, row.map_index, row.recipient_key) == (
        "dag",
        "run-1",
        "call_one",
        3,
        "k",
    )


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"dag_id": "dag"}, "dag_id"),
        ({"run_id": "r", "task_id": "t"}, "run_id, task_id"),
        ({"map_index": 0}, "map_index"),
    ],
)
def test_identity_and_separate_fields_together_are_refused(hook, requests_mock, extra, named):
    requests_mock.post(URL, json=OK)
    task = TaskIdentity("dag", "run-1", "call_one")
    with pytest.raises(VonageStudioConfigError, match=f"identity and {named} were both given"):
        hook.make_call("9725411116037", "agent-1", call_ref="vs-ref-id", identity=task, **extra)
    assert requests_mock.call_count == 0
    assert hook.store.get_call("vs-ref-id") is None


def test_settle_abandoned_marks_only_sending_rows_and_keeps_a_later_outcome(hook):
    store = hook.store
    for ref in ("vs-s1", "vs-s2", "vs-q1"):
        store.begin_call(ref, agent_id="agent-1", destination="9725411116037")
    store.mark_sending("vs-s1")
    store.mark_sending("vs-s2")
    read = store.get_calls(["vs-s1", "vs-s2", "vs-q1"])
    # vs-s2's own try was not dead after all: it records its answer after the rows were read.
    store.mark_placed("vs-s2", OK["session_id"], datetime(2020, 10, 14, tzinfo=timezone.utc))
    settled = hook.settle_abandoned(read.values(), reason="gone")
    assert sorted(settled) == ["vs-s1", "vs-s2"]
    now = store.get_calls(["vs-s1", "vs-s2", "vs-q1"])
    assert now["vs-s1"].state.value == "unknown"
    assert now["vs-s1"].error_message == "gone"
    assert now["vs-s2"].state.value == "placed"
    assert now["vs-q1"].state.value == "queued"


def test_do_not_call_is_checked_once_when_another_try_wrote_the_row_first(hook, requests_mock, monkeypatch):
    # This try reads no row, then loses the race to write it: the other try's row (queued)
    # decides, and the do-not-call list is still consulted once, not once per branch.
    requests_mock.post(URL, json=OK)
    store = hook.store
    store.begin_call("vs-race", agent_id="agent-1", destination="9725411116037")
    first_read = [True]
    real_get = store.get_call

    def get_call(ref):
        if first_read.pop() if first_read else False:
            return None  # what this try saw before the other try's row existed
        return real_get(ref)

    monkeypatch.setattr(store, "get_call", get_call)
    checks = []
    real_filter = store.dnc_filter
    monkeypatch.setattr(store, "dnc_filter", lambda numbers: checks.append(numbers) or real_filter(numbers))
    hook.make_call("9725411116037", "agent-1", call_ref="vs-race")
    assert checks == [["9725411116037"]]
    assert requests_mock.call_count == 1


def test_names_of_the_hook_module_before_its_split_stay_importable():
    from airflow_provider_vonage_studio.hooks import connection, dialing, http, insights
    from airflow_provider_vonage_studio.hooks import vonage_studio as hook_module

    moved = {
        connection: [
            "ConnectionConfig",
            "parse_connection",
            "REGION_HOSTS",
            "DEFAULT_PACING_MARGIN",
            "_extra_str",
        ],
        http: [
            "CONNECT_TIMEOUT",
            "MAKE_CALL_PATH",
            "parse_api_time",
            "_json",
            "_error_message",
            "_retry_after",
        ],
        insights: ["INSIGHTS_MAX_RANGE", "parse_parameters_body", "parse_search_body", "_unwrapped"],
        dialing: ["CallResult", "_result_from_record", "_normalized_numbers"],
    }
    for module, names in moved.items():
        for name in names:
            assert getattr(hook_module, name) is getattr(module, name), name
    for name in ("error_for", "RETRYABLE_STATUSES", "CallStoreUnavailable", "VonageStudioRateLimited"):
        assert hasattr(hook_module, name), name
