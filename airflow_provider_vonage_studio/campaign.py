"""Reminder campaigns: attempt waves and a message fallback, as plain values and functions.

A campaign calls a list in *waves*. Wave 1 dials everyone; wave ``n`` dials again only the
recipients whose attempt ``n - 1`` ended with a status in :attr:`CallAttempts.retry_on`, once
:func:`next_wave_due` says the spacing has passed. Everything here is pure logic over each
recipient's attempt history (read from the call ledger by the operator), so a task that
resumes after a deferral, a crash or a retry recomputes where the campaign stands from the
ledger alone: nothing about recipients travels through XCom or trigger arguments.

Each attempt is its own ledger entry: attempt 1 keeps the key a plain batch uses (existing
ledgers keep meaning the same), attempt ``n >= 2`` appends ``#attempt-n``
(:func:`attempt_key`), the fallback message appends ``#message`` (:func:`message_key`).

``MakeCallsOperator(attempts=..., then_message=...)`` runs the waves (its mixin in
``operators/_campaign.py``); this module imports only the domain core and validation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from airflow_provider_vonage_studio.calls import ANSWERED, FAILURE_STATUSES, TaskIdentity, make_call_ref
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_SPACING",
    "RETRYABLE_OUTCOMES",
    "Attempt",
    "AttemptIdentity",
    "CallAttempts",
    "Disposition",
    "MessageFallback",
    "attempt_key",
    "current_wave",
    "disposition",
    "due_in_wave",
    "message_key",
    "next_wave_due",
    "pending_in_wave",
]

#: The most attempts one campaign may make per recipient (more is harassment, not reminding).
MAX_ATTEMPTS = 10

#: The longest wait between two waves.
MAX_SPACING = timedelta(days=7)

#: Statuses a later wave may retry. ``rejected`` is not one: the callee declined the call, and
#: a recipient who declined is never called again by a campaign.
RETRYABLE_OUTCOMES: tuple[str, ...] = tuple(s for s in FAILURE_STATUSES if s != "rejected")

#: An attempt's outcome when AI Studio refused the call (nothing rang) and when the request's
#: answer never came back (it may have rung). Neither is ever retried.
REFUSED = "refused"
UNKNOWN = "unknown"

_CHANNELS = ("sms", "whatsapp")
_WHATSAPP_ONLY = ("namespace", "template", "locale", "components")
_WHATSAPP_REQUIRED = ("namespace", "template", "locale")


class Disposition(str, Enum):
    """Where a recipient ended up once the campaign is over (or stands while it runs)."""

    REACHED = "reached"  # an attempt was answered
    NOT_REACHED = "not_reached"  # every attempt made ended unanswered; the message goes to these
    DO_NOT_CALL = "do_not_call"  # on the do-not-call list before being reached
    REJECTED = "rejected"  # AI Studio refused the call, or the entry is not a dialable number
    UNKNOWN = "unknown"  # a dial's answer never came back: it may have rung; never retried
    DUPLICATE = "duplicate"  # the same destination appears earlier in the list
    IN_PROGRESS = "in_progress"  # a wave is still to be dialed or its outcome awaited


# ------------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class CallAttempts:
    """How often and how far apart a campaign calls each recipient.

    :param max_attempts: calls per recipient at most (1 to :data:`MAX_ATTEMPTS`; an ``int``,
        not a ``bool``).
    :param retry_on: final statuses that earn another attempt (any of
        :data:`RETRYABLE_OUTCOMES`; at least one). Answered, declined (``rejected``),
        refused and unknown calls are never retried.
    :param spacing: wait from a wave's last dial to the next wave: a ``timedelta`` or seconds,
        or a list of them (wave 2's, wave 3's, ...; the last repeats). Each in
        ``[0, MAX_SPACING]``.

    :raises VonageStudioConfigError: (at construction) naming the field for a wrong type, a
        ``bool`` where a number is expected, NaN or infinity, a negative or too-long spacing, an
        empty or unknown ``retry_on``, ``max_attempts`` out of range, or more spacings than
        there are gaps between attempts.
    """

    max_attempts: int = 3
    retry_on: tuple[str, ...] = ("busy", "timeout", "failed")
    spacing: timedelta | float | Sequence[timedelta | float] = timedelta(hours=1)
    spacings: tuple[timedelta, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool):
            raise VonageStudioConfigError(
                f"max_attempts: must be a whole number from 1 to {MAX_ATTEMPTS}, got {self.max_attempts!r}"
            )
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise VonageStudioConfigError(
                f"max_attempts: must be from 1 to {MAX_ATTEMPTS}, got {self.max_attempts}"
            )
        object.__setattr__(self, "retry_on", _statuses(self.retry_on))
        spacings = _spacings(self.spacing)
        if len(spacings) > max(self.max_attempts - 1, 1):
            raise VonageStudioConfigError(
                f"spacing: {len(spacings)} spacings given but max_attempts={self.max_attempts} has only "
                f"{self.max_attempts - 1} gap(s) between attempts"
            )
        object.__setattr__(
            self, "spacing", spacings if isinstance(self.spacing, (list, tuple)) else spacings[0]
        )
        object.__setattr__(self, "spacings", spacings)

    def spacing_after(self, wave: int) -> timedelta:
        """The wait between wave ``wave`` and wave ``wave + 1`` (the last spacing repeats)."""
        return self.spacings[min(wave, len(self.spacings)) - 1]


def _statuses(value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, Mapping):
        raise VonageStudioConfigError(f"retry_on: must be a list of call statuses, got {value!r}")
    items = tuple(items)
    if not items:
        raise VonageStudioConfigError(
            f"retry_on: must name at least one status to retry ({', '.join(RETRYABLE_OUTCOMES)}); "
            "for a single attempt give max_attempts=1"
        )
    for item in items:
        if item == "rejected":
            raise VonageStudioConfigError(
                "retry_on: 'rejected' means the callee declined the call; a campaign never calls them again"
            )
        if not isinstance(item, str) or item not in RETRYABLE_OUTCOMES:
            raise VonageStudioConfigError(
                f"retry_on: {item!r} is not a status a campaign retries; expected any of "
                f"{', '.join(RETRYABLE_OUTCOMES)}"
            )
    return tuple(dict.fromkeys(items))


def _spacings(value: Any) -> tuple[timedelta, ...]:
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not items:
        raise VonageStudioConfigError("spacing: an empty list; give a timedelta (or a list of them)")
    return tuple(
        _duration(item, f"spacing[{n}]" if len(items) > 1 else "spacing") for n, item in enumerate(items)
    )


def _duration(value: Any, name: str) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float)):
        raise VonageStudioConfigError(
            f"{name}: must be a timedelta or a number of seconds, got {type(value).__name__} {value!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise VonageStudioConfigError(f"{name}: must be finite, got {value!r}")
    try:
        duration = value if isinstance(value, timedelta) else timedelta(seconds=value)
    except OverflowError:
        raise VonageStudioConfigError(f"{name}: {value!r} is too long (at most {MAX_SPACING})") from None
    if duration < timedelta(0):
        raise VonageStudioConfigError(f"{name}: must not be negative, got {duration}")
    if duration > MAX_SPACING:
        raise VonageStudioConfigError(f"{name}: at most {MAX_SPACING}, got {duration}")
    return duration


@dataclass(frozen=True)
class MessageFallback:
    """The message sent, once, to every recipient the campaign never reached.

    :param agent_id: the AI Studio messaging agent that sends it.
    :param channel: ``"whatsapp"`` (default) or ``"sms"``.
    :param template, namespace, locale: the WhatsApp template (all three required on
        WhatsApp, refused on SMS).
    :param components: WhatsApp template header/body parameters (a list of mappings).
    :param session_parameters: parameters for the agent (mapping or the API's list), merged
        under each recipient's own.

    :raises VonageStudioConfigError: (at construction) naming the field: an empty or malformed
        ``agent_id``, an unknown channel, a WhatsApp field missing (or given on SMS), a field of
        the wrong type.
    """

    agent_id: str
    channel: str = "whatsapp"
    template: str | None = None
    namespace: str | None = None
    locale: str | None = None
    components: Sequence[Mapping[str, Any]] | None = None
    session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        from airflow_provider_vonage_studio.validation import check_agent_id

        object.__setattr__(self, "agent_id", check_agent_id(self.agent_id, field="then_message.agent_id"))
        if self.channel not in _CHANNELS:
            raise VonageStudioConfigError(
                f"then_message.channel: must be 'whatsapp' or 'sms', got {self.channel!r}"
            )
        for name in ("template", "namespace", "locale"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise VonageStudioConfigError(
                    f"then_message.{name}: must be a non-empty string, got {value!r}"
                )
        if self.components is not None:
            if isinstance(self.components, (str, Mapping)) or not all(
                isinstance(c, Mapping) for c in self.components
            ):
                raise VonageStudioConfigError("then_message.components: must be a list of mappings")
            object.__setattr__(self, "components", tuple(dict(c) for c in self.components))
        if self.channel == "sms":
            given = [n for n in _WHATSAPP_ONLY if getattr(self, n) is not None]
            if given:
                raise VonageStudioConfigError(
                    f"then_message.{given[0]}: a WhatsApp-only field, not allowed with channel='sms'"
                )
        else:
            missing = [n for n in _WHATSAPP_REQUIRED if getattr(self, n) is None]
            if missing:
                raise VonageStudioConfigError(
                    f"then_message.{missing[0]}: required with channel='whatsapp' (the approved template's "
                    "namespace, template name and locale)"
                )
        if self.session_parameters is not None:
            from airflow_provider_vonage_studio.params import normalize_session_parameters

            try:
                normalize_session_parameters(self.session_parameters)
            except VonageStudioConfigError as exc:
                raise VonageStudioConfigError(f"then_message.session_parameters: {exc}") from exc

    def message_options(self) -> dict[str, Any]:
        """The keyword arguments of ``hook.send_message`` this fallback fixes."""
        options: dict[str, Any] = {"channel": self.channel}
        if self.channel == "whatsapp":
            options.update(
                namespace=self.namespace,
                template=self.template,
                locale=self.locale,
                components=list(self.components) if self.components is not None else None,
            )
        return options


# ----------------------------------------------------------------------------- the ledger keys


def attempt_key(key: str | None, attempt: int) -> str | None:
    """The recipient key of attempt ``attempt``: the key itself for attempt 1 (so a campaign's
    first wave names the same ledger rows a plain batch would), ``<key>#attempt-n`` after."""
    if attempt == 1:
        return key
    return f"{key or ''}#attempt-{attempt}"


def message_key(key: str | None) -> str:
    """The recipient key of the campaign's fallback message (its own ledger entry)."""
    return f"{key or ''}#message"


@dataclass(frozen=True)
class AttemptIdentity(TaskIdentity):
    """A task instance's identity for one attempt (or, with ``message``, the fallback message):
    its :meth:`call_ref` mixes :func:`attempt_key` / :func:`message_key` into the key, so the
    batch loop that dials a wave needs no other change to keep each attempt apart."""

    attempt: int = 1
    message: bool = False

    def call_ref(self, key: str | None = None) -> str:
        keyed = message_key(key) if self.message else attempt_key(key, self.attempt)
        return make_call_ref(self.dag_id, self.run_id, self.task_id, self.map_index, keyed)


# ------------------------------------------------------------------------------- the waves


@dataclass(frozen=True)
class Attempt:
    """One call of a campaign to one recipient, as the ledger tells it.

    ``outcome`` is ``answered`` or a failure status, :data:`REFUSED` (AI Studio refused it),
    :data:`UNKNOWN` (its answer never came back), or ``None`` while it is undecided (dialed and
    ringing, or queued for its slot). ``at`` is when it started; ``source`` where the outcome
    was learned (``callback``, ``end_call``, ``insights``, ``inferred``) when known.
    """

    number: int
    call_ref: str
    at: datetime | None
    outcome: str | None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ``attempt``, ``call_ref``, ``at`` (ISO-8601), ``outcome``, ``source``."""
        return {
            "attempt": self.number,
            "call_ref": self.call_ref,
            "at": self.at.isoformat() if self.at is not None else None,
            "outcome": self.outcome,
            "source": self.source,
        }


History = Sequence[Attempt]


def _retried(history: History, wave: int, policy: CallAttempts) -> bool:
    """Whether attempts 1..wave-1 all happened and each ended in ``retry_on``."""
    if len(history) < wave - 1:
        return False
    return all(a.outcome in policy.retry_on for a in history[: wave - 1])


def due_in_wave(histories: Mapping[Any, History], wave: int, policy: CallAttempts) -> list[Any]:
    """The recipients (keys of ``histories``) wave ``wave`` is for: everyone in wave 1; after,
    those whose every earlier attempt ended with a status in ``retry_on`` (so one answered,
    declined, refused, unknown or skipped in a wave is never due again). Those that already
    have their attempt ``wave`` stay listed: the batch loop reuses their ledger rows."""
    if wave < 1 or wave > policy.max_attempts:
        return []
    return [who for who, history in histories.items() if _retried(history, wave, policy)]


def pending_in_wave(histories: Mapping[Any, History], wave: int) -> list[str]:
    """call_refs of wave ``wave``'s attempts whose outcome is not decided yet."""
    return [
        h[wave - 1].call_ref for h in histories.values() if len(h) >= wave and h[wave - 1].outcome is None
    ]


def current_wave(histories: Mapping[Any, History]) -> int:
    """The latest wave any recipient has an attempt in (1 before anyone was dialed)."""
    return max((len(h) for h in histories.values()), default=0) or 1


def next_wave_due(histories: Mapping[Any, History], wave: int, policy: CallAttempts) -> datetime | None:
    """When wave ``wave + 1`` may start: the spacing after wave ``wave``'s last dial.

    ``None`` when there is no next wave: ``wave`` was the last attempt, or nobody is due in it.
    """
    if wave >= policy.max_attempts or not due_in_wave(histories, wave + 1, policy):
        return None
    starts = [at for h in histories.values() if len(h) >= wave and (at := h[wave - 1].at) is not None]
    if not starts:
        return None
    return max(starts) + policy.spacing_after(wave)


def disposition(
    history: History, policy: CallAttempts, *, listed: bool = False, over: bool = True
) -> Disposition:
    """Where a recipient stands given its attempts.

    :param listed: the recipient is on the do-not-call list now.
    :param over: the campaign has no wave left to dial or wait for (else a recipient that may
        still be retried is ``in_progress``).
    """
    if any(a.outcome == ANSWERED for a in history):
        return Disposition.REACHED
    last = history[-1].outcome if history else None
    if last == REFUSED:
        return Disposition.REJECTED
    if last == UNKNOWN:
        return Disposition.UNKNOWN
    if history and last is None:
        return Disposition.IN_PROGRESS
    if listed:
        return Disposition.DO_NOT_CALL
    retry = bool(history) and last in policy.retry_on and len(history) < policy.max_attempts
    if not over and (retry or not history):
        return Disposition.IN_PROGRESS
    return Disposition.NOT_REACHED
