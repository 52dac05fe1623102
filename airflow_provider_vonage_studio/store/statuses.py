"""Status callbacks: the history of what Vonage posted for each call, and each call's first status.

:meth:`Statuses.record_statuses` stores a batch in one transaction; the decision of what becomes
of each update is :func:`_decide`, the writes are :func:`_lock_calls`, :func:`_stored_history`,
:func:`_insert_history` and :func:`_set_first_statuses`.

A little over 500 lines on purpose: the batch's decision and its writes share the one locking
protocol described in :meth:`Statuses.record_statuses`; kept in one room it is read in one place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_vonage_studio.calls import MESSAGE_CHANNELS, CallState, OutcomeSource, RecordOutcome
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.store.engine import StoreBase
from airflow_provider_vonage_studio.store.errors import _StatusBatchRaced
from airflow_provider_vonage_studio.store.schema import (
    _STATUS_MAX,
    _UUID_MAX,
    _as_utc,
    _chunks,
    _JSONText,
    _utcnow,
    calls_table,
    status_events_table,
)

#: Most status rows kept per call. AI Studio posts one failure status per call; a call that
#: collects more is being flooded (a leaked token with varying ``conversation_uuid``), and
#: further statuses are refused (``RecordOutcome.HISTORY_FULL``) instead of stored.
MAX_STATUS_HISTORY = 20


@dataclass(frozen=True)
class StatusUpdate:
    """One status callback for :meth:`CallStore.record_statuses`.

    ``conversation_uuid`` ``None`` and ``""`` both mean "none"; a naive ``timestamp`` is UTC.
    ``to``, when set, is the destination the callback names: the update is recorded only if it
    matches the call's destination (otherwise ``RecordOutcome.MISMATCH``, nothing written).
    ``issued_at``, when set, is when the callback's token was issued: with ``max_age`` the
    callback's age is measured from it where it is earlier than the call's start.
    """

    call_ref: str
    status: str
    conversation_uuid: str | None
    timestamp: datetime | None
    payload: dict[str, Any]
    to: str | None = None
    issued_at: datetime | None = None


class Statuses(StoreBase):
    """The status-callback part of :class:`~airflow_provider_vonage_studio.store.CallStore`."""

    def record_status(
        self,
        call_ref: str,
        *,
        status: str,
        conversation_uuid: str | None,
        timestamp: datetime | None,
        payload: dict[str, Any],
    ) -> RecordOutcome:
        """Store one status callback of ``call_ref`` and say what became of it.

        * no such call → ``UNKNOWN_CALL``, nothing written;
        * the same ``(status, conversation_uuid)`` was stored before → ``DUPLICATE``,
          nothing written (decided by a unique constraint, so racing receivers agree);
        * the call's first status → it becomes ``calls.status`` (with ``status_at`` =
          ``timestamp`` or the time received, ``conversation_uuid`` and the payload) and
          goes to the history → ``RECORDED``;
        * a different, later status → history only → ``HISTORY`` (the first one wins);
        * the call already has :data:`MAX_STATUS_HISTORY` statuses → ``HISTORY_FULL``,
          nothing written.

        No placed-only or age rule applies here (see :meth:`record_statuses`, which the
        receiver uses). A naive ``timestamp`` is taken as UTC. Raises :class:`VonageStudioConfigError` when
        ``status`` is empty or ``status``/``conversation_uuid`` are longer than the store
        keeps (64 / 255 characters).
        """
        (outcome,) = self.record_statuses(
            [StatusUpdate(call_ref, status, conversation_uuid, timestamp, payload)]
        )
        return outcome

    def record_statuses(
        self,
        updates: Sequence[StatusUpdate],
        *,
        destination_matches: Callable[[str, str], bool] | None = None,
        placed_only: bool = False,
        max_age: timedelta | None = None,
        max_history: int | None = MAX_STATUS_HISTORY,
        now: datetime | None = None,
    ) -> list[RecordOutcome]:
        """Store many status callbacks in one write transaction; one outcome per update, in order.

        Each update gets what :meth:`record_status` would give it if the updates were recorded
        one after the other in the order given: a repeat within the batch is a ``DUPLICATE``,
        and of two statuses of one call the earlier one is ``RECORDED``. In addition, nothing
        is written for an update that gets, checked in this order:

        * ``NOT_PLACED`` with ``placed_only``, when the call's ledger state is not
          ``CallState.PLACED`` (refused by the API, not sent yet, or outcome unknown: AI
          Studio cannot have reported on it);
        * ``STALE`` with ``max_age``, when more than ``max_age`` passed (at ``now``, default
          the current time) since the call's ``session_start_time`` or the update's
          ``issued_at``, whichever is earlier;
        * ``MISMATCH``, for an update with ``to`` set, when
          ``destination_matches(update.to, call.destination)`` is false; by default the two
          strings must be equal;
        * ``HISTORY_FULL``, when the call already has ``max_history`` statuses (default
          :data:`MAX_STATUS_HISTORY`; ``None``: unbounded) and the update is not one of them
          (a repeat of a stored status is still a ``DUPLICATE``).

        The callback receiver always passes ``placed_only=True`` and its ``max_age``.

        One transaction and one commit for the whole batch: the calls are read (and, on
        PostgreSQL, locked) with one query per 500, the history of calls that already have a
        status counted under that lock, then each history row not repeated within the batch
        is inserted (a conflict skips it) and each call's first status set. Racing batches and
        single records agree: the history's unique constraint decides what is a duplicate, the
        lock on the call's row which status came first and how many statuses it has.

        Raises :class:`VonageStudioConfigError`, before anything is written, when an update's
        ``status`` is empty or ``status``/``conversation_uuid`` are longer than the store
        keeps (64 / 255 characters), or ``max_age`` / ``max_history`` are not positive;
        database errors roll the whole batch back.
        """
        _check_limits(max_age, max_history)
        items = list(updates)
        uuids = _checked_uuids(items)
        if not items:
            return []
        rules = _Rules(
            destination_matches=destination_matches,
            placed_only=placed_only,
            max_age=max_age,
            max_history=max_history,
            now=_utcnow() if now is None else _as_utc(now),
        )
        with self._transaction(write=True) as conn:
            calls = _lock_calls(conn, {item.call_ref for item in items})
            _read_history(conn, calls)
            outcomes, first_new = _insert_history(conn, items, uuids, calls, rules)
            if first_new:
                _set_first_statuses(conn, items, first_new, outcomes, rules.now)
        return outcomes

    def status_history(self, call_ref: str) -> list[dict[str, Any]]:
        """Every distinct status stored for ``call_ref``, in the order received.

        Each item: ``status``, ``conversation_uuid`` (``None`` when the callback had
        none), ``timestamp`` (the callback's, aware UTC or ``None``), ``payload`` and
        ``received_at`` (aware UTC). Empty for an unknown call.
        """
        t = status_events_table
        with self._transaction(write=False) as conn:
            rows = conn.execute(sa.select(t).where(t.c.call_ref == call_ref).order_by(t.c.id)).all()
        return [
            {
                "status": row.status,
                "conversation_uuid": row.conversation_uuid or None,
                "timestamp": row.event_timestamp,
                "payload": row.payload,
                "received_at": row.received_at,
            }
            for row in rows
        ]


@dataclass(frozen=True)
class _Rules:
    """The checks :meth:`Statuses.record_statuses` was asked for, and its ``now``."""

    destination_matches: Callable[[str, str], bool] | None
    placed_only: bool
    max_age: timedelta | None
    max_history: int | None
    now: datetime


@dataclass
class _LockedCalls:
    """The batch's calls as read under their row locks (absent refs: no such call)."""

    destinations: dict[str, str] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    started: dict[str, datetime | None] = field(default_factory=dict)
    #: Calls that already have their first status (and so a history).
    has_status: set[str] = field(default_factory=set)
    #: History size of each call in ``has_status``, and its stored (call_ref, status, uuid) keys.
    counted: dict[str, int] = field(default_factory=dict)
    stored: set[tuple[str, str, str]] = field(default_factory=set)


def _check_limits(max_age: timedelta | None, max_history: int | None) -> None:
    """Raise :class:`VonageStudioConfigError` for a ``max_age`` / ``max_history`` that is not positive."""
    if max_age is not None and (not isinstance(max_age, timedelta) or max_age <= timedelta(0)):
        raise VonageStudioConfigError(f"max_age: must be a positive timedelta, got {max_age!r}")
    if max_history is not None and (
        not isinstance(max_history, int) or isinstance(max_history, bool) or max_history < 1
    ):
        raise VonageStudioConfigError(f"max_history: must be an int >= 1 or None, got {max_history!r}")


def _checked_uuids(items: list[StatusUpdate]) -> list[str]:
    """Each update's ``conversation_uuid`` as stored (``""`` for none), in order.

    Raises :class:`VonageStudioConfigError` for an empty or over-long ``status`` or an over-long
    ``conversation_uuid``.
    """
    uuids = []
    for item in items:
        if not item.status or len(item.status) > _STATUS_MAX:
            raise VonageStudioConfigError(
                f"status of call_ref {item.call_ref!r}: must be 1..{_STATUS_MAX} characters, "
                f"got {len(item.status)}"
            )
        uuid = item.conversation_uuid or ""
        if len(uuid) > _UUID_MAX:
            raise VonageStudioConfigError(
                f"conversation_uuid of call_ref {item.call_ref!r}: must be at most {_UUID_MAX} "
                f"characters, got {len(uuid)}"
            )
        uuids.append(uuid)
    return uuids


def _lock_calls(conn: Connection, refs: set[str]) -> _LockedCalls:
    """Read (and on PostgreSQL lock) the rows of the calls ``refs``, one query per 500."""
    found = _LockedCalls()
    for chunk in _chunks(sorted(refs)):
        # FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes other writers),
        # taken in call_ref order: every writer of a call's history holds the call's row
        # first, so batches sharing calls queue up instead of deadlocking on each other's
        # history rows, the history keeps the order of each batch, and the status read
        # here stays true until the commit.
        rows = conn.execute(_lock_calls_statement(), {"refs": chunk})
        for ref, destination, status, state, session_start_time, source in rows:
            found.destinations[ref] = destination
            found.states[ref] = state
            found.started[ref] = session_start_time
            # A call its agent confirmed answered (end-call webhook) counts as one that has its
            # status: a failure callback after that goes to the history only (one truth per call).
            if status is not None or source == OutcomeSource.END_CALL.value:
                found.has_status.add(ref)
    return found


def _read_history(conn: Connection, calls: _LockedCalls) -> None:
    """Fill in ``calls.counted`` and ``calls.stored`` from the history of the calls with a status.

    Read only once their rows are locked: a separate statement sees every row committed by a
    batch that held the lock before us (a subquery of the locking SELECT would use the snapshot
    taken before it waited). It gives each call's history size (the cap) and which statuses are
    stored (a repeat is a DUPLICATE without an INSERT). A call without a status has no history:
    its first status and its first row are written together.
    """
    events = status_events_table
    for chunk in _chunks(sorted(calls.has_status)):
        for ref, stored_status, stored_uuid in conn.execute(
            sa.select(events.c.call_ref, events.c.status, events.c.conversation_uuid).where(
                events.c.call_ref.in_(chunk)
            )
        ):
            calls.counted[ref] = calls.counted.get(ref, 0) + 1
            calls.stored.add((ref, stored_status, stored_uuid or ""))


def _refusal(item: StatusUpdate, calls: _LockedCalls, rules: _Rules) -> RecordOutcome | None:
    """Why ``item`` is refused before its history is looked at (unknown call, not placed, stale,
    another destination), or ``None``."""
    destination = calls.destinations.get(item.call_ref)
    if destination is None:
        return RecordOutcome.UNKNOWN_CALL
    # Compared with the enum's value, not a literal: state names may change between
    # schema versions, PLACED is what "AI Studio accepted the call" is called.
    if rules.placed_only and calls.states[item.call_ref] != CallState.PLACED.value:
        return RecordOutcome.NOT_PLACED
    if rules.max_age is not None:
        since = [t for t in (calls.started[item.call_ref], item.issued_at) if t is not None]
        if since and rules.now - min(_as_utc(t) for t in since) > rules.max_age:
            return RecordOutcome.STALE
    if item.to is not None and not (
        rules.destination_matches(item.to, destination)
        if rules.destination_matches is not None
        else item.to == destination
    ):
        return RecordOutcome.MISMATCH
    return None


def _decide(
    items: list[StatusUpdate],
    uuids: list[str],
    calls: _LockedCalls,
    rules: _Rules,
    insert: Callable[[dict[str, Any]], bool],
) -> tuple[list[RecordOutcome], dict[str, int]]:
    """Each update's outcome, given how a new history row is inserted (``insert`` says whether
    it went in); and, per call that gets its first status, the index of the update that sets it."""
    outcomes: list[RecordOutcome] = []
    sizes = dict(calls.counted)
    seen: set[tuple[str, str, str]] = set()
    first_new: dict[str, int] = {}  # call_ref -> index of its first new history row
    for index, (item, uuid) in enumerate(zip(items, uuids, strict=True)):
        refused = _refusal(item, calls, rules)
        if refused is not None:
            outcomes.append(refused)
            continue
        key = (item.call_ref, item.status, uuid)
        if key in calls.stored or key in seen:
            # A repeat of a stored status is a duplicate (AI Studio retrying), even when
            # the history is full; so is a repeat within the batch, which is not sent.
            outcomes.append(RecordOutcome.DUPLICATE)
            continue
        if rules.max_history is not None and sizes.get(item.call_ref, 0) >= rules.max_history:
            outcomes.append(RecordOutcome.HISTORY_FULL)
            continue
        # A conflicting INSERT is skipped, not failed (the transaction carries on with the
        # rest of the batch): a DUPLICATE.
        new = insert(
            {
                "call_ref": item.call_ref,
                "status": item.status,
                "conversation_uuid": uuid,
                "event_timestamp": item.timestamp,
                "payload": item.payload,
                "received_at": rules.now,
            }
        )
        seen.add(key)
        if not new:
            outcomes.append(RecordOutcome.DUPLICATE)
            continue
        sizes[item.call_ref] = sizes.get(item.call_ref, 0) + 1
        outcomes.append(RecordOutcome.HISTORY)
        if item.call_ref not in calls.has_status:
            first_new.setdefault(item.call_ref, index)
    return outcomes, first_new


def _insert_history(
    conn: Connection, items: list[StatusUpdate], uuids: list[str], calls: _LockedCalls, rules: _Rules
) -> tuple[list[RecordOutcome], dict[str, int]]:
    """Insert the batch's new history rows; :func:`_decide`'s outcomes and first statuses.

    Fast path: plan the batch as if every new history row went in, then insert them all
    with one statement. The rows of the calls are locked, so only a row stored outside
    that rule (a history row of a call without a status) can conflict; then the count
    differs, what went in is undone and the batch is inserted row by row, each conflict
    deciding a DUPLICATE exactly as before.
    """
    events = status_events_table
    planned: list[dict[str, Any]] = []

    def plan(row: dict[str, Any]) -> bool:
        planned.append(row)
        return True

    outcomes, first_new = _decide(items, uuids, calls, rules, plan)
    if planned and not _inserted_all(conn, events, planned):
        insert_event = _insert_ignoring_conflicts(conn, events)
        outcomes, first_new = _decide(
            items, uuids, calls, rules, lambda row: _inserted(conn.execute(insert_event, row))
        )
    return outcomes, first_new


@functools.cache
def _lock_calls_statement() -> sa.Select[Any]:
    """The SELECT ... FOR UPDATE of :func:`_lock_calls` (``refs`` expanding), built once.

    Built once per process, not per batch: building it and computing its cache key cost the
    receiver more than the database took to run it (``benchmarks/callbacks.py``).
    """
    calls = calls_table
    return (
        sa.select(
            calls.c.call_ref,
            calls.c.destination,
            calls.c.status,
            calls.c.state,
            calls.c.session_start_time,
            calls.c.outcome_source,
        )
        .where(calls.c.call_ref.in_(sa.bindparam("refs", expanding=True)))
        # A message's row is no call: its token posted to a call's route reads as an unknown
        # call (its statuses are recorded by store/messages.py, never as a call's status).
        .where(sa.or_(calls.c.channel.is_(None), calls.c.channel.notin_(MESSAGE_CHANNELS)))
        .order_by(calls.c.call_ref)
        .with_for_update()
    )


@functools.cache
def _set_first_statement() -> sa.Update:
    """The UPDATE of :func:`_set_first_statuses`, built once (as :func:`_lock_calls_statement`)."""
    calls = calls_table
    return (
        calls.update()
        .where(calls.c.call_ref == sa.bindparam("ref"), calls.c.status.is_(None))
        .values(
            status=sa.bindparam("new_status"),
            status_at=sa.bindparam("new_status_at"),
            conversation_uuid=sa.bindparam("new_uuid"),
            callback_payload=sa.bindparam("new_payload", type_=_JSONText()),
            # Where the truth came from: AI Studio's callback, unless a waiting task already
            # stored a verdict (with its own source) before this late callback arrived.
            outcome_source=sa.case(
                (calls.c.outcome.is_(None), OutcomeSource.CALLBACK.value), else_=calls.c.outcome_source
            ),
            updated_at=sa.bindparam("new_updated_at"),
        )
    )


def _set_first_statuses(
    conn: Connection,
    items: list[StatusUpdate],
    first_new: dict[str, int],
    outcomes: list[RecordOutcome],
    now: datetime,
) -> None:
    """Set each call's first status from ``items[first_new[call_ref]]``; mark those ``RECORDED``.

    "status IS NULL" keeps the first status even against a writer that does not lock the row
    first: its UPDATE then matches no row. All calls in one executemany. Should any of them have
    got a status meanwhile (the total count says so; the lock taken in :func:`_lock_calls` makes
    it impossible, short of a writer bypassing this code), SQLite rolls the savepoint back and
    sets each on its own; on PostgreSQL, where a savepoint is two more round trips per batch, the
    whole batch is refused instead (:class:`_StatusBatchRaced`, rolled back: nothing recorded,
    never misreported).
    """
    set_first = _set_first_statement()
    params = [
        {
            "ref": call_ref,
            "new_updated_at": now,
            "new_status": items[index].status,
            "new_status_at": items[index].timestamp or now,
            "new_uuid": items[index].conversation_uuid or None,
            "new_payload": items[index].payload,
        }
        for call_ref, index in first_new.items()
    ]
    update_savepoint = conn.begin_nested() if len(params) > 1 and conn.dialect.name != "postgresql" else None
    if conn.execute(set_first, params).rowcount == len(params):
        if update_savepoint is not None:
            update_savepoint.commit()
        for index in first_new.values():
            outcomes[index] = RecordOutcome.RECORDED
    elif update_savepoint is not None:
        update_savepoint.rollback()
        for param, index in zip(params, first_new.values(), strict=True):
            if conn.execute(set_first, param).rowcount:
                outcomes[index] = RecordOutcome.RECORDED
    elif len(params) > 1:
        raise _StatusBatchRaced(
            "a call of the batch got its first status from a writer that did not lock it; "
            "the batch was rolled back"
        )


def _insert_ignoring_conflicts(conn: Connection, table: sa.Table) -> Any:
    """An INSERT into ``table`` that skips a row breaking a unique constraint instead of failing,
    so one duplicate does not abort the transaction it is part of. See :func:`_inserted`."""
    return _ignoring_conflicts_statement(conn.dialect.name == "postgresql", table)


@functools.cache
def _ignoring_conflicts_statement(postgresql: bool, table: sa.Table) -> Any:
    """The statement of :func:`_insert_ignoring_conflicts`, built once per dialect and table
    (statements are immutable, so one is shared; see :func:`_lock_calls_statement` for why)."""
    if postgresql:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        # Explicit RETURNING: with the implicit one SQLAlchemy adds to fetch the new id,
        # psycopg reports rowcount -1 whether or not a row went in.
        return pg_insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    # No RETURNING on SQLite (older than 3.35 has none); its rowcount is exact.
    return sqlite_insert(table).on_conflict_do_nothing()


def _inserted_all(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> bool:
    """Insert ``rows`` in one executemany, or none of them: whether all went in.

    A row breaking a unique constraint is skipped; if any was, the rows that did go in are
    undone (the transaction stays usable) and ``False`` is returned.
    """
    if conn.dialect.name == "postgresql":
        # psycopg reports no rowcount for an executemany: count the returned keys instead
        # (SQLAlchemy sends the rows as one multi-row VALUES). Undone by key rather than with
        # a savepoint, which would cost two round trips on every batch.
        (key,) = table.primary_key.columns
        ids = conn.execute(_ignoring_conflicts_statement(True, table), rows).scalars().all()
        if len(ids) == len(rows):
            return True
        if ids:
            conn.execute(table.delete().where(key.in_(ids)))
        return False
    # SQLite sums the rows each execution changed; a savepoint costs no round trip here.
    savepoint = conn.begin_nested()
    if int(conn.execute(_insert_ignoring_conflicts(conn, table), rows).rowcount) == len(rows):
        savepoint.commit()
        return True
    savepoint.rollback()
    return False


def _inserted(result: sa.engine.CursorResult[Any]) -> bool:
    """Whether a statement from :func:`_insert_ignoring_conflicts` inserted its row."""
    return result.first() is not None if result.returns_rows else result.rowcount > 0
