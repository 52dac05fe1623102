"""The exactly-once decision (ledger.decide): every ledger state, as one table of rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_vonage_studio.calls import CallRecord, CallState
from airflow_provider_vonage_studio.exceptions import (
    VonageStudioAgentNotFound,
    VonageStudioBadRequest,
    VonageStudioRateLimited,
    VonageStudioServerError,
)
from airflow_provider_vonage_studio.ledger import Action, decide

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
TO = "447700900123"
AGENT = "agent-1"


def record(state: CallState, *, status: int | None = None, message: str | None = None) -> CallRecord:
    return CallRecord(
        call_ref="vs-1",
        agent_id=AGENT,
        destination=TO,
        state=state,
        dag_id="d",
        run_id="r",
        task_id="t",
        map_index=-1,
        recipient_key=None,
        session_id="s" if state is CallState.PLACED else None,
        session_start_time=NOW if state is CallState.PLACED else None,
        error_status=status,
        error_message=message,
        status=None,
        status_at=None,
        conversation_uuid=None,
        callback_payload=None,
        parameters=None,
        created_at=NOW,
        updated_at=NOW,
    )


def test_no_row_dials() -> None:
    assert decide(None, TO, AGENT).action is Action.DIAL


def test_queued_dials_nothing_was_sent() -> None:
    decision = decide(record(CallState.QUEUED), TO, AGENT)
    assert decision.action is Action.DIAL and decision.sends


def test_placed_is_reused_even_with_redial_unknown() -> None:
    for redial in (False, True):
        decision = decide(record(CallState.PLACED), TO, AGENT, redial_unknown=redial)
        assert decision.action is Action.REUSE and not decision.sends


@pytest.mark.parametrize("state", [CallState.SENDING, CallState.UNKNOWN])
def test_sent_without_answer_is_unknown_unless_redial_asked(state: CallState) -> None:
    decision = decide(record(state), TO, AGENT)
    assert decision.action is Action.UNKNOWN and not decision.sends
    assert decision.abandoned is (state is CallState.SENDING)
    redial = decide(record(state), TO, AGENT, redial_unknown=True)
    assert redial.action is Action.REDIAL and redial.sends
    assert redial.abandoned is (state is CallState.SENDING)


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "Bad destination number format", VonageStudioBadRequest),
        (404, "agent not found", VonageStudioAgentNotFound),
        (500, "Failed to fetch preconfigured session information", VonageStudioServerError),
    ],
)
def test_rejected_for_good_raises_the_same_error(status: int, message: str, kind: type) -> None:
    decision = decide(
        record(CallState.REJECTED, status=status, message=message), TO, AGENT, redial_unknown=True
    )
    assert decision.action is Action.RAISE
    assert isinstance(decision.error, kind) and decision.error.message == message


@pytest.mark.parametrize(("status", "kind"), [(429, VonageStudioRateLimited), (503, VonageStudioServerError)])
def test_rejected_retryably_is_redialed(status: int, kind: type) -> None:
    decision = decide(record(CallState.REJECTED, status=status, message="later"), TO, AGENT)
    assert decision.action is Action.REDIAL and isinstance(decision.error, kind)


def test_a_row_for_another_destination_or_agent_is_a_mismatch() -> None:
    placed = record(CallState.PLACED)
    assert decide(placed, "447700900999", AGENT).action is Action.MISMATCH
    assert decide(placed, TO, "agent-2").action is Action.MISMATCH


def test_old_rows_saying_pending_read_as_sending() -> None:
    legacy = replace(record(CallState.UNKNOWN), state=CallState("pending"))
    assert decide(legacy, TO, AGENT).abandoned


@settings(max_examples=200, deadline=None)
@given(
    state=st.sampled_from(list(CallState)),
    status=st.one_of(st.none(), st.integers(100, 599)),
    redial=st.booleans(),
)
def test_only_unplaced_or_explicitly_redialed_calls_send(
    state: CallState, status: int | None, redial: bool
) -> None:
    decision = decide(record(state, status=status, message="m"), TO, AGENT, redial_unknown=redial)
    if state is CallState.PLACED:
        assert not decision.sends
    if state in (CallState.SENDING, CallState.UNKNOWN) and not redial:
        assert not decision.sends
    if state is CallState.QUEUED:
        assert decision.sends
