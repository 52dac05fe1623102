"""The call store: call ledger, status history, pacing slots and do-not-call list.

Every piece of the provider that must survive a task retry, a worker restart or a
second machine keeps it here: the hook writes a call row *before* dialing (exactly-once
dialing), the callback receiver adds the statuses Vonage posts, sensors and triggers read
them, and every dial first reserves a pacing slot so all workers together stay within the
calls per second agreed with Vonage.

All SQL of the project lives in this module (SQLAlchemy Core, no ORM; SQLAlchemy 1.4.49+
and 2.x). Two backends are supported:

* **SQLite** (the default, one file under ``AIRFLOW_HOME``): good when every worker, the
  triggerer and the receiver run on one machine. Connections use WAL, a 30 s busy timeout
  and ``BEGIN IMMEDIATE`` for every write, so read-modify-write steps are serialised
  across processes.
* **PostgreSQL** (``postgresql+psycopg://...``): needed as soon as tasks run on several
  machines. Atomicity comes from unique constraints, conditional updates and row locks.

Nothing in an operator or sensor module imports this module at top level (SQLAlchemy
stays out of DAG parsing); the hook and the receiver import it when they need it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

# The domain types live in calls.py; they are re-exported here, where they were defined before.
from airflow_provider_vonage_studio.calls import (
    FAILURE_STATUSES,
    OUTCOME_VALUES,
    CallRecord,
    CallState,
    RecordOutcome,
)
from airflow_provider_vonage_studio.exceptions import (
    CallStoreUnavailable,
    UnknownCall,
    VonageStudioConfigError,
    VonageStudioError,
)

__all__ = [
    "FAILURE_STATUSES",
    "MAX_STATUS_HISTORY",
    "OUTCOME_VALUES",
    "PACING_ADVANCE_WINDOWS",
    "PACING_MAX_FACTOR",
    "PACING_NARROW_STEP",
    "PACING_WIDEN",
    "SCHEMA_VERSION",
    "CallRecord",
    "CallState",
    "CallStateConflict",
    "CallStore",
    "PacingState",
    "RecordOutcome",
    "StatusUpdate",
    "StoreSchemaTooNew",
    "configured_store_url",
]

#: Version of the table layout this code writes. Bump it together with an entry in
#: ``_MIGRATIONS`` whenever a table changes.
SCHEMA_VERSION = 3

#: Most status rows kept per call. AI Studio posts one failure status per call; a call that
#: collects more is being flooded (a leaked token with varying ``conversation_uuid``), and
#: further statuses are refused (``RecordOutcome.HISTORY_FULL``) instead of stored.
MAX_STATUS_HISTORY = 20

#: Adaptive pacing (:meth:`CallStore.pace_feedback`): a 429 multiplies a key's spacing by
#: ``PACING_WIDEN`` (up to ``PACING_MAX_FACTOR`` times the floor); each accepted call takes
#: ``PACING_NARROW_STEP`` off the factor again, back down to 1.0 (the floor).
PACING_WIDEN = 1.5
PACING_MAX_FACTOR = 8.0
PACING_NARROW_STEP = 0.05
#: How far ahead (in windows) :meth:`CallStore.pace_send` grants leave once the gate's opening
#: time is known: the longest a killed dialer can leave a call ``sending`` without having sent it.
PACING_ADVANCE_WINDOWS = 1.5

# Rows fetched per ``IN (...)`` query: well under SQLite's oldest bound-parameter limit (999).
_CHUNK = 500
# Column widths of the values that take part in keys; checked up front so a caller gets a
# message naming the field instead of a backend-specific DataError.
_CALL_REF_MAX = 64
_STATUS_MAX = 64
_UUID_MAX = 255
_KEY_MAX = 255


class StoreSchemaTooNew(VonageStudioError):
    """The store was written by a newer provider release than the one running here.

    Not retryable: upgrade the provider on this machine (or point ``[vonage_studio] store_url``
    at another database).
    """


class _StatusBatchRaced(VonageStudioError):
    """A batch of status callbacks met a writer that bypassed the call's row lock; rolled back."""


class CallStateConflict(VonageStudioError):
    """A state change was asked of a call in a state that does not allow it
    (for example restarting a call that was already placed)."""


@dataclass(frozen=True)
class PacingState:
    """The shared pacing state of one key: the next free slot and when the last request left
    (epoch seconds), and the adaptive widening of the spacing (1.0 = the floor)."""

    next_at: float
    last_sent_at: float | None
    factor: float


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


# --------------------------------------------------------------------------- column types


def _as_utc(value: datetime) -> datetime:
    """Aware UTC datetime; naive values are taken to be UTC (as the API's own timestamps are)."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Not subscripted (TypeDecorator[datetime]): the class is not generic at runtime on SQLAlchemy 1.4.
class _UTCDateTime(sa.types.TypeDecorator):
    """``DateTime(timezone=True)`` that always binds and returns aware UTC.

    SQLite has no time zones: SQLAlchemy writes the wall-clock fields and reads back a
    naive datetime, so values are normalised to UTC on the way in and tagged UTC on the
    way out. PostgreSQL returns the session's zone, which is converted to UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.engine.Dialect) -> datetime | None:
        return None if value is None else _as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: sa.engine.Dialect) -> datetime | None:
        return None if value is None else _as_utc(value)


class _JSONText(sa.types.TypeDecorator):
    """JSON kept as plain text, so both backends (and any SQL client) read it alike."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.engine.Dialect) -> str | None:
        # default=str: a callback payload must never be lost over an odd value type.
        return None if value is None else json.dumps(value, separators=(",", ":"), default=str)

    def process_result_value(self, value: str | None, dialect: sa.engine.Dialect) -> Any:
        return None if value is None else json.loads(value)


# --------------------------------------------------------------------------------- tables

metadata = sa.MetaData()

calls_table = sa.Table(
    "vonage_studio_calls",
    metadata,
    sa.Column("call_ref", sa.String(_CALL_REF_MAX), primary_key=True),
    # 250 = Airflow's own ID length for dag/task/run ids.
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("task_id", sa.String(250)),
    sa.Column("map_index", sa.Integer, nullable=False, default=-1),
    sa.Column("recipient_key", sa.Text),
    sa.Column("agent_id", sa.Text, nullable=False),
    sa.Column("destination", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("session_id", sa.String(_UUID_MAX)),
    sa.Column("session_start_time", _UTCDateTime),
    sa.Column("error_status", sa.Integer),
    sa.Column("error_message", sa.Text),
    sa.Column("status", sa.String(_STATUS_MAX)),
    sa.Column("status_at", _UTCDateTime),
    sa.Column("conversation_uuid", sa.String(_UUID_MAX)),
    sa.Column("callback_payload", _JSONText),
    sa.Column("parameters", _JSONText),
    sa.Column("created_at", _UTCDateTime, nullable=False),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
    # Schema version 2: the waiting task's final verdict (AI Studio never reports "answered").
    sa.Column("outcome", sa.String(_STATUS_MAX)),
    sa.Column("outcome_at", _UTCDateTime),
    sa.Index("ix_vonage_studio_calls_dag_run", "dag_id", "run_id"),
    sa.Index("ix_vonage_studio_calls_state", "state"),
    # recent_calls() orders by it; without the index that is a full scan of a growing ledger.
    sa.Index("ix_vonage_studio_calls_created_at", "created_at"),
)

status_events_table = sa.Table(
    "vonage_studio_call_status_events",
    metadata,
    # BIGINT on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("call_ref", sa.String(_CALL_REF_MAX), nullable=False),
    sa.Column("status", sa.String(_STATUS_MAX), nullable=False),
    # "" instead of NULL: NULLs never collide in a unique constraint, so two identical
    # callbacks without a conversation_uuid would both be stored.
    sa.Column("conversation_uuid", sa.String(_UUID_MAX), nullable=False, default=""),
    sa.Column("event_timestamp", _UTCDateTime),
    sa.Column("payload", _JSONText, nullable=False),
    sa.Column("received_at", _UTCDateTime, nullable=False),
    # The duplicate detector: a second identical callback fails this constraint atomically,
    # however many receivers race. Its index (call_ref first) also serves status_history().
    sa.UniqueConstraint("call_ref", "status", "conversation_uuid", name="uq_vonage_studio_call_status_event"),
)

pacing_slots_table = sa.Table(
    "vonage_studio_pacing_slots",
    metadata,
    sa.Column("key", sa.String(_KEY_MAX), primary_key=True),
    sa.Column("next_at", sa.Float, nullable=False),  # epoch seconds; FLOAT is double precision on PostgreSQL
    # Schema version 3 (all nullable: added in place to older stores). When the last request
    # of this key left (epoch seconds), the adaptive widening of the spacing (1.0 = none) and
    # when it was last widened.
    sa.Column("last_sent_at", sa.Float),
    sa.Column("factor", sa.Float),
    sa.Column("widened_at", sa.Float),
    # The last few requests as [[sent_at, answered_at or null], ...], oldest first (CallStore.pace_send).
    sa.Column("recent", _JSONText),
)

do_not_call_table = sa.Table(
    "vonage_studio_do_not_call",
    metadata,
    sa.Column("number", sa.String(_KEY_MAX), primary_key=True),
    sa.Column("reason", sa.Text),
    sa.Column("added_at", _UTCDateTime, nullable=False),
)

schema_version_table = sa.Table(
    "vonage_studio_schema_version",
    metadata,
    # A fixed primary key (always 1) makes "single row" a constraint rather than a hope.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)


def _add_missing_columns(conn: Connection, table: sa.Table, names: Sequence[str]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each of ``names`` that ``table`` lacks in the database.

    Checking first keeps a migration idempotent (a column added by hand, or a rerun after a
    partial upgrade on a backend without transactional DDL); the type is rendered from the
    column's definition in ``metadata``, so the DDL matches what ``create_all`` would create.
    Only nullable columns without defaults can be added this way on every backend.
    """
    present = {column["name"] for column in sa.inspect(conn).get_columns(table.name)}
    preparer = conn.dialect.identifier_preparer
    for name in names:
        if name in present:
            continue
        column = table.c[name]
        column_type = column.type.compile(dialect=conn.dialect)
        conn.execute(
            sa.text(
                f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {preparer.quote(name)} {column_type}"
            )
        )


def _add_call_outcome(conn: Connection) -> None:
    """Version 2: ``vonage_studio_calls.outcome`` and ``outcome_at`` (the waiting task's verdict)."""
    _add_missing_columns(conn, calls_table, ("outcome", "outcome_at"))


def _two_phase_ledger(conn: Connection) -> None:
    """Version 3: the adaptive pacing columns, and ``pending`` rows renamed ``sending``.

    A version-2 ``pending`` row was written before the slot wait, so it may or may not have
    been sent: ``sending`` (unknown if found by a later try, never redialed) is the safe
    reading; no row can be proven ``queued`` after the fact.
    """
    _add_missing_columns(conn, pacing_slots_table, ("last_sent_at", "factor", "widened_at", "recent"))
    conn.execute(
        calls_table.update().where(calls_table.c.state == "pending").values(state=CallState.SENDING.value)
    )


#: Upgrade steps: ``_MIGRATIONS[n]`` takes a store at version ``n - 1`` to version ``n``.
#: Each runs inside the schema transaction (under the schema lock: PostgreSQL's advisory lock,
#: SQLite's BEGIN IMMEDIATE) on the connection it is given, after ``create_all`` has created
#: any table that did not exist (a new database is created at the current version directly and
#: runs none). Bump ``SCHEMA_VERSION`` together with a new entry; steps must be idempotent.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _add_call_outcome, 3: _two_phase_ledger}

# Execution option read by the SQLite "begin" hook: which BEGIN to emit.
_BEGIN_OPTION = "vonage_studio_sqlite_begin"


# ------------------------------------------------------------------------------ the store


class CallStore:
    """Access to the call store at one SQLAlchemy URL (one engine and pool per instance).

    Tables are created on first use, idempotently and safely when many processes start at
    once. Instances are thread-safe and survive ``fork`` (the child opens its own
    connections). Use :meth:`default` to share one instance per URL in a process.

    Any method may raise :class:`StoreSchemaTooNew` on first use, and SQLAlchemy's
    ``OperationalError`` when the database cannot be reached.
    """

    _defaults: ClassVar[dict[str, CallStore]] = {}
    _defaults_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str | None = None) -> None:
        """Open (lazily) the store at ``url``; ``None`` means :func:`configured_store_url`.

        Raises ``sqlalchemy.exc.ArgumentError`` for a malformed URL. No connection is made here.
        """
        self._url = url if url is not None else configured_store_url()
        parsed = sa.engine.make_url(self._url)
        self._backend = parsed.get_backend_name()
        self._sqlite = self._backend == "sqlite"
        self._memory = self._sqlite and _sqlite_is_memory(parsed)
        self._engine = _create_engine(parsed, memory=self._memory)
        # Writes on SQLite get BEGIN IMMEDIATE: the write lock is taken up front, so a
        # read-modify-write can never fail half-way with "database is locked" on upgrade.
        self._write_engine: Engine = (
            self._engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}) if self._sqlite else self._engine
        )
        self._display_url = parsed.render_as_string(hide_password=True)
        self._password = parsed.password if isinstance(parsed.password, str) else None
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        # SQLite admits one writer at a time anyway; queueing this process's writers on a
        # lock is fairer and faster than letting them poll SQLite's busy handler.
        self._write_lock = threading.Lock()
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"CallStore({self._display_url!r})"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL this store was opened with (may contain a password)."""
        return self._url

    @classmethod
    def default(cls) -> CallStore:
        """The process-wide store for :func:`configured_store_url` (created once per URL)."""
        url = configured_store_url()
        with cls._defaults_lock:
            store = cls._defaults.get(url)
            if store is None:
                store = cls._defaults[url] = cls(url)
            return store

    @classmethod
    def _clear_default_cache(cls, url: str | None = None) -> None:
        """Dispose and forget cached :meth:`default` stores (all, or the one for ``url``); for tests."""
        with cls._defaults_lock:
            urls = list(cls._defaults) if url is None else [url]
            for key in urls:
                store = cls._defaults.pop(key, None)
                if store is not None:
                    store.dispose()

    def dispose(self) -> None:
        """Close this store's pooled connections; the store reconnects if used again."""
        self._engine.dispose()

    # ------------------------------------------------------------------ transactions

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            # A forked child must not use the parent's sockets/file handles; close=False
            # drops them without closing what the parent is still using.
            self._engine.dispose(close=False)
            self._init_process_state()

    @contextmanager
    def _transaction(self, *, write: bool, ensure_schema: bool = True) -> Iterator[Connection]:
        """A connection inside one transaction, committed on normal exit, rolled back on error."""
        self._check_fork()
        if ensure_schema:
            self._ensure_schema()
        # An in-memory database is one shared connection: every transaction must queue.
        lock: AbstractContextManager[Any] = (
            self._write_lock if self._sqlite and (write or self._memory) else nullcontext()
        )
        with lock, (self._write_engine if write else self._engine).begin() as conn:
            yield conn

    def _ensure_schema(self) -> None:
        """Create missing tables, then record, check or migrate the schema version.

        Raises :class:`StoreSchemaTooNew` when the store was written by a newer release.
        """
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            with self._transaction(write=True, ensure_schema=False) as conn:
                if conn.dialect.name == "postgresql":
                    # Two processes creating the same table at once: the loser would fail
                    # on pg_type's unique index. A transaction-scoped advisory lock per
                    # schema serialises them (SQLite's BEGIN IMMEDIATE already does).
                    conn.execute(
                        sa.text(
                            "SELECT pg_advisory_xact_lock(hashtext(:tag || coalesce(current_schema(), '')))"
                        ),
                        {"tag": "vonage_studio_schema:"},
                    )
                metadata.create_all(conn, checkfirst=True)
                found = conn.execute(
                    sa.select(schema_version_table.c.version).where(schema_version_table.c.id == 1)
                ).scalar_one_or_none()
                if found is None:
                    conn.execute(schema_version_table.insert().values(id=1, version=SCHEMA_VERSION))
                elif found > SCHEMA_VERSION:
                    raise StoreSchemaTooNew(
                        f"store_url {self._display_url}: the call store has schema version {found}, "
                        f"newer than this provider release understands ({SCHEMA_VERSION}); upgrade "
                        "airflow-provider-vonage-studio on this machine"
                    )
                elif found < SCHEMA_VERSION:
                    for version in range(found + 1, SCHEMA_VERSION + 1):
                        _MIGRATIONS[version](conn)
                    conn.execute(
                        schema_version_table.update()
                        .where(schema_version_table.c.id == 1)
                        .values(version=SCHEMA_VERSION)
                    )
            self._schema_ready = True

    # -------------------------------------------------------------------- the ledger

    def begin_call(
        self,
        call_ref: str,
        *,
        agent_id: str,
        destination: str,
        dag_id: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        map_index: int = -1,
        recipient_key: str | None = None,
    ) -> tuple[bool, CallRecord]:
        """Write the ledger row of a call about to be dialed, unless it exists already.

        Returns ``(True, record)`` when this call created the ``queued`` row and
        ``(False, existing)`` when the row was already there (a retry, or another process
        that won the race: exactly one caller ever gets ``True``). ``destination`` is the
        normalised number or SIP URI. Raises :class:`VonageStudioConfigError` for an empty
        or over-long ``call_ref`` or an empty ``agent_id``/``destination``.
        """
        _check_call_ref(call_ref)
        if not agent_id:
            raise VonageStudioConfigError("agent_id: must not be empty")
        if not destination:
            raise VonageStudioConfigError("destination: must not be empty")
        now = _utcnow()
        values: dict[str, Any] = {
            "call_ref": call_ref,
            "agent_id": agent_id,
            "destination": destination,
            "state": CallState.QUEUED.value,
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "map_index": map_index,
            "recipient_key": recipient_key,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._transaction(write=True) as conn:
                conn.execute(calls_table.insert().values(**values))
        except IntegrityError:
            # The primary key settles the race: on PostgreSQL the loser's INSERT waits for
            # the winner's commit, then fails here; on SQLite writers are serialised.
            existing = self.get_call(call_ref)
            if existing is None:  # pragma: no cover - rows are never deleted
                raise
            return False, existing
        return True, _record_from_values(values)

    def restart_call(self, call_ref: str, *, expected: CallRecord | None = None) -> None:
        """Put an ``unknown`` (or stale ``sending``) call back to ``queued`` for an explicit redial.

        Clears the earlier error and bumps ``updated_at``. With ``expected`` — the record the
        caller based its decision on — the restart is a compare-and-set: it happens only while
        the row still has that state and ``updated_at``, so two concurrent redials cannot both
        win, and a ``rejected`` row may then be restarted too (the hook does that only for
        refusals that were definitely not dialed: 429, 5xx gateway errors, refused connections).

        Raises :class:`UnknownCall` when there is no such call and :class:`CallStateConflict`
        when it was placed or rejected (without ``expected``), or changed since ``expected``.
        """
        allowed: tuple[CallState, ...] = (CallState.SENDING, CallState.UNKNOWN)
        where = None
        if expected is not None:
            allowed = (expected.state,)
            where = calls_table.c.updated_at == expected.updated_at
        self._update_call(
            call_ref,
            {"state": CallState.QUEUED.value, "error_status": None, "error_message": None},
            allowed=allowed,
            action="restart",
            where=where,
        )

    def mark_sending(self, call_ref: str) -> None:
        """Compare-and-set ``queued`` -> ``sending``: the last ledger step before the request.

        Of two processes holding the same ``queued`` row only one wins; a row goes back to
        ``queued`` only after a definite "not placed" (:meth:`requeue`), so a winner is never
        racing a request in flight. :meth:`pace_send` does the same step inside its pacing
        transaction.

        Raises :class:`UnknownCall` when there is no such call and :class:`CallStateConflict`
        when it is not ``queued`` (another try is dialing it, or has finished).
        """
        self._update_call(
            call_ref,
            {"state": CallState.SENDING.value},
            allowed=(CallState.QUEUED,),
            action="start sending",
        )

    def requeue(self, call_ref: str, status: int | None = None, message: str | None = None) -> None:
        """Compare-and-set ``sending`` -> ``queued`` after an answer that means "definitely not
        placed" (429, 502/503/504, a refused connection), keeping why in ``error_status`` /
        ``error_message``: a later attempt or try may dial it.

        Raises :class:`UnknownCall` when there is no such call and :class:`CallStateConflict`
        when it is no longer ``sending`` (a later try marked it ``unknown`` meanwhile).
        """
        self._update_call(
            call_ref,
            {"state": CallState.QUEUED.value, "error_status": status, "error_message": message},
            allowed=(CallState.SENDING,),
            action="requeue",
        )

    def mark_placed(self, call_ref: str, session_id: str, session_start_time: datetime) -> None:
        """Record that the API accepted the call (``placed``). A naive start time is taken as UTC.

        Raises :class:`UnknownCall` when there is no such call.
        """
        self._update_call(
            call_ref,
            {
                "state": CallState.PLACED.value,
                "session_id": session_id,
                "session_start_time": session_start_time,
                "error_status": None,
                "error_message": None,
            },
        )

    def mark_rejected(self, call_ref: str, status: int | None, message: str) -> None:
        """Record that the API refused the call (``rejected``: definitely not placed).

        Raises :class:`UnknownCall` when there is no such call.
        """
        self._update_call(
            call_ref,
            {"state": CallState.REJECTED.value, "error_status": status, "error_message": message},
        )

    def mark_unknown(self, call_ref: str, message: str, *, expected: CallRecord | None = None) -> None:
        """Record that the request was sent but no answer came back (``unknown``).

        With ``expected`` — the record the caller based its decision on — the change is a
        compare-and-set: it happens only while the row still has that state and ``updated_at``.
        That is how a later try labels a ``sending`` row left by a killed try without ever
        overwriting an outcome recorded meanwhile.

        Raises :class:`UnknownCall` when there is no such call and :class:`CallStateConflict`
        when the row changed since ``expected``.
        """
        self._update_call(
            call_ref,
            {"state": CallState.UNKNOWN.value, "error_status": None, "error_message": message},
            allowed=None if expected is None else (expected.state,),
            action="mark unknown",
            where=None if expected is None else calls_table.c.updated_at == expected.updated_at,
        )

    def record_outcome(self, call_ref: str, outcome: str) -> None:
        """Store the final verdict a waiting task reported for the call (``answered`` or a failure
        status), with ``outcome_at`` = now.

        The first verdict wins: a call that already has one keeps it (two sensors watching one
        call, a task retried after its verdict was stored). ``updated_at`` is left alone: the
        ledger's compare-and-set steps key on it, and a verdict is not a change of the dial.

        :raises VonageStudioConfigError: ``outcome`` is not one of :data:`OUTCOME_VALUES`.
        :raises UnknownCall: there is no such call.
        """
        if outcome not in OUTCOME_VALUES:
            raise VonageStudioConfigError(
                f"outcome: expected one of {', '.join(OUTCOME_VALUES)}, got {outcome!r}"
            )
        t = calls_table
        with self._transaction(write=True) as conn:
            # "outcome IS NULL" in the UPDATE itself: of two racing writers only one matches.
            if conn.execute(
                t.update()
                .where(t.c.call_ref == call_ref, t.c.outcome.is_(None))
                .values(outcome=outcome, outcome_at=_utcnow())
            ).rowcount:
                return
            exists = conn.execute(sa.select(t.c.call_ref).where(t.c.call_ref == call_ref)).first()
        if exists is None:
            raise UnknownCall(f"call_ref {call_ref!r}: no such call in the call store")

    def record_outcomes(self, outcomes: Mapping[str, str]) -> int:
        """:meth:`record_outcome` for many calls in one write transaction (a batch's verdicts).

        Calls that already have a verdict keep it; unknown call refs are skipped. Returns
        how many verdicts were written.

        :raises VonageStudioConfigError: before anything is written, for a value not in
            :data:`OUTCOME_VALUES`.
        """
        bad = sorted({value for value in outcomes.values() if value not in OUTCOME_VALUES})
        if bad:
            raise VonageStudioConfigError(
                f"outcome: expected one of {', '.join(OUTCOME_VALUES)}, got {bad!r}"
            )
        if not outcomes:
            return 0
        t = calls_table
        now = _utcnow()
        written = 0
        by_value: dict[str, list[str]] = {}
        for ref, value in outcomes.items():
            by_value.setdefault(value, []).append(ref)
        with self._transaction(write=True) as conn:
            for value, refs in sorted(by_value.items()):
                for chunk in _chunks(sorted(refs)):
                    written += conn.execute(
                        t.update()
                        .where(t.c.call_ref.in_(chunk), t.c.outcome.is_(None))
                        .values(outcome=value, outcome_at=now)
                    ).rowcount
        return written

    def set_parameters(self, call_ref: str, params: dict[str, str]) -> None:
        """Keep what the conversation collected (Insights session parameters) with the call.

        Replaces any earlier value. Raises :class:`UnknownCall` when there is no such call.
        """
        self._update_call(call_ref, {"parameters": dict(params)})

    def _update_call(
        self,
        call_ref: str,
        values: dict[str, Any],
        *,
        allowed: tuple[CallState, ...] | None = None,
        action: str = "update",
        where: Any = None,
    ) -> None:
        values = {**values, "updated_at": _utcnow()}
        with self._transaction(write=True) as conn:
            stmt = calls_table.update().where(calls_table.c.call_ref == call_ref)
            if where is not None:
                stmt = stmt.where(where)
            if allowed is not None:
                # The state test is part of the UPDATE, so a concurrent change cannot slip
                # in between a check and the write.
                stmt = stmt.where(calls_table.c.state.in_([s.value for s in allowed]))
            if conn.execute(stmt.values(**values)).rowcount:
                return
            state = conn.execute(
                sa.select(calls_table.c.state).where(calls_table.c.call_ref == call_ref)
            ).scalar_one_or_none()
        if state is None:
            raise UnknownCall(f"call_ref {call_ref!r}: no such call in the call store")
        raise CallStateConflict(
            f"call_ref {call_ref!r}: cannot {action} a call in state {state!r} "
            f"(allowed: {', '.join(s.value for s in allowed or ())})"
        )

    def get_call(self, call_ref: str) -> CallRecord | None:
        """The ledger row of ``call_ref``, or ``None`` when there is none."""
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(calls_table).where(calls_table.c.call_ref == call_ref)).first()
        return None if row is None else _record_from_values(row._mapping)

    def get_calls(self, call_refs: Sequence[str]) -> dict[str, CallRecord]:
        """Rows of many calls at once (missing refs are simply absent from the result).

        One query per 500 refs, all in one read transaction: a batch sensor watching
        1,000 calls must not issue 1,000 queries.
        """
        refs = list(dict.fromkeys(call_refs))
        found: dict[str, CallRecord] = {}
        if not refs:
            return found
        with self._transaction(write=False) as conn:
            for chunk in _chunks(refs):
                for row in conn.execute(sa.select(calls_table).where(calls_table.c.call_ref.in_(chunk))):
                    record = _record_from_values(row._mapping)
                    found[record.call_ref] = record
        return found

    def recent_calls(
        self, limit: int = 500, *, dag_id: str | None = None, run_id: str | None = None
    ) -> list[CallRecord]:
        """The ``limit`` most recently created calls, newest first, optionally of one DAG / run.

        The filters are part of the query, so an older run is found however many calls came since.
        Raises :class:`VonageStudioConfigError` for a negative ``limit``.
        """
        if limit < 0:
            raise VonageStudioConfigError(f"limit: must be >= 0, got {limit}")
        query = sa.select(calls_table)
        if dag_id is not None:
            query = query.where(calls_table.c.dag_id == dag_id)
        if run_id is not None:
            query = query.where(calls_table.c.run_id == run_id)
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                query.order_by(calls_table.c.created_at.desc(), calls_table.c.call_ref.desc()).limit(limit)
            ).all()
        return [_record_from_values(row._mapping) for row in rows]

    # -------------------------------------------------------------------- statuses

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
        if max_age is not None and (not isinstance(max_age, timedelta) or max_age <= timedelta(0)):
            raise VonageStudioConfigError(f"max_age: must be a positive timedelta, got {max_age!r}")
        if max_history is not None and (
            not isinstance(max_history, int) or isinstance(max_history, bool) or max_history < 1
        ):
            raise VonageStudioConfigError(f"max_history: must be an int >= 1 or None, got {max_history!r}")
        items = list(updates)
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
        if not items:
            return []
        now = _utcnow() if now is None else _as_utc(now)
        outcomes: list[RecordOutcome] = []
        calls, events = calls_table, status_events_table
        with self._transaction(write=True) as conn:
            destinations: dict[str, str] = {}
            has_status: set[str] = set()
            states: dict[str, str] = {}
            started: dict[str, datetime | None] = {}
            for chunk in _chunks(sorted({item.call_ref for item in items})):
                # FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes other writers),
                # taken in call_ref order: every writer of a call's history holds the call's row
                # first, so batches sharing calls queue up instead of deadlocking on each other's
                # history rows, the history keeps the order of each batch, and the status read
                # here stays true until the commit.
                rows = conn.execute(
                    sa.select(
                        calls.c.call_ref,
                        calls.c.destination,
                        calls.c.status,
                        calls.c.state,
                        calls.c.session_start_time,
                    )
                    .where(calls.c.call_ref.in_(chunk))
                    .order_by(calls.c.call_ref)
                    .with_for_update()
                )
                for ref, destination, status, state, session_start_time in rows:
                    destinations[ref] = destination
                    states[ref] = state
                    started[ref] = session_start_time
                    if status is not None:
                        has_status.add(ref)
            # The history of the calls that already have a status, read only now that their rows
            # are locked: a separate statement sees every row committed by a batch that held the
            # lock before us (a subquery of the locking SELECT would use the snapshot taken before
            # it waited). It gives each call's history size (the cap) and which statuses are stored
            # (a repeat is a DUPLICATE without an INSERT). A call without a status has no history:
            # its first status and its first row are written together.
            counted: dict[str, int] = {}
            stored: set[tuple[str, str, str]] = set()
            for chunk in _chunks(sorted(has_status)):
                for ref, stored_status, stored_uuid in conn.execute(
                    sa.select(events.c.call_ref, events.c.status, events.c.conversation_uuid).where(
                        events.c.call_ref.in_(chunk)
                    )
                ):
                    counted[ref] = counted.get(ref, 0) + 1
                    stored.add((ref, stored_status, stored_uuid or ""))

            def decide(
                insert: Callable[[dict[str, Any]], bool],
            ) -> tuple[list[RecordOutcome], dict[str, int]]:
                """Each update's outcome, given how a new history row is inserted; and, per call
                that gets its first status, the index of the update that sets it."""
                outcomes: list[RecordOutcome] = []
                sizes = dict(counted)
                seen: set[tuple[str, str, str]] = set()
                first_new: dict[str, int] = {}  # call_ref -> index of its first new history row
                for index, (item, uuid) in enumerate(zip(items, uuids, strict=True)):
                    destination = destinations.get(item.call_ref)
                    if destination is None:
                        outcomes.append(RecordOutcome.UNKNOWN_CALL)
                        continue
                    # Compared with the enum's value, not a literal: state names may change between
                    # schema versions, PLACED is what "AI Studio accepted the call" is called.
                    if placed_only and states[item.call_ref] != CallState.PLACED.value:
                        outcomes.append(RecordOutcome.NOT_PLACED)
                        continue
                    if max_age is not None:
                        since = [t for t in (started[item.call_ref], item.issued_at) if t is not None]
                        if since and now - min(_as_utc(t) for t in since) > max_age:
                            outcomes.append(RecordOutcome.STALE)
                            continue
                    if item.to is not None and not (
                        destination_matches(item.to, destination)
                        if destination_matches is not None
                        else item.to == destination
                    ):
                        outcomes.append(RecordOutcome.MISMATCH)
                        continue
                    key = (item.call_ref, item.status, uuid)
                    if key in stored or key in seen:
                        # A repeat of a stored status is a duplicate (AI Studio retrying), even when
                        # the history is full; so is a repeat within the batch, which is not sent.
                        outcomes.append(RecordOutcome.DUPLICATE)
                        continue
                    if max_history is not None and sizes.get(item.call_ref, 0) >= max_history:
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
                            "received_at": now,
                        }
                    )
                    seen.add(key)
                    if not new:
                        outcomes.append(RecordOutcome.DUPLICATE)
                        continue
                    sizes[item.call_ref] = sizes.get(item.call_ref, 0) + 1
                    outcomes.append(RecordOutcome.HISTORY)
                    if item.call_ref not in has_status:
                        first_new.setdefault(item.call_ref, index)
                return outcomes, first_new

            # Fast path: plan the batch as if every new history row went in, then insert them all
            # with one statement. The rows of the calls are locked, so only a row stored outside
            # that rule (a history row of a call without a status) can conflict; then the count
            # differs, what went in is undone and the batch is inserted row by row, each conflict
            # deciding a DUPLICATE exactly as before.
            planned: list[dict[str, Any]] = []

            def plan(row: dict[str, Any]) -> bool:
                planned.append(row)
                return True

            outcomes, first_new = decide(plan)
            if planned and not _inserted_all(conn, events, planned):
                insert_event = _insert_ignoring_conflicts(conn, events)
                outcomes, first_new = decide(lambda row: _inserted(conn.execute(insert_event, row)))
            if first_new:
                # "status IS NULL" keeps the first status even against a writer that does not
                # lock the row first: its UPDATE then matches no row. All calls in one
                # executemany. Should any of them have got a status meanwhile (the total count
                # says so; the lock taken above makes it impossible, short of a writer bypassing
                # this code), SQLite rolls the savepoint back and sets each on its own; on
                # PostgreSQL, where a savepoint is two more round trips per batch, the whole
                # batch is refused instead (rolled back: nothing recorded, never misreported).
                set_first = (
                    calls.update()
                    .where(calls.c.call_ref == sa.bindparam("ref"), calls.c.status.is_(None))
                    .values(
                        status=sa.bindparam("new_status"),
                        status_at=sa.bindparam("new_status_at"),
                        conversation_uuid=sa.bindparam("new_uuid"),
                        callback_payload=sa.bindparam("new_payload", type_=_JSONText()),
                        updated_at=now,
                    )
                )
                params = [
                    {
                        "ref": call_ref,
                        "new_status": items[index].status,
                        "new_status_at": items[index].timestamp or now,
                        "new_uuid": items[index].conversation_uuid or None,
                        "new_payload": items[index].payload,
                    }
                    for call_ref, index in first_new.items()
                ]
                update_savepoint = (
                    conn.begin_nested() if len(params) > 1 and conn.dialect.name != "postgresql" else None
                )
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

    # --------------------------------------------------------------------- pacing

    def reserve_slot(self, key: str, interval_seconds: float, *, now: float | None = None) -> float:
        """Reserve the next dialing slot of ``key`` (e.g. an agent id) and return it.

        Atomically ``slot = max(next_at, now)`` and ``next_at = slot + interval_seconds * factor``
        where ``factor`` (1.0 until a 429 is reported, see :meth:`pace_feedback`) is the key's
        adaptive widening; the caller waits until ``slot`` (epoch seconds), then asks
        :meth:`pace_send` for leave to send. Safe across threads, processes and (on PostgreSQL)
        machines: on SQLite the transaction holds the write lock (BEGIN IMMEDIATE), on
        PostgreSQL the slot row is locked (FOR UPDATE). ``now`` defaults to ``time.time()``;
        pass it in tests.

        Raises :class:`VonageStudioConfigError` for an empty or over-long ``key`` or a
        negative / non-finite ``interval_seconds``.
        """
        _check_pacing(key, interval_seconds)
        t = pacing_slots_table
        with self._transaction(write=True) as conn:
            _pacing_only(conn)
            row = self._lock_slot(conn, key)
            # "Now" is read only once the lock is held: read before waiting for it, a slot handed
            # out as "now" would already be in the past, the caller would dial late, and the next
            # slot (a full interval after the stale "now") would come too soon after that dial.
            current = time.time() if now is None else now
            if row is None:  # SQLite: the write lock is held, nobody can insert meanwhile
                slot = current
                conn.execute(t.insert().values(key=key, next_at=slot + interval_seconds, factor=1.0))
            else:
                # Read-then-write (not one upsert) so the slot is returned exactly as stored,
                # without re-deriving it from next_at - interval in floating point.
                slot = max(row.next_at, current)
                spacing = interval_seconds * _factor(row.factor)
                conn.execute(t.update().where(t.c.key == key).values(next_at=slot + spacing))
        return slot

    def pace_send(
        self,
        key: str,
        interval_seconds: float,
        *,
        limit: int = 1,
        window: float = 1.0,
        call_ref: str | None = None,
        now: float | None = None,
    ) -> tuple[float, float | None]:
        """Ask for leave to send one request of ``key``: ``(seconds to wait, sent_at)`` when
        granted (send at ``sent_at``, epoch seconds, not before), else ``(seconds to wait before
        asking again, None)``.

        The slots of :meth:`reserve_slot` are handed out in advance and only space the
        *requests*; a strict limiter counts *arrivals*, and a request's time on the way varies
        (a dialer that woke late, a slow connection). So a request may leave only once every
        request of ``key`` older than the ``limit - 1`` most recent ones is over (its answer
        reported to :meth:`pace_feedback`) by at least ``window * factor`` seconds: each of those
        arrived before its answer, so at most ``limit`` arrivals fall in any ``window``, whatever
        the delays and in whatever order the requests complete. A request whose answer has not
        been reported is taken as over one ``window`` after it left (a dialer killed
        mid-request must not stall everyone).

        Leave is given in advance: as soon as that opening time is known (every such answer is
        in, or deemed over) and at most :data:`PACING_ADVANCE_WINDOWS` windows away, the request
        is recorded as sent at the opening time (``sent_at``, to pass to :meth:`pace_feedback`;
        the caller sends at or after it, so it is never later than the real send) and, with
        ``call_ref``, the call's row goes ``queued`` -> ``sending`` in the same transaction, so
        nothing stands between the caller's wait and its request. A dialer killed in that short
        final wait leaves its call ``sending`` (outcome unknown, never redialed): exactly-once
        is kept, at the price of at most that wait.

        :raises CallStateConflict: ``call_ref``'s row is not ``queued`` (nothing is changed).
        :raises UnknownCall: there is no such call.
        :raises VonageStudioConfigError: as :meth:`reserve_slot`, or a ``limit`` below 1 or a
            ``window`` that is not a positive finite number.
        """
        _check_pacing(key, interval_seconds)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise VonageStudioConfigError(f"limit: must be an integer 1..1000, got {limit!r}")
        if not (math.isfinite(window) and window > 0):
            raise VonageStudioConfigError(f"window: must be a finite number > 0, got {window!r}")
        t = pacing_slots_table
        # Waiting on an answer not reported yet is the common case while polling: look with a
        # read-only query (no write lock, no commit); leave is only ever decided under the lock.
        with self._transaction(write=False) as conn:
            peek = conn.execute(sa.select(t.c.factor, t.c.recent).where(t.c.key == key)).first()
        if peek is not None:
            current = time.time() if now is None else now
            opens, known = _gate(_recent(peek.recent), _factor(peek.factor), limit, window, current)
            if not known:
                return min(max(opens - current, 0.001), 0.01), None
        with self._transaction(write=True) as conn:
            if call_ref is None:
                _pacing_only(conn)
            row = self._lock_slot(conn, key)
            current = time.time() if now is None else now
            recent = _recent(None if row is None else row.recent)
            factor = _factor(None if row is None else row.factor)
            opens, known = _gate(recent, factor, limit, window, current)
            if not known:
                # Waiting on an answer not reported yet: look again soon, it may come any moment.
                return min(max(opens - current, 0.001), 0.01), None
            horizon = PACING_ADVANCE_WINDOWS * window
            if opens - current > horizon:
                # Known but far (a widened spacing): ask again when it is within the horizon.
                return opens - current - horizon, None
            sent = max(opens, current)
            # Keep the newest limit - 1 requests and every older one that may still hold the gate
            # (over less than the widest spacing ago), so out-of-order answers are all seen.
            keep = max(len(recent) - (limit - 1), 0)
            recent = [
                entry
                for index, entry in enumerate(recent)
                if index >= keep or _over(entry, window) + window * PACING_MAX_FACTOR >= current
            ]
            recent.append([sent, None])
            if row is None:
                conn.execute(
                    t.insert().values(key=key, next_at=current, last_sent_at=sent, factor=1.0, recent=recent)
                )
            else:
                conn.execute(t.update().where(t.c.key == key).values(last_sent_at=sent, recent=recent))
            if call_ref is not None:
                calls = calls_table
                changed = conn.execute(
                    calls.update()
                    .where(calls.c.call_ref == call_ref, calls.c.state == CallState.QUEUED.value)
                    .values(state=CallState.SENDING.value, updated_at=_utcnow())
                ).rowcount
                if not changed:
                    state = conn.execute(
                        sa.select(calls.c.state).where(calls.c.call_ref == call_ref)
                    ).scalar_one_or_none()
                    # Raising rolls the transaction back: the send is not recorded.
                    if state is None:
                        raise UnknownCall(f"call_ref {call_ref!r}: no such call in the call store")
                    raise CallStateConflict(
                        f"call_ref {call_ref!r}: cannot start sending a call in state {state!r} "
                        "(allowed: queued)"
                    )
        return max(sent - current, 0.0), sent

    def pace_feedback(
        self,
        key: str,
        interval_seconds: float,
        *,
        rate_limited: bool,
        sent_at: float | None = None,
        answered_at: float | None = None,
        narrow: bool = True,
        retry_after: float | None = None,
        now: float | None = None,
    ) -> float:
        """Report the answer to a request of ``key`` and adapt the spacing; returns the new factor.

        ``sent_at`` (from :meth:`pace_send`) marks that request as over at ``answered_at`` (when
        its answer came, by the caller's clock; default and at most: now). AIMD, shared by
        every process using the store: a 429 multiplies the factor by :data:`PACING_WIDEN` (at
        most once per current spacing, so the refusals of calls already in flight count once;
        capped at :data:`PACING_MAX_FACTOR`) and pushes ``next_at`` one widened spacing (or
        ``retry_after`` seconds, if longer) past now; an accepted call takes
        :data:`PACING_NARROW_STEP` off it, down to 1.0 (``narrow=False``: an answer that is
        neither, such as a 503, leaves the factor alone).

        :raises VonageStudioConfigError: as :meth:`reserve_slot`, or a negative / non-finite
            ``retry_after``.
        """
        _check_pacing(key, interval_seconds)
        if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
            raise VonageStudioConfigError(f"retry_after: must be a finite number >= 0, got {retry_after!r}")
        t = pacing_slots_table
        with self._transaction(write=True) as conn:
            _pacing_only(conn)
            row = self._lock_slot(conn, key)
            current = time.time() if now is None else now
            factor = _factor(None if row is None else row.factor)
            values: dict[str, Any] = {}
            if sent_at is not None and row is not None:
                recent = _recent(row.recent)
                over = current if answered_at is None else min(max(answered_at, sent_at), current)
                for entry in recent:
                    if entry[0] == sent_at and entry[1] is None:
                        entry[1] = over
                values["recent"] = recent
            if rate_limited:
                widened_at = None if row is None else row.widened_at
                if widened_at is None or current - widened_at >= interval_seconds * factor:
                    factor = min(PACING_MAX_FACTOR, factor * PACING_WIDEN)
                    values["widened_at"] = current
                pause = max(interval_seconds * factor, retry_after or 0.0)
                values["next_at"] = max(current + pause, 0.0 if row is None else row.next_at)
            elif narrow:
                factor = max(1.0, factor - PACING_NARROW_STEP)
            values["factor"] = factor
            if row is None:
                conn.execute(t.insert().values(key=key, **{"next_at": current, **values}))
            else:
                conn.execute(t.update().where(t.c.key == key).values(**values))
        return factor

    def pacing_state(self, key: str) -> PacingState | None:
        """The stored pacing state of ``key`` (``None`` before its first slot)."""
        t = pacing_slots_table
        with self._transaction(write=False) as conn:
            row = conn.execute(
                sa.select(t.c.next_at, t.c.last_sent_at, t.c.factor).where(t.c.key == key)
            ).first()
        if row is None:
            return None
        return PacingState(next_at=row.next_at, last_sent_at=row.last_sent_at, factor=_factor(row.factor))

    @staticmethod
    def _lock_slot(conn: Connection, key: str) -> Any:
        """The pacing row of ``key``, locked until the transaction ends (``None`` on SQLite when
        there is none yet; the write lock held there keeps anyone from inserting it meanwhile)."""
        t = pacing_slots_table
        query = (
            sa.select(t.c.next_at, t.c.last_sent_at, t.c.factor, t.c.widened_at, t.c.recent)
            .where(t.c.key == key)
            .with_for_update()
        )
        row = conn.execute(query).first()
        if row is None and conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            # Make sure the row exists so FOR UPDATE has something to lock; a racing first
            # insert waits on the key and then does nothing. next_at=0: "free now". (Only the
            # first use of a key pays for this round trip.)
            conn.execute(
                pg_insert(t)
                .values(key=key, next_at=0.0, factor=1.0)
                .on_conflict_do_nothing(index_elements=["key"])
            )
            row = conn.execute(query).first()
        return row

    # --------------------------------------------------------------- availability

    @contextmanager
    def unavailable_as_error(self, doing: str) -> Iterator[None]:
        """Turn a failure to reach the database into :class:`CallStoreUnavailable`.

        ``doing`` says what was being done ("before dialing call vs-..."). The store URL is
        named without its password; the driver's error is chained, not repeated (its text may
        hold the URL). Errors of the SQL itself (constraint violations, bugs) pass unchanged.
        """
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            kind = type(getattr(exc, "orig", None) or exc).__name__
            raise CallStoreUnavailable(
                f"call store {self._display_url} is unavailable {doing}: {kind}: "
                f"{_first_line(exc, self._password)}"
            ) from exc

    # ---------------------------------------------------------------- do not call

    def dnc_add(self, number: str, reason: str | None = None) -> None:
        """Put a normalised number (or SIP URI) on the do-not-call list.

        Adding a listed number again keeps its ``added_at`` and replaces the reason when one
        is given. Raises :class:`VonageStudioConfigError` for an empty or over-long number.
        """
        if not number or len(number) > _KEY_MAX:
            raise VonageStudioConfigError(f"number: must be 1..{_KEY_MAX} characters, got {len(number)}")
        t = do_not_call_table
        try:
            with self._transaction(write=True) as conn:
                conn.execute(t.insert().values(number=number, reason=reason, added_at=_utcnow()))
            return
        except IntegrityError:
            pass  # already listed (possibly by a concurrent add)
        if reason is not None:
            with self._transaction(write=True) as conn:
                conn.execute(t.update().where(t.c.number == number).values(reason=reason))

    def dnc_remove(self, number: str) -> bool:
        """Take a number off the do-not-call list; ``True`` when it was listed."""
        t = do_not_call_table
        with self._transaction(write=True) as conn:
            return bool(conn.execute(t.delete().where(t.c.number == number)).rowcount)

    def dnc_list(self) -> list[tuple[str, str | None, datetime]]:
        """The whole do-not-call list as ``(number, reason, added_at)``, sorted by number."""
        t = do_not_call_table
        with self._transaction(write=False) as conn:
            rows = conn.execute(sa.select(t.c.number, t.c.reason, t.c.added_at).order_by(t.c.number)).all()
        return [(row.number, row.reason, row.added_at) for row in rows]

    def dnc_filter(self, numbers: Iterable[str]) -> set[str]:
        """Which of ``numbers`` (normalised) are on the do-not-call list (one query per 500)."""
        wanted = list(dict.fromkeys(numbers))
        listed: set[str] = set()
        if not wanted:
            return listed
        t = do_not_call_table
        with self._transaction(write=False) as conn:
            for chunk in _chunks(wanted):
                listed.update(conn.execute(sa.select(t.c.number).where(t.c.number.in_(chunk))).scalars())
        return listed

    def calls_between(
        self,
        since: datetime,
        until: datetime,
        *,
        statuses: Iterable[str] | None = None,
        agent_id: str | None = None,
    ) -> list[CallRecord]:
        """Calls created in ``[since, until)``, oldest first (e.g. yesterday's, to call back).

        ``statuses`` keeps only calls whose reported status is one of them (calls without a
        status, i.e. answered or still waiting, never match); ``agent_id`` only that agent's.
        Naive datetimes are taken as UTC. Raises :class:`VonageStudioConfigError` when
        ``until`` is before ``since``.
        """
        since, until = _as_utc(since), _as_utc(until)
        if until < since:
            raise VonageStudioConfigError("until: must not be before since")
        t = calls_table
        query = sa.select(t).where(t.c.created_at >= since, t.c.created_at < until)
        if statuses is not None:
            query = query.where(t.c.status.in_(list(statuses)))
        if agent_id is not None:
            query = query.where(t.c.agent_id == agent_id)
        with self._transaction(write=False) as conn:
            rows = conn.execute(query.order_by(t.c.created_at, t.c.call_ref)).all()
        return [_record_from_values(row._mapping) for row in rows]


# ---------------------------------------------------------------------------- helpers


def configured_store_url() -> str:
    """The store URL from Airflow's configuration.

    ``[vonage_studio] store_url`` (env ``AIRFLOW__VONAGE_STUDIO__STORE_URL``), read at call
    time; when unset, ``sqlite:///<AIRFLOW_HOME>/vonage_studio.db`` where AIRFLOW_HOME is
    ``[core] airflow_home``, else env ``AIRFLOW_HOME``, else ``~/airflow``.
    """
    # Imported here so that importing the store does not import Airflow.
    from airflow_provider_vonage_studio._compat import conf

    url = conf.get("vonage_studio", "store_url", fallback=None)
    if url and url.strip():
        return str(url).strip()
    home = (
        conf.get("core", "airflow_home", fallback=None)
        or os.environ.get("AIRFLOW_HOME")
        or os.path.join("~", "airflow")
    )
    return f"sqlite:///{Path(str(home)).expanduser() / 'vonage_studio.db'}"


def _check_pacing(key: str, interval_seconds: float) -> None:
    if not key or len(key) > _KEY_MAX:
        raise VonageStudioConfigError(f"key: must be 1..{_KEY_MAX} characters, got {len(key)}")
    if not math.isfinite(interval_seconds) or interval_seconds < 0:
        raise VonageStudioConfigError(
            f"interval_seconds: must be a finite number >= 0, got {interval_seconds!r}"
        )


def _factor(value: float | None) -> float:
    """A stored widening factor; ``NULL`` (a row from before schema version 3) means none."""
    if value is None or not math.isfinite(value) or value < 1.0:
        return 1.0
    return min(float(value), PACING_MAX_FACTOR)


def _pacing_only(conn: Connection) -> None:
    """For a transaction that writes pacing state only: on PostgreSQL, commit without waiting for
    the WAL flush. The pacer's state is soft (after a database crash the send gate and the next
    slots rebuild it from a few stale values), while every dial waits on these commits; the
    ledger's writes, including the ``sending`` mark, keep the server's durable commit."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))


def _over(entry: list[Any], window: float) -> float:
    """When a recent request is over: its reported answer, else one ``window`` after it left."""
    return entry[1] if entry[1] is not None else entry[0] + window


def _gate(
    recent: list[list[Any]], factor: float, limit: int, window: float, current: float
) -> tuple[float, bool]:
    """When the send gate opens (epoch seconds) and whether that is known yet.

    Every request older than the newest ``limit - 1`` must be over ``window * factor`` before
    the next leaves; an unanswered one not yet deemed over leaves the time unknown (its answer
    may come any moment and open the gate earlier than the fallback)."""
    held = recent[: max(len(recent) - (limit - 1), 0)]
    opens, known = current, True
    for entry in held:
        over = _over(entry, window)
        if entry[1] is None and over > current:
            known = False
        opens = max(opens, over + window * factor)
    return opens, known


def _recent(value: Any) -> list[list[Any]]:
    """The stored list of recent requests, tolerating anything malformed as "none"."""
    if not isinstance(value, list):
        return []
    return [
        [entry[0], entry[1]]
        for entry in value
        if isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], (int, float))
        and (entry[1] is None or isinstance(entry[1], (int, float)))
    ]


def _first_line(exc: BaseException, secret: str | None) -> str:
    """The first line of a driver error, without ``secret`` (the URL's password) should the
    driver have quoted it."""
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]
    return text.replace(secret, "***") if secret else text


def _check_call_ref(call_ref: str) -> None:
    if not call_ref or len(call_ref) > _CALL_REF_MAX:
        raise VonageStudioConfigError(
            f"call_ref: must be 1..{_CALL_REF_MAX} characters, got {len(call_ref or '')}"
        )


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _insert_ignoring_conflicts(conn: Connection, table: sa.Table) -> Any:
    """An INSERT into ``table`` that skips a row breaking a unique constraint instead of failing,
    so one duplicate does not abort the transaction it is part of. See :func:`_inserted`."""
    if conn.dialect.name == "postgresql":
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
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        # psycopg reports no rowcount for an executemany: count the returned keys instead
        # (SQLAlchemy sends the rows as one multi-row VALUES). Undone by key rather than with
        # a savepoint, which would cost two round trips on every batch.
        (key,) = table.primary_key.columns
        statement = pg_insert(table).on_conflict_do_nothing().returning(key)
        ids = conn.execute(statement, rows).scalars().all()
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


def _record_from_values(values: Mapping[Any, Any]) -> CallRecord:
    """Build a :class:`CallRecord` from a row mapping (or the dict that was inserted)."""
    get = values.get
    return CallRecord(
        call_ref=values["call_ref"],
        agent_id=values["agent_id"],
        destination=values["destination"],
        state=CallState(values["state"]),
        dag_id=get("dag_id"),
        run_id=get("run_id"),
        task_id=get("task_id"),
        map_index=values["map_index"],
        recipient_key=get("recipient_key"),
        session_id=get("session_id"),
        session_start_time=get("session_start_time"),
        error_status=get("error_status"),
        error_message=get("error_message"),
        status=get("status"),
        status_at=get("status_at"),
        conversation_uuid=get("conversation_uuid"),
        callback_payload=get("callback_payload"),
        parameters=get("parameters"),
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        outcome=get("outcome"),
        outcome_at=get("outcome_at"),
    )


def _sqlite_is_memory(url: sa.engine.URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database or url.query.get("mode") == "memory"


def _create_engine(url: sa.engine.URL, *, memory: bool) -> Engine:
    """An engine with the connection settings the store relies on."""
    if url.get_backend_name() != "sqlite":
        # pre_ping: a pooled connection dropped by a server restart or an idle timeout is
        # replaced before use, instead of failing a task or a callback.
        return sa.create_engine(
            url,
            hide_parameters=True,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            pool_timeout=30,
            pool_recycle=1800,
        )
    database = url.database or ""
    if not memory and not database.startswith("file:"):
        # SQLite creates the file but not its directory (e.g. a fresh AIRFLOW_HOME).
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # hide_parameters: SQL errors must not carry phone numbers into task logs.
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}, "hide_parameters": True}
    if memory:
        # One connection shared by all threads, or every connection would see its own
        # empty database; _transaction serialises its use.
        kwargs["poolclass"] = sa.pool.StaticPool
    else:
        # Explicit because SQLAlchemy 1.4 defaults to NullPool for files (a new connection,
        # and its PRAGMAs, per transaction).
        kwargs.update(poolclass=sa.pool.QueuePool, pool_size=5, max_overflow=10, pool_timeout=30)
    engine = sa.create_engine(url, **kwargs)
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take transaction control away from the sqlite3 module (which would BEGIN only before
    # DML, and only DEFERRED); _sqlite_on_begin emits the BEGIN we want instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=30000")
        # WAL: readers never block the writer nor each other (persistent per database file).
        _enable_wal(cursor)
        # Safe with WAL (no corruption; at worst the last commits are lost on power loss).
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _enable_wal(cursor: Any, *, timeout: float = 30.0) -> None:
    """Switch the database file to WAL, waiting up to ``timeout`` s for other connections.

    Leaving rollback-journal mode needs an exclusive lock, and SQLite takes it without calling
    the busy handler: while another process holds a lock (a fresh store or an old one being
    upgraded, opened by several processes at once) the switch fails at once with "database is
    locked", whatever busy_timeout says. So it is retried here, briefly, like the busy handler
    would. Raises ``sqlite3.OperationalError`` when the database stays locked that long.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    # Sent straight to the driver rather than through conn.exec_driver_sql: it is a
    # transaction control statement, not a query, and should not show up in statement
    # listeners (query counts, tracing) as one.
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"BEGIN {mode}")
    finally:
        cursor.close()


# Locks inherited from a parent that forked while a thread held them would never be released.
def _reset_locks_after_fork() -> None:
    CallStore._defaults_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_after_fork)
