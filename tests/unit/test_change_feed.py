"""The store's change feed (store/changes.py), on SQLite and PostgreSQL: every kind of write of a
call row advances it, a late PostgreSQL commit is never skipped, old stores are numbered in
place, named cursors persist; and the shared poller built on it (a full read when it starts or
a waiter joins, deadlines from its heap)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio.outcome import ANSWERED
from airflow_provider_vonage_studio.store import CallStore, ChangeCursor, StatusUpdate, calls_table, metadata
from airflow_provider_vonage_studio.store import schema as schema_module
from airflow_provider_vonage_studio.triggers.poller import _SharedPoller
from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger

# The autouse fixture closes the stores open_store() cached for each test.
from tests.unit.call_rows import AGENT, NUMBER, dispose_named_stores  # noqa: F401
from tests.unit.call_rows import placed as _placed
from tests.unit.call_rows import reported as _busy

UTC = timezone.utc


def _seq(store: CallStore, ref: str) -> int:
    with store._transaction(write=False) as conn:
        value = conn.execute(
            sa.select(calls_table.c.change_seq).where(calls_table.c.call_ref == ref)
        ).scalar()
    assert value is not None, f"{ref}: no change_seq"
    return int(value)


def _write_kinds() -> list[tuple[str, Callable[[CallStore, str], Any]]]:
    """Every public write of a call row in store/call_rows.py and store/statuses.py, in an order
    each is allowed in (the row is ``ref``; each step starts from the previous one's state)."""
    now = datetime.now(UTC)
    return [
        ("begin_call", lambda s, r: s.begin_call(r, agent_id=AGENT, destination=NUMBER)),
        ("mark_sending", lambda s, r: s.mark_sending(r)),
        ("requeue", lambda s, r: s.requeue(r, 429, "slow down")),
        ("mark_sending again", lambda s, r: s.mark_sending(r)),
        ("mark_unknown", lambda s, r: s.mark_unknown(r, "no answer")),
        ("restart_call", lambda s, r: s.restart_call(r)),
        ("mark_sending third", lambda s, r: s.mark_sending(r)),
        ("mark_placed", lambda s, r: s.mark_placed(r, f"session-{r}", now)),
        ("record_status", lambda s, r: _busy(s, r)),
        ("set_parameters", lambda s, r: s.set_parameters(r, {"A": "1"})),
        ("record_outcome", lambda s, r: s.record_outcome(r, "busy")),
    ]


def test_every_write_of_a_call_row_advances_the_change_sequence(store: CallStore) -> None:
    ref = "vs-writes"
    last = 0
    for name, write in _write_kinds():
        write(store, ref)
        seq = _seq(store, ref)
        assert seq > last, f"{name} did not advance change_seq ({last} -> {seq})"
        last = seq
    # The other row-writing paths: a rejected dial, many verdicts at once, a batch of callbacks.
    store.begin_call("vs-rejected", agent_id=AGENT, destination=NUMBER)
    store.mark_sending("vs-rejected")
    before = _seq(store, "vs-rejected")
    store.mark_rejected("vs-rejected", 400, "bad number")
    assert _seq(store, "vs-rejected") > before
    _placed(store, "vs-b1")
    _placed(store, "vs-b2")
    seqs = {ref: _seq(store, ref) for ref in ("vs-b1", "vs-b2")}
    store.record_statuses(
        [
            StatusUpdate(ref, "timeout", f"CON-{ref}", datetime.now(UTC), {"status": "timeout"})
            for ref in ("vs-b1", "vs-b2")
        ]
    )
    assert all(_seq(store, ref) > seqs[ref] for ref in seqs)
    seqs = {ref: _seq(store, ref) for ref in ("vs-b1", "vs-b2")}
    store.record_outcomes({"vs-b1": "timeout", "vs-b2": "timeout"})
    assert all(_seq(store, ref) > seqs[ref] for ref in seqs)


def test_changes_since_returns_only_what_changed(store: CallStore) -> None:
    _placed(store, "vs-old")
    old_seq = _seq(store, "vs-old")
    cursor = store.change_cursor()
    changes, cursor = store.changes_since(cursor)
    # Nothing new (PostgreSQL may hand back a row it saw before, while another transaction of
    # the server that started earlier is still open).
    assert all(c.seq <= old_seq for c in changes)
    _placed(store, "vs-new")
    changes, cursor = store.changes_since(cursor)
    assert {c.record.call_ref for c in changes if c.seq > old_seq} == {"vs-new"}
    assert changes[-1].record.state.value == "placed"
    # Read again: nothing new (PostgreSQL may return a row seen before; never a new one).
    again, cursor = store.changes_since(cursor)
    assert all(c.seq <= changes[-1].seq for c in again)
    # ``also``: rows whose deadline fell due come in the same read, changed or not.
    more, _ = store.changes_since(cursor, also=["vs-old", "vs-missing"])
    assert "vs-old" in {c.record.call_ref for c in more}
    # No cursor: the position now, and the full rows of ``also``.
    rows, start = store.changes_since(None, also=["vs-old", "vs-new"])
    assert {c.record.call_ref for c in rows} == {"vs-old", "vs-new"} and start.seq >= changes[-1].seq


def test_a_late_postgresql_commit_is_not_skipped(store: CallStore, store_url: str) -> None:
    """A write that took an earlier number but commits after a later one, across a reader round."""
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers: numbers follow commit order there")
    _placed(store, "vs-late")
    _placed(store, "vs-early")
    cursor = store.change_cursor()
    t = calls_table
    with store._engine.connect() as slow:
        transaction = slow.begin()
        # Takes its change number now, commits only after the reader's round.
        slow.execute(t.update().where(t.c.call_ref == "vs-late").values(error_message="slow writer"))
        store.set_parameters("vs-early", {"X": "1"})  # a later number, committed at once
        changes, cursor = store.changes_since(cursor)
        seen = {c.record.call_ref: c.record for c in changes}
        assert "vs-early" in seen
        # The open write is not seen. Its row's committed state may come back (a re-read the
        # feed allows) when another transaction on the server holds the snapshot's xmin back,
        # as a second test suite on the same server does.
        assert "vs-late" not in seen or seen["vs-late"].error_message != "slow writer"
        late_seq = max(c.seq for c in changes)
        transaction.commit()
    changes, cursor = store.changes_since(cursor)
    late = [c for c in changes if c.record.call_ref == "vs-late"]
    assert late and late[0].record.error_message == "slow writer"
    assert late[0].seq < late_seq  # an earlier number than one the previous round returned


def test_an_old_store_is_numbered_in_place(store_url: str) -> None:
    """A version-3 store (no change columns) gets them, numbered, and the feed works on it."""
    v3 = sa.MetaData()
    new_columns = {"change_seq", "change_xid", "outcome_source", "ended_at", "channel"}
    for table in metadata.sorted_tables:
        if table.name == calls_table.name:
            columns = [c._copy() for c in table.columns if c.name not in new_columns]
            sa.Table(table.name, v3, *columns)
        elif table.name not in ("vonage_studio_change_cursors", "vonage_studio_batch_results"):
            table.to_metadata(v3)
    raw = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    now = datetime.now(UTC)
    with raw.begin() as conn:
        v3.create_all(conn)
        for ref in ("vs-1", "vs-2"):
            conn.execute(
                v3.tables[calls_table.name]
                .insert()
                .values(
                    call_ref=ref,
                    agent_id=AGENT,
                    destination=NUMBER,
                    state="placed",
                    map_index=-1,
                    session_start_time=now,
                    created_at=now,
                    updated_at=now,
                )
            )
        conn.execute(v3.tables["vonage_studio_schema_version"].insert().values(id=1, version=3))
    store = CallStore(store_url)
    try:
        cursor = store.change_cursor()
        assert cursor.seq >= 2
        assert _seq(store, "vs-1") != _seq(store, "vs-2")
        _busy(store, "vs-1")
        changes, _ = store.changes_since(cursor)
        assert [c.record.call_ref for c in changes] == ["vs-1"] and changes[0].seq > cursor.seq
        with raw.connect() as conn:
            version = conn.execute(sa.text("SELECT version FROM vonage_studio_schema_version")).scalar()
        assert version == schema_module.SCHEMA_VERSION
    finally:
        store.dispose()
        raw.dispose()


def test_named_cursors_persist_position_and_handed_refs(store: CallStore, store_url: str) -> None:
    assert store.load_cursor("watcher") is None
    store.advance_cursor("watcher", ChangeCursor(5, 77), handed=["vs-1", "vs-2"])
    store.advance_cursor("watcher", ChangeCursor(9, 80), handed=["vs-2", "vs-3"])  # vs-2 again: no error
    reopened = CallStore(store_url)
    try:
        assert reopened.load_cursor("watcher") == ChangeCursor(9, 80)
        assert reopened.handed_over("watcher", ["vs-1", "vs-3", "vs-4"]) == {"vs-1", "vs-3"}
        assert reopened.handed_over("other", ["vs-1"]) == set()
    finally:
        reopened.dispose()
    assert ChangeCursor.from_json({"nonsense": 1}) is None


# ------------------------------------------------------------------- the poller on top


async def _first_event(trigger: CallStatusTrigger, timeout: float = 20) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    return await asyncio.wait_for(first(), timeout)


def test_a_waiter_joining_a_running_poller_reads_its_row_in_full(store: CallStore, store_url: str) -> None:
    """Its row changed before the poller's cursor: the change feed alone would never show it."""
    _placed(store, "vs-running")
    _placed(store, "vs-joiner")
    _busy(store, "vs-joiner")

    async def scenario() -> dict[str, Any]:
        first = CallStatusTrigger(
            call_ref="vs-running", answer_window=3600, poll_interval=0.05, store_url=store_url
        )
        task = asyncio.ensure_future(_first_event(first))
        while (poller := _SharedPoller.active(store_url)) is None or poller.rounds < 2:
            await asyncio.sleep(0.01)
        joiner = CallStatusTrigger(call_ref="vs-joiner", fail_on=(), poll_interval=0.05, store_url=store_url)
        try:
            return await _first_event(joiner)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert asyncio.run(scenario())["call_status"] == "busy"


def test_the_answer_window_ends_from_the_heap_and_a_last_moment_status_wins(
    store: CallStore, store_url: str
) -> None:
    """Rounds 30 s apart: the deadline alone wakes the waiter, and its row is read again first."""
    started = datetime.now(UTC)
    _placed(store, "vs-silent", started=started)
    _placed(store, "vs-late-busy", started=started)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        window = 3.0

        def trigger(ref: str) -> CallStatusTrigger:
            return CallStatusTrigger(
                call_ref=ref, answer_window=window, fail_on=(), poll_interval=30, store_url=store_url
            )

        tasks = [asyncio.ensure_future(_first_event(trigger(ref))) for ref in ("vs-silent", "vs-late-busy")]
        # Once both deadlines are on the heap (after the full read), the status arrives.
        while (poller := _SharedPoller.active(store_url)) is None or len(poller._deadlines) < 2:
            await asyncio.sleep(0.01)
        rounds = poller.rounds
        await asyncio.to_thread(_busy, store, "vs-late-busy")
        a, b = await asyncio.gather(*tasks)
        assert poller.rounds - rounds <= 2  # the deadline's round, not a 30 s grid of them
        return a, b

    silent_event, late_event = asyncio.run(scenario())
    assert silent_event["call_status"] == ANSWERED
    assert late_event["call_status"] == "busy"


def test_a_new_poller_after_a_restart_reads_everything_once(store: CallStore, store_url: str) -> None:
    """A triggerer restart is a new event loop and a new poller: statuses written while nothing
    ran are found by its full read, not lost for want of a cursor."""
    _placed(store, "vs-restart")
    _busy(store, "vs-restart", "timeout")
    trigger = CallStatusTrigger(call_ref="vs-restart", fail_on=(), poll_interval=0.05, store_url=store_url)
    assert asyncio.run(_first_event(trigger))["call_status"] == "timeout"
    _placed(store, "vs-restart-2")
    _busy(store, "vs-restart-2", "rejected")
    again = CallStatusTrigger(call_ref="vs-restart-2", fail_on=(), poll_interval=0.05, store_url=store_url)
    assert asyncio.run(_first_event(again))["call_status"] == "rejected"


def test_pending_timeout_wakes_a_sending_row_from_the_heap(store: CallStore, store_url: str) -> None:
    store.begin_call("vs-stuck", agent_id=AGENT, destination=NUMBER)
    store.mark_sending("vs-stuck")
    trigger = CallStatusTrigger(
        call_ref="vs-stuck", poll_interval=30, pending_timeout=timedelta(seconds=0.3), store_url=store_url
    )
    event = asyncio.run(_first_event(trigger))
    assert event["status"] == "error" and event["error_type"] == "CallOutcomeUnknown"
