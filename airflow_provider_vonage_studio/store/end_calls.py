"""End-call webhooks: a call confirmed answered by its agent's End Call Event webhook.

:meth:`EndCalls.record_end_call` is the one write of the receiver's ``POST /calls/<token>/ended``:
under the call's row lock it checks the same rules as a status callback (the call exists, was
placed, is not too old) and then records ``outcome='answered'``, ``outcome_source='end_call'``,
``ended_at`` and the parameters the agent collected, or says why it did not.

One truth per call: a call whose failure status (``busy``, ``timeout``, ...) was recorded first
keeps it (``FAILED_EARLIER``: a call that was answered cannot also have been busy, and whichever
report came first is the one every reader already saw); a failure callback arriving after the
end-call record is kept in the status history only (see :mod:`.statuses`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import Enum

import sqlalchemy as sa

from airflow_provider_vonage_studio.calls import ANSWERED, MESSAGE_CHANNELS, CallState, OutcomeSource
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.store.engine import StoreBase
from airflow_provider_vonage_studio.store.schema import _as_utc, _utcnow, calls_table

__all__ = ["EndCallOutcome", "EndCalls"]


class EndCallOutcome(str, Enum):
    """What :meth:`EndCalls.record_end_call` did with an end-call webhook."""

    RECORDED = "recorded"  # the call is now answered, confirmed by its agent
    DUPLICATE = "duplicate"  # the call already has its end-call record: nothing written
    UNKNOWN_CALL = "unknown_call"  # no such call_ref: nothing written
    NOT_PLACED = "not_placed"  # the call is not PLACED: nothing written
    STALE = "stale"  # older than max_age (call start or token issue time): nothing written
    FAILED_EARLIER = "failed_earlier"  # a failure status was recorded first: it stays, nothing written


class EndCalls(StoreBase):
    """The end-call part of :class:`~airflow_provider_vonage_studio.store.CallStore`."""

    def record_end_call(
        self,
        call_ref: str,
        *,
        ended_at: datetime | None,
        parameters: Mapping[str, str],
        max_age: timedelta | None = None,
        issued_at: datetime | None = None,
        now: datetime | None = None,
    ) -> EndCallOutcome:
        """Record that ``call_ref`` was answered, as its agent's end-call webhook reported.

        Checked in this order, under the call's row lock (nothing is written unless the answer
        is ``RECORDED``): no such call → ``UNKNOWN_CALL``; ledger state not ``placed`` →
        ``NOT_PLACED``; with ``max_age``, more than that since the call's start or ``issued_at``
        (the token's issue time), whichever is earlier → ``STALE``; an end-call record already
        there → ``DUPLICATE``; a failure status recorded first → ``FAILED_EARLIER``.

        Otherwise sets ``outcome='answered'`` (replacing an *inferred* ``answered`` a waiting task
        stored before the webhook arrived; its ``outcome_at`` is kept), ``outcome_source=
        'end_call'``, ``ended_at`` (default ``now``) and ``parameters`` (values as strings).
        ``updated_at`` is left alone: the ledger's compare-and-set steps key on it.

        :raises VonageStudioConfigError: ``max_age`` is not a positive timedelta.
        """
        if max_age is not None and (not isinstance(max_age, timedelta) or max_age <= timedelta(0)):
            raise VonageStudioConfigError(f"max_age: must be a positive timedelta, got {max_age!r}")
        now = _utcnow() if now is None else _as_utc(now)
        values = {str(name): str(value) for name, value in parameters.items()}
        t = calls_table
        with self._transaction(write=True) as conn:
            row = conn.execute(
                sa.select(t.c.state, t.c.session_start_time, t.c.status, t.c.outcome, t.c.outcome_source)
                .where(t.c.call_ref == call_ref)
                # A message's row is no call: no end-call webhook can confirm it.
                .where(sa.or_(t.c.channel.is_(None), t.c.channel.notin_(MESSAGE_CHANNELS)))
                .with_for_update()
            ).first()
            refused = _refusal(row, max_age, issued_at, now)
            if refused is not None:
                return refused
            assert row is not None  # _refusal answers UNKNOWN_CALL for a missing row
            conn.execute(
                t.update()
                .where(t.c.call_ref == call_ref)
                .values(
                    outcome=ANSWERED,
                    outcome_at=sa.func.coalesce(t.c.outcome_at, now) if row.outcome == ANSWERED else now,
                    outcome_source=OutcomeSource.END_CALL.value,
                    ended_at=now if ended_at is None else _as_utc(ended_at),
                    parameters=values,
                )
            )
        return EndCallOutcome.RECORDED


def _refusal(
    row: sa.Row | None, max_age: timedelta | None, issued_at: datetime | None, now: datetime
) -> EndCallOutcome | None:
    """Why the end-call webhook of the call read as ``row`` is not recorded, or ``None``."""
    if row is None:
        return EndCallOutcome.UNKNOWN_CALL
    if row.state != CallState.PLACED.value:
        return EndCallOutcome.NOT_PLACED
    if max_age is not None:
        since = [_as_utc(t) for t in (row.session_start_time, issued_at) if t is not None]
        if since and now - min(since) > max_age:
            return EndCallOutcome.STALE
    if row.outcome_source == OutcomeSource.END_CALL.value:
        return EndCallOutcome.DUPLICATE
    if row.status is not None:
        return EndCallOutcome.FAILED_EARLIER
    return None
