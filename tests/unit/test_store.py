"""CallStore: ledger, statuses, pacing slots, do-not-call list; on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio import store as store_module
from airflow_provider_vonage_studio.exceptions import UnknownCall, VonageStudioConfigError
from airflow_provider_vonage_studio.store import (
    FAILURE_STATUSES,
    SCHEMA_VERSION,
    CallState,
    CallStateConflict,
    CallStore,
    RecordOutcome,
    StatusUpdate,
    StoreSchemaTooNew,
    calls_table,
    configured_store_url,
)
from airflow_provider_vonage_studio.store import pacing as store_pacing
from airflow_provider_vonage_studio.store import schema as store_schema

# The store_url / store fixtures come from tests.store_fixtures (loaded by the tests' conftest).
from tests.store_fixtures import reserve_slots_in_processes

T = TypeVar("T")
UTC = timezone.utc
AGENT = "60c09d70e6a68858f4220848"
NUMBER = "447700900123"


@pytest.fixture
def raw_engine(store_url: str) -> Iterator[sa.engine.Engine]:
    """A plain engine on the same database, to look behind the store's back."""
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def _begin(store: CallStore, ref: str = "vs-1", **kwargs: Any) -> None:
    created, _ = store.begin_call(ref, agent_id=AGENT, destination=NUMBER, **kwargs)
    assert created


def _race(count: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(i)`` in ``count`` threads released together; return results in thread order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


# ----------------------------------------------------------------------------- schema


def test_opening_twice_is_idempotent(store_url: str, raw_engine: sa.engine.Engine) -> None:
    first = CallStore(store_url)
    second = CallStore(store_url)
    try:
        _begin(first)
        assert second.get_call("vs-1") is not None  # second open found, and kept, the tables
        third = CallStore(store_url)
        assert third.get_call("vs-1") is not None
        third.dispose()
    finally:
        first.dispose()
        second.dispose()
    with raw_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM vonage_studio_schema_version")).scalar() == 1


def test_tables_and_version_row(store: CallStore, raw_engine: sa.engine.Engine) -> None:
    assert store.get_call("nothing") is None  # first use creates the schema
    names = set(sa.inspect(raw_engine).get_table_names())
    assert {
        "vonage_studio_calls",
        "vonage_studio_call_status_events",
        "vonage_studio_pacing_slots",
        "vonage_studio_do_not_call",
        "vonage_studio_schema_version",
    } <= names
    with raw_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT version FROM vonage_studio_schema_version")).all()
    assert [tuple(row) for row in rows] == [(SCHEMA_VERSION,)]


def test_newer_schema_is_refused(
    store: CallStore,
    store_url: str,
    raw_engine: sa.engine.Engine,
) -> None:
    store.get_call("x")
    with raw_engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE vonage_studio_schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1}
        )
    newer = CallStore(store_url)
    try:
        with pytest.raises(
            StoreSchemaTooNew, match=rf"schema version {SCHEMA_VERSION + 1}, newer .*\({SCHEMA_VERSION}\)"
        ):
            newer.get_call("x")
    finally:
        newer.dispose()


def test_older_schema_is_migrated_once(
    store: CallStore,
    store_url: str,
    raw_engine: sa.engine.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.get_call("x")  # the store exists at the current version
    applied: list[int] = []
    later = SCHEMA_VERSION + 1

    def add_note_column(conn: sa.engine.Connection) -> None:
        applied.append(later)
        conn.execute(sa.text("ALTER TABLE vonage_studio_do_not_call ADD COLUMN note TEXT"))

    # The schema room reads both at call time (the package's names are re-exported copies).
    monkeypatch.setattr(store_schema, "SCHEMA_VERSION", later)
    monkeypatch.setattr(store_schema, "_MIGRATIONS", {**store_schema._MIGRATIONS, later: add_note_column})
    for _ in range(2):
        upgraded = CallStore(store_url)
        upgraded.get_call("x")
        upgraded.dispose()
    assert applied == [later]
    with raw_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM vonage_studio_schema_version")).scalar() == later
    assert "note" in {c["name"] for c in sa.inspect(raw_engine).get_columns("vonage_studio_do_not_call")}


def test_sqlite_file_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 'vs.db'}"
    sqlite_store = CallStore(url)
    try:
        sqlite_store.get_call("x")  # the missing directories were created
        with sqlite_store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        sqlite_store.dispose()


def test_in_memory_sqlite_is_shared_between_threads() -> None:
    memory = CallStore("sqlite://")
    try:
        _race(4, lambda i: memory.begin_call(f"vs-{i}", agent_id=AGENT, destination=NUMBER))
        assert len(memory.get_calls([f"vs-{i}" for i in range(4)])) == 4
    finally:
        memory.dispose()


# ----------------------------------------------------------------------------- ledger


def test_begin_call_creates_then_finds(store: CallStore) -> None:
    created, record = store.begin_call(
        "vs-1",
        agent_id=AGENT,
        destination=NUMBER,
        dag_id="dag",
        run_id="run",
        task_id="task",
        map_index=3,
        recipient_key="alice",
    )
    assert created
    assert record.state is CallState.QUEUED
    assert (record.dag_id, record.run_id, record.task_id, record.map_index) == ("dag", "run", "task", 3)
    assert record.recipient_key == "alice"
    assert record.session_id is None and record.status is None
    assert record.created_at == record.updated_at

    again, existing = store.begin_call("vs-1", agent_id="other", destination="15555550100")
    assert not again
    assert existing == record  # the earlier row, untouched
    assert store.get_call("vs-1") == record


def test_begin_call_validates(store: CallStore) -> None:
    with pytest.raises(VonageStudioConfigError, match="call_ref"):
        store.begin_call("", agent_id=AGENT, destination=NUMBER)
    with pytest.raises(VonageStudioConfigError, match="call_ref"):
        store.begin_call("x" * 65, agent_id=AGENT, destination=NUMBER)
    with pytest.raises(VonageStudioConfigError, match="agent_id"):
        store.begin_call("vs-1", agent_id="", destination=NUMBER)
    with pytest.raises(VonageStudioConfigError, match="destination"):
        store.begin_call("vs-1", agent_id=AGENT, destination="")


def test_state_transitions(store: CallStore) -> None:
    started = datetime(2020, 10, 14, 9, 42, 7, 151657, tzinfo=UTC)
    _begin(store, "vs-placed")
    store.mark_placed("vs-placed", "5a61cc84-4c89-4ef9-a983-5349c7112fdb", started)
    placed = store.get_call("vs-placed")
    assert placed is not None
    assert placed.state is CallState.PLACED
    assert placed.session_id == "5a61cc84-4c89-4ef9-a983-5349c7112fdb"
    assert placed.session_start_time == started
    assert placed.updated_at >= placed.created_at

    _begin(store, "vs-rejected")
    store.mark_rejected("vs-rejected", 400, "Bad destination number format")
    rejected = store.get_call("vs-rejected")
    assert rejected is not None
    assert (rejected.state, rejected.error_status, rejected.error_message) == (
        CallState.REJECTED,
        400,
        "Bad destination number format",
    )

    _begin(store, "vs-unknown")
    store.mark_unknown("vs-unknown", "read timeout")
    unknown = store.get_call("vs-unknown")
    assert unknown is not None
    assert (unknown.state, unknown.error_message) == (CallState.UNKNOWN, "read timeout")
    store.restart_call("vs-unknown")
    restarted = store.get_call("vs-unknown")
    assert restarted is not None
    assert (restarted.state, restarted.error_message) == (CallState.QUEUED, None)
    assert restarted.updated_at >= unknown.updated_at
    store.mark_sending("vs-unknown")
    store.restart_call("vs-unknown")  # a stale sending call may be restarted too
    store.mark_placed("vs-unknown", "s-2", started)
    assert store.get_call("vs-unknown").state is CallState.PLACED  # type: ignore[union-attr]

    for ref in ("vs-placed", "vs-rejected"):
        with pytest.raises(CallStateConflict, match=rf"{ref}.*cannot restart"):
            store.restart_call(ref)
    assert store.get_call("vs-placed") == placed  # refused restarts change nothing

    store.set_parameters("vs-placed", {"CALLER_NAME": "Diane Miller", "PROPERTY_VALUE": "500"})
    assert store.get_call("vs-placed").parameters == {  # type: ignore[union-attr]
        "CALLER_NAME": "Diane Miller",
        "PROPERTY_VALUE": "500",
    }

    for change in (
        lambda: store.restart_call("nope"),
        lambda: store.mark_placed("nope", "s", started),
        lambda: store.mark_rejected("nope", None, "m"),
        lambda: store.mark_unknown("nope", "m"),
        lambda: store.set_parameters("nope", {}),
    ):
        with pytest.raises(UnknownCall, match="nope"):
            change()
    assert store.get_call("nope") is None


def test_get_calls_for_many_refs_in_few_queries(
    store: CallStore,
    raw_engine: sa.engine.Engine,
) -> None:
    store.get_call("x")  # create the schema outside the counted part
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "call_ref": f"vs-{i:05d}",
            "agent_id": AGENT,
            "destination": NUMBER,
            "state": "queued",
            "map_index": i,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(1200)
    ]
    with raw_engine.begin() as conn:
        conn.execute(calls_table.insert(), rows)

    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    refs = [f"vs-{i:05d}" for i in range(1200)] + ["vs-missing", "vs-00001"]
    sa.event.listen(store._engine, "before_cursor_execute", count)
    try:
        found = store.get_calls(refs)
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", count)
    assert len(statements) <= 3, statements
    assert len(found) == 1200
    assert found["vs-00042"].map_index == 42
    assert found["vs-00042"].created_at == now
    assert store.get_calls([]) == {}


def test_recent_calls(store: CallStore) -> None:
    for i in range(5):
        _begin(store, f"vs-{i}")
    recent = store.recent_calls(limit=3)
    assert [r.call_ref for r in recent] == ["vs-4", "vs-3", "vs-2"]
    assert len(store.recent_calls()) == 5
    with pytest.raises(VonageStudioConfigError, match="limit"):
        store.recent_calls(-1)


def test_concurrent_begin_call_creates_once(store_url: str) -> None:
    stores = [CallStore(store_url) for _ in range(4)]  # separate pools: the database decides
    try:
        stores[0].get_call("x")
        results = _race(
            4, lambda i: stores[i].begin_call("vs-race", agent_id=AGENT, destination=f"4477009001{i:02d}")
        )
    finally:
        for s in stores:
            s.dispose()
    assert sorted(created for created, _ in results) == [False, False, False, True]
    winner = next(record for created, record in results if created)
    assert all(record == winner for _, record in results)


# --------------------------------------------------------------------------- statuses


def _status(store: CallStore, ref: str, status: str, uuid: str | None = "CON-1", **kw: Any) -> RecordOutcome:
    payload = {"agent_id": AGENT, "to": NUMBER, "conversation_uuid": uuid, "status": status}
    return store.record_status(
        ref, status=status, conversation_uuid=uuid, timestamp=kw.get("timestamp"), payload=payload
    )


def test_record_status_outcomes(store: CallStore) -> None:
    _begin(store)
    sent = datetime(2022, 5, 31, 6, 40, 45, 475000, tzinfo=UTC)

    assert _status(store, "vs-unknown", "busy") is RecordOutcome.UNKNOWN_CALL
    assert store.status_history("vs-unknown") == []
    assert store.get_call("vs-unknown") is None

    assert _status(store, "vs-1", "busy", timestamp=sent) is RecordOutcome.RECORDED
    call = store.get_call("vs-1")
    assert call is not None
    assert (call.status, call.status_at, call.conversation_uuid) == ("busy", sent, "CON-1")
    assert call.callback_payload == {
        "agent_id": AGENT,
        "to": NUMBER,
        "conversation_uuid": "CON-1",
        "status": "busy",
    }
    assert call.state is CallState.QUEUED  # statuses do not touch the ledger state

    assert _status(store, "vs-1", "busy", timestamp=sent) is RecordOutcome.DUPLICATE
    assert _status(store, "vs-1", "timeout") is RecordOutcome.HISTORY
    assert _status(store, "vs-1", "timeout") is RecordOutcome.DUPLICATE
    assert _status(store, "vs-1", "busy", uuid="CON-2") is RecordOutcome.HISTORY  # another conversation
    assert store.get_call("vs-1").status == "busy"  # type: ignore[union-attr]  # first one wins
    assert [h["status"] for h in store.status_history("vs-1")] == ["busy", "timeout", "busy"]


def test_record_status_without_conversation_uuid(store: CallStore) -> None:
    _begin(store)
    before = datetime.now(UTC)
    assert _status(store, "vs-1", "failed", uuid=None) is RecordOutcome.RECORDED
    # None is stored as "" so the unique constraint still sees the repeat.
    assert _status(store, "vs-1", "failed", uuid=None) is RecordOutcome.DUPLICATE
    assert _status(store, "vs-1", "failed", uuid="") is RecordOutcome.DUPLICATE
    call = store.get_call("vs-1")
    assert call is not None
    assert call.conversation_uuid is None
    assert call.status_at is not None and call.status_at >= before  # no timestamp: time received
    (event,) = store.status_history("vs-1")
    assert event["conversation_uuid"] is None and event["timestamp"] is None
    assert event["received_at"].tzinfo is not None


def test_status_history_order_and_content(store: CallStore) -> None:
    _begin(store)
    statuses = ["timeout", "busy", "failed", "cancelled", "rejected"]
    stamps = [datetime(2024, 1, 1, 12, 0, i, tzinfo=UTC) for i in range(5)]
    for status, stamp in zip(statuses, stamps, strict=True):
        _status(store, "vs-1", status, timestamp=stamp)
    history = store.status_history("vs-1")
    assert [h["status"] for h in history] == statuses
    assert [h["timestamp"] for h in history] == stamps
    assert history[2]["payload"]["status"] == "failed"
    assert all(h["received_at"].utcoffset() == timedelta(0) for h in history)
    assert set(statuses) == set(FAILURE_STATUSES)
    assert store.get_call("vs-1").status == "timeout"  # type: ignore[union-attr]


def test_record_status_validates(store: CallStore) -> None:
    _begin(store)
    with pytest.raises(VonageStudioConfigError, match="status"):
        _status(store, "vs-1", "")
    with pytest.raises(VonageStudioConfigError, match="conversation_uuid"):
        _status(store, "vs-1", "busy", uuid="C" * 256)


def test_concurrent_duplicates_record_once(store_url: str) -> None:
    stores = [CallStore(store_url) for _ in range(4)]
    try:
        _begin(stores[0])
        outcomes = _race(4, lambda i: _status(stores[i], "vs-1", "busy"))
        assert sorted(outcomes) == sorted([RecordOutcome.RECORDED] + [RecordOutcome.DUPLICATE] * 3)
        assert len(stores[0].status_history("vs-1")) == 1
    finally:
        for s in stores:
            s.dispose()


def test_concurrent_different_statuses_first_wins(store_url: str) -> None:
    stores = [CallStore(store_url) for _ in range(5)]
    try:
        _begin(stores[0])
        outcomes = _race(5, lambda i: _status(stores[i], "vs-1", FAILURE_STATUSES[i]))
        assert outcomes.count(RecordOutcome.RECORDED) == 1
        assert outcomes.count(RecordOutcome.HISTORY) == 4
        winner = FAILURE_STATUSES[outcomes.index(RecordOutcome.RECORDED)]
        assert stores[0].get_call("vs-1").status == winner  # type: ignore[union-attr]
        assert len(stores[0].status_history("vs-1")) == 5
    finally:
        for s in stores:
            s.dispose()


# ----------------------------------------------------------------------------- pacing


def test_reserve_slot_sequence(store: CallStore) -> None:
    t = 1_700_000_000.0
    assert [store.reserve_slot("agent-a", 1.0, now=t) for _ in range(3)] == [t, t + 1, t + 2]
    assert store.reserve_slot("agent-a", 1.0, now=t + 1.5) == t + 3  # still queued
    assert store.reserve_slot("agent-b", 1.0, now=t) == t  # keys are independent
    assert store.reserve_slot("agent-a", 1.0, now=t + 100) == t + 100  # after idle: now
    assert store.reserve_slot("agent-a", 0.2, now=t + 100) == t + 101  # the old interval still applies
    assert store.reserve_slot("agent-a", 0.0, now=t + 100) == pytest.approx(t + 101.2, abs=1e-6)


def test_reserve_slot_uses_clock(store: CallStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_pacing.time, "time", lambda: 1234.5)
    assert store.reserve_slot("agent-a", 1.0) == 1234.5
    assert store.reserve_slot("agent-a", 1.0) == 1235.5


def test_reserve_slot_validates(store: CallStore) -> None:
    for interval in (-1.0, float("nan"), float("inf")):
        with pytest.raises(VonageStudioConfigError, match="interval_seconds"):
            store.reserve_slot("agent-a", interval)
    with pytest.raises(VonageStudioConfigError, match="key"):
        store.reserve_slot("", 1.0)


def test_reserve_slot_across_processes(store: CallStore, store_url: str) -> None:
    store.get_call("x")  # create the schema before the processes race
    t = 1_700_000_000.0
    # A fixed "now" makes the expected slots exact whatever the machine's speed; what is
    # under test is that no two reservations ever read the same next_at.
    slots = reserve_slots_in_processes(
        store_url, key=AGENT, processes=4, per_process=25, interval=0.01, now=t
    )
    assert len(slots) == 100
    assert len(set(slots)) == 100
    ordered = sorted(slots)
    assert ordered[0] == t
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    assert gaps == pytest.approx([0.01] * 99, abs=1e-6)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs os.fork")
def test_store_survives_fork(store: CallStore) -> None:
    _begin(store, "vs-parent")  # the parent now holds a pooled connection
    ctx = multiprocessing.get_context("fork")

    def child() -> None:
        store.begin_call("vs-child", agent_id=AGENT, destination=NUMBER)

    process = ctx.Process(target=child)
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    assert store.get_call("vs-child") is not None
    assert store.get_call("vs-parent") is not None


# ----------------------------------------------------------------------- do not call


def test_do_not_call_list(store: CallStore) -> None:
    assert store.dnc_list() == []
    before = datetime.now(UTC)
    store.dnc_add("447700900123", "asked on 2024-05-01")
    store.dnc_add("15555550100")
    store.dnc_add("sip:alice@example.com", "test line")
    (first_number, first_reason, first_added) = store.dnc_list()[1]
    assert (first_number, first_reason) == ("447700900123", "asked on 2024-05-01")
    assert first_added >= before and first_added.utcoffset() == timedelta(0)

    store.dnc_add("447700900123")  # re-adding keeps reason and date
    store.dnc_add("15555550100", "complaint")  # ...and a new reason replaces the old
    assert store.dnc_list() == [
        ("15555550100", "complaint", store.dnc_list()[0][2]),
        ("447700900123", "asked on 2024-05-01", first_added),
        ("sip:alice@example.com", "test line", store.dnc_list()[2][2]),
    ]

    many = [f"4477009{i:05d}" for i in range(1200)] + ["447700900123", "sip:alice@example.com"]
    assert store.dnc_filter(many) == {"447700900123", "sip:alice@example.com"}
    assert store.dnc_filter(iter(["15555550100", "999"])) == {"15555550100"}
    assert store.dnc_filter([]) == set()

    assert store.dnc_remove("15555550100") is True
    assert store.dnc_remove("15555550100") is False
    assert [n for n, _, _ in store.dnc_list()] == ["447700900123", "sip:alice@example.com"]
    with pytest.raises(VonageStudioConfigError, match="number"):
        store.dnc_add("")


# ------------------------------------------------------------------------ datetimes


def test_datetimes_come_back_aware_utc(store: CallStore) -> None:
    _begin(store)
    paris_summer = timezone(timedelta(hours=2))
    store.mark_placed("vs-1", "s-1", datetime(2024, 6, 1, 14, 0, tzinfo=paris_summer))
    call = store.get_call("vs-1")
    assert call is not None
    assert call.session_start_time == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    for value in (call.session_start_time, call.created_at, call.updated_at):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)

    # The API's session_start_time is naive and means UTC.
    store.mark_placed("vs-1", "s-1", datetime(2020, 10, 14, 9, 42, 7, 151657))
    again = store.get_call("vs-1")
    assert again is not None
    assert again.session_start_time == datetime(2020, 10, 14, 9, 42, 7, 151657, tzinfo=UTC)
    assert again.session_start_time.utcoffset() == timedelta(0)


# ---------------------------------------------------------------------- configuration


def test_configured_store_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", "postgresql+psycopg://u@db:5432/airflow")
    assert configured_store_url() == "postgresql+psycopg://u@db:5432/airflow"
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", "sqlite:////srv/calls.db")
    assert configured_store_url() == "sqlite:////srv/calls.db"  # read at call time


def test_configured_store_url_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__AIRFLOW_HOME", str(tmp_path / "conf-home"))
    assert configured_store_url() == f"sqlite:///{tmp_path / 'conf-home' / 'vonage_studio.db'}"

    monkeypatch.delenv("AIRFLOW__CORE__AIRFLOW_HOME")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "env-home"))
    from airflow_provider_vonage_studio._compat import conf

    home = conf.get("core", "airflow_home", fallback=None) or str(tmp_path / "env-home")
    assert configured_store_url() == f"sqlite:///{Path(home) / 'vonage_studio.db'}"


def test_default_store_is_one_per_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first_url = f"sqlite:///{tmp_path / 'a.db'}"
    second_url = f"sqlite:///{tmp_path / 'b.db'}"
    try:
        monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", first_url)
        stores = _race(8, lambda i: CallStore.default())
        assert all(s is stores[0] for s in stores)
        assert stores[0].url == first_url
        monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", second_url)
        assert CallStore.default() is not stores[0]
        assert CallStore.default().url == second_url
        monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", first_url)
        assert CallStore.default() is stores[0]
    finally:
        CallStore._clear_default_cache(first_url)
        CallStore._clear_default_cache(second_url)


def test_constructor_without_url_uses_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", url)
    configured = CallStore()
    try:
        assert configured.url == url
        assert "c.db" in repr(configured)
    finally:
        configured.dispose()


def test_repr_hides_password() -> None:
    hidden = CallStore("postgresql+psycopg://user:s3cret@db.invalid:5432/airflow")
    assert "s3cret" not in repr(hidden)
    hidden.dispose()


def test_restart_with_expected_is_compare_and_set(store):
    store.begin_call("vs-cas", agent_id="agent-1", destination="447700900123")
    store.mark_rejected("vs-cas", 429, "Too Many Requests")
    seen = store.get_call("vs-cas")
    assert seen is not None
    store.restart_call("vs-cas", expected=seen)  # a rejected row may be restarted on purpose
    assert store.get_call("vs-cas").state is CallState.QUEUED  # type: ignore[union-attr]
    with pytest.raises(CallStateConflict):
        store.restart_call("vs-cas", expected=seen)  # a second redial based on the same view loses


# ------------------------------------------------------------------ statuses in batches


def _update(ref: str, status: str, uuid: str | None = "CON-1", **kw: Any) -> StatusUpdate:
    payload = {"agent_id": AGENT, "to": kw.get("to", NUMBER), "conversation_uuid": uuid, "status": status}
    return StatusUpdate(ref, status, uuid, kw.get("timestamp"), payload, to=kw.get("to"))


def test_record_statuses_mixed_outcomes_in_order(store: CallStore, raw_engine: sa.engine.Engine) -> None:
    for ref in ("vs-1", "vs-2", "vs-3"):
        _begin(store, ref)
    assert _status(store, "vs-2", "busy") is RecordOutcome.RECORDED  # before the batch
    sent = datetime(2024, 5, 31, 6, 40, 45, tzinfo=UTC)
    other = "447700900999"
    batch = [
        _update("vs-unknown", "busy"),
        _update("vs-1", "busy", timestamp=sent, to=NUMBER),
        _update("vs-1", "busy", timestamp=sent),  # repeat within the batch
        _update("vs-1", "timeout"),
        _update("vs-2", "busy"),  # stored before the batch
        _update("vs-2", "failed", uuid=None),
        _update("vs-1", "failed", to=other),  # another destination: refused, nothing written
        _update("vs-3", "timeout", to=other),
        _update("vs-3", "rejected", to=NUMBER),
    ]
    statements: list[str] = []
    commits: list[bool] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def committed(conn: Any) -> None:
        commits.append(True)

    sa.event.listen(store._engine, "before_cursor_execute", count)
    sa.event.listen(store._engine, "commit", committed)
    try:
        outcomes = store.record_statuses(batch)
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", count)
        sa.event.remove(store._engine, "commit", committed)
    assert outcomes == [
        RecordOutcome.UNKNOWN_CALL,
        RecordOutcome.RECORDED,
        RecordOutcome.DUPLICATE,
        RecordOutcome.HISTORY,
        RecordOutcome.DUPLICATE,
        RecordOutcome.HISTORY,
        RecordOutcome.MISMATCH,
        RecordOutcome.MISMATCH,
        RecordOutcome.RECORDED,
    ]
    # One transaction: one query for the calls, one reading the history of the calls that already
    # have a status (vs-2: the history cap, and its stored "busy", a duplicate not even sent), one
    # executemany inserting the four new history rows, one executemany setting two first statuses.
    assert len(commits) == 1
    assert sum(s.lstrip().upper().startswith("SELECT") for s in statements) == 2, statements
    assert sum(s.lstrip().upper().startswith("INSERT") for s in statements) == 1, statements
    assert sum(s.lstrip().upper().startswith("UPDATE") for s in statements) == 1, statements

    one, two, three = (store.get_call(ref) for ref in ("vs-1", "vs-2", "vs-3"))
    assert one is not None and two is not None and three is not None
    assert (one.status, one.status_at, one.conversation_uuid) == ("busy", sent, "CON-1")
    assert two.status == "busy"  # the first status stays
    assert three.status == "rejected" and three.callback_payload["to"] == NUMBER  # type: ignore[index]
    assert [(h["status"], h["conversation_uuid"]) for h in store.status_history("vs-1")] == [
        ("busy", "CON-1"),
        ("timeout", "CON-1"),
    ]
    assert [(h["status"], h["conversation_uuid"]) for h in store.status_history("vs-2")] == [
        ("busy", "CON-1"),
        ("failed", None),
    ]
    assert [h["status"] for h in store.status_history("vs-3")] == ["rejected"]
    assert store.status_history("vs-unknown") == [] and store.get_call("vs-unknown") is None
    with raw_engine.connect() as conn:
        events = conn.execute(sa.select(sa.func.count()).select_from(store_module.status_events_table))
        assert events.scalar_one() == 5  # the rows listed above, nothing else
    assert store.record_statuses([]) == []


def test_record_statuses_destination_matcher(store: CallStore) -> None:
    _begin(store)
    seen: list[tuple[str, str]] = []

    def digits_match(to: str, destination: str) -> bool:
        seen.append((to, destination))
        return "".join(ch for ch in to if ch.isdigit()) == destination

    batch = [_update("vs-1", "busy", to="+44 7700 900123"), _update("vs-1", "timeout", to="+1 212 555 0100")]
    outcomes = store.record_statuses(batch, destination_matches=digits_match)
    assert outcomes == [RecordOutcome.RECORDED, RecordOutcome.MISMATCH]
    assert seen == [("+44 7700 900123", NUMBER), ("+1 212 555 0100", NUMBER)]
    # Without "to" nothing is compared (what record_status does).
    assert store.record_statuses([_update("vs-1", "failed")], destination_matches=digits_match) == [
        RecordOutcome.HISTORY
    ]
    assert len(seen) == 2


def test_record_statuses_validates_before_writing(store: CallStore) -> None:
    _begin(store)
    with pytest.raises(VonageStudioConfigError, match="status of call_ref 'vs-1'"):
        store.record_statuses([_update("vs-1", "busy"), _update("vs-1", "")])
    with pytest.raises(VonageStudioConfigError, match="conversation_uuid"):
        store.record_statuses([_update("vs-1", "busy"), _update("vs-1", "timeout", uuid="C" * 256)])
    assert store.status_history("vs-1") == [] and store.get_call("vs-1").status is None  # type: ignore[union-attr]


def test_record_statuses_within_one_batch_behave_like_one_after_another(store: CallStore) -> None:
    sequence = [
        ("timeout", "CON-1"),
        ("timeout", "CON-1"),
        ("busy", "CON-1"),
        ("timeout", "CON-2"),
        ("failed", None),
        ("failed", ""),
        ("busy", "CON-1"),
        ("timeout", "CON-2"),
    ]
    _begin(store, "vs-seq")
    _begin(store, "vs-batch")
    one_by_one = [_status(store, "vs-seq", status, uuid=uuid) for status, uuid in sequence]
    batched = store.record_statuses([_update("vs-batch", status, uuid) for status, uuid in sequence])
    assert batched == one_by_one
    assert one_by_one == [
        RecordOutcome.RECORDED,
        RecordOutcome.DUPLICATE,
        RecordOutcome.HISTORY,
        RecordOutcome.HISTORY,
        RecordOutcome.HISTORY,
        RecordOutcome.DUPLICATE,
        RecordOutcome.DUPLICATE,
        RecordOutcome.DUPLICATE,
    ]

    def history(ref: str) -> list[tuple[str, str | None]]:
        return [(h["status"], h["conversation_uuid"]) for h in store.status_history(ref)]

    assert history("vs-batch") == history("vs-seq")
    assert history("vs-seq") == [
        ("timeout", "CON-1"),
        ("busy", "CON-1"),
        ("timeout", "CON-2"),
        ("failed", None),
    ]
    assert store.get_call("vs-batch").status == "timeout"  # type: ignore[union-attr]


def test_concurrent_batches_record_each_call_once(store_url: str) -> None:
    refs = [f"vs-{i:02d}" for i in range(24)]
    # Two threads send the same status (one of the two is a duplicate), two others send other
    # statuses; each thread walks the calls in its own order, in batches of 6, so batches of
    # different threads overlap in opposite orders.
    statuses = ["busy", "busy", "timeout", "failed"]
    orders = [refs, refs[::-1], refs[12:] + refs[:12], refs[1::2] + refs[::2]]
    stores = [CallStore(store_url) for _ in statuses]
    try:
        for ref in refs:
            _begin(stores[0], ref)
        for s in stores:
            s.get_call("warm-up")

        def record(i: int) -> dict[str, RecordOutcome]:
            outcomes: dict[str, RecordOutcome] = {}
            for start in range(0, len(refs), 6):
                chunk = orders[i][start : start + 6]
                results = stores[i].record_statuses(
                    [_update(ref, statuses[i], uuid=f"CON-{ref}") for ref in chunk]
                )
                outcomes.update(zip(chunk, results, strict=True))
            return outcomes

        per_thread = _race(len(statuses), record)
        calls = stores[0].get_calls(refs)
        for ref in refs:
            outcomes = [per_thread[i][ref] for i in range(len(statuses))]
            assert outcomes.count(RecordOutcome.RECORDED) == 1, (ref, outcomes)
            assert outcomes.count(RecordOutcome.DUPLICATE) == 1, (ref, outcomes)
            assert outcomes.count(RecordOutcome.HISTORY) == 2, (ref, outcomes)
            winner = statuses[outcomes.index(RecordOutcome.RECORDED)]
            assert calls[ref].status == winner
            history = stores[0].status_history(ref)
            assert sorted(h["status"] for h in history) == ["busy", "failed", "timeout"]
            assert history[0]["status"] == winner  # the call's status is its first history row
    finally:
        for s in stores:
            s.dispose()


def test_recent_calls_filters_in_the_query(store):
    # An older run stays reachable however many calls came after it (the view's run tab needs it).
    store.begin_call("vs-old", agent_id="a", destination="447700900001", dag_id="d", run_id="old")
    for i in range(5):
        store.begin_call(f"vs-new-{i}", agent_id="a", destination=f"44770090010{i}", dag_id="d", run_id="new")
    assert [c.call_ref for c in store.recent_calls(3, dag_id="d", run_id="old")] == ["vs-old"]
    assert len(store.recent_calls(10, dag_id="d")) == 6
    assert store.recent_calls(10, dag_id="other") == []


def test_first_open_waits_for_a_locked_file_to_switch_to_wal(tmp_path: Path) -> None:
    """Leaving rollback-journal mode ignores busy_timeout: another process's lock on a fresh (or
    old, being upgraded) file made the first open fail at once with "database is locked"."""
    path = tmp_path / "vonage_studio.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other_process (i INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO other_process VALUES (1)")
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    store = CallStore(f"sqlite:///{path}")
    try:
        assert store.get_call("vs-none") is None
    finally:
        release.join()
        other.close()
        store.dispose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_migrations_are_consecutive_from_two_to_the_schema_version() -> None:
    """ensure_schema walks every version between the store's and this code's: a gap would
    fail an upgrade halfway (or, worse, stamp a store with a step it never ran)."""
    from airflow_provider_vonage_studio.store import schema

    assert sorted(schema._MIGRATIONS) == list(range(2, schema.SCHEMA_VERSION + 1))
