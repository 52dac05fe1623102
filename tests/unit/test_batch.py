"""Pure parts of batch dialing: planning recipients, calling windows, and the ledger rule the
dialer shares with the hook. (Dialing itself is tested over real HTTP in tests/integration.)"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, time, timezone

import pytest
import requests

from airflow_provider_vonage_studio.batch import (
    BatchDialer,
    Recipient,
    plan_recipients,
    would_dial,
)
from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
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


@pytest.mark.parametrize("redial_unknown", [False, True])
@pytest.mark.parametrize(
    ("state", "error_status"),
    [
        ("queued", None),
        ("sending", None),
        ("placed", None),
        ("unknown", None),
        ("rejected", 400),
        ("rejected", 429),
    ],
)
def test_would_dial_is_the_ledger_decision(hook, state, error_status, redial_unknown):
    """By construction now: the dialer's rule is ``ledger.decide``, the one the hook applies."""
    from dataclasses import replace

    from airflow_provider_vonage_studio.calls import CallState
    from airflow_provider_vonage_studio.ledger import decide

    _, row = hook.store.begin_call("vs-rule", agent_id="agent-1", destination="447700900123")
    record = replace(row, state=CallState(state), error_status=error_status, error_message="x")
    expected = decide(record, "447700900123", "agent-1", redial_unknown=redial_unknown).sends
    assert would_dial(record, redial_unknown) is expected


def test_a_pass_settles_abandoned_rows_through_the_hook(hook, requests_mock, monkeypatch):
    requests_mock.post(URL, json=OK)
    dialer = BatchDialer(hook, "agent-1", dag_id="d", run_id="r", task_id="t")
    plan = plan_recipients(["447700900123", "447700900456"])
    dying = dialer.call_ref_for(plan[0])
    hook.store.begin_call(dying, agent_id="agent-1", destination="447700900123")
    hook.store.mark_sending(dying)  # an earlier try died mid-request
    seen = []
    real = hook.settle_abandoned
    monkeypatch.setattr(
        hook,
        "settle_abandoned",
        lambda records, **kw: seen.append(sorted(r.call_ref for r in records)) or real(records, **kw),
    )
    report = dialer.run(plan)
    assert seen == [[dying]]
    assert [r.result.value for r in report.results] == ["unknown", "placed"]
    assert "ended while this call was being dialed" in (report.results[0].reason or "")
    assert requests_mock.call_count == 1


# -- chunks: ledger and do-not-call reads per chunk, results per chunk, bounded reports -----------------


def _numbers(n):
    return [f"4477009{i:05d}" for i in range(n)]


def test_a_pass_reads_the_ledger_and_the_dnc_list_once_per_chunk(hook, requests_mock, monkeypatch):
    requests_mock.post(URL, json=OK)
    reads, listed, chunks = [], [], []
    get_calls, dnc_filter = hook.store.get_calls, hook.store.dnc_filter
    monkeypatch.setattr(hook.store, "get_calls", lambda refs: reads.append(len(refs)) or get_calls(refs))
    monkeypatch.setattr(
        hook.store, "dnc_filter", lambda nums: listed.append(len(list(nums))) or dnc_filter([])
    )
    dialer = BatchDialer(hook, "agent-1", dag_id="d", run_id="r", task_id="t")
    report = dialer.run(
        plan_recipients(_numbers(25)), sink=lambda results: chunks.append(len(results)), chunk_size=10
    )
    # One read of each per chunk (not one for the whole batch); the hook's own one-number check
    # before each dial comes on top.
    assert reads == [10, 10, 5]
    assert [n for n in listed if n > 1] == [10, 10, 5] and listed.count(1) == 25
    assert chunks == [10, 10, 5]
    assert report.complete and report.counts()["placed"] == 25


def test_a_pass_that_keeps_too_many_results_reports_counts_and_examples(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    items = [*_numbers(6), "junk", "also junk", _numbers(1)[0]]
    dialer = BatchDialer(hook, "agent-1", dag_id="d", run_id="r", task_id="t")
    report = dialer.run(iter(plan_recipients(items)), keep=5, collect_placed=True, chunk_size=4)
    assert not report.complete and report.results == ()
    assert report.size == 9
    assert report.counts() == {"placed": 6, "rejected": 2, "skipped": 1, "unknown": 0, "deferred": 0}
    assert [r.index for r in report.problems] == [6, 7]
    assert len(report.placed_refs()) == 6
    assert report.summary() == "placed 6, rejected 2, skipped 1 of 9 recipient(s)"
    # Within the limit the report is what it always was.
    again = dialer.run(plan_recipients(items), keep=9)
    assert again.complete and len(again.results) == 9


def test_results_carry_the_destination_for_the_store_but_never_in_xcom(hook, requests_mock):
    requests_mock.post(URL, json=OK)
    report = BatchDialer(hook, "agent-1", dag_id="d", run_id="r", task_id="t").run(
        plan_recipients(["+44 7700 900123"])
    )
    (result,) = report.results
    assert result.to_row()["destination"] == "447700900123"
    assert "447700900123" not in str(result.to_dict()) and "447700900123" not in repr(result)
