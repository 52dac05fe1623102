"""Schema version 2 of the call store: the waiting task's verdict (``outcome``/``outcome_at``).

A store created by the version-1 code is upgraded in place on first use, on SQLite and on
PostgreSQL; ``record_outcome`` keeps the first verdict; ``record_verdict`` never fails a task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio.exceptions import UnknownCall, VonageStudioConfigError
from airflow_provider_vonage_studio.outcome import record_verdict, record_verdicts
from airflow_provider_vonage_studio.store import (
    SCHEMA_VERSION,
    CallStore,
    StoreSchemaTooNew,
    calls_table,
    metadata,
)

AGENT = "60c09d70e6a68858f4220848"
NUMBER = "447700900123"
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)


def _v1_metadata() -> sa.MetaData:
    """The tables exactly as the version-1 code created them (``vonage_studio_calls`` without
    ``outcome``/``outcome_at``, the pacing slots without the version-3 columns; the other
    tables did not change)."""
    v1 = sa.MetaData()
    for table in metadata.sorted_tables:
        if table.name not in (calls_table.name, "vonage_studio_pacing_slots"):
            table.to_metadata(v1)
    sa.Table(
        "vonage_studio_pacing_slots",
        v1,
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("next_at", sa.Float, nullable=False),
    )
    sa.Table(
        "vonage_studio_calls",
        v1,
        sa.Column("call_ref", sa.String(64), primary_key=True),
        sa.Column("dag_id", sa.String(250)),
        sa.Column("run_id", sa.String(250)),
        sa.Column("task_id", sa.String(250)),
        sa.Column("map_index", sa.Integer, nullable=False, default=-1),
        sa.Column("recipient_key", sa.Text),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("session_id", sa.String(255)),
        sa.Column("session_start_time", sa.DateTime(timezone=True)),
        sa.Column("error_status", sa.Integer),
        sa.Column("error_message", sa.Text),
        sa.Column("status", sa.String(64)),
        sa.Column("status_at", sa.DateTime(timezone=True)),
        sa.Column("conversation_uuid", sa.String(255)),
        sa.Column("callback_payload", sa.Text),
        sa.Column("parameters", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_vonage_studio_calls_dag_run", "dag_id", "run_id"),
        sa.Index("ix_vonage_studio_calls_state", "state"),
        sa.Index("ix_vonage_studio_calls_created_at", "created_at"),
    )
    return v1


@pytest.fixture
def raw_engine(store_url: str) -> Iterator[sa.engine.Engine]:
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def v1_store_url(store_url: str, raw_engine: sa.engine.Engine) -> str:
    """``store_url`` holding a version-1 store with one placed call (``vs-old``)."""
    v1 = _v1_metadata()
    with raw_engine.begin() as conn:
        v1.create_all(conn)
        conn.execute(
            v1.tables["vonage_studio_calls"]
            .insert()
            .values(
                call_ref="vs-old",
                dag_id="dag",
                run_id="run",
                task_id="task",
                map_index=-1,
                agent_id=AGENT,
                destination=NUMBER,
                state="placed",
                session_id="5a61cc84-4c89-4ef9-a983-5349c7112fdb",
                session_start_time=T0,
                status="busy",
                status_at=T0,
                created_at=T0,
                updated_at=T0,
            )
        )
        conn.execute(v1.tables["vonage_studio_schema_version"].insert().values(id=1, version=1))
    return store_url


def _columns(engine: sa.engine.Engine) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns("vonage_studio_calls")}


def _version(engine: sa.engine.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT version FROM vonage_studio_schema_version")).scalar_one())


def _begin(store: CallStore, ref: str) -> None:
    created, _ = store.begin_call(ref, agent_id=AGENT, destination=NUMBER)
    assert created


# ----------------------------------------------------------------------------- migration


def test_v1_store_is_upgraded_in_place(v1_store_url: str, raw_engine: sa.engine.Engine) -> None:
    assert "outcome" not in _columns(raw_engine)
    store = CallStore(v1_store_url)
    try:
        old = store.get_call("vs-old")
        assert old is not None
        assert (old.state, old.status, old.session_start_time) == ("placed", "busy", T0)
        assert old.outcome is None and old.outcome_at is None
        assert {"outcome", "outcome_at", "outcome_source", "ended_at"} <= _columns(raw_engine)
        assert _version(raw_engine) == SCHEMA_VERSION
        # The upgraded store works for old and new rows alike.
        store.record_outcome("vs-old", "busy")
        _begin(store, "vs-new")
        store.record_outcome("vs-new", "answered")
        assert store.get_call("vs-new").outcome == "answered"  # type: ignore[union-attr]
        upgraded = store.get_call("vs-old")
        assert upgraded is not None and upgraded.outcome == "busy"
        assert upgraded.outcome_at is not None and upgraded.outcome_at.tzinfo is not None
    finally:
        store.dispose()
    # Opening again is a no-op: nothing to migrate, the row keeps its verdict.
    again = CallStore(v1_store_url)
    try:
        assert again.get_call("vs-old").outcome == "busy"  # type: ignore[union-attr]
    finally:
        again.dispose()
    assert _version(raw_engine) == SCHEMA_VERSION
    with raw_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM vonage_studio_schema_version")).scalar() == 1


def test_migration_is_safe_when_many_processes_open_the_store_at_once(v1_store_url: str) -> None:
    """Separate stores (engines, connections) racing to upgrade: one migrates, the others wait and
    find the current version (advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite)."""
    count = 4
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []
    stores = [CallStore(v1_store_url) for _ in range(count)]

    def open_one(store: CallStore) -> None:
        try:
            barrier.wait(timeout=30)
            assert store.get_call("vs-old") is not None
            store.record_outcome("vs-old", "busy")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in stores:
        store.dispose()
    assert not errors, errors


def test_migration_tolerates_a_column_already_there(v1_store_url: str, raw_engine: sa.engine.Engine) -> None:
    with raw_engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE vonage_studio_calls ADD COLUMN outcome VARCHAR(64)"))
    store = CallStore(v1_store_url)
    try:
        assert store.get_call("vs-old").outcome is None  # type: ignore[union-attr]
    finally:
        store.dispose()
    assert {"outcome", "outcome_at"} <= _columns(raw_engine)
    assert _version(raw_engine) == SCHEMA_VERSION


def test_new_store_is_created_at_the_current_version(store: CallStore, raw_engine: sa.engine.Engine) -> None:
    store.get_call("x")
    assert {"outcome", "outcome_at"} <= _columns(raw_engine)
    assert _version(raw_engine) == SCHEMA_VERSION


def test_store_newer_than_the_code_is_still_refused(v1_store_url: str, raw_engine: sa.engine.Engine) -> None:
    with raw_engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE vonage_studio_schema_version SET version = {SCHEMA_VERSION + 1}"))
    store = CallStore(v1_store_url)
    try:
        with pytest.raises(
            StoreSchemaTooNew, match=rf"schema version {SCHEMA_VERSION + 1}, newer .*\({SCHEMA_VERSION}\)"
        ):
            store.get_call("vs-old")
    finally:
        store.dispose()
    assert "outcome" not in _columns(raw_engine)  # nothing was touched


# ----------------------------------------------------------------------------- record_outcome


def test_record_outcome_first_verdict_wins(store: CallStore) -> None:
    _begin(store, "vs-1")
    assert store.get_call("vs-1").outcome is None  # type: ignore[union-attr]
    store.record_outcome("vs-1", "answered")
    first = store.get_call("vs-1")
    assert first is not None and first.outcome == "answered" and first.outcome_at is not None
    store.record_outcome("vs-1", "timeout")  # a later verdict is ignored
    second = store.get_call("vs-1")
    assert second == first
    # The verdict is not a ledger change: updated_at (compare-and-set key) is untouched.
    assert first.updated_at == first.created_at


def test_record_outcome_errors(store: CallStore) -> None:
    with pytest.raises(UnknownCall, match="vs-missing"):
        store.record_outcome("vs-missing", "busy")
    _begin(store, "vs-1")
    with pytest.raises(VonageStudioConfigError, match="outcome"):
        store.record_outcome("vs-1", "picked up")
    assert store.get_call("vs-1").outcome is None  # type: ignore[union-attr]


def test_record_outcomes_in_one_go(store: CallStore) -> None:
    for ref in ("vs-1", "vs-2", "vs-3"):
        _begin(store, ref)
    store.record_outcome("vs-3", "failed")
    written = store.record_outcomes({"vs-1": "answered", "vs-2": "busy", "vs-3": "answered", "vs-x": "busy"})
    assert written == 2
    got = store.get_calls(["vs-1", "vs-2", "vs-3"])
    assert {ref: r.outcome for ref, r in got.items()} == {
        "vs-1": "answered",
        "vs-2": "busy",
        "vs-3": "failed",
    }
    with pytest.raises(VonageStudioConfigError):
        store.record_outcomes({"vs-1": "nope"})
    assert store.record_outcomes({}) == 0


def test_record_verdict_never_raises(store: CallStore, caplog: pytest.LogCaptureFixture) -> None:
    _begin(store, "vs-1")
    record_verdict(store, "vs-1", None)  # not decided: ignored
    record_verdict(store, "vs-1", "dialing")  # not a final status: ignored
    assert store.get_call("vs-1").outcome is None  # type: ignore[union-attr]
    record_verdict(store, "vs-1", "answered")
    assert store.get_call("vs-1").outcome == "answered"  # type: ignore[union-attr]

    class Broken:
        def record_outcome(self, *args: Any) -> None:
            raise RuntimeError(f"boom while writing {NUMBER}")

        record_outcomes = record_outcome

    with caplog.at_level(logging.WARNING):
        record_verdict(Broken(), "vs-1", "busy")  # type: ignore[arg-type]
        record_verdict(store, "vs-missing", "busy")  # UnknownCall: logged, not raised
        record_verdicts(lambda: Broken(), {"vs-1": "busy", "vs-2": "answered"})  # type: ignore[arg-type, return-value]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert all("verdict" in w for w in warnings)
    assert not any(NUMBER in w for w in warnings)  # the error text (which could quote a row) is not logged
