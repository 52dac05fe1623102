"""CallStore.record_statuses' callback rules: placed calls only, a bounded age, a bounded history.

On SQLite and PostgreSQL (the store fixtures). The receiver's answers for these outcomes are
tested in tests/integration/test_receiver.py.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.store import (
    MAX_STATUS_HISTORY,
    CallState,
    CallStore,
    RecordOutcome,
    StatusUpdate,
    status_events_table,
)

UTC = timezone.utc
AGENT = "agent-1"
NUMBER = "447700900123"
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _placed(store: CallStore, ref: str, started: datetime = START) -> None:
    store.begin_call(ref, agent_id=AGENT, destination=NUMBER)
    store.mark_placed(ref, f"session-{ref}", started)


def _update(ref: str, status: str = "busy", uuid: str = "CON-1", **kw: Any) -> StatusUpdate:
    return StatusUpdate(ref, status, uuid, None, {"status": status}, **kw)


def _nothing_stored(store: CallStore, ref: str) -> bool:
    record = store.get_call(ref)
    return record is not None and record.status is None and store.status_history(ref) == []


def test_placed_only_refuses_calls_that_were_not_placed(store: CallStore) -> None:
    store.begin_call("vs-waiting", agent_id=AGENT, destination=NUMBER)
    store.begin_call("vs-refused", agent_id=AGENT, destination=NUMBER)
    store.mark_rejected("vs-refused", 400, "Bad destination number format")
    store.begin_call("vs-unsure", agent_id=AGENT, destination=NUMBER)
    store.mark_unknown("vs-unsure", "read timeout")
    _placed(store, "vs-placed")
    refs = ["vs-waiting", "vs-refused", "vs-unsure", "vs-placed"]

    outcomes = store.record_statuses([_update(ref) for ref in refs], placed_only=True, now=START)
    assert outcomes == [RecordOutcome.NOT_PLACED] * 3 + [RecordOutcome.RECORDED]
    for ref in refs[:3]:
        assert _nothing_stored(store, ref), ref
    assert store.get_call("vs-refused").state is CallState.REJECTED  # type: ignore[union-attr]
    assert store.get_call("vs-placed").status == "busy"  # type: ignore[union-attr]


def test_max_age_counts_from_the_start_or_the_earlier_token(store: CallStore) -> None:
    _placed(store, "vs-1")
    six_hours = timedelta(hours=6)
    at_limit = START + six_hours
    # Exactly at the limit is fine; a microsecond later is stale.
    assert store.record_statuses([_update("vs-1")], max_age=six_hours, now=at_limit) == [
        RecordOutcome.RECORDED
    ]
    late = _update("vs-1", "timeout")
    assert store.record_statuses([late], max_age=six_hours, now=at_limit + timedelta(microseconds=1)) == [
        RecordOutcome.STALE
    ]
    # A token issued before the call started makes it older; one issued later changes nothing.
    early_token = _update("vs-1", "failed", issued_at=START - timedelta(hours=1))
    assert store.record_statuses([early_token], max_age=six_hours, now=at_limit) == [RecordOutcome.STALE]
    late_token = _update("vs-1", "failed", issued_at=START + timedelta(hours=5))
    assert store.record_statuses([late_token], max_age=six_hours, now=at_limit) == [RecordOutcome.HISTORY]
    assert [h["status"] for h in store.status_history("vs-1")] == ["busy", "failed"]


def test_stale_is_checked_before_the_destination_and_stores_nothing(store: CallStore) -> None:
    _placed(store, "vs-old", started=START - timedelta(days=200))
    outcome = store.record_statuses(
        [_update("vs-old", to="12125550100")], placed_only=True, max_age=timedelta(hours=6), now=START
    )
    assert outcome == [RecordOutcome.STALE]
    assert _nothing_stored(store, "vs-old")


def test_history_is_capped_however_the_conversation_uuid_varies(store: CallStore) -> None:
    _placed(store, "vs-flood")
    flood = [_update("vs-flood", "busy", f"CON-{i}") for i in range(MAX_STATUS_HISTORY + 5)]
    outcomes = store.record_statuses(flood[:3]) + store.record_statuses(flood[3:])
    assert outcomes[0] is RecordOutcome.RECORDED
    assert outcomes[1:MAX_STATUS_HISTORY] == [RecordOutcome.HISTORY] * (MAX_STATUS_HISTORY - 1)
    assert outcomes[MAX_STATUS_HISTORY:] == [RecordOutcome.HISTORY_FULL] * 5
    assert len(store.status_history("vs-flood")) == MAX_STATUS_HISTORY
    # Once full, a repeat of a stored status is still a duplicate; a new one (also repeated
    # within a batch) is refused every time.
    assert store.record_statuses(
        [flood[0], _update("vs-flood", "failed", "X"), _update("vs-flood", "failed", "X")]
    ) == [
        RecordOutcome.DUPLICATE,
        RecordOutcome.HISTORY_FULL,
        RecordOutcome.HISTORY_FULL,
    ]
    assert store.get_call("vs-flood").status == "busy"  # type: ignore[union-attr]


def test_history_cap_is_configurable(store: CallStore) -> None:
    _placed(store, "vs-small")
    batch = [_update("vs-small", status) for status in ("busy", "timeout", "failed")]
    assert store.record_statuses(batch, max_history=2) == [
        RecordOutcome.RECORDED,
        RecordOutcome.HISTORY,
        RecordOutcome.HISTORY_FULL,
    ]
    _placed(store, "vs-unbounded")
    many = [_update("vs-unbounded", "busy", f"CON-{i}") for i in range(MAX_STATUS_HISTORY + 2)]
    assert RecordOutcome.HISTORY_FULL not in store.record_statuses(many, max_history=None)


def test_concurrent_floods_never_pass_the_cap(store_url: str) -> None:
    stores = [CallStore(store_url) for _ in range(4)]
    try:
        _placed(stores[0], "vs-race")
        for s in stores:
            s.get_call("warm-up")
        barrier = threading.Barrier(len(stores))
        results: list[list[RecordOutcome]] = [[] for _ in stores]

        def flood(i: int) -> None:
            barrier.wait()
            for start in range(0, 12, 3):
                batch = [_update("vs-race", "busy", f"CON-{i}-{n}") for n in range(start, start + 3)]
                results[i] += stores[i].record_statuses(batch)

        threads = [threading.Thread(target=flood, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        outcomes = [o for per_thread in results for o in per_thread]
        assert len(outcomes) == 48
        stored = outcomes.count(RecordOutcome.RECORDED) + outcomes.count(RecordOutcome.HISTORY)
        assert stored == MAX_STATUS_HISTORY
        assert outcomes.count(RecordOutcome.HISTORY_FULL) == 48 - MAX_STATUS_HISTORY
        engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(sa.func.count())
                .select_from(status_events_table)
                .where(status_events_table.c.call_ref == "vs-race")
            ).scalar_one()
        engine.dispose()
        assert rows == MAX_STATUS_HISTORY
    finally:
        for s in stores:
            s.dispose()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_age": timedelta(0)}, "max_age"),
        ({"max_age": timedelta(seconds=-1)}, "max_age"),
        ({"max_age": 3600}, "max_age"),
        ({"max_history": 0}, "max_history"),
        ({"max_history": True}, "max_history"),
        ({"max_history": 2.5}, "max_history"),
    ],
)
def test_rules_are_validated_before_anything_is_written(
    store: CallStore, kwargs: dict[str, Any], field: str
) -> None:
    _placed(store, "vs-1")
    with pytest.raises(VonageStudioConfigError, match=field):
        store.record_statuses([_update("vs-1")], **kwargs)
    assert _nothing_stored(store, "vs-1")


# --------------------------------------------------- one executemany per batch, and its fallbacks


def _engine(store: CallStore) -> sa.Engine:
    return sa.create_engine(store.url, poolclass=sa.pool.NullPool)


def test_a_stray_history_row_still_makes_a_duplicate_when_the_batch_is_inserted_at_once(
    store: CallStore,
) -> None:
    # A history row for a call without a status: nothing this store writes leaves one, but a
    # writer bypassing it could. The batch's one INSERT then skips a row; what went in is undone
    # and the batch inserted row by row, so each update gets what it got before batching.
    _placed(store, "vs-a")
    _placed(store, "vs-b")
    store.get_call("vs-a")  # schema ready
    engine = _engine(store)
    with engine.begin() as conn:
        conn.execute(
            status_events_table.insert().values(
                call_ref="vs-a", status="busy", conversation_uuid="CON-1", payload={}, received_at=START
            )
        )
    engine.dispose()
    outcomes = store.record_statuses([_update("vs-a"), _update("vs-b"), _update("vs-a", "timeout")])
    assert outcomes == [RecordOutcome.DUPLICATE, RecordOutcome.RECORDED, RecordOutcome.RECORDED]
    assert [h["status"] for h in store.status_history("vs-a")] == ["busy", "timeout"]
    assert [h["status"] for h in store.status_history("vs-b")] == ["busy"]
    a, b = store.get_call("vs-a"), store.get_call("vs-b")
    assert a is not None and a.status == "timeout"
    assert b is not None and b.status == "busy"


def test_a_first_status_set_behind_the_lock_is_never_reported_as_ours(store: CallStore) -> None:
    # A trigger plays a writer that sets vs-a's status without taking its row lock, between the
    # batch's read and its UPDATE of the first statuses (one executemany). SQLite sets them one by
    # one instead (vs-a keeps the other status: HISTORY); PostgreSQL refuses the whole batch.
    _placed(store, "vs-a")
    _placed(store, "vs-b")
    engine = _engine(store)
    calls, events = "vonage_studio_calls", status_events_table.name
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "CREATE FUNCTION vs_test_race() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"UPDATE {calls} SET status = 'failed' WHERE call_ref = NEW.call_ref; RETURN NEW; END $$"
                )
            )
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER vs_test_race AFTER INSERT ON {events} FOR EACH ROW "
                    "WHEN (NEW.call_ref = 'vs-a') EXECUTE FUNCTION vs_test_race()"
                )
            )
        else:
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER vs_test_race AFTER INSERT ON {events} WHEN NEW.call_ref = 'vs-a' "
                    f"BEGIN UPDATE {calls} SET status = 'failed' WHERE call_ref = NEW.call_ref; END"
                )
            )
        postgres = conn.dialect.name == "postgresql"
    engine.dispose()
    if postgres:
        with pytest.raises(Exception, match="did not lock it; the batch was rolled back"):
            store.record_statuses([_update("vs-a"), _update("vs-b")])
        assert _nothing_stored(store, "vs-a") and _nothing_stored(store, "vs-b")
        return
    outcomes = store.record_statuses([_update("vs-a"), _update("vs-b")])
    assert outcomes == [RecordOutcome.HISTORY, RecordOutcome.RECORDED]
    a, b = store.get_call("vs-a"), store.get_call("vs-b")
    assert a is not None and a.status == "failed"
    assert b is not None and b.status == "busy"
