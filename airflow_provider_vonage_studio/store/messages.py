"""Messages in the ledger: the row of an SMS or WhatsApp message (a call row with a ``channel``)
and the status callbacks its messaging agent posts.

A message's statuses go to the status history (``status_events``, read with
:meth:`~airflow_provider_vonage_studio.store.statuses.Statuses.status_history`), every distinct
one as it arrives (``delivered`` then ``read`` are both kept). They never set the row's call
``status``: readers of call outcomes (sensors, ``calls_between(statuses=...)``, a DAG calling
back ``failed`` calls) must not take a message's ``failed`` for a call's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_vonage_studio.calls import MESSAGE_CHANNELS, CallRecord, CallState, RecordOutcome
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.store.engine import StoreBase
from airflow_provider_vonage_studio.store.schema import (
    _STATUS_MAX,
    _UUID_MAX,
    _as_utc,
    _utcnow,
    calls_table,
    status_events_table,
)
from airflow_provider_vonage_studio.store.statuses import (
    MAX_STATUS_HISTORY,
    _insert_ignoring_conflicts,
    _inserted,
)

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store.call_rows import CallRows

__all__ = ["MESSAGE_CHANNELS", "MessageStatus", "Messages"]


@dataclass(frozen=True)
class MessageStatus:
    """One status callback of a message, for :meth:`Messages.record_message_status`.

    ``session_id`` (``None``: the callback named none) tells apart repeats of one status;
    ``to``, when set, must name the message's destination; ``issued_at`` is when the
    callback's token was issued (the callback's age is measured from it where earlier).
    """

    call_ref: str
    status: str
    session_id: str | None
    timestamp: datetime | None
    payload: dict[str, Any]
    to: str | None = None
    issued_at: datetime | None = None


class Messages(StoreBase):
    """The message part of :class:`~airflow_provider_vonage_studio.store.CallStore`."""

    def begin_message(
        self,
        call_ref: str,
        *,
        agent_id: str,
        destination: str,
        channel: str,
        dag_id: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        map_index: int = -1,
        recipient_key: str | None = None,
    ) -> tuple[bool, CallRecord]:
        """Write the ``queued`` ledger row of a message about to be sent, unless it exists.

        As :meth:`~airflow_provider_vonage_studio.store.call_rows.CallRows.begin_call`, with the
        row's ``channel``: ``(True, record)`` for the one caller that created it, ``(False,
        existing)`` for everyone else.

        :raises VonageStudioConfigError: a bad ``call_ref``, an empty ``agent_id`` or
            ``destination``, a ``channel`` other than ``sms``/``whatsapp``.
        """
        if channel not in MESSAGE_CHANNELS:
            raise VonageStudioConfigError(f"channel: expected 'sms' or 'whatsapp', got {channel!r}")
        # The same row as a call's, and the same race rules: only its channel differs.
        rows = cast("CallRows", self)  # CallStore holds both parts
        return rows.begin_call(
            call_ref,
            agent_id=agent_id,
            destination=destination,
            dag_id=dag_id,
            run_id=run_id,
            task_id=task_id,
            map_index=map_index,
            recipient_key=recipient_key,
            channel=channel,
        )

    def record_message_status(
        self,
        update: MessageStatus,
        *,
        max_age: timedelta | None = None,
        max_history: int = MAX_STATUS_HISTORY,
        destination_matches: Callable[[str, str], bool] | None = None,
        now: datetime | None = None,
    ) -> RecordOutcome:
        """Store one status callback of a message; say what became of it. Nothing is written
        unless the outcome is ``RECORDED``:

        * ``UNKNOWN_CALL``: no such row, or the row is a call (no ``channel`` of a message);
        * ``NOT_PLACED``: the message was not accepted by AI Studio (its state is not ``placed``);
        * ``STALE``: with ``max_age``, older than that since the message started (or its token
          was issued, where earlier; the row's creation without a start time);
        * ``MISMATCH``: ``update.to`` is set and does not name the message's destination
          (``destination_matches``; default: equal strings);
        * ``DUPLICATE``: the same ``(status, session_id)`` is stored already;
        * ``HISTORY_FULL``: the message already has ``max_history`` statuses;
        * ``RECORDED``: a new status, added to the history.

        :raises VonageStudioConfigError: an empty or over-long ``status`` (64) or ``session_id`` (255).
        """
        if not update.status or len(update.status) > _STATUS_MAX:
            raise VonageStudioConfigError(
                f"status: must be 1..{_STATUS_MAX} characters, got {len(update.status)}"
            )
        session = update.session_id or ""
        if len(session) > _UUID_MAX:
            raise VonageStudioConfigError(f"session_id: must be at most {_UUID_MAX} characters")
        now = _utcnow() if now is None else _as_utc(now)
        t = calls_table
        with self._transaction(write=True) as conn:
            # Locked (PostgreSQL; SQLite's BEGIN IMMEDIATE excludes other writers): the history
            # count and the duplicate check below stay true until the commit.
            row = conn.execute(
                sa.select(t.c.destination, t.c.state, t.c.channel, t.c.session_start_time, t.c.created_at)
                .where(t.c.call_ref == update.call_ref)
                .with_for_update()
            ).first()
            refused = _refusal(row, update, max_age, destination_matches, now)
            if refused is not None:
                return refused
            return _add_to_history(conn, update, session, max_history, now)

    def message_status(self, call_ref: str) -> str | None:
        """The latest status a message's agent reported (``None``: none yet, or no such message)."""
        events = status_events_table
        with self._transaction(write=False) as conn:
            return conn.execute(
                sa.select(events.c.status)
                .where(events.c.call_ref == call_ref)
                .order_by(events.c.id.desc())
                .limit(1)
            ).scalar_one_or_none()


def _refusal(
    row: Any,
    update: MessageStatus,
    max_age: timedelta | None,
    destination_matches: Callable[[str, str], bool] | None,
    now: datetime,
) -> RecordOutcome | None:
    """Why ``update`` is refused given its message's row (``None``: not refused)."""
    if row is None or row.channel not in MESSAGE_CHANNELS:
        return RecordOutcome.UNKNOWN_CALL
    if row.state != CallState.PLACED.value:
        return RecordOutcome.NOT_PLACED
    if max_age is not None:
        since = [t for t in (row.session_start_time or row.created_at, update.issued_at) if t is not None]
        if since and now - min(_as_utc(t) for t in since) > max_age:
            return RecordOutcome.STALE
    if update.to is not None:
        same = (
            destination_matches(update.to, row.destination)
            if destination_matches
            else update.to == row.destination
        )
        if not same:
            return RecordOutcome.MISMATCH
    return None


def _add_to_history(
    conn: Connection, update: MessageStatus, session: str, max_history: int, now: datetime
) -> RecordOutcome:
    """Add ``update`` to its message's history (the row is locked): ``DUPLICATE`` for a status
    stored already, ``HISTORY_FULL`` at the cap, else ``RECORDED``."""
    events = status_events_table
    stored = conn.execute(
        sa.select(events.c.status, events.c.conversation_uuid).where(events.c.call_ref == update.call_ref)
    ).all()
    if any((s, u or "") == (update.status, session) for s, u in stored):
        return RecordOutcome.DUPLICATE
    if len(stored) >= max_history:
        return RecordOutcome.HISTORY_FULL
    inserted = conn.execute(
        _insert_ignoring_conflicts(conn, events),
        {
            "call_ref": update.call_ref,
            "status": update.status,
            # The history's dedupe key: a message's session id stands where a call's
            # conversation_uuid does.
            "conversation_uuid": session,
            "event_timestamp": update.timestamp,
            "payload": update.payload,
            "received_at": now,
        },
    )
    return RecordOutcome.RECORDED if _inserted(inserted) else RecordOutcome.DUPLICATE
