"""Pure parts of batch dialing: planning recipients, calling windows, and the ledger rule the
dialer shares with the hook. (Dialing itself is tested over real HTTP in tests/integration.)"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, time, timedelta, timezone

import pytest
import requests

from airflow_provider_vonage_studio.batch import (
    BatchDialer,
    BatchReport,
    Recipient,
    RecipientResult,
    ResultKind,
    dial_window_opening,
    plan_recipients,
    recipient_timezone,
    would_dial,
)
from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    InvalidSessionParameter,
    VonageStudioConfigError,
    VonageStudioError,
)
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.store import CallStore

URL = "https://studio.test/telephony/make-call"
OK = {
    "session_id": "5a61cc84-4c89-4ef9-a983-5349c7112fdb",
    "session_start_time": "2020-10-14T09:42:07.151657",
}
WINDOW = (time(9, 0), time(20, 0))


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# -- planning ------------------------------------------------------------------------------------


def test_plan_normalises_numbers_and_mappings_in_order():
    plan = plan_recipients(
        [
            "+44 7700 900123",
            {"to": "+1 (212) 555-0100", "key": "cust-7", "session_parameters": {"CALLER_NAME": "Ann"}},
            {"to": "sip:alice@pbx.example.com"},
            12125550199,
        ],
        session_parameters={"CALLER_NAME": "Default", "CAMPAIGN": "Q3"},
    )
    assert [r.destination for r in plan] == [
        "447700900123",
        "12125550100",
        "sip:alice@pbx.example.com",
        "12125550199",
    ]
    assert all(r.dialable for r in plan)
    # Per-recipient values override the batch's by name; the order of the batch's names is kept.
    assert plan[1].parameters_list() == [
        {"name": "CALLER_NAME", "value": "Ann"},
        {"name": "CAMPAIGN", "value": "Q3"},
    ]
    assert plan[0].parameters_list()[0] == {"name": "CALLER_NAME", "value": "Default"}
    assert plan[1].ref_key == "key:cust-7"
    assert plan[0].ref_key == "to:447700900123"
    assert plan[0].shown == "+44•••••0123"


def test_duplicates_after_normalisation_are_marked_not_rejected():
    plan = plan_recipients(["+44 7700 900123", "447700900123", {"to": "0044 7700 900123", "key": "x"}])
    assert [r.duplicate_of for r in plan] == [None, 0, 0]
    assert [r.dialable for r in plan] == [True, False, False]
    assert all(r.error is None for r in plan)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("call me maybe", "recipients[0]: "),
        ({"to": "447700900123", "session_parameter": {"A": "b"}}, "unknown field(s) session_parameter"),
        ({"session_parameters": {}}, "'to' is missing"),
        ({"to": None}, "'to' is missing"),
        ({"to": "447700900123", "key": ""}, "'key' must be a non-empty string"),
        ({"to": "447700900123", "session_parameters": {"caller name": "x"}}, "caller name"),
        (3.5, "got float"),
        (True, "got bool"),
        ({"to": "447700900123", "timezone": 5}, "'timezone' must be an IANA zone name"),
    ],
)
def test_a_bad_recipient_is_rejected_alone_with_a_reason(item, message):
    plan = plan_recipients([item, "447700900456"])
    assert plan[0].error is not None and message in plan[0].error
    assert not plan[0].dialable
    assert plan[1].dialable


def test_duplicate_keys_for_different_numbers_are_refused():
    plan = plan_recipients([{"to": "447700900123", "key": "k"}, {"to": "447700900456", "key": "k"}])
    assert plan[0].dialable
    assert "key 'k' is already the key of recipients[0]" in (plan[1].error or "")


@pytest.mark.parametrize("bad", [None, "447700900123", {"to": "447700900123"}, 42])
def test_recipients_must_be_a_list(bad):
    with pytest.raises(VonageStudioConfigError, match="recipients: expected a list"):
        plan_recipients(bad)


def test_bad_batch_parameters_fail_the_whole_batch():
    with pytest.raises(InvalidSessionParameter):
        plan_recipients(["447700900123"], session_parameters={"lower": "x"})


def test_an_iterable_such_as_a_lazy_xcom_sequence_is_accepted():
    assert [r.destination for r in plan_recipients(iter(["447700900123"]))] == ["447700900123"]


def test_timezone_explicit_then_inferred_then_fallback():
    plan = plan_recipients(
        [
            {"to": "447700900123", "timezone": "Asia/Tokyo"},  # explicit wins
            "+1 212 555 0100",  # New York number: one zone
            "sip:bob@pbx.example.com",  # SIP: no zone
            "+1 800 555 0100",  # toll free: several zones
        ],
        calling_window=WINDOW,
        timezone_name="Europe/Paris",
    )
    assert [r.timezone for r in plan] == ["Asia/Tokyo", "America/New_York", "Europe/Paris", "Europe/Paris"]
    assert recipient_timezone("442079460123", None, "UTC") == "Europe/London"
    assert recipient_timezone("447700900123", None, "UTC") == "UTC"  # UK mobiles span several zones
    assert recipient_timezone(None, None, "UTC") == "UTC"


def test_zones_are_only_checked_when_a_window_is_used():
    assert plan_recipients([{"to": "447700900123", "timezone": "Mars/Olympus"}])[0].dialable
    plan = plan_recipients([{"to": "447700900123", "timezone": "Mars/Olympus"}], calling_window=WINDOW)
    assert "recipients[0].timezone" in (plan[0].error or "")
    with pytest.raises(VonageStudioConfigError, match="timezone"):
        plan_recipients(["447700900123"], calling_window=WINDOW, timezone_name="Nowhere/Else")


# -- calling windows --------------------------------------------------------------------------------


def test_window_open_closed_and_next_opening_with_an_injected_now():
    # 10:00 in London (BST, UTC+1) is inside 09:00-20:00.
    assert dial_window_opening(_utc(2026, 6, 1, 9, 0), WINDOW, "Europe/London") is None
    # 06:00 in London: opens at 09:00 local = 08:00 UTC the same day.
    assert dial_window_opening(_utc(2026, 6, 1, 5, 0), WINDOW, "Europe/London") == _utc(2026, 6, 1, 8, 0)
    # 22:00 in New York (EDT, UTC-4): opens the next morning at 13:00 UTC.
    assert dial_window_opening(_utc(2026, 6, 2, 2, 0), WINDOW, "America/New_York") == _utc(2026, 6, 2, 13, 0)
    assert dial_window_opening(_utc(2026, 6, 1, 5, 0), None, "Europe/London") is None


def test_no_dial_starts_in_the_last_minute_of_a_window():
    # 19:59:30 London: the window is still open but closes within the margin -> next morning.
    now = _utc(2026, 6, 1, 18, 59, 30)
    assert dial_window_opening(now, WINDOW, "Europe/London") == _utc(2026, 6, 2, 8, 0)
    assert dial_window_opening(now, WINDOW, "Europe/London", margin=timedelta(0)) is None
    # A window shorter than four margins still gets calls (the margin shrinks with it).
    short = (time(9, 0), time(9, 2))
    assert dial_window_opening(_utc(2026, 1, 5, 9, 0, 10), short, "UTC") is None


def test_window_crossing_midnight():
    night = (time(22, 0), time(2, 0))
    assert dial_window_opening(_utc(2026, 1, 5, 23, 30), night, "UTC") is None
    assert dial_window_opening(_utc(2026, 1, 5, 3, 0), night, "UTC") == _utc(2026, 1, 5, 22, 0)


# -- the ledger rule shared with the hook -------------------------------------------------------------


@pytest.fixture
def hook(vs_conn, tmp_path):
    store = CallStore(f"sqlite:///{tmp_path}/store.db")
    h = VonageStudioHook(store=store, pace=False, retry_backoff=0.01, max_attempts=1)
    h._sleep = lambda seconds: None
    yield h
    store.dispose()


@pytest.mark.parametrize(
    ("first_answer", "redial_unknown"),
    [
        ({"json": OK}, False),
        ({"status_code": 400, "json": {"status": 400, "message": "Bad destination number format"}}, False),
        ({"status_code": 401, "json": {"status": 401, "message": "Not Authorised"}}, False),
        ({"status_code": 429, "json": {"status": 429, "message": "Too Many Requests"}}, False),
        ({"status_code": 503, "json": {"status": 503, "message": "Service Unavailable"}}, False),
        (
            {
                "status_code": 500,
                "json": {"status": 500, "message": "Failed to fetch preconfigured session information"},
            },
            False,
        ),
        ({"exc": requests.exceptions.ReadTimeout("slow")}, False),
        ({"exc": requests.exceptions.ReadTimeout("slow")}, True),
    ],
)
def test_would_dial_agrees_with_the_hook(hook, requests_mock, first_answer, redial_unknown):
    """The dialer skips the hook for rows the hook would not dial; both must agree."""
    requests_mock.post(URL, [first_answer, {"json": OK}])
    ref = "vs-batch-rule"
    with contextlib.suppress(VonageStudioError):
        hook.make_call("447700900123", "agent-1", call_ref=ref)
    record = hook.store.get_call(ref)
    assert record is not None
    predicted = would_dial(record, redial_unknown)
    before = requests_mock.call_count
    with contextlib.suppress(VonageStudioError):
        hook.make_call("447700900123", "agent-1", call_ref=ref, redial_unknown=redial_unknown)
    assert (requests_mock.call_count > before) is predicted


def test_sending_rows_count_as_unknown_for_the_rule(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    hook.store.begin_call("vs-pending", agent_id="agent-1", destination="447700900123")
    hook.store.mark_sending("vs-pending")
    record = hook.store.get_call("vs-pending")
    assert would_dial(record, False) is False
    with pytest.raises(CallOutcomeUnknown):
        hook.make_call("447700900123", "agent-1", call_ref="vs-pending")
    assert would_dial(record, True) is True
    assert requests_mock.call_count == 0


def test_store_mark_unknown_is_a_compare_and_set_when_asked(tmp_path):
    from airflow_provider_vonage_studio.store import CallStateConflict

    store = CallStore(f"sqlite:///{tmp_path}/cas.db")
    _, seen = store.begin_call("vs-cas", agent_id="agent-1", destination="447700900123")
    # The dial finished meanwhile: the relabel must not overwrite that outcome.
    store.mark_placed("vs-cas", "session-1", _utc(2026, 1, 1))
    with pytest.raises(CallStateConflict):
        store.mark_unknown("vs-cas", "abandoned", expected=seen)
    assert store.get_call("vs-cas").state.value == "placed"
    _, other = store.begin_call("vs-cas-2", agent_id="agent-1", destination="447700900456")
    store.mark_unknown("vs-cas-2", "abandoned", expected=other)
    assert store.get_call("vs-cas-2").state.value == "unknown"
    store.dispose()


# -- reporting -----------------------------------------------------------------------------------------


def test_results_are_json_safe_and_redacted():
    import json

    result = RecipientResult(
        index=0,
        to="+44•••••0123",
        key=None,
        call_ref="vs-x",
        result=ResultKind.PLACED,
        session_id="s",
        session_start_time=_utc(2026, 1, 1, 9),
        with_status=True,
        status="answered",
    )
    report = BatchReport(results=(result, RecipientResult(1, "+44•••••0456", None, None, ResultKind.SKIPPED)))
    data = json.loads(json.dumps(report.to_list()))
    assert data[0] == {
        "index": 0,
        "to": "+44•••••0123",
        "key": None,
        "call_ref": "vs-x",
        "result": "placed",
        "reason": None,
        "session_id": "s",
        "session_start_time": "2026-01-01T09:00:00+00:00",
        "status": "answered",
    }
    assert report.counts() == {"placed": 1, "rejected": 0, "skipped": 1, "unknown": 0, "deferred": 0}
    assert report.summary() == "placed 1, skipped 1 of 2 recipient(s)"
    assert report.placed_refs() == ["vs-x"]


def test_call_refs_are_stable_and_depend_on_key_and_call_key(hook):
    def ref(call_key=None, recipient=None):
        dialer = BatchDialer(hook, "agent-1", dag_id="d", run_id="r", task_id="t", call_key=call_key)
        return dialer.call_ref_for(recipient or Recipient(0, "447700900123", "447700900123"))

    assert ref() == ref()
    assert ref() != ref(call_key="again")
    assert ref() != ref(recipient=Recipient(0, "447700900123", "447700900123", key="k"))
    # The position in the list is not part of it: reordering the list keeps every call_ref.
    assert ref() == ref(recipient=Recipient(5, "447700900123", "447700900123"))


def test_progress_lines_report_rate_and_eta(hook, requests_mock, caplog):
    requests_mock.post(URL, json=OK)
    ticks = iter(x * 0.5 for x in range(1000))
    dialer = BatchDialer(
        hook,
        "agent-1",
        dag_id="d",
        run_id="r",
        task_id="t",
        progress_interval=1.0,
        monotonic=lambda: next(ticks),
        logger=logging.getLogger("batch-test"),
    )
    plan = plan_recipients([f"44770090{n:04d}" for n in range(6)])
    with caplog.at_level(logging.INFO, logger="batch-test"):
        report = dialer.run(plan)
    assert report.counts()["placed"] == 6
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Progress:")]
    assert lines and "6/6 recipients done (placed 6)" in lines[-1]
    assert any("calls/s; ETA" in line for line in lines)
    assert "429s absorbed so far: 0" in lines[-1]
