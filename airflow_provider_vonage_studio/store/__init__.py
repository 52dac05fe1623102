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


The store is a package of rooms, one per responsibility: :mod:`.schema` (tables, column types,
migrations), :mod:`.engine` (engines, SQLite settings, transactions, fork safety),
:mod:`.call_rows` (the ledger), :mod:`.statuses` (status callbacks), :mod:`.end_calls` (end-call
webhooks), :mod:`.pacing` (slots and
the send gate) and :mod:`.dnc` (the do-not-call list). :class:`CallStore` is composed of their
parts (mixins over one :class:`~.engine.StoreBase`, so every part shares one engine, one write
lock and one schema check, and callers keep one object with every method). Everything
importable from ``airflow_provider_vonage_studio.store`` before the split still is, from here.

Nothing in an operator or sensor module imports this package at top level (SQLAlchemy
stays out of DAG parsing); the hook and the receiver import it when they need it.
"""

from __future__ import annotations

import os
import threading
from typing import ClassVar

# The domain types live in calls.py; they are re-exported here, where they were defined before.
from airflow_provider_vonage_studio.calls import (
    FAILURE_STATUSES,
    OUTCOME_VALUES,
    CallRecord,
    CallState,
    RecordOutcome,
)
from airflow_provider_vonage_studio.store.batch_results import BatchResults
from airflow_provider_vonage_studio.store.call_rows import CallRows
from airflow_provider_vonage_studio.store.call_rows import _check_call_ref as _check_call_ref
from airflow_provider_vonage_studio.store.call_rows import _record_from_values as _record_from_values
from airflow_provider_vonage_studio.store.changes import Change, ChangeCursor, Changes
from airflow_provider_vonage_studio.store.dnc import DoNotCall
from airflow_provider_vonage_studio.store.end_calls import EndCallOutcome, EndCalls
from airflow_provider_vonage_studio.store.engine import _BEGIN_OPTION as _BEGIN_OPTION
from airflow_provider_vonage_studio.store.engine import _create_engine as _create_engine
from airflow_provider_vonage_studio.store.engine import _enable_wal as _enable_wal
from airflow_provider_vonage_studio.store.engine import _first_line as _first_line
from airflow_provider_vonage_studio.store.engine import _sqlite_is_memory as _sqlite_is_memory
from airflow_provider_vonage_studio.store.engine import _sqlite_on_begin as _sqlite_on_begin
from airflow_provider_vonage_studio.store.engine import _sqlite_on_connect as _sqlite_on_connect
from airflow_provider_vonage_studio.store.engine import configured_store_url
from airflow_provider_vonage_studio.store.errors import CallStateConflict, StoreSchemaTooNew
from airflow_provider_vonage_studio.store.errors import _StatusBatchRaced as _StatusBatchRaced
from airflow_provider_vonage_studio.store.messages import Messages
from airflow_provider_vonage_studio.store.pacing import (
    PACING_ADVANCE_WINDOWS,
    PACING_MAX_FACTOR,
    PACING_NARROW_STEP,
    PACING_WIDEN,
    Pacing,
    PacingState,
)
from airflow_provider_vonage_studio.store.pacing import _check_pacing as _check_pacing
from airflow_provider_vonage_studio.store.pacing import _factor as _factor
from airflow_provider_vonage_studio.store.pacing import _gate as _gate
from airflow_provider_vonage_studio.store.pacing import _over as _over
from airflow_provider_vonage_studio.store.pacing import _pacing_only as _pacing_only
from airflow_provider_vonage_studio.store.pacing import _recent as _recent
from airflow_provider_vonage_studio.store.schema import _CALL_REF_MAX as _CALL_REF_MAX
from airflow_provider_vonage_studio.store.schema import _CHUNK as _CHUNK
from airflow_provider_vonage_studio.store.schema import _KEY_MAX as _KEY_MAX
from airflow_provider_vonage_studio.store.schema import _MIGRATIONS as _MIGRATIONS
from airflow_provider_vonage_studio.store.schema import _STATUS_MAX as _STATUS_MAX
from airflow_provider_vonage_studio.store.schema import _UUID_MAX as _UUID_MAX
from airflow_provider_vonage_studio.store.schema import SCHEMA_VERSION
from airflow_provider_vonage_studio.store.schema import _add_call_outcome as _add_call_outcome
from airflow_provider_vonage_studio.store.schema import _add_missing_columns as _add_missing_columns
from airflow_provider_vonage_studio.store.schema import _as_utc as _as_utc
from airflow_provider_vonage_studio.store.schema import _chunks as _chunks
from airflow_provider_vonage_studio.store.schema import _JSONText as _JSONText
from airflow_provider_vonage_studio.store.schema import _two_phase_ledger as _two_phase_ledger
from airflow_provider_vonage_studio.store.schema import _UTCDateTime as _UTCDateTime
from airflow_provider_vonage_studio.store.schema import _utcnow as _utcnow
from airflow_provider_vonage_studio.store.schema import calls_table as calls_table
from airflow_provider_vonage_studio.store.schema import do_not_call_table as do_not_call_table
from airflow_provider_vonage_studio.store.schema import metadata as metadata
from airflow_provider_vonage_studio.store.schema import pacing_slots_table as pacing_slots_table
from airflow_provider_vonage_studio.store.schema import schema_version_table as schema_version_table
from airflow_provider_vonage_studio.store.schema import status_events_table as status_events_table
from airflow_provider_vonage_studio.store.statuses import MAX_STATUS_HISTORY, Statuses, StatusUpdate
from airflow_provider_vonage_studio.store.statuses import (
    _insert_ignoring_conflicts as _insert_ignoring_conflicts,
)
from airflow_provider_vonage_studio.store.statuses import _inserted as _inserted
from airflow_provider_vonage_studio.store.statuses import _inserted_all as _inserted_all

# The ``name as name`` imports above: names (many private) that lived in this module before
# it became a package, re-exported for one release so code (and tests) importing them from
# here keep working. They are copies of the bindings: patch a module attribute in the room
# that reads it (``store.schema.SCHEMA_VERSION``, ``store.schema._MIGRATIONS``).
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
    "Change",
    "ChangeCursor",
    "EndCallOutcome",
    "PacingState",
    "RecordOutcome",
    "StatusUpdate",
    "StoreSchemaTooNew",
    "configured_store_url",
]


class CallStore(CallRows, Statuses, EndCalls, Pacing, DoNotCall, BatchResults, Changes, Messages):
    """Access to the call store at one SQLAlchemy URL (one engine and pool per instance).

    Tables are created on first use, idempotently and safely when many processes start at
    once. Instances are thread-safe and survive ``fork`` (the child opens its own
    connections). Use :meth:`default` to share one instance per URL in a process.

    Any method may raise :class:`StoreSchemaTooNew` on first use, and SQLAlchemy's
    ``OperationalError`` when the database cannot be reached.
    """

    _defaults: ClassVar[dict[str, CallStore]] = {}
    _defaults_lock: ClassVar[threading.Lock] = threading.Lock()

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

    # The ledger (CallRows), status callbacks (Statuses), pacing (Pacing), the do-not-call list
    # (DoNotCall) and the engine, transactions and outages (StoreBase) are in their rooms.


# Locks inherited from a parent that forked while a thread held them would never be released.
def _reset_locks_after_fork() -> None:
    CallStore._defaults_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_after_fork)
