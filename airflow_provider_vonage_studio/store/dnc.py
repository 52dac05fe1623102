"""The do-not-call list: normalised numbers (or SIP URIs) never to be dialed."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.store.engine import StoreBase
from airflow_provider_vonage_studio.store.schema import _KEY_MAX, _chunks, _utcnow, do_not_call_table


class DoNotCall(StoreBase):
    """The do-not-call part of :class:`~airflow_provider_vonage_studio.store.CallStore`."""

    def dnc_add(self, number: str, reason: str | None = None) -> None:
        """Put a normalised number (or SIP URI) on the do-not-call list.

        Adding a listed number again keeps its ``added_at`` and replaces the reason when one
        is given. Raises :class:`VonageStudioConfigError` for an empty or over-long number.
        """
        if not number or len(number) > _KEY_MAX:
            raise VonageStudioConfigError(f"number: must be 1..{_KEY_MAX} characters, got {len(number)}")
        t = do_not_call_table
        try:
            with self._transaction(write=True) as conn:
                conn.execute(t.insert().values(number=number, reason=reason, added_at=_utcnow()))
            return
        except IntegrityError:
            pass  # already listed (possibly by a concurrent add)
        if reason is not None:
            with self._transaction(write=True) as conn:
                conn.execute(t.update().where(t.c.number == number).values(reason=reason))

    def dnc_remove(self, number: str) -> bool:
        """Take a number off the do-not-call list; ``True`` when it was listed."""
        t = do_not_call_table
        with self._transaction(write=True) as conn:
            return bool(conn.execute(t.delete().where(t.c.number == number)).rowcount)

    def dnc_list(self) -> list[tuple[str, str | None, datetime]]:
        """The whole do-not-call list as ``(number, reason, added_at)``, sorted by number."""
        t = do_not_call_table
        with self._transaction(write=False) as conn:
            rows = conn.execute(sa.select(t.c.number, t.c.reason, t.c.added_at).order_by(t.c.number)).all()
        return [(row.number, row.reason, row.added_at) for row in rows]

    def dnc_filter(self, numbers: Iterable[str]) -> set[str]:
        """Which of ``numbers`` (normalised) are on the do-not-call list (one query per 500)."""
        wanted = list(dict.fromkeys(numbers))
        listed: set[str] = set()
        if not wanted:
            return listed
        t = do_not_call_table
        with self._transaction(write=False) as conn:
            for chunk in _chunks(wanted):
                listed.update(conn.execute(sa.select(t.c.number).where(t.c.number.in_(chunk))).scalars())
        return listed
