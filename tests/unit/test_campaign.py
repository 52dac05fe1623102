"""The campaign's plain values and functions: policies checked at construction, wave maths,
dispositions and the per-attempt ledger keys (campaign.py, operators/_campaign.py)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_provider_vonage_studio.calls import TaskIdentity, make_call_ref
from airflow_provider_vonage_studio.campaign import (
    Attempt,
    AttemptIdentity,
    CallAttempts,
    Disposition,
    MessageFallback,
    attempt_key,
    current_wave,
    disposition,
    due_in_wave,
    message_key,
    next_wave_due,
    pending_in_wave,
)
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.operators._campaign import check_campaign

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


def _a(number: int, outcome: str | None, minutes: int = 0) -> Attempt:
    return Attempt(number, f"vs-{number}", T0 + timedelta(minutes=minutes), outcome, "callback")


# -- CallAttempts ---------------------------------------------------------------------------------


def test_defaults_are_three_attempts_an_hour_apart() -> None:
    policy = CallAttempts()
    assert (policy.max_attempts, policy.retry_on) == (3, ("busy", "timeout", "failed"))
    assert policy.spacing_after(1) == policy.spacing_after(2) == timedelta(hours=1)


def test_a_list_of_spacings_and_seconds() -> None:
    policy = CallAttempts(max_attempts=4, spacing=[timedelta(minutes=5), 600])
    assert policy.spacing_after(1) == timedelta(minutes=5)
    assert policy.spacing_after(2) == policy.spacing_after(3) == timedelta(minutes=10)
    assert CallAttempts(retry_on="busy").retry_on == ("busy",)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"max_attempts": 11}, "max_attempts"),
        ({"retry_on": ()}, "retry_on"),
        ({"retry_on": ("busy", "nope")}, "retry_on"),
        ({"retry_on": ("rejected",)}, "retry_on"),
        ({"retry_on": ("answered",)}, "retry_on"),
        ({"retry_on": {"busy": 1}}, "retry_on"),
        ({"retry_on": 3}, "retry_on"),
        ({"spacing": True}, "spacing"),
        ({"spacing": float("nan")}, "spacing"),
        ({"spacing": float("inf")}, "spacing"),
        ({"spacing": -1}, "spacing"),
        ({"spacing": timedelta(seconds=-1)}, "spacing"),
        ({"spacing": timedelta(days=8)}, "spacing"),
        ({"spacing": "1h"}, "spacing"),
        ({"spacing": []}, "spacing"),
        ({"spacing": [60, True]}, "spacing[1]"),
        ({"max_attempts": 2, "spacing": [60, 60]}, "spacing"),
    ],
)
def test_bad_attempts_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(VonageStudioConfigError, match="^" + re.escape(field) + ": "):
        CallAttempts(**kwargs)


# -- MessageFallback ------------------------------------------------------------------------------


def test_whatsapp_and_sms_fallbacks() -> None:
    whatsapp = MessageFallback(
        "agent-m", template="t", namespace="n", locale="en", components=[{"type": "body"}]
    )
    assert whatsapp.message_options() == {
        "channel": "whatsapp",
        "namespace": "n",
        "template": "t",
        "locale": "en",
        "components": [{"type": "body"}],
    }
    assert MessageFallback("agent-m", channel="sms").message_options() == {"channel": "sms"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"agent_id": ""}, "then_message.agent_id"),
        ({"agent_id": 3}, "then_message.agent_id"),
        ({"channel": "voice"}, "then_message.channel"),
        ({"template": None}, "then_message.template"),
        ({"namespace": None}, "then_message.namespace"),
        ({"locale": None}, "then_message.locale"),
        ({"template": ""}, "then_message.template"),
        ({"components": "body"}, "then_message.components"),
        ({"components": [1]}, "then_message.components"),
        ({"channel": "sms", "template": "t", "namespace": None, "locale": None}, "then_message.template"),
        ({"session_parameters": {"bad name": "x"}}, "then_message.session_parameters"),
    ],
)
def test_bad_fallbacks_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    given: dict[str, Any] = {
        "agent_id": "agent-m",
        "template": "t",
        "namespace": "n",
        "locale": "en",
        **kwargs,
    }
    with pytest.raises(VonageStudioConfigError, match=rf"^{field}: "):
        MessageFallback(**given)


def test_sms_refuses_every_whatsapp_only_field() -> None:
    with pytest.raises(VonageStudioConfigError, match=r"^then_message.components: a WhatsApp-only field"):
        MessageFallback("agent-m", channel="sms", components=[{"type": "body"}])


def test_the_operator_checks_its_campaign_arguments() -> None:
    with pytest.raises(VonageStudioConfigError, match=r"^attempts: "):
        check_campaign({"max_attempts": 3}, None)
    with pytest.raises(VonageStudioConfigError, match=r"^then_message: must be"):
        check_campaign(CallAttempts(), "whatsapp")
    with pytest.raises(VonageStudioConfigError, match=r"^then_message: needs attempts"):
        check_campaign(None, MessageFallback("agent-m", channel="sms"))
    assert check_campaign(None, None) == (None, None)


def test_the_operator_refuses_bad_campaign_arguments_at_construction() -> None:
    from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator

    with pytest.raises(VonageStudioConfigError, match=r"^attempts: "):
        MakeCallsOperator(task_id="t", recipients=["447700900001"], agent_id="a", attempts=3)
    plain = MakeCallsOperator(task_id="t", recipients=["447700900001"], agent_id="a")
    assert plain.attempts is None and plain.then_message is None


# -- keys -----------------------------------------------------------------------------------------


def test_attempt_one_keeps_the_plain_batch_key() -> None:
    task = TaskIdentity("dag", "run", "task")
    assert attempt_key("to:447700900001", 1) == "to:447700900001"
    assert AttemptIdentity("dag", "run", "task").call_ref("to:447700900001") == task.call_ref(
        "to:447700900001"
    )
    second = AttemptIdentity("dag", "run", "task", attempt=2).call_ref("to:447700900001")
    assert second == make_call_ref("dag", "run", "task", -1, "to:447700900001#attempt-2")
    message = AttemptIdentity("dag", "run", "task", message=True).call_ref("to:447700900001")
    assert message == make_call_ref("dag", "run", "task", -1, message_key("to:447700900001"))
    assert len({task.call_ref("k"), second, message}) == 3


# -- waves ----------------------------------------------------------------------------------------


def test_who_is_due_in_each_wave() -> None:
    policy = CallAttempts(max_attempts=3, spacing=timedelta(minutes=30))
    histories = {
        "answered": [_a(1, "answered")],
        "busy-busy": [_a(1, "busy"), _a(2, "busy", 35)],
        "declined": [_a(1, "rejected")],
        "refused": [_a(1, "refused")],
        "unknown": [_a(1, "unknown")],
        "skipped": [],
        "busy-then-answered": [_a(1, "timeout", 1), _a(2, "answered", 31)],
    }
    assert set(due_in_wave(histories, 1, policy)) == set(histories)
    assert due_in_wave(histories, 2, policy) == ["busy-busy", "busy-then-answered"]
    assert due_in_wave(histories, 3, policy) == ["busy-busy"]
    assert due_in_wave(histories, 4, policy) == []
    assert current_wave(histories) == 2
    assert current_wave({"a": []}) == 1


def test_the_next_wave_is_due_a_spacing_after_the_last_dial() -> None:
    policy = CallAttempts(max_attempts=3, spacing=[timedelta(minutes=30), timedelta(hours=2)])
    histories = {"a": [_a(1, "busy", 0)], "b": [_a(1, "failed", 4)], "c": [_a(1, "answered", 9)]}
    assert next_wave_due(histories, 1, policy) == T0 + timedelta(minutes=9, hours=0, seconds=30 * 60)
    histories["a"].append(_a(2, "busy", 40))
    histories["b"].append(_a(2, "answered", 41))
    assert next_wave_due(histories, 2, policy) == T0 + timedelta(minutes=41, hours=2)
    histories["a"].append(_a(3, "busy", 200))
    assert next_wave_due(histories, 3, policy) is None  # the last attempt
    assert next_wave_due({"c": [_a(1, "answered")]}, 1, policy) is None  # nobody due


def test_pending_attempts_of_a_wave() -> None:
    histories = {"a": [_a(1, "busy"), _a(2, None)], "b": [_a(1, None)], "c": [_a(1, "busy"), _a(2, "busy")]}
    assert pending_in_wave(histories, 1) == ["vs-1"]
    assert pending_in_wave(histories, 2) == ["vs-2"]


@pytest.mark.parametrize(
    ("outcomes", "listed", "over", "expected"),
    [
        (["busy", "answered"], False, True, Disposition.REACHED),
        (["busy", "answered"], True, True, Disposition.REACHED),
        (["busy", "busy", "busy"], False, True, Disposition.NOT_REACHED),
        (["rejected"], False, True, Disposition.NOT_REACHED),
        (["busy"], True, True, Disposition.DO_NOT_CALL),
        (["refused"], False, True, Disposition.REJECTED),
        (["busy", "unknown"], False, True, Disposition.UNKNOWN),
        (["busy", None], False, False, Disposition.IN_PROGRESS),
        (["busy"], False, False, Disposition.IN_PROGRESS),
        (["busy", "busy", "busy"], False, False, Disposition.NOT_REACHED),
        ([], True, True, Disposition.DO_NOT_CALL),
    ],
)
def test_dispositions(outcomes: list[str | None], listed: bool, over: bool, expected: Disposition) -> None:
    history = [_a(n, outcome) for n, outcome in enumerate(outcomes, start=1)]
    assert disposition(history, CallAttempts(), listed=listed, over=over) is expected


def test_an_attempt_as_json() -> None:
    assert _a(2, "busy").to_dict() == {
        "attempt": 2,
        "call_ref": "vs-2",
        "at": "2026-03-02T10:00:00+00:00",
        "outcome": "busy",
        "source": "callback",
    }
