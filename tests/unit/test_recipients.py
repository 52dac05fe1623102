"""Unit tests of planning a batch and of its results (``recipients.py``): no request, no store."""

from __future__ import annotations

from datetime import datetime, time, timezone

import pytest

from airflow_provider_vonage_studio.exceptions import InvalidSessionParameter, VonageStudioConfigError
from airflow_provider_vonage_studio.recipients import (
    BatchReport,
    RecipientResult,
    ResultKind,
    plan_recipients,
)
from airflow_provider_vonage_studio.windows import recipient_timezone

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


# -- reporting ---------------------------------------------------------------------------------


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
        outcome_source="inferred",
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
        "outcome_source": "inferred",
    }
    assert report.counts() == {"placed": 1, "rejected": 0, "skipped": 1, "unknown": 0, "deferred": 0}
    assert report.summary() == "placed 1, skipped 1 of 2 recipient(s)"
    assert report.placed_refs() == ["vs-x"]


def test_planning_and_result_names_stay_importable_from_batch():
    from airflow_provider_vonage_studio import batch, recipients

    for name in (
        "Recipient",
        "RecipientResult",
        "BatchReport",
        "ResultKind",
        "plan_recipients",
        "RECIPIENT_FIELDS",
    ):
        assert getattr(batch, name) is getattr(recipients, name)


# -- streams --------------------------------------------------------------------------------------------


def test_iter_plan_checks_arguments_at_once_and_reads_items_lazily():
    from airflow_provider_vonage_studio.recipients import chunked, iter_plan

    with pytest.raises(VonageStudioConfigError, match="recipients: expected a list"):
        iter_plan("447700900123")
    read = []

    def items():
        for n in ("447700900001", "447700900002", "+44 7700 900001", "447700900003"):
            read.append(n)
            yield n

    plan = iter_plan(items())
    assert read == []  # nothing read until iterated
    first = next(plan)
    assert first.destination == "447700900001" and read == ["447700900001"]
    rest = list(plan)
    assert [r.duplicate_of for r in rest] == [None, 0, None]  # de-duplicated across the stream
    assert [len(c) for c in chunked(iter(plan_recipients(["447700900001"] * 5)), 2)] == [2, 2, 1]


def test_an_unreadable_item_is_one_rejection():
    from airflow_provider_vonage_studio.recipients import UnreadableItem

    (bad,) = plan_recipients([UnreadableItem("not a JSON value (Expecting value at column 1)")])
    assert bad.error == "recipients[0]: not a JSON value (Expecting value at column 1)"


def test_stored_results_are_redacted_unless_asked():
    from airflow_provider_vonage_studio.recipients import stored_result

    row = {"task_id": "t", "map_index": -1, "position": 3, "destination": "447700900123", "result": "placed"}
    assert stored_result(row)["to"] != "447700900123" and stored_result(row)["to"].endswith("0123")
    assert stored_result(row, show_numbers=True)["to"] == "447700900123"
    assert stored_result({**row, "destination": None})["to"] is None
