"""Per-recipient results of ``MakeCallsOperator`` batches: one row per recipient of a task
instance, written a chunk at a time while the batch dials, read back by run (the outcome JSON
route ``/outcomes/batches/...`` and ``vonage-studio calls results``).

A batch of 100,000 cannot return its results through XCom; the XCom carries counts and a
reference to these rows instead. Destinations are stored as the ledger stores them (the
normalised number or SIP URI); whoever shows them redacts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict

import sqlalchemy as sa

from airflow_provider_vonage_studio.calls import TaskIdentity
from airflow_provider_vonage_studio.store.engine import StoreBase
from airflow_provider_vonage_studio.store.schema import _chunks, _utcnow, batch_results_table

__all__ = ["BatchResultRow", "BatchResults"]


class BatchResultRow(TypedDict, total=False):
    """One recipient's stored result (the keys :meth:`BatchResults.write_batch_results` takes
    and :meth:`BatchResults.batch_results` returns, with the task instance's four ids)."""

    position: int
    call_ref: str | None
    destination: str | None
    recipient_key: str | None
    result: str
    reason: str | None
    session_id: str | None
    session_start_time: datetime | None
    duplicate_of: int | None
    opens_at: datetime | None
    status: str | None


_FIELDS = tuple(BatchResultRow.__annotations__)


def _where(task: TaskIdentity) -> Any:
    t = batch_results_table
    return sa.and_(
        t.c.dag_id == task.dag_id,
        t.c.run_id == task.run_id,
        t.c.task_id == task.task_id,
        t.c.map_index == task.map_index,
    )


class BatchResults(StoreBase):
    """The batch-results part of :class:`~airflow_provider_vonage_studio.store.CallStore`."""

    def write_batch_results(self, task: TaskIdentity, rows: Sequence[BatchResultRow]) -> None:
        """Store (or replace) the results of ``rows`` (positions ``position``) of ``task``'s
        batch, in one transaction: a chunk of a pass, written after it was dialed.

        A retried task writes the same positions again; their rows are replaced.
        """
        if not rows:
            return
        t = batch_results_table
        now = _utcnow()
        ids = {
            "dag_id": task.dag_id,
            "run_id": task.run_id,
            "task_id": task.task_id,
            "map_index": task.map_index,
        }
        values = [{**ids, **{f: row.get(f) for f in _FIELDS}, "updated_at": now} for row in rows]
        positions = [row["position"] for row in rows]
        with self._transaction(write=True) as conn:
            conn.execute(
                t.delete().where(_where(task), t.c.position >= min(positions), t.c.position <= max(positions))
            )
            # executemany of one cached statement: a multi-row VALUES would be compiled anew per chunk.
            conn.execute(t.insert(), values)

    def trim_batch_results(self, task: TaskIdentity, count: int) -> int:
        """Drop ``task``'s rows at positions ``count`` and beyond (an earlier try had a longer
        list); returns how many were dropped."""
        t = batch_results_table
        with self._transaction(write=True) as conn:
            return int(conn.execute(t.delete().where(_where(task), t.c.position >= int(count))).rowcount or 0)

    def set_batch_statuses(self, task: TaskIdentity, statuses: Mapping[str, str | None]) -> None:
        """Record the final ``status`` of the placed calls ``{call_ref: status}`` of ``task``'s batch."""
        if not statuses:
            return
        t = batch_results_table
        statement = (
            t.update()
            .where(_where(task), t.c.call_ref == sa.bindparam("ref"))
            .values(status=sa.bindparam("new_status"), updated_at=sa.bindparam("now"))
        )
        now = _utcnow()
        refs = list(statuses)
        with self._transaction(write=True) as conn:
            for chunk in _chunks(refs):
                conn.execute(statement, [{"ref": r, "new_status": statuses[r], "now": now} for r in chunk])

    def batch_results(
        self,
        dag_id: str,
        run_id: str,
        task_id: str | None = None,
        map_index: int | None = None,
        *,
        offset: int = 0,
        limit: int | None = 1000,
    ) -> list[dict[str, Any]]:
        """Stored results of a run's batches (optionally one task / map index), ordered by task,
        map index and position; ``offset`` / ``limit`` page through them (``limit=None``: all)."""
        t = batch_results_table
        query = sa.select(t).where(t.c.dag_id == dag_id, t.c.run_id == run_id)
        if task_id is not None:
            query = query.where(t.c.task_id == task_id)
        if map_index is not None:
            query = query.where(t.c.map_index == int(map_index))
        query = query.order_by(t.c.task_id, t.c.map_index, t.c.position).offset(max(int(offset), 0))
        if limit is not None:
            query = query.limit(max(int(limit), 0))
        with self._transaction(write=False) as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def batch_result_counts(
        self, dag_id: str, run_id: str, task_id: str | None = None
    ) -> dict[tuple[str, int], dict[str, int]]:
        """``{(task_id, map_index): {result: count}}`` of a run's stored batch results."""
        t = batch_results_table
        query = sa.select(t.c.task_id, t.c.map_index, t.c.result, sa.func.count()).where(
            t.c.dag_id == dag_id, t.c.run_id == run_id
        )
        if task_id is not None:
            query = query.where(t.c.task_id == task_id)
        query = query.group_by(t.c.task_id, t.c.map_index, t.c.result)
        counts: dict[tuple[str, int], dict[str, int]] = {}
        with self._transaction(write=False) as conn:
            for task, index, result, n in conn.execute(query):
                counts.setdefault((task, int(index)), {})[result] = int(n)
        return counts
