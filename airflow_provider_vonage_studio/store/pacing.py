"""Pacing: dialing slots per key, the send gate that keeps a strict limiter's arrivals within
its rate, and the adaptive (AIMD) widening of the spacing after 429s.

The gate's decision is plain functions (:func:`_gate`, :func:`_over`, :func:`_recent`,
:func:`_factor`, :func:`_trim_recent`); :class:`Pacing` reads and writes the shared state
under the slot row's lock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_vonage_studio.calls import CallState
from airflow_provider_vonage_studio.exceptions import UnknownCall, VonageStudioConfigError
from airflow_provider_vonage_studio.store.engine import StoreBase
from airflow_provider_vonage_studio.store.errors import CallStateConflict
from airflow_provider_vonage_studio.store.schema import _KEY_MAX, _utcnow, calls_table, pacing_slots_table

#: Adaptive pacing (:meth:`CallStore.pace_feedback`): a 429 multiplies a key's spacing by
#: ``PACING_WIDEN`` (up to ``PACING_MAX_FACTOR`` times the floor); each accepted call takes
#: ``PACING_NARROW_STEP`` off the factor again, back down to 1.0 (the floor).
PACING_WIDEN = 1.5
PACING_MAX_FACTOR = 8.0
PACING_NARROW_STEP = 0.05
#: How far ahead (in windows) :meth:`CallStore.pace_send` grants leave once the gate's opening
#: time is known: the longest a killed dialer can leave a call ``sending`` without having sent it.
PACING_ADVANCE_WINDOWS = 1.5


@dataclass(frozen=True)
class PacingState:
    """The shared pacing state of one key: the next free slot and when the last request left
    (epoch seconds), and the adaptive widening of the spacing (1.0 = the floor)."""

    next_at: float
    last_sent_at: float | None
    factor: float


class Pacing(StoreBase):
    """The pacing part of :class:`~airflow_provider_vonage_studio.store.CallStore`."""

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
        _check_gate(limit, window)
        t = pacing_slots_table
        # Waiting on an answer not reported yet is the common case while polling: look with a
        # read-only query (no write lock, no commit); leave is only ever decided under the lock.
        with self._transaction(write=False) as conn:
            peek = conn.execute(sa.select(t.c.factor, t.c.recent).where(t.c.key == key)).first()
        if peek is not None:
            current = time.time() if now is None else now
            opens, known = _gate(_recent(peek.recent), _factor(peek.factor), limit, window, current)
            if not known:
                return _poll_delay(opens, current), None
        with self._transaction(write=True) as conn:
            if call_ref is None:
                _pacing_only(conn)
            return self._grant(conn, key, limit=limit, window=window, call_ref=call_ref, now=now)

    def _grant(
        self,
        conn: Connection,
        key: str,
        *,
        limit: int,
        window: float,
        call_ref: str | None,
        now: float | None,
    ) -> tuple[float, float | None]:
        """:meth:`pace_send`'s decision under the slot row's lock, and its writes on ``conn``."""
        t = pacing_slots_table
        row = self._lock_slot(conn, key)
        current = time.time() if now is None else now
        recent = _recent(None if row is None else row.recent)
        factor = _factor(None if row is None else row.factor)
        opens, known = _gate(recent, factor, limit, window, current)
        if not known:
            # Waiting on an answer not reported yet: look again soon, it may come any moment.
            return _poll_delay(opens, current), None
        horizon = PACING_ADVANCE_WINDOWS * window
        if opens - current > horizon:
            # Known but far (a widened spacing): ask again when it is within the horizon.
            return opens - current - horizon, None
        sent = max(opens, current)
        recent = _trim_recent(recent, limit, window, current)
        recent.append([sent, None])
        if row is None:
            conn.execute(
                t.insert().values(key=key, next_at=current, last_sent_at=sent, factor=1.0, recent=recent)
            )
        else:
            conn.execute(t.update().where(t.c.key == key).values(last_sent_at=sent, recent=recent))
        if call_ref is not None:
            _mark_sending(conn, call_ref)
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


def _check_gate(limit: int, window: float) -> None:
    """Raise :class:`VonageStudioConfigError` for a gate ``limit`` outside 1..1000 or a ``window``
    that is not a positive finite number."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise VonageStudioConfigError(f"limit: must be an integer 1..1000, got {limit!r}")
    if not (math.isfinite(window) and window > 0):
        raise VonageStudioConfigError(f"window: must be a finite number > 0, got {window!r}")


def _poll_delay(opens: float, current: float) -> float:
    """How long to wait before asking again while an answer is outstanding: soon (it may come
    any moment), between 1 and 10 ms."""
    return min(max(opens - current, 0.001), 0.01)


def _trim_recent(recent: list[list[Any]], limit: int, window: float, current: float) -> list[list[Any]]:
    """The recent requests worth keeping: the newest ``limit - 1`` and every older one that may
    still hold the gate (over less than the widest spacing ago), so out-of-order answers are
    all seen."""
    keep = max(len(recent) - (limit - 1), 0)
    return [
        entry
        for index, entry in enumerate(recent)
        if index >= keep or _over(entry, window) + window * PACING_MAX_FACTOR >= current
    ]


def _mark_sending(conn: Connection, call_ref: str) -> None:
    """Compare-and-set ``call_ref``'s row ``queued`` -> ``sending`` inside the pacing transaction.

    :raises UnknownCall: there is no such call.
    :raises CallStateConflict: the row is not ``queued``. Raising rolls the transaction back:
        the send is not recorded.
    """
    calls = calls_table
    changed = conn.execute(
        calls.update()
        .where(calls.c.call_ref == call_ref, calls.c.state == CallState.QUEUED.value)
        .values(state=CallState.SENDING.value, updated_at=_utcnow())
    ).rowcount
    if changed:
        return
    state = conn.execute(sa.select(calls.c.state).where(calls.c.call_ref == call_ref)).scalar_one_or_none()
    if state is None:
        raise UnknownCall(f"call_ref {call_ref!r}: no such call in the call store")
    raise CallStateConflict(
        f"call_ref {call_ref!r}: cannot start sending a call in state {state!r} (allowed: queued)"
    )


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
