"""The store's shared pacer: the send gate, AIMD widening and narrowing, and the schema-3 upgrade.

On SQLite and PostgreSQL (``store`` / ``store_url`` fixtures); ``now`` is passed explicitly so
nothing here waits or depends on the wall clock.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio.exceptions import UnknownCall, VonageStudioConfigError
from airflow_provider_vonage_studio.store import (
    PACING_ADVANCE_WINDOWS,
    PACING_MAX_FACTOR,
    PACING_NARROW_STEP,
    PACING_WIDEN,
    SCHEMA_VERSION,
    CallState,
    CallStateConflict,
    CallStore,
    calls_table,
    metadata,
)
from airflow_provider_vonage_studio.store.pacing import (
    _factor,
    _gate,
    _over,
    _poll_delay,
    _recent,
    _trim_recent,
)

KEY = "https://studio.test|agent:agent-1"
T = 1_700_000_000.0


def test_the_gate_waits_for_the_answer_to_the_request_limit_back(store: CallStore) -> None:
    # One call per second: the second request may leave a second after the first was answered,
    # not a second after it left (it may have arrived any time before its answer).
    assert store.pace_send(KEY, 1.0, limit=1, now=T) == (0.0, T)
    wait, sent = store.pace_send(KEY, 1.0, limit=1, now=T + 0.5)
    assert sent is None and 0 < wait <= 0.05  # the answer is not in yet: look again soon
    store.pace_feedback(KEY, 1.0, rate_limited=False, sent_at=T, answered_at=T + 0.2, now=T + 0.3)
    # The opening time is known now: leave is given in advance, for that time.
    wait, sent = store.pace_send(KEY, 1.0, limit=1, now=T + 0.4)
    assert sent == pytest.approx(T + 1.2, abs=1e-6) and wait == pytest.approx(0.8, abs=1e-5)
    state = store.pacing_state(KEY)
    assert state is not None and state.last_sent_at == sent
    # The request granted for T + 1.2 holds the gate for the next one until its answer.
    wait, nxt = store.pace_send(KEY, 1.0, limit=1, now=T + 0.5)
    assert nxt is None and 0 < wait <= 0.05
    store.pace_feedback(KEY, 1.0, rate_limited=False, sent_at=sent, answered_at=T + 1.3, now=T + 1.3)
    assert store.pace_send(KEY, 1.0, limit=1, now=T + 2.4) == (0.0, pytest.approx(T + 2.4, abs=1e-6))


def test_leave_is_given_in_advance_only_within_the_horizon(store: CallStore) -> None:
    assert store.pace_send(KEY, 1.0, limit=1, now=T)[1] == T
    store.pace_feedback(KEY, 1.0, rate_limited=False, sent_at=T, answered_at=T + 0.1, now=T + 0.1)
    for _ in range(4):  # widened spacing: the gate opens factor windows after the answer
        store.pace_feedback(KEY, 1.0, rate_limited=True, now=T + 0.1 + 100 * _)
    factor = store.pacing_state(KEY).factor  # type: ignore[union-attr]
    opens = T + 0.1 + factor
    assert opens - (T + 0.2) > PACING_ADVANCE_WINDOWS
    wait, sent = store.pace_send(KEY, 1.0, limit=1, now=T + 0.2)
    assert sent is None and wait == pytest.approx(opens - PACING_ADVANCE_WINDOWS - (T + 0.2), abs=1e-5)
    wait, sent = store.pace_send(KEY, 1.0, limit=1, now=opens - PACING_ADVANCE_WINDOWS)
    assert sent == pytest.approx(opens, abs=1e-6) and wait == pytest.approx(PACING_ADVANCE_WINDOWS, abs=1e-5)


def test_advance_leave_marks_the_row_sending_at_once(store: CallStore) -> None:
    store.begin_call("vs-early", agent_id="agent-1", destination="447700900123")
    store.pace_send(KEY, 1.0, now=T)
    store.pace_feedback(KEY, 1.0, rate_limited=False, sent_at=T, answered_at=T + 0.1, now=T + 0.1)
    wait, sent = store.pace_send(KEY, 1.0, call_ref="vs-early", now=T + 0.2)
    assert sent == pytest.approx(T + 1.1, abs=1e-6) and wait > 0
    assert store.get_call("vs-early").state is CallState.SENDING  # type: ignore[union-attr]


def test_an_answer_never_reported_counts_as_over_after_a_window(store: CallStore) -> None:
    assert store.pace_send(KEY, 1.0, limit=1, now=T)[0] == 0.0
    # The dialer was killed mid-request: nobody reports its answer. Until a window has passed
    # its answer may still come, so the opening time is unknown: look again soon.
    wait, sent = store.pace_send(KEY, 1.0, limit=1, now=T + 0.9)
    assert sent is None and 0 < wait <= 0.05
    # Once it is deemed over (a window after it left), the others go on a window later.
    assert store.pace_send(KEY, 1.0, limit=1, now=T + 1.5) == (pytest.approx(0.5, abs=1e-5), T + 2.0)


def test_the_gate_allows_limit_requests_per_window(store: CallStore) -> None:
    for i in range(3):
        assert store.pace_send(KEY, 1 / 3, limit=3, now=T + i * 0.01) == (0.0, T + i * 0.01)
        store.pace_feedback(KEY, 1 / 3, rate_limited=False, sent_at=T + i * 0.01, now=T + i * 0.01 + 0.005)
    # A fourth: a second after the first one's answer (granted in advance for that time).
    wait, sent = store.pace_send(KEY, 1 / 3, limit=3, now=T + 0.9)
    assert sent == pytest.approx(T + 1.005, abs=1e-6) and wait == pytest.approx(0.105, abs=1e-5)


def test_an_older_request_answered_late_holds_the_gate(store: CallStore) -> None:
    # Two calls per second. R1 and R2 leave; R2 is answered at once, R1 not (yet).
    assert store.pace_send(KEY, 0.5, limit=2, now=T) == (0.0, T)
    assert store.pace_send(KEY, 0.5, limit=2, now=T + 0.01) == (0.0, T + 0.01)
    store.pace_feedback(KEY, 0.5, rate_limited=False, sent_at=T + 0.01, answered_at=T + 0.02, now=T + 0.02)
    # R3 waits for R1, deemed over a window after it left.
    assert store.pace_send(KEY, 0.5, limit=2, now=T + 2.0) == (0.0, T + 2.0)
    # R1's answer comes in late: it may have arrived as late as T + 1.5.
    store.pace_feedback(KEY, 0.5, rate_limited=False, sent_at=T, answered_at=T + 1.5, now=T + 2.05)
    # R4 must wait for R1 too, though R1 is older than the request `limit` back (R2, long
    # answered): else R1, R3 and R4 could all arrive within one second.
    wait, sent = store.pace_send(KEY, 0.5, limit=2, now=T + 2.1)
    assert sent == pytest.approx(T + 2.5, abs=1e-6) and wait == pytest.approx(0.4, abs=1e-5)


def test_leave_in_advance_never_goes_back_before_an_earlier_grant(store: CallStore) -> None:
    # Two calls per second; R1 answered at T + 0.5, R2 (newer) already at T + 0.1.
    store.pace_send(KEY, 0.5, limit=2, now=T)
    store.pace_send(KEY, 0.5, limit=2, now=T + 0.01)
    store.pace_feedback(KEY, 0.5, rate_limited=False, sent_at=T + 0.01, answered_at=T + 0.1, now=T + 0.1)
    store.pace_feedback(KEY, 0.5, rate_limited=False, sent_at=T, answered_at=T + 0.5, now=T + 0.5)
    assert store.pace_send(KEY, 0.5, limit=2, now=T + 0.6)[1] == pytest.approx(T + 1.5, abs=1e-6)
    # R4 is held by R1 as well as R2: R2's answer alone would let it go at T + 1.1, within a
    # second of R2's and R1's arrivals.
    assert store.pace_send(KEY, 0.5, limit=2, now=T + 0.7)[1] == pytest.approx(T + 1.5, abs=1e-6)


def test_leave_to_send_and_the_sending_mark_are_one_step(store: CallStore) -> None:
    store.begin_call("vs-gate", agent_id="agent-1", destination="447700900123")
    assert store.pace_send(KEY, 1.0, call_ref="vs-gate", now=T)[0] == 0.0
    assert store.get_call("vs-gate").state is CallState.SENDING  # type: ignore[union-attr]
    # A row that is not queued (another try is sending it) gets no leave, and no send is recorded.
    with pytest.raises(CallStateConflict, match="cannot start sending"):
        store.pace_send("other-key", 1.0, call_ref="vs-gate", now=T)
    assert store.pacing_state("other-key") is None
    with pytest.raises(UnknownCall):
        store.pace_send(KEY, 1.0, call_ref="vs-nope", now=T + 5)
    store.requeue("vs-gate", 429, "Too Many Requests")
    record = store.get_call("vs-gate")
    assert record is not None and (record.state, record.error_status) == (CallState.QUEUED, 429)
    with pytest.raises(CallStateConflict):
        store.requeue("vs-gate")  # only a sending row goes back to queued
    store.mark_sending("vs-gate")
    with pytest.raises(CallStateConflict):
        store.mark_sending("vs-gate")  # of two processes holding the queued row, one wins


def test_a_429_widens_the_spacing_for_everyone_and_success_narrows_it(store_url: str) -> None:
    first, second = CallStore(store_url), CallStore(store_url)  # two dialing processes
    try:
        assert first.reserve_slot(KEY, 1.0, now=T) == T
        factor = first.pace_feedback(KEY, 1.0, rate_limited=True, now=T + 0.5)
        assert factor == PACING_WIDEN
        # The other process's next slot is pushed out and spaced by the widened interval.
        slot = second.reserve_slot(KEY, 1.0, now=T + 0.6)
        assert slot == pytest.approx(T + 0.5 + PACING_WIDEN, abs=1e-5)
        assert second.reserve_slot(KEY, 1.0, now=T + 0.6) == pytest.approx(slot + PACING_WIDEN, abs=1e-5)
        # 429s of calls already in flight within the same spacing count once.
        assert second.pace_feedback(KEY, 1.0, rate_limited=True, now=T + 0.7) == PACING_WIDEN
        # Sustained success narrows it back to the floor, never below.
        narrowed = [second.pace_feedback(KEY, 1.0, rate_limited=False, now=T + 10 + i) for i in range(12)]
        assert narrowed[0] == pytest.approx(PACING_WIDEN - PACING_NARROW_STEP, abs=1e-5)
        assert narrowed[-1] == 1.0
        # An answer that is neither (a 503) leaves the factor alone.
        first.pace_feedback(KEY, 1.0, rate_limited=True, now=T + 30)
        assert first.pace_feedback(KEY, 1.0, rate_limited=False, narrow=False, now=T + 31) == PACING_WIDEN
    finally:
        first.dispose()
        second.dispose()


def test_widening_is_capped_and_honours_retry_after(store: CallStore) -> None:
    factor = 1.0
    for i in range(20):
        factor = store.pace_feedback(KEY, 1.0, rate_limited=True, now=T + i * 100)
    assert factor == PACING_MAX_FACTOR
    store.pace_feedback("k2", 0.2, rate_limited=True, retry_after=7.0, now=T)
    state = store.pacing_state("k2")
    assert state is not None and state.next_at == pytest.approx(T + 7.0, abs=1e-5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_pacer_arguments_are_checked(store: CallStore, bad: float) -> None:
    with pytest.raises(VonageStudioConfigError, match="interval_seconds"):
        store.pace_send(KEY, bad)
    with pytest.raises(VonageStudioConfigError, match="retry_after"):
        store.pace_feedback(KEY, 1.0, rate_limited=True, retry_after=bad)
    with pytest.raises(VonageStudioConfigError, match="window"):
        store.pace_send(KEY, 1.0, window=bad)
    with pytest.raises(VonageStudioConfigError, match="limit"):
        store.pace_send(KEY, 1.0, limit=True)  # type: ignore[arg-type]
    with pytest.raises(VonageStudioConfigError, match="limit"):
        store.pace_send(KEY, 1.0, limit=0)


# ----------------------------------------------------------------------------- schema 3


def _v2_metadata() -> sa.MetaData:
    """The tables as version 2 created them: pacing slots without the version-3 columns."""
    v2 = sa.MetaData()
    later = {"change_seq", "change_xid", "outcome_source", "ended_at", "channel"}  # versions 4 and up
    for table in metadata.sorted_tables:
        if table.name == "vonage_studio_calls":
            sa.Table(table.name, v2, *(c._copy() for c in table.columns if c.name not in later))
        elif table.name != "vonage_studio_pacing_slots":
            table.to_metadata(v2)
    sa.Table(
        "vonage_studio_pacing_slots",
        v2,
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("next_at", sa.Float, nullable=False),
    )
    return v2


def test_a_v2_store_is_upgraded_pending_becomes_sending(store_url: str) -> None:
    raw = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    now = datetime.now(timezone.utc)
    v2 = _v2_metadata()
    with raw.begin() as conn:
        v2.create_all(conn)
        for ref, state in (("vs-pending", "pending"), ("vs-placed", "placed")):
            conn.execute(
                v2.tables[calls_table.name]
                .insert()
                .values(
                    call_ref=ref,
                    agent_id="agent-1",
                    destination="447700900123",
                    state=state,
                    map_index=-1,
                    created_at=now,
                    updated_at=now,
                )
            )
        conn.execute(v2.tables["vonage_studio_pacing_slots"].insert().values(key=KEY, next_at=T))
        conn.execute(v2.tables["vonage_studio_schema_version"].insert().values(id=1, version=2))
    store = CallStore(store_url)
    try:
        # A pending row may or may not have been sent: it reads as sending, never as queued.
        assert store.get_call("vs-pending").state is CallState.SENDING  # type: ignore[union-attr]
        assert store.get_call("vs-placed").state is CallState.PLACED  # type: ignore[union-attr]
        with raw.connect() as conn:
            assert (
                conn.execute(sa.text("SELECT version FROM vonage_studio_schema_version")).scalar()
                == SCHEMA_VERSION
            )
            states = set(conn.execute(sa.text("SELECT state FROM vonage_studio_calls")).scalars())
        assert states == {"sending", "placed"}
        # The old pacing row (no factor, no recent requests) works as before.
        assert store.reserve_slot(KEY, 1.0, now=T - 5) == T
        assert store.pace_send(KEY, 1.0, now=T + 2) == (0.0, T + 2)
        state = store.pacing_state(KEY)
        assert state is not None and state.factor == 1.0 and state.next_at == T + 1.0
    finally:
        store.dispose()
        raw.dispose()


def test_pending_is_still_importable_as_an_alias() -> None:
    assert CallState.PENDING is CallState.SENDING
    assert CallState("pending") is CallState.SENDING
    assert [s.value for s in CallState] == ["queued", "sending", "placed", "rejected", "unknown"]


# ------------------------------------------------------------------ the gate's maths, directly


def test_gate_opens_a_window_times_factor_after_the_held_requests_are_over() -> None:
    # limit 2: only requests older than the newest one hold the gate.
    recent = [[T, T + 0.2], [T + 0.1, T + 0.4], [T + 0.3, None]]
    assert _gate(recent, 1.0, 2, 1.0, T + 0.5) == (T + 1.4, True)
    assert _gate(recent, 2.0, 2, 1.0, T + 0.5) == (T + 2.4, True)
    # An unanswered held request not yet deemed over leaves the opening time unknown.
    assert _gate(recent, 1.0, 1, 1.0, T + 0.5) == (T + 2.3, False)
    # Deemed over one window after it left: known again.
    assert _gate(recent, 1.0, 1, 1.0, T + 1.5) == (T + 2.3, True)
    assert _gate([], 1.0, 1, 1.0, T) == (T, True)


def test_over_factor_and_recent_tolerate_what_an_old_or_broken_row_holds() -> None:
    assert _over([T, None], 1.0) == T + 1.0
    assert _over([T, T + 0.3], 1.0) == T + 0.3
    assert _factor(None) == 1.0
    assert _factor(float("nan")) == 1.0
    assert _factor(0.5) == 1.0
    assert _factor(PACING_MAX_FACTOR * 10) == PACING_MAX_FACTOR
    assert _recent(None) == [] and _recent("x") == []
    assert _recent([[T, None], [T, "late"], [T], "x", [T + 1, T + 2]]) == [[T, None], [T + 1, T + 2]]


def test_trim_recent_keeps_the_newest_and_every_request_that_may_still_hold_the_gate() -> None:
    long_over = [T, T + 0.1]
    still_holding = [T + 5, T + 5.1]
    newest = [T + 9, None]
    trimmed = _trim_recent([long_over, still_holding, newest], 2, 1.0, T + 10)
    assert trimmed == [still_holding, newest]
    assert _trim_recent([long_over], 2, 1.0, T + 100) == [long_over]  # among the newest limit - 1


def test_poll_delay_is_between_one_and_ten_milliseconds() -> None:
    assert _poll_delay(T, T + 5) == 0.001
    assert _poll_delay(T + 0.005, T) == pytest.approx(0.005, abs=1e-6)
    assert _poll_delay(T + 5, T) == 0.01
