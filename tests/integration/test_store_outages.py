"""The call store failing around a dial, with a real database made unavailable (no mocks).

PostgreSQL: the store logs in as a role of its own; the test takes the role's login away and
ends its sessions (``ALTER ROLE ... NOLOGIN`` + ``pg_terminate_backend``) at the moment that
matters, exactly as a database failover or a revoked credential would look to the provider.
SQLite: the store's file is a directory, so the database cannot be opened.

* before a dial, an outage is one clear :class:`CallStoreUnavailable` naming the store without
  its password, and nothing is sent;
* after AI Studio accepted a call, the ``placed`` write is retried through the outage with
  back-off, and when the store stays down the error says the call WAS placed, with its session
  id (number redacted), at error level; a later try never dials it again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    CallPlacedNotRecorded,
    CallStoreUnavailable,
)
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import MAKE_CALL_PATH, Emulator
from tests.store_fixtures import postgres_schema_url, require_postgres

KEY = "store-outage-key-5d4c3b2a"
AGENT = "agent-1"
NUMBER = "447700900417"


class _Role:
    """A PostgreSQL login role for one test's store, whose login can be taken away."""

    def __init__(self, admin: sa.engine.Engine, schema_url: str) -> None:
        self.admin = admin
        self.name = f"vs_outage_{uuid.uuid4().hex[:12]}"
        self.password = f"pw-{uuid.uuid4().hex}"
        with admin.begin() as conn:
            # SUPERUSER: the role creates the store's tables in the test's schema; NOLOGIN still
            # keeps a superuser out.
            conn.execute(sa.text(f"CREATE ROLE {self.name} LOGIN SUPERUSER PASSWORD '{self.password}'"))
        self.url = (
            sa.engine.make_url(schema_url)
            .set(username=self.name, password=self.password)
            .render_as_string(hide_password=False)
        )

    def cut(self) -> None:
        """No new sessions, and the open ones are ended: the store is unreachable."""
        with self.admin.begin() as conn:
            conn.execute(sa.text(f"ALTER ROLE {self.name} NOLOGIN"))
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :name"),
                {"name": self.name},
            )

    def restore(self) -> None:
        with self.admin.begin() as conn:
            conn.execute(sa.text(f"ALTER ROLE {self.name} LOGIN"))

    def drop(self) -> None:
        self.cut()
        with self.admin.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {self.name} CASCADE"))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {self.name}"))


@pytest.fixture
def pg_role() -> Iterator[_Role]:
    base = require_postgres()
    admin = sa.create_engine(base, poolclass=sa.pool.NullPool)
    with postgres_schema_url(base) as schema_url:
        role = _Role(admin, schema_url)
        try:
            yield role
        finally:
            CallStore._clear_default_cache(role.url)
            role.drop()
    admin.dispose()


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=1) as running:
        monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", running.connection_json())
        yield running


def _made(emulator: Emulator) -> list[object]:
    return [r for r in emulator.requests if r.path == MAKE_CALL_PATH]


def _cut_while_the_request_is_held(
    emulator: Emulator, role: _Role, *, back_after: float | None
) -> threading.Thread:
    """Cut the store once the emulator holds the request (the call is placed, the answer not yet
    sent); restore it ``back_after`` seconds later (``None``: never)."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while not _made(emulator) and time.monotonic() < deadline:
            time.sleep(0.005)
        role.cut()
        if back_after is not None:
            time.sleep(back_after)
            role.restore()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_store_outage_while_the_call_is_placed_is_ridden_out(pg_role: _Role, emulator: Emulator) -> None:
    store = CallStore(pg_role.url)
    try:
        store.get_call("warm-up")  # the schema exists; the pool holds a live session
        # The emulator places the call, then holds the answer 1 s: the store goes down meanwhile
        # and comes back 1.5 s later, while the hook retries the "placed" write.
        emulator.inject("timeout", to=NUMBER, delay=1.0)
        cutter = _cut_while_the_request_is_held(emulator, pg_role, back_after=1.5)
        hook = VonageStudioHook(store=store, store_retry_seconds=30)
        result = hook.make_call(NUMBER, AGENT, call_ref="vs-outage-1")
        cutter.join(10)
        (call,) = emulator.calls
        assert result.session_id == call.session_id
        record = store.get_call("vs-outage-1")
        assert record is not None and record.state.value == "placed" and record.session_id == call.session_id
        assert len(_made(emulator)) == 1
    finally:
        store.dispose()


def test_a_store_that_stays_down_after_the_call_was_placed_says_so(
    pg_role: _Role, emulator: Emulator, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    store = CallStore(pg_role.url)
    try:
        store.get_call("warm-up")
        emulator.inject("timeout", to=NUMBER, delay=0.5)
        cutter = _cut_while_the_request_is_held(emulator, pg_role, back_after=None)
        hook = VonageStudioHook(store=store, store_retry_seconds=1.0)
        with caplog.at_level(logging.WARNING), pytest.raises(CallPlacedNotRecorded) as info:
            hook.make_call(NUMBER, AGENT, call_ref="vs-outage-2")
        cutter.join(10)
        (call,) = emulator.calls
        error = info.value
        assert error.session_id == call.session_id
        assert "WAS PLACED" in error.message and call.session_id in error.message
        assert NUMBER not in error.message and "0417" in error.message  # redacted, still recognisable
        assert pg_role.password not in error.message
        assert not error.retryable
        # Logged at error level (through the standard logging records, or Airflow's structured
        # task log on stdout, depending on how Airflow set logging up), number redacted.
        captured = capsys.readouterr()
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        lines += [line for line in (captured.out + captured.err).splitlines() if "[error" in line]
        placed_lines = [line for line in lines if "WAS PLACED" in line and call.session_id in line]
        assert placed_lines and all(NUMBER not in line for line in placed_lines)
        # Retried through the outage before giving up (with back-off, not once).
        retries = [r.getMessage() for r in caplog.records] + (captured.out + captured.err).splitlines()
        assert sum("failed a write after dialing" in line for line in retries) >= 2

        # The store is back: a later try of the task finds the call in flight and never redials it.
        pg_role.restore()
        with pytest.raises(CallOutcomeUnknown):
            VonageStudioHook(store=store).make_call(NUMBER, AGENT, call_ref="vs-outage-2")
        assert len(_made(emulator)) == 1
        assert store.get_call("vs-outage-2").state.value == "unknown"  # type: ignore[union-attr]
    finally:
        store.dispose()


def test_a_postgres_store_down_before_the_dial_is_one_clear_error(pg_role: _Role, emulator: Emulator) -> None:
    pg_role.cut()
    store = CallStore(pg_role.url)
    try:
        with pytest.raises(CallStoreUnavailable) as info:
            VonageStudioHook(store=store).make_call(NUMBER, AGENT, call_ref="vs-outage-3")
        message = info.value.message
        assert "call store postgresql+psycopg://" in message and pg_role.name in message
        assert pg_role.password not in message and "***" in message
        assert "before dialing call vs-outage-3" in message
        assert info.value.retryable
        assert _made(emulator) == []  # nothing was sent
    finally:
        store.dispose()


def test_a_sqlite_store_that_cannot_be_opened_is_one_clear_error(tmp_path: Path, emulator: Emulator) -> None:
    unusable = tmp_path / "store-is-a-directory.db"
    unusable.mkdir()
    store = CallStore(f"sqlite:///{unusable}")
    try:
        with pytest.raises(
            CallStoreUnavailable, match=r"call store sqlite:///.*store-is-a-directory\.db is "
        ):
            VonageStudioHook(store=store).make_call(NUMBER, AGENT, call_ref="vs-outage-4")
        assert _made(emulator) == []
    finally:
        store.dispose()
