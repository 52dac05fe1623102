"""The call ledger's rows: the two-phase dial record (``queued`` -> ``sending`` -> ``placed`` /
``rejected`` / ``unknown``), the waiting task's verdict, and reads of the ledger.

Every state change is a compare-and-set inside one UPDATE, so two processes holding the same
row never both win (see :mod:`airflow_provider_vonage_studio.ledger` for what a row means).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from airflow_provider_vonage_studio.calls import OUTCOME_VALUES, CallRecord, CallState, OutcomeSource
from airflow_provider_vonage_studio.exceptions import UnknownCall, VonageStudioConfigError
from airflow_provider_vonage_studio.store.engine import StoreBase
from airflow_provider_vonage_studio.store.errors import CallStateConflict
from airflow_provider_vonage_studio.store.schema import _CALL_REF_MAX, _as_utc, _chunks, _utcnow, calls_table


class CallRows(StoreBase):
    """The ledger part of :class:`~airflow_provider_vonage_studio.store.CallStore`."""

    def begin_call(
        self,
        call_ref: str,
        *,
        agent_id: str,
        destination: str,
        dag_id: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        map_index: int = -1,
        recipient_key: str | None = None,
        channel: str | None = None,
    ) -> tuple[bool, CallRecord]:
        """Write the ledger row of a call about to be dialed, unless it exists already.

        Returns ``(True, record)`` when this call created the ``queued`` row and
        ``(False, existing)`` when the row was already there (a retry, or another process
        that won the race: exactly one caller ever gets ``True``). ``destination`` is the
        normalised number or SIP URI. Raises :class:`VonageStudioConfigError` for an empty
        or over-long ``call_ref`` or an empty ``agent_id``/``destination``. ``channel`` is
        ``None`` for a call; a message's row names its channel (see ``begin_message``).
        """
        _check_call_ref(call_ref)
        if not agent_id:
            raise VonageStudioConfigError("agent_id: must not be empty")
        if not destination:
            raise VonageStudioConfigError("destination: must not be empty")
        now = _utcnow()
        values: dict[str, Any] = {
            "call_ref": call_ref,
            "agent_id": agent_id,
            "destination": destination,
            "state": CallState.QUEUED.value,
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "map_index": map_index,
            "recipient_key": recipient_key,
            "channel": channel,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._transaction(write=True) as conn:
                conn.execute(calls_table.insert().values(**values))
        except IntegrityError:
            # The primary key settles the race: on PostgreSQL the loser's INSERT waits for
            # the winner's commit, then fails here; on SQLite writers are serialised.
            existing = self.get_call(call_ref)
            if existing is None:  # pragma: no cover - rows are never deleted
                raise
            return False, existing
        return True, _record_from_values(values)

    def restart_call(self, call_ref: str, *, expected: CallRecord | None = None) -> None:
        """Put an ``unknown`` (or stale ``sending``) call back to ``queued`` for an explicit redial.

        Clears the earlier error and bumps ``updated_at``. With ``expected`` — the record the
        caller based its decision on — the restart is a compare-and-set: it happens only while
        the row still has that state and ``updated_at``, so two concurrent redials cannot both
        win, and a ``rejected`` row may then be restarted too (the hook does that only for
        refusals that were definitely not dialed: 429, 5xx gateway errors, refused connections).

        Raises :class:`UnknownCall` when there is no such call and :class:`CallStateConflict`
        when it was placed or rejected (without ``expected``), or changed since ``expected``.
        """
        allowed: tuple[CallState, ...] = (CallState.SENDING, CallState.UNKNOWN)
        where = None
        if expected is not None:
            allowed = (expected.state,)
            where = calls_table.c.updated_at == expected.updated_at
        self._update_call(
            call_ref,
            {"state": CallState.QUEUED.value, "error_status": None, "error_message": None},
            allowed=allowed,
            action="restart",
            where=where,
        )

    def mark_sending(self, call_ref: str) -> None:
        """Compare-and-set ``queued`` -> ``sending``: the last ledger step before the request.

        Of two processes holding the same ``queued`` row only one wins; a row goes back to
        ``queued`` only after a definite "not placed" (:meth:`requeue`), so a winner is never
        racing a request in flight. :meth:`pace_send` does the same step inside its pacing
        transaction.

        Raises :class:`UnknownCall` when there is no such call and :class:`CallStateConflict`
        when it is not ``queued`` (another try is dialing it, or has finished).
        """
        self._update_call(
            call_ref,
            {"state": CallState.SENDING.value},
            allowed=(CallState.QUEUED,),
            action="start sending",
        )

    def requeue(self, call_ref: str, status: int | None = None, message: str | None = None) -> None:
        """Compare-and-set ``sending`` -> ``queued`` after an answer that means "definitely not
        placed" (429, 502/503/504, a refused connection), keeping why in ``error_status`` /
        ``error_message``: a later attempt or try may dial it.

        Raises :class:`UnknownCall` when there is no such call and :class:`CallStateConflict`
        when it is no longer ``sending`` (a later try marked it ``unknown`` meanwhile).
        """
        self._update_call(
            call_ref,
            {"state": CallState.QUEUED.value, "error_status": status, "error_message": message},
            allowed=(CallState.SENDING,),
            action="requeue",
        )

    def mark_placed(self, call_ref: str, session_id: str, session_start_time: datetime) -> None:
        """Record that the API accepted the call (``placed``). A naive start time is taken as UTC.

        Raises :class:`UnknownCall` when there is no such call.
        """
        self._update_call(
            call_ref,
            {
                "state": CallState.PLACED.value,
                "session_id": session_id,
                "session_start_time": session_start_time,
                "error_status": None,
                "error_message": None,
            },
        )

    def mark_rejected(self, call_ref: str, status: int | None, message: str) -> None:
        """Record that the API refused the call (``rejected``: definitely not placed).

        Raises :class:`UnknownCall` when there is no such call.
        """
        self._update_call(
            call_ref,
            {"state": CallState.REJECTED.value, "error_status": status, "error_message": message},
        )

    def mark_unknown(self, call_ref: str, message: str, *, expected: CallRecord | None = None) -> None:
        """Record that the request was sent but no answer came back (``unknown``).

        With ``expected`` — the record the caller based its decision on — the change is a
        compare-and-set: it happens only while the row still has that state and ``updated_at``.
        That is how a later try labels a ``sending`` row left by a killed try without ever
        overwriting an outcome recorded meanwhile.

        Raises :class:`UnknownCall` when there is no such call and :class:`CallStateConflict`
        when the row changed since ``expected``.
        """
        self._update_call(
            call_ref,
            {"state": CallState.UNKNOWN.value, "error_status": None, "error_message": message},
            allowed=None if expected is None else (expected.state,),
            action="mark unknown",
            where=None if expected is None else calls_table.c.updated_at == expected.updated_at,
        )

    def record_outcome(self, call_ref: str, outcome: str, *, source: str | None = None) -> None:
        """Store the final verdict a waiting task reported for the call (``answered`` or a failure
        status), with ``outcome_at`` = now and, when given, ``outcome_source`` = ``source`` (a
        :class:`~airflow_provider_vonage_studio.calls.OutcomeSource` value: where the truth came
        from; ``None`` keeps whatever the row says, e.g. ``callback`` set with its status).

        The first verdict wins: a call that already has one keeps it (two sensors watching one
        call, a task retried after its verdict was stored). ``updated_at`` is left alone: the
        ledger's compare-and-set steps key on it, and a verdict is not a change of the dial.

        :raises VonageStudioConfigError: ``outcome`` is not one of :data:`OUTCOME_VALUES`, or
            ``source`` not an ``OutcomeSource`` value.
        :raises UnknownCall: there is no such call.
        """
        if outcome not in OUTCOME_VALUES:
            raise VonageStudioConfigError(
                f"outcome: expected one of {', '.join(OUTCOME_VALUES)}, got {outcome!r}"
            )
        _check_source(source)
        t = calls_table
        with self._transaction(write=True) as conn:
            # "outcome IS NULL" in the UPDATE itself: of two racing writers only one matches.
            if conn.execute(
                t.update()
                .where(t.c.call_ref == call_ref, t.c.outcome.is_(None))
                .values(outcome=outcome, outcome_at=_utcnow(), **_source_values(source))
            ).rowcount:
                return
            exists = conn.execute(sa.select(t.c.call_ref).where(t.c.call_ref == call_ref)).first()
        if exists is None:
            raise UnknownCall(f"call_ref {call_ref!r}: no such call in the call store")

    def record_outcomes(
        self, outcomes: Mapping[str, str], *, source: str | Mapping[str, str] | None = None
    ) -> int:
        """:meth:`record_outcome` for many calls in one write transaction (a batch's verdicts).

        ``source`` is one :class:`~airflow_provider_vonage_studio.calls.OutcomeSource` value for
        all of them, or a mapping call_ref → value (a call missing from it keeps its row's).
        Calls that already have a verdict keep it; unknown call refs are skipped. Returns
        how many verdicts were written.

        :raises VonageStudioConfigError: before anything is written, for a value not in
            :data:`OUTCOME_VALUES` or a source that is not an ``OutcomeSource`` value.
        """
        bad = sorted({value for value in outcomes.values() if value not in OUTCOME_VALUES})
        if bad:
            raise VonageStudioConfigError(
                f"outcome: expected one of {', '.join(OUTCOME_VALUES)}, got {bad!r}"
            )
        sources = source if isinstance(source, Mapping) else dict.fromkeys(outcomes, source)
        for value in set(sources.values()):
            _check_source(value)
        if not outcomes:
            return 0
        t = calls_table
        now = _utcnow()
        written = 0
        groups: dict[tuple[str, str], list[str]] = {}
        for ref, value in outcomes.items():
            groups.setdefault((value, sources.get(ref) or ""), []).append(ref)
        with self._transaction(write=True) as conn:
            for (value, origin), refs in sorted(groups.items()):
                for chunk in _chunks(sorted(refs)):
                    written += conn.execute(
                        t.update()
                        .where(t.c.call_ref.in_(chunk), t.c.outcome.is_(None))
                        .values(outcome=value, outcome_at=now, **_source_values(origin or None))
                    ).rowcount
        return written

    def set_parameters(self, call_ref: str, params: dict[str, str]) -> None:
        """Keep what the conversation collected (Insights session parameters) with the call.

        Replaces any earlier value. Raises :class:`UnknownCall` when there is no such call.
        """
        self._update_call(call_ref, {"parameters": dict(params)})

    def _update_call(
        self,
        call_ref: str,
        values: dict[str, Any],
        *,
        allowed: tuple[CallState, ...] | None = None,
        action: str = "update",
        where: Any = None,
    ) -> None:
        values = {**values, "updated_at": _utcnow()}
        with self._transaction(write=True) as conn:
            stmt = calls_table.update().where(calls_table.c.call_ref == call_ref)
            if where is not None:
                stmt = stmt.where(where)
            if allowed is not None:
                # The state test is part of the UPDATE, so a concurrent change cannot slip
                # in between a check and the write.
                stmt = stmt.where(calls_table.c.state.in_([s.value for s in allowed]))
            if conn.execute(stmt.values(**values)).rowcount:
                return
            state = conn.execute(
                sa.select(calls_table.c.state).where(calls_table.c.call_ref == call_ref)
            ).scalar_one_or_none()
        if state is None:
            raise UnknownCall(f"call_ref {call_ref!r}: no such call in the call store")
        raise CallStateConflict(
            f"call_ref {call_ref!r}: cannot {action} a call in state {state!r} "
            f"(allowed: {', '.join(s.value for s in allowed or ())})"
        )

    def get_call(self, call_ref: str) -> CallRecord | None:
        """The ledger row of ``call_ref``, or ``None`` when there is none."""
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(calls_table).where(calls_table.c.call_ref == call_ref)).first()
        return None if row is None else _record_from_values(row._mapping)

    def get_calls(self, call_refs: Sequence[str]) -> dict[str, CallRecord]:
        """Rows of many calls at once (missing refs are simply absent from the result).

        One query per 500 refs, all in one read transaction: a batch sensor watching
        1,000 calls must not issue 1,000 queries.
        """
        refs = list(dict.fromkeys(call_refs))
        found: dict[str, CallRecord] = {}
        if not refs:
            return found
        with self._transaction(write=False) as conn:
            for chunk in _chunks(refs):
                for row in conn.execute(sa.select(calls_table).where(calls_table.c.call_ref.in_(chunk))):
                    record = _record_from_values(row._mapping)
                    found[record.call_ref] = record
        return found

    def recent_calls(
        self, limit: int = 500, *, dag_id: str | None = None, run_id: str | None = None
    ) -> list[CallRecord]:
        """The ``limit`` most recently created calls, newest first, optionally of one DAG / run.

        The filters are part of the query, so an older run is found however many calls came since.
        Raises :class:`VonageStudioConfigError` for a negative ``limit``.
        """
        if limit < 0:
            raise VonageStudioConfigError(f"limit: must be >= 0, got {limit}")
        query = sa.select(calls_table)
        if dag_id is not None:
            query = query.where(calls_table.c.dag_id == dag_id)
        if run_id is not None:
            query = query.where(calls_table.c.run_id == run_id)
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                query.order_by(calls_table.c.created_at.desc(), calls_table.c.call_ref.desc()).limit(limit)
            ).all()
        return [_record_from_values(row._mapping) for row in rows]

    def calls_between(
        self,
        since: datetime,
        until: datetime,
        *,
        statuses: Iterable[str] | None = None,
        agent_id: str | None = None,
    ) -> list[CallRecord]:
        """Calls created in ``[since, until)``, oldest first (e.g. yesterday's, to call back).

        ``statuses`` keeps only calls whose reported status is one of them (calls without a
        status, i.e. answered or still waiting, never match); ``agent_id`` only that agent's.
        Naive datetimes are taken as UTC. Raises :class:`VonageStudioConfigError` when
        ``until`` is before ``since``.
        """
        since, until = _as_utc(since), _as_utc(until)
        if until < since:
            raise VonageStudioConfigError("until: must not be before since")
        t = calls_table
        query = sa.select(t).where(t.c.created_at >= since, t.c.created_at < until)
        if statuses is not None:
            query = query.where(t.c.status.in_(list(statuses)))
        if agent_id is not None:
            query = query.where(t.c.agent_id == agent_id)
        with self._transaction(write=False) as conn:
            rows = conn.execute(query.order_by(t.c.created_at, t.c.call_ref)).all()
        return [_record_from_values(row._mapping) for row in rows]


_SOURCES = tuple(item.value for item in OutcomeSource)


def _check_source(source: str | None) -> None:
    """Raise :class:`VonageStudioConfigError` for a ``source`` that is not an ``OutcomeSource`` value."""
    if source is not None and source not in _SOURCES:
        raise VonageStudioConfigError(f"source: expected one of {', '.join(_SOURCES)}, got {source!r}")


def _source_values(source: str | None) -> dict[str, str]:
    """The UPDATE values that set ``outcome_source`` (none: the row keeps its own)."""
    return {} if source is None else {"outcome_source": str(source)}


def _check_call_ref(call_ref: str) -> None:
    if not call_ref or len(call_ref) > _CALL_REF_MAX:
        raise VonageStudioConfigError(
            f"call_ref: must be 1..{_CALL_REF_MAX} characters, got {len(call_ref or '')}"
        )


def _record_from_values(values: Mapping[Any, Any]) -> CallRecord:
    """Build a :class:`CallRecord` from a row mapping (or the dict that was inserted)."""
    get = values.get
    return CallRecord(
        call_ref=values["call_ref"],
        agent_id=values["agent_id"],
        destination=values["destination"],
        state=CallState(values["state"]),
        dag_id=get("dag_id"),
        run_id=get("run_id"),
        task_id=get("task_id"),
        map_index=values["map_index"],
        recipient_key=get("recipient_key"),
        session_id=get("session_id"),
        session_start_time=get("session_start_time"),
        error_status=get("error_status"),
        error_message=get("error_message"),
        status=get("status"),
        status_at=get("status_at"),
        conversation_uuid=get("conversation_uuid"),
        callback_payload=get("callback_payload"),
        parameters=get("parameters"),
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        outcome=get("outcome"),
        outcome_at=get("outcome_at"),
        outcome_source=get("outcome_source"),
        ended_at=get("ended_at"),
        channel=get("channel"),
    )
