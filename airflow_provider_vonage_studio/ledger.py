"""The exactly-once decision: what an existing ledger row means for a new attempt to dial.

One pure function, :func:`decide`, used by the hook (one call), the batch dialer (many) and
the notifier alike, so the rules of docs/guarantees.md are written once:

* no row, or ``queued`` (written by a try that ended before its request left): **dial**;
* the row names another destination or agent than this attempt: **mismatch** (a retry must
  dial the same call; a new key calls someone else);
* ``placed``: **reuse** the earlier result, no request;
* ``rejected`` with a refusal that leaves nothing to retry (400, 401, 404, ...): **raise** it
  again; with a retryable one (429, 502/503/504, unreachable): **redial**;
* ``sending`` or ``unknown`` (sent, answer not recorded): **unknown**, never re-dialed blindly,
  unless the caller asked for ``redial_unknown``, which makes it **redial**.

Standard library only (plus :mod:`calls` and :mod:`exceptions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from airflow_provider_vonage_studio.calls import CallRecord, CallState
from airflow_provider_vonage_studio.exceptions import VonageStudioError, error_for

__all__ = ["Action", "Decision", "decide", "rejection_of"]


class Action(str, Enum):
    """What an attempt does with a call, given its ledger row."""

    DIAL = "dial"  # nothing was sent for this call: send it (a new or a queued row)
    REUSE = "reuse"  # placed earlier: return that result, send nothing
    RAISE = "raise"  # refused earlier for good: raise the same error, send nothing
    UNKNOWN = "unknown"  # sent earlier, outcome not known: send nothing, say so
    REDIAL = "redial"  # definitely not placed (retryable refusal) or redial asked for: restart the row
    MISMATCH = "mismatch"  # the row is another call (destination or agent): refuse


@dataclass(frozen=True)
class Decision:
    """The verdict of :func:`decide`.

    ``abandoned`` is true for a row still ``sending``: the try that sent it died before it
    recorded the answer, and the caller should mark the row ``unknown`` (compare-and-set).
    ``error`` is the earlier refusal for ``RAISE`` (and ``REDIAL`` after a retryable one).
    """

    action: Action
    abandoned: bool = False
    error: VonageStudioError | None = None

    @property
    def sends(self) -> bool:
        """Whether this attempt sends a request (``DIAL`` or ``REDIAL``)."""
        return self.action in (Action.DIAL, Action.REDIAL)


def rejection_of(record: CallRecord) -> VonageStudioError:
    """The error a ``rejected`` row stands for (its status and message mapped again)."""
    return error_for(record.error_status, record.error_message or "rejected earlier")


def decide(
    record: CallRecord | None,
    destination: str,
    agent_id: str,
    *,
    redial_unknown: bool = False,
) -> Decision:
    """Decide what an attempt to call ``destination`` from ``agent_id`` does, given the call's
    ledger row ``record`` (``None``: no row yet). Pure: reads nothing, writes nothing.

    The do-not-call list is not consulted here: it is checked by the caller right before any
    ``DIAL`` or ``REDIAL`` (and never stops a ``REUSE``).
    """
    if record is None:
        return Decision(Action.DIAL)
    if record.destination != destination or record.agent_id != agent_id:
        return Decision(Action.MISMATCH)
    state = CallState(record.state)
    if state is CallState.PLACED:
        return Decision(Action.REUSE)
    if state is CallState.QUEUED:
        return Decision(Action.DIAL)
    if state is CallState.REJECTED:
        error = rejection_of(record)
        return Decision(Action.REDIAL if error.retryable else Action.RAISE, error=error)
    # SENDING (a try died mid-request) or UNKNOWN (sent, no answer).
    abandoned = state is CallState.SENDING
    if redial_unknown:
        return Decision(Action.REDIAL, abandoned=abandoned)
    return Decision(Action.UNKNOWN, abandoned=abandoned)
