"""The change feed of the call ledger: which call rows changed since a reader's cursor.

Every write of a call row takes the next ``change_seq`` (schema version 4, see
:mod:`.schema`), so a reader that waits for thousands of calls asks once per round "what
changed since my cursor" (one indexed query, whatever the number of waiters) instead of
re-reading every row it waits for.

Commit order and sequence order differ on PostgreSQL: a transaction that took number 99 may
commit after one that took 100, so "everything above the largest number seen" would skip it.
There every write also stores its transaction id (``change_xid``), and a cursor remembers the
oldest transaction still running when it was read (the snapshot's ``xmin``): anything that
read could not see has a transaction id at least that large, so the next read asks for
``change_xid >= xmin``. Rows it saw already may come again (readers compare ``change_seq``);
none is ever skipped. On SQLite every write holds the database's write lock, numbers follow
commit order, and ``change_seq > seq`` is exact.

Named cursors (:meth:`Changes.load_cursor`, :meth:`Changes.advance_cursor`) keep a reader's
position, and the call_refs it has handed over, durably in the store: the outcome-event
trigger resumes there after a triggerer restart.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_vonage_studio.calls import CallRecord
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.store.call_rows import _record_from_values
from airflow_provider_vonage_studio.store.engine import StoreBase
from airflow_provider_vonage_studio.store.schema import (
    _CALL_REF_MAX,
    _CHUNK,
    _KEY_MAX,
    _chunks,
    _utcnow,
    calls_table,
    change_cursors_table,
)

__all__ = ["Change", "ChangeCursor", "Changes"]

# The call_ref of a named cursor's position row (real call_refs are never empty).
_POSITION = ""


@dataclass(frozen=True)
class ChangeCursor:
    """A reader's position in the change feed (JSON-safe through :meth:`to_json`).

    ``seq``: the largest ``change_seq`` seen; on SQLite everything up to it was seen.
    ``xmin``: PostgreSQL only: the oldest transaction running when the position was read;
    rows written by it or any later transaction are read again.
    """

    seq: int
    xmin: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "xmin": self.xmin}

    @classmethod
    def from_json(cls, value: Any) -> ChangeCursor | None:
        """The cursor stored as ``value`` (``None`` for anything unreadable: start afresh)."""
        if not isinstance(value, dict) or not isinstance(value.get("seq"), int):
            return None
        xmin = value.get("xmin")
        return cls(int(value["seq"]), int(xmin) if isinstance(xmin, int) else None)


@dataclass(frozen=True)
class Change:
    """One call row as a change read it: its ``change_seq`` and the row."""

    seq: int
    record: CallRecord


class Changes(StoreBase):
    """The change-feed part of :class:`~airflow_provider_vonage_studio.store.CallStore`."""

    def change_cursor(self) -> ChangeCursor:
        """The feed's current position, reading no rows (where a new reader starts, before its
        one full read of the rows it cares about)."""
        t = calls_table
        with self._transaction(write=False) as conn:
            if self._postgres(conn):
                row = conn.execute(sa.select(sa.func.max(t.c.change_seq), _snapshot_xmin())).one()
                return ChangeCursor(int(row[0] or 0), int(row[1]))
            return ChangeCursor(int(conn.execute(sa.select(sa.func.max(t.c.change_seq))).scalar() or 0))

    def changes_since(
        self, cursor: ChangeCursor | None, *, also: Sequence[str] = ()
    ) -> tuple[list[Change], ChangeCursor]:
        """Rows changed since ``cursor`` (``None``: start now, no rows), oldest first, and the
        cursor to pass next time; plus the current rows of ``also`` (refs whose deadline fell
        due), in the same query when they fit one ``IN`` (500 refs), else one more per 500.

        On PostgreSQL rows seen before may come again (compare :attr:`Change.seq`).
        """
        refs = list(dict.fromkeys(also))
        if cursor is None:
            # The position first, then the rows: whatever changes in between comes again next time.
            start = self.change_cursor()
            with self._transaction(write=False) as conn:
                return _rows(conn, refs), start
        inline, extra = (refs, []) if len(refs) <= _CHUNK else ([], refs)
        with self._transaction(write=False) as conn:
            changes, new = self._read_changes(conn, cursor, inline)
            changes.extend(_rows(conn, extra))
        return changes, new

    def _read_changes(
        self, conn: Connection, cursor: ChangeCursor, refs: list[str]
    ) -> tuple[list[Change], ChangeCursor]:
        postgres = self._postgres(conn)
        # The statement is built once (bound parameters): a poll round runs it every few seconds.
        query = _changes_query(postgres, bool(refs))
        # A cursor without xmin on PostgreSQL (first read of a stored one): 0 reads everything once.
        params: dict[str, Any] = {"xmin": cursor.xmin or 0} if postgres else {"seq": cursor.seq}
        if refs:
            params["refs"] = refs
        changes = []
        xmin = cursor.xmin or 0
        for row in conn.execute(query, params):
            if postgres:
                xmin = int(row.vs_snapshot_xmin)
            if row.call_ref is not None:
                changes.append(_change(row._mapping))
        top = max((c.seq for c in changes), default=cursor.seq)
        return changes, ChangeCursor(max(top, cursor.seq), xmin if postgres else None)

    @staticmethod
    def _postgres(conn: Connection) -> bool:
        return conn.dialect.name == "postgresql"

    # ---------------------------------------------------------------- named cursors

    def load_cursor(self, name: str) -> ChangeCursor | None:
        """The stored position of the reader ``name`` (``None``: never stored)."""
        _check_name(name)
        t = change_cursors_table
        with self._transaction(write=False) as conn:
            value = conn.execute(
                sa.select(t.c.position).where(t.c.name == name, t.c.call_ref == _POSITION)
            ).scalar_one_or_none()
        return ChangeCursor.from_json(value)

    def handed_over(self, name: str, call_refs: Iterable[str]) -> set[str]:
        """Which of ``call_refs`` the reader ``name`` has recorded as handed over."""
        _check_name(name)
        refs = [ref for ref in dict.fromkeys(call_refs) if ref]
        t = change_cursors_table
        found: set[str] = set()
        with self._transaction(write=False) as conn:
            for chunk in _chunks(refs):
                query = sa.select(t.c.call_ref).where(t.c.name == name, t.c.call_ref.in_(chunk))
                found.update(ref for (ref,) in conn.execute(query))
        return found

    def unacknowledged(self, name: str, *, handed_before: datetime | None = None) -> list[str]:
        """The call_refs the reader ``name`` handed over that no consumer acknowledged yet (only
        those last handed over before ``handed_before``, when given), oldest first."""
        _check_name(name)
        t = change_cursors_table
        with self._transaction(write=False) as conn:
            query = sa.select(t.c.call_ref).where(
                t.c.name == name, t.c.call_ref != _POSITION, t.c.position.is_(None)
            )
            if handed_before is not None:
                query = query.where(t.c.updated_at < handed_before)
            return [ref for (ref,) in conn.execute(query.order_by(t.c.updated_at, t.c.call_ref))]

    def handed_again(self, name: str, call_refs: Iterable[str]) -> None:
        """Note that the reader ``name`` handed ``call_refs`` over once more (now)."""
        _check_name(name)
        refs = [ref for ref in dict.fromkeys(call_refs) if ref]
        t = change_cursors_table
        with self._transaction(write=True) as conn:
            for chunk in _chunks(refs):
                key = (t.c.name == name) & t.c.call_ref.in_(chunk) & t.c.position.is_(None)
                conn.execute(t.update().where(key).values(updated_at=_utcnow()))

    def acknowledge(self, name: str, call_refs: Iterable[str]) -> set[str]:
        """Claim ``call_refs`` handed over by the reader ``name`` for processing: the ones this
        call acknowledged (handed over, and not acknowledged before). Atomic: of two consumers
        claiming the same call_ref, exactly one gets it."""
        _check_name(name)
        refs = [ref for ref in dict.fromkeys(call_refs) if ref]
        t = change_cursors_table
        claimed: set[str] = set()
        now = _utcnow()
        with self._transaction(write=True) as conn:
            for ref in refs:
                key = (t.c.name == name) & (t.c.call_ref == ref) & t.c.position.is_(None)
                done = t.update().where(key).values(position=_ACKNOWLEDGED, updated_at=now)
                if conn.execute(done).rowcount:
                    claimed.add(ref)
        return claimed

    def advance_cursor(self, name: str, cursor: ChangeCursor, handed: Iterable[str] = ()) -> None:
        """Store ``cursor`` as the position of ``name`` and mark ``handed`` call_refs as handed
        over, in one transaction (a crash leaves both as they were, or both written)."""
        _check_name(name)
        marks = [ref for ref in dict.fromkeys(handed) if ref]
        for ref in marks:
            if len(ref) > _CALL_REF_MAX:
                raise VonageStudioConfigError(f"call_ref: must be 1..{_CALL_REF_MAX} characters")
        t = change_cursors_table
        now = _utcnow()
        with self._transaction(write=True) as conn:
            key = (t.c.name == name) & (t.c.call_ref == _POSITION)
            if not conn.execute(
                t.update().where(key).values(position=cursor.to_json(), updated_at=now)
            ).rowcount:
                conn.execute(
                    t.insert().values(
                        name=name, call_ref=_POSITION, position=cursor.to_json(), updated_at=now
                    )
                )
            if marks:
                known = {
                    ref
                    for (ref,) in conn.execute(
                        sa.select(t.c.call_ref).where(t.c.name == name, t.c.call_ref.in_(marks))
                    )
                }
                new = [
                    {"name": name, "call_ref": ref, "updated_at": now} for ref in marks if ref not in known
                ]
                if new:
                    conn.execute(t.insert(), new)


#: ``position`` of a mark a consumer acknowledged (``NULL``: handed over, not acknowledged yet).
_ACKNOWLEDGED = {"acknowledged": True}


@functools.cache
def _changes_query(postgres: bool, with_refs: bool) -> Any:
    """The change-feed SELECT (bound ``seq`` or ``xmin``, and ``refs`` when ``with_refs``)."""
    t = calls_table
    if postgres:
        changed = t.c.change_xid >= sa.bindparam("xmin", type_=sa.BigInteger())
    else:
        changed = t.c.change_seq > sa.bindparam("seq", type_=sa.BigInteger())
    if with_refs:
        changed = sa.or_(changed, t.c.call_ref.in_(sa.bindparam("refs", expanding=True)))
    if not postgres:
        return sa.select(t).where(changed).order_by(t.c.change_seq)
    # The snapshot's xmin in the same statement as the rows (one round trip): a one-row CTE
    # left-joined to the changed rows, so it comes back even when nothing changed.
    snap = sa.select(_snapshot_xmin().label("vs_snapshot_xmin")).cte("vs_snapshot")
    return (
        sa.select(snap.c.vs_snapshot_xmin, t).select_from(snap.outerjoin(t, changed)).order_by(t.c.change_seq)
    )


def _snapshot_xmin() -> Any:
    # txid_* rather than pg_current_snapshot(): the same numbers (epoch-extended bigint) on
    # every supported PostgreSQL, 9.6 included.
    return sa.func.txid_snapshot_xmin(sa.func.txid_current_snapshot())


def _rows(conn: Connection, refs: list[str]) -> list[Change]:
    """The current rows of ``refs`` (one ``IN`` per 500), as changes with their numbers."""
    found: list[Change] = []
    for chunk in _chunks(refs):
        query = sa.select(calls_table).where(calls_table.c.call_ref.in_(chunk))
        found.extend(_change(row._mapping) for row in conn.execute(query))
    return found


def _change(values: Any) -> Change:
    return Change(int(values["change_seq"] or 0), _record_from_values(values))


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > _KEY_MAX:
        raise VonageStudioConfigError(f"name: the cursor's name must be 1..{_KEY_MAX} characters")
