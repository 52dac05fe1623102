"""The end-call webhook's pure parts: the connection extra, the reserved session parameter, the
body parser, and where evaluate_call says an outcome came from (issue: know, not guess)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_provider_vonage_studio.callbacks.ended import MAX_FIELDS, parse_end_call_body
from airflow_provider_vonage_studio.calls import CallRecord, CallState, OutcomeSource
from airflow_provider_vonage_studio.events import source_of, status_event
from airflow_provider_vonage_studio.exceptions import InvalidSessionParameter, VonageStudioConfigError
from airflow_provider_vonage_studio.hooks.dialing import _token_for, call_body
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.outcome import CallOutcome, evaluate_call, source_of_verdict
from airflow_provider_vonage_studio.signing import build_status_url, verify_token
from tests.conftest import conn_json

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
WINDOW = timedelta(seconds=90)
SECRET = "unit-callback-secret-0123456789"


def _hook(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> VonageStudioHook:
    monkeypatch.setenv("AIRFLOW_CONN_VS_TEST", conn_json(**extra))
    return VonageStudioHook("vs_test", pace=False)


# ----------------------------------------------------------------------- connection extra


@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        ({}, "callback_base_url and callback_secret"),
        ({"callback_secret": SECRET}, "callback_base_url"),
        ({"callback_base_url": "https://cb.example"}, "callback_secret"),
    ],
)
def test_end_call_webhook_needs_the_receiver(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], missing: str
) -> None:
    hook = _hook(monkeypatch, end_call_webhook=True, **extra)
    with pytest.raises(
        VonageStudioConfigError, match=f"'end_call_webhook' is on but extra {missing} is not set"
    ):
        hook.config  # noqa: B018


@pytest.mark.parametrize("value", ["maybe", 1, None, [True]])
def test_end_call_webhook_must_be_true_or_false(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    hook = _hook(monkeypatch, end_call_webhook=value)
    if value is None:  # absent is off
        assert hook.config.end_call_webhook is False
        return
    with pytest.raises(VonageStudioConfigError, match=r"'end_call_webhook'.*expected true or false"):
        hook.config  # noqa: B018


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), ("true", True), ("False", False), (False, False)]
)
def test_end_call_webhook_reads_bools_and_form_text(
    monkeypatch: pytest.MonkeyPatch, value: Any, expected: bool
) -> None:
    hook = _hook(
        monkeypatch, end_call_webhook=value, callback_base_url="https://cb.example", callback_secret=SECRET
    )
    assert hook.config.end_call_webhook is expected
    assert SECRET not in repr(hook.config)


# ------------------------------------------------------------------ VS_CALL_TOKEN parameter


@pytest.mark.parametrize("strict", [True, False])
def test_vs_call_token_is_a_reserved_parameter(strict: bool) -> None:
    with pytest.raises(InvalidSessionParameter, match="'VS_CALL_TOKEN' is reserved"):
        call_body(
            "447700900123",
            "agent-1",
            session_parameters={"VS_CALL_TOKEN": "mine"},
            status_url=None,
            hangup_on_answer_machine=None,
            default_country=None,
            strict_parameter_names=strict,
        )


def test_the_token_is_the_status_urls_when_signed_for_the_call() -> None:
    url = build_status_url("https://cb.example", "vs-a", SECRET)
    token = url.split("/calls/")[1].split("/status")[0]
    assert _token_for("vs-a", url, SECRET) == token
    # Another call's URL, a foreign URL or none: a fresh token for this call.
    for other in (build_status_url("https://cb.example", "vs-b", SECRET), "https://mine.example/hook", None):
        assert verify_token(_token_for("vs-a", other, SECRET), SECRET) == "vs-a"


def test_the_hook_adds_the_token_only_when_on(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"agent_id": "agent-1", "to": "447700900123", "session_parameters": [{"name": "A", "value": "1"}]}
    on = _hook(
        monkeypatch, end_call_webhook=True, callback_base_url="https://cb.example", callback_secret=SECRET
    )
    url = build_status_url("https://cb.example", "vs-a", SECRET)
    sent = on._with_end_call_token(body, "vs-a", url)
    assert sent["session_parameters"][0] == {"name": "A", "value": "1"}
    assert sent["session_parameters"][1]["name"] == "VS_CALL_TOKEN"
    assert f"/calls/{sent['session_parameters'][1]['value']}/status" in url
    assert len(body["session_parameters"]) == 1  # the caller's body is not changed
    assert on._with_end_call_token(body, None, url) is body  # no call_ref: no ledger row to confirm
    off = _hook(monkeypatch, callback_base_url="https://cb.example", callback_secret=SECRET)
    assert off._with_end_call_token(body, "vs-a", url) is body


# ------------------------------------------------------------------------------ the body


def test_body_values_become_strings_and_the_webhook_fields_are_not_parameters() -> None:
    parsed = parse_end_call_body(
        b'{"VS_CALL_TOKEN": "t", "ended_at": "2026-03-01T09:05:00Z", '
        b'"A": "x", "N": 3, "F": 1.5, "B": false, "Z": null}'
    )
    assert not isinstance(parsed, str)
    assert parsed.parameters == {"A": "x", "N": "3", "F": "1.5", "B": "false", "Z": ""}
    assert (parsed.token, parsed.ended_at) == ("t", "2026-03-01T09:05:00Z")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"A": {"B": 1}}', "A: must be a string, number"),
        (b'{"A": [1]}', "A: must be a string, number"),
        (b"[1, 2]", "must be a JSON object"),
        (b"not json", "must be a JSON object"),
        (b'{"": "x"}', "field name"),
        (b'{"A\\nB": "x"}', "field name"),
        (
            ("{" + ",".join(f'"F{i}": 1' for i in range(MAX_FIELDS + 1)) + "}").encode(),
            f"at most {MAX_FIELDS}",
        ),
    ],
)
def test_body_refusals_name_the_field_not_the_value(raw: bytes, why: str) -> None:
    parsed = parse_end_call_body(raw)
    assert isinstance(parsed, str) and why in parsed


def test_an_empty_body_is_an_empty_object() -> None:
    parsed = parse_end_call_body(b"  ")
    assert not isinstance(parsed, str) and parsed.parameters == {} and parsed.token is None


# ------------------------------------------------------------------------ evaluate_call


def _record(**fields: Any) -> CallRecord:
    base = CallRecord(
        call_ref="vs-test",
        agent_id="agent-1",
        destination="447700900123",
        state=CallState.PLACED,
        dag_id="d",
        run_id="r",
        task_id="t",
        map_index=-1,
        recipient_key=None,
        session_id="s-1",
        session_start_time=T0,
        error_status=None,
        error_message=None,
        status=None,
        status_at=None,
        conversation_uuid=None,
        callback_payload=None,
        parameters=None,
        created_at=T0,
        updated_at=T0,
    )
    return replace(base, **fields)


def _eval(record: CallRecord, after: timedelta) -> CallOutcome | None:
    return evaluate_call(record, now=T0 + after, answer_window=WINDOW, fail_on=())


def test_an_end_call_record_decides_at_once() -> None:
    ended = T0 + timedelta(seconds=20)
    record = _record(outcome="answered", outcome_source="end_call", ended_at=ended)
    outcome = _eval(record, timedelta(seconds=21))
    assert outcome is not None
    assert (outcome.status, outcome.source, outcome.inferred, outcome.status_at) == (
        "answered",
        "end_call",
        False,
        ended,
    )
    assert outcome.confirmed and "end-call webhook" in outcome.describe()


def test_sources_of_callback_insights_and_inference() -> None:
    busy = _eval(_record(status="busy", status_at=T0, outcome_source="callback"), timedelta(seconds=1))
    assert busy is not None and (busy.status, busy.source) == ("busy", "callback")
    insights = _eval(
        _record(outcome="answered", outcome_source="insights", outcome_at=T0), timedelta(seconds=1)
    )
    assert insights is not None and (insights.status, insights.source) == ("answered", "insights")
    assert _eval(_record(), timedelta(seconds=89)) is None
    inferred = _eval(_record(), WINDOW)
    assert inferred is not None and (inferred.source, inferred.confirmed) == ("inferred", False)
    # A stored *inferred* verdict does not decide by itself: the window does.
    assert _eval(_record(outcome="answered", outcome_source="inferred"), timedelta(seconds=1)) is None


def test_call_outcome_source_defaults_follow_inferred() -> None:
    assert CallOutcome("vs-1", "answered", inferred=True, status_at=None).source == "inferred"
    assert CallOutcome("vs-1", "busy", inferred=False, status_at=None).source == "callback"
    assert CallOutcome("vs-1", "answered", False, None, source=OutcomeSource.END_CALL).source == "end_call"


def test_source_of_a_verdict_decided_elsewhere() -> None:
    assert source_of_verdict(None, "busy") == "callback"
    assert source_of_verdict(None, "answered") == "inferred"
    assert source_of_verdict(_record(outcome_source="end_call", ended_at=T0), "answered") == "end_call"


def test_the_status_event_carries_sources() -> None:
    event = status_event(["vs-1"], {"vs-1": "answered"}, {}, single=True, sources={"vs-1": "end_call"})
    assert source_of(event) == "end_call" and event["call_sources"] == {"vs-1": "end_call"}  # type: ignore[typeddict-item]
    assert source_of(status_event(["vs-1"], {"vs-1": "answered"}, {}, single=True)) is None
    many = status_event(
        ["a", "b"], {"a": "busy", "b": "answered"}, {}, single=False, sources={"a": "callback"}
    )
    assert many["call_sources"] == {"a": "callback"}  # type: ignore[typeddict-item]
