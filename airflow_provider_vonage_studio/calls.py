"""The domain core: what a call is, the states it passes through and how it is named.

Standard library only, so every other module (the store, the hook, the operators at DAG-parse
time, the receiver) may import it for free. One definition of each fact lives here: the
ledger's :class:`CallState`, the :class:`CallRecord` a store row reads as, the status sets
(:data:`FAILURE_STATUSES`, :data:`FINAL_STATUSES`) and :func:`make_call_ref`, the identity of
a call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

__all__ = [
    "ANSWERED",
    "CALL_REF_PREFIX",
    "FAILURE_STATUSES",
    "FINAL_STATUSES",
    "MESSAGE_CHANNELS",
    "OUTCOME_VALUES",
    "CallRecord",
    "CallState",
    "OutcomeSource",
    "RecordOutcome",
    "TaskIdentity",
    "is_call_ref",
    "is_message_row",
    "make_call_ref",
]

#: The status inferred when no failure callback arrived within the answer window.
ANSWERED = "answered"

#: Statuses AI Studio posts to ``status_url`` (it reports only calls nobody picked up).
FAILURE_STATUSES: tuple[str, ...] = ("cancelled", "rejected", "busy", "timeout", "failed")

#: Every status a finished call can end with.
FINAL_STATUSES: tuple[str, ...] = (ANSWERED, *FAILURE_STATUSES)

#: The verdicts a waiting task may record on a call (the same set as :data:`FINAL_STATUSES`).
OUTCOME_VALUES = FINAL_STATUSES

#: The ``channel`` of a ledger row that is a message, not a call (calls have none).
MESSAGE_CHANNELS: tuple[str, ...] = ("sms", "whatsapp")


def is_message_row(channel: str | None) -> bool:
    """Whether a ledger row with this ``channel`` is a message (its statuses and routes differ)."""
    return channel in MESSAGE_CHANNELS


#: Prefix of every call reference built by :func:`make_call_ref`.
CALL_REF_PREFIX = "vs-"

# A call_ref becomes one URL path segment, so it is limited to RFC 3986 "unreserved"
# characters: no escaping is ever needed and the token round-trips through any proxy.
# The length cap keeps the status_url well inside every URL length limit.
CALL_REF_RE = re.compile(r"[A-Za-z0-9._~-]{1,64}")


def is_call_ref(value: object) -> bool:
    """Whether ``value`` is a well-formed call reference (1-64 URL-safe characters)."""
    return isinstance(value, str) and CALL_REF_RE.fullmatch(value) is not None


class CallState(str, Enum):
    """Where a call stands in the exactly-once ledger (see docs/guarantees.md).

    ``QUEUED`` -> ``SENDING`` -> ``PLACED`` / ``REJECTED`` / ``UNKNOWN``; a definite "not
    placed" between attempts (429, 502/503/504, a refused connection) puts ``SENDING`` back
    to ``QUEUED``. ``PENDING`` is the name of ``SENDING`` before schema version 3 (kept as an
    alias for one release; ``CallState("pending")`` also reads as ``SENDING``).
    """

    QUEUED = "queued"  # row written, nothing sent yet: a later try may dial it
    SENDING = "sending"  # the request is (or may be) on its way: a later try must not redial
    PLACED = "placed"  # the API answered with a session id
    REJECTED = "rejected"  # the API refused it: definitely not placed
    UNKNOWN = "unknown"  # sent, no answer: never re-dialed without being asked
    PENDING = "sending"  # deprecated alias of SENDING (the state's name before schema version 3)

    @classmethod
    def _missing_(cls, value: object) -> CallState | None:
        # Rows written before schema version 3 said "pending" for what is now "sending".
        return cls.SENDING if value == "pending" else None


class RecordOutcome(str, Enum):
    """What :meth:`CallStore.record_status` (or ``record_statuses``) did with a status callback."""

    RECORDED = "recorded"  # first status of the call: now the call's status
    DUPLICATE = "duplicate"  # same (status, conversation_uuid) seen before: nothing written
    HISTORY = "history"  # a later, different status: kept in the history only
    UNKNOWN_CALL = "unknown_call"  # no such call_ref: nothing written
    MISMATCH = "mismatch"  # names another destination than the call's (StatusUpdate.to): nothing written
    NOT_PLACED = "not_placed"  # placed_only and the call is not PLACED: nothing written
    STALE = "stale"  # max_age and the call (or its token) is older than that: nothing written
    HISTORY_FULL = "history_full"  # the call already has max_history statuses: nothing written


@dataclass(frozen=True)
class CallRecord:
    """One row of the call ledger. Datetimes are timezone-aware UTC."""

    call_ref: str
    agent_id: str
    destination: str
    state: CallState
    dag_id: str | None
    run_id: str | None
    task_id: str | None
    map_index: int
    recipient_key: str | None
    session_id: str | None
    session_start_time: datetime | None
    error_status: int | None
    error_message: str | None
    status: str | None
    status_at: datetime | None
    conversation_uuid: str | None
    callback_payload: dict[str, Any] | None
    parameters: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    #: The final verdict the waiting task reported (``answered`` or a failure status) and when
    #: it was stored; ``None`` until a sensor or waiting operator decided (schema version 2).
    outcome: str | None = None
    outcome_at: datetime | None = None
    #: Where the truth of ``outcome`` (or of the failure ``status``) came from: an
    #: :class:`OutcomeSource` value, ``None`` on rows written before schema version 5.
    outcome_source: str | None = None
    #: When the call ended, as the agent's end-call webhook reported it (schema version 5).
    ended_at: datetime | None = None
    #: What the row was sent through (schema version 7): ``None`` (or ``"voice"``) for a call,
    #: ``"sms"`` or ``"whatsapp"`` for a message (``VonageStudioHook.send_message``).
    channel: str | None = None


class OutcomeSource(str, Enum):
    """Where a call's outcome was learned (``CallRecord.outcome_source``)."""

    CALLBACK = "callback"  # AI Studio's failure status callback
    END_CALL = "end_call"  # the agent's end-call webhook: answered, confirmed by push
    INSIGHTS = "insights"  # the session read back through Insights: answered, confirmed
    INFERRED = "inferred"  # no failure callback within the answer window: answered, inferred


@dataclass(frozen=True)
class TaskIdentity:
    """The task instance a call belongs to: with a recipient key, what names the call."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    def row_fields(self) -> dict[str, Any]:
        """The ledger row's task columns (``dag_id``, ``run_id``, ``task_id``, ``map_index``):
        only these, whatever a subclass adds."""
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
        }

    def call_ref(self, key: str | None = None) -> str:
        """The call reference of this task instance's call for ``key`` (see :func:`make_call_ref`)."""
        return make_call_ref(self.dag_id, self.run_id, self.task_id, self.map_index, key)


def make_call_ref(
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int = -1,
    key: str | None = None,
) -> str:
    """Return the deterministic reference of one call made by one task instance.

    The same inputs always give the same reference, so a retried task finds the calls it
    made on an earlier try in the call store. ``key`` tells apart the recipients of a
    batch dialled by one task; ``None`` (no key) and ``""`` are different keys, as are
    ``map_index`` ``-1`` (unmapped) and ``0``.

    The result is ``"vs-"`` plus 32 lowercase hex characters (128 bits of SHA-256 over a
    JSON list of the inputs); it is URL-safe.

    :raises TypeError: when an argument has the wrong type (``map_index`` must be an
        ``int``, not a ``bool``; ``key`` a ``str`` or ``None``).
    """
    for name, value in (("dag_id", dag_id), ("run_id", run_id), ("task_id", task_id)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    # bool is an int subclass; True would silently collide with map_index 1.
    if not isinstance(map_index, int) or isinstance(map_index, bool):
        raise TypeError(f"map_index must be an int, got {type(map_index).__name__}")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a str or None, got {type(key).__name__}")
    # A JSON list (not string concatenation) keeps the fields apart: ("a_b", "c") and
    # ("a", "b_c") hash differently, and null differs from "". Fixed separators and
    # ensure_ascii make the bytes independent of the json module's defaults.
    # Imported here: DAG files load this module at parse time, and make_call_ref runs on workers.
    import hashlib
    import json

    payload = json.dumps([dag_id, run_id, task_id, map_index, key], separators=(",", ":"), ensure_ascii=True)
    return CALL_REF_PREFIX + hashlib.sha256(payload.encode("ascii")).hexdigest()[:32]
