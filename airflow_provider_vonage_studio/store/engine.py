"""Engines and transactions of the call store: connection settings, SQLite's WAL, busy timeout
and ``BEGIN IMMEDIATE``, the schema check on first use, fork safety, and outages as
:class:`~airflow_provider_vonage_studio.exceptions.CallStoreUnavailable`.

:class:`StoreBase` is the part of :class:`~airflow_provider_vonage_studio.store.CallStore` every
other part builds on: its ``_transaction`` is the only way the store's rooms reach the database.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_provider_vonage_studio.exceptions import CallStoreUnavailable
from airflow_provider_vonage_studio.store import schema

# Execution option read by the SQLite "begin" hook: which BEGIN to emit.
_BEGIN_OPTION = "vonage_studio_sqlite_begin"


class StoreBase:
    """One SQLAlchemy URL's engine (and pool), its transactions and its schema check.

    Thread-safe, and survives ``fork``: the child opens its own connections.
    """

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
        """Create missing tables, then record, check or migrate the schema version (once per process).

        Raises :class:`~airflow_provider_vonage_studio.store.StoreSchemaTooNew` when the store was
        written by a newer release.
        """
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            with self._transaction(write=True, ensure_schema=False) as conn:
                schema.ensure_schema(conn, self._display_url)
            self._schema_ready = True

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


def _first_line(exc: BaseException, secret: str | None) -> str:
    """The first line of a driver error, without ``secret`` (the URL's password) should the
    driver have quoted it."""
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]
    return text.replace(secret, "***") if secret else text


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
