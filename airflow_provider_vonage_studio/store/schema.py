"""The store's tables, column types and schema migrations (SQLAlchemy Core metadata).

:func:`ensure_schema` creates missing tables and records, checks or migrates the schema
version; it reads :data:`SCHEMA_VERSION` and :data:`_MIGRATIONS` from this module at call
time (tests patch them here).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from airflow_provider_vonage_studio.calls import CallState
from airflow_provider_vonage_studio.store.errors import StoreSchemaTooNew

# Rows fetched per ``IN (...)`` query: well under SQLite's oldest bound-parameter limit (999).
_CHUNK = 500
# Column widths of the values that take part in keys; checked up front so a caller gets a
# message naming the field instead of a backend-specific DataError.
_CALL_REF_MAX = 64
_STATUS_MAX = 64
_UUID_MAX = 255
_KEY_MAX = 255


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

# ----------------------------------------------------------- change feed (schema version 4)
# Every INSERT/UPDATE of a call row takes the next change sequence number (Core applies a
# column's default=/onupdate= SQL expression to every insert()/update() that does not set the
# column itself), so readers can ask "what changed since N" with one indexed query
# (store/changes.py) instead of re-reading every row they wait for.

#: PostgreSQL's sequence behind ``change_seq`` (ignored on SQLite, which has no sequences).
CHANGE_SEQUENCE = sa.Sequence("vonage_studio_calls_change_seq", metadata=metadata)


class _NextChangeSeq(FunctionElement[int]):
    """The next change number: ``nextval`` on PostgreSQL; on SQLite one more than the largest
    stored (safe there: every write holds the database's write lock, BEGIN IMMEDIATE, so no two
    transactions can take the same number, and numbers follow commit order)."""

    type = sa.BigInteger()
    inherit_cache = True
    name = "vonage_studio_next_change_seq"


class _WriterXid(FunctionElement[int]):
    """The writing transaction's id on PostgreSQL (``txid_current()``, epoch-extended, so it
    never wraps); NULL elsewhere. Lets a reader catch changes committed out of sequence order."""

    type = sa.BigInteger()
    inherit_cache = True
    name = "vonage_studio_writer_xid"


@compiles(_NextChangeSeq)
def _next_change_seq_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return "(SELECT COALESCE(MAX(change_seq), 0) + 1 FROM vonage_studio_calls)"


@compiles(_NextChangeSeq, "postgresql")
def _next_change_seq_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return f"nextval('{CHANGE_SEQUENCE.name}')"


@compiles(_WriterXid)
def _writer_xid_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return "NULL"


@compiles(_WriterXid, "postgresql")
def _writer_xid_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return "txid_current()"


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
    # Schema version 5: where the outcome's truth came from (calls.OutcomeSource) and, for a
    # call confirmed by its agent's end-call webhook, when the call ended.
    sa.Column("outcome_source", sa.String(16)),
    sa.Column("ended_at", _UTCDateTime),
    # Schema version 7: what the row was sent through. NULL (or "voice") for a call; "sms" or
    # "whatsapp" for a message started through a messaging agent (hooks/messaging.py), which is
    # a ledger row like a call, so exactly-once, pacing and the do-not-call list work the same.
    sa.Column("channel", sa.String(16)),
    # Schema version 4: the change feed (see _NextChangeSeq). Never set by hand.
    sa.Column(
        "change_seq",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        default=_NextChangeSeq(),
        onupdate=_NextChangeSeq(),
    ),
    sa.Column("change_xid", sa.BigInteger, default=_WriterXid(), onupdate=_WriterXid()),
    sa.Index("ix_vonage_studio_calls_change_seq", "change_seq"),
    sa.Index("ix_vonage_studio_calls_change_xid", "change_xid"),
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

change_cursors_table = sa.Table(
    "vonage_studio_change_cursors",
    metadata,
    # A named reader of the change feed (an outcome-event watcher). The row with call_ref ""
    # holds its position (``position``: JSON, see store/changes.py); one row per call_ref
    # already handed over makes "never repeat an outcome" a primary key, not a hope.
    sa.Column("name", sa.String(_KEY_MAX), primary_key=True),
    sa.Column("call_ref", sa.String(_CALL_REF_MAX), primary_key=True),
    sa.Column("position", _JSONText),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
)

# Schema version 6: what became of each recipient of a MakeCallsOperator batch (one row per
# recipient, in the task instance's order), so a 100,000-recipient run is queryable without
# its XCom holding 100,000 dicts. ``destination`` is stored as the ledger stores it.
batch_results_table = sa.Table(
    "vonage_studio_batch_results",
    metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("task_id", sa.String(250), primary_key=True),
    sa.Column("map_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("call_ref", sa.String(_CALL_REF_MAX)),
    sa.Column("destination", sa.Text),
    sa.Column("recipient_key", sa.Text),
    sa.Column("result", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("session_id", sa.String(_UUID_MAX)),
    sa.Column("session_start_time", _UTCDateTime),
    sa.Column("duplicate_of", sa.Integer),
    sa.Column("opens_at", _UTCDateTime),
    sa.Column("status", sa.String(_STATUS_MAX)),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
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
    # A bare table of the one column, not calls_table: its onupdate columns (change_seq, version
    # 4) do not exist yet in a store this step upgrades.
    calls_v3 = sa.table(calls_table.name, sa.column("state"))
    conn.execute(calls_v3.update().where(calls_v3.c.state == "pending").values(state=CallState.SENDING.value))


def _outcome_sources(conn: Connection) -> None:
    """Version 5: ``vonage_studio_calls.outcome_source`` and ``ended_at`` (confirmed outcomes)."""
    _add_missing_columns(conn, calls_table, ("outcome_source", "ended_at"))


def _change_feed(conn: Connection) -> None:
    """Version 4: ``change_seq``/``change_xid`` on call rows (indexed; PostgreSQL's sequence),
    existing rows numbered. The cursor table is new: ``create_all`` made it."""
    if conn.dialect.name == "postgresql":
        CHANGE_SEQUENCE.create(conn, checkfirst=True)
    _add_missing_columns(conn, calls_table, ("change_seq", "change_xid"))
    t = calls_table
    # Any distinct numbers below the next one will do: a new reader starts with a full read.
    # SQLite's rowid is unique and follows insertion order; PostgreSQL draws from the sequence.
    number = _NextChangeSeq() if conn.dialect.name == "postgresql" else sa.literal_column("rowid")
    conn.execute(t.update().where(t.c.change_seq.is_(None)).values(change_seq=number))
    for index in t.indexes:
        if index.name in ("ix_vonage_studio_calls_change_seq", "ix_vonage_studio_calls_change_xid"):
            index.create(conn, checkfirst=True)


def _add_batch_results(conn: Connection) -> None:
    """Version 6: ``vonage_studio_batch_results`` (per-recipient results of a batch)."""
    batch_results_table.create(conn, checkfirst=True)


def _add_channel(conn: Connection) -> None:
    """Version 7: ``vonage_studio_calls.channel`` (NULL for calls, ``sms``/``whatsapp`` for messages)."""
    _add_missing_columns(conn, calls_table, ("channel",))


#: Upgrade steps: ``_MIGRATIONS[n]`` takes a store at version ``n - 1`` to version ``n``.
#: Each runs inside the schema transaction (under the schema lock: PostgreSQL's advisory lock,
#: SQLite's BEGIN IMMEDIATE) on the connection it is given, after ``create_all`` has created
#: any table that did not exist (a new database is created at the current version directly and
#: runs none). A table change adds one entry (one line each, in order); steps must be idempotent.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _add_call_outcome,
    3: _two_phase_ledger,
    4: _change_feed,
    5: _outcome_sources,
    6: _add_batch_results,
    7: _add_channel,
}

#: Version of the table layout this code writes: the newest migration's.
SCHEMA_VERSION = max(_MIGRATIONS)


def ensure_schema(conn: Connection, display_url: str) -> None:
    """Create missing tables, then record, check or migrate the schema version, on ``conn``
    (a write transaction; ``display_url`` names the store in errors).

    Raises :class:`StoreSchemaTooNew` when the store was written by a newer release.
    """
    if conn.dialect.name == "postgresql":
        # Two processes creating the same table at once: the loser would fail
        # on pg_type's unique index. A transaction-scoped advisory lock per
        # schema serialises them (SQLite's BEGIN IMMEDIATE already does).
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext(:tag || coalesce(current_schema(), '')))"),
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
            f"store_url {display_url}: the call store has schema version {found}, "
            f"newer than this provider release understands ({SCHEMA_VERSION}); upgrade "
            "airflow-provider-vonage-studio on this machine"
        )
    elif found < SCHEMA_VERSION:
        for version in range(found + 1, SCHEMA_VERSION + 1):
            _MIGRATIONS[version](conn)
        conn.execute(
            schema_version_table.update().where(schema_version_table.c.id == 1).values(version=SCHEMA_VERSION)
        )


def _chunks(items: list[str]) -> Iterator[list[str]]:
    """``items`` in slices of :data:`_CHUNK` (one ``IN (...)`` query each)."""
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
