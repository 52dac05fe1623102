"""``GET /outcomes/batches/{dag_id}/{run_id}``: the stored per-recipient results of a run's
``MakeCallsOperator`` batches as JSON (what a batch's XCom summary refers to).

Query parameters: ``task_id`` and ``map_index`` (one task instance), ``offset`` and ``limit``
(default 1,000, at most :data:`MAX_LIMIT`) to page through a large batch. The answer::

    {"dag_id", "run_id", "counts": [{"task_id", "map_index", "counts": {result: n}}],
     "results": [{"task_id", "map_index", "index", "to" (redacted), "key", "call_ref",
                  "result", "reason", "session_id", "session_start_time", "status", ...}],
     "offset", "limit", "next_offset" (null on the last page)}

Guarded like the outcome view (the app's ``outcome_view`` mode): ``off`` answers 404,
``airflow`` needs a user of the Airflow API server who may read the DAG (403 otherwise).
Numbers are always redacted; ``422`` names a malformed query parameter, ``503`` says the
store is unavailable.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_vonage_studio.callbacks.responses import _error
from airflow_provider_vonage_studio.callbacks.settings import LOGGER_NAME, OutcomeViewMode

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallStore

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "add_batch_result_routes", "batch_results_payload"]

log = logging.getLogger(LOGGER_NAME)

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


def batch_results_payload(
    store: CallStore,
    dag_id: str,
    run_id: str,
    *,
    task_id: str | None = None,
    map_index: int | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """The route's answer (also what ``vonage-studio calls results -o json`` prints); numbers redacted."""
    from airflow_provider_vonage_studio.recipients import stored_result

    rows = store.batch_results(dag_id, run_id, task_id, map_index, offset=offset, limit=limit + 1)
    counts = store.batch_result_counts(dag_id, run_id, task_id)
    more = len(rows) > limit
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "counts": [
            {"task_id": task, "map_index": index, "counts": by_result}
            for (task, index), by_result in sorted(counts.items())
            if map_index is None or index == map_index
        ],
        "results": [stored_result(row) for row in rows[:limit]],
        "offset": offset,
        "limit": limit,
        "next_offset": offset + limit if more else None,
    }


def _int(query: Any, name: str, default: int | None, low: int, high: int | None) -> int | str | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        return f"{name}: expected an integer"
    if value < low or (high is not None and value > high):
        return f"{name}: expected {low}..{high}" if high is not None else f"{name}: expected at least {low}"
    return value


def add_batch_result_routes(app: FastAPI, get_store: Callable[[], CallStore], mode: OutcomeViewMode) -> None:
    """Add ``GET /outcomes/batches/{dag_id}/{run_id}`` to ``app``, guarded as ``mode`` says."""
    from airflow_provider_vonage_studio.callbacks.outcomes import _airflow_guard

    @app.get("/outcomes/batches/{dag_id}/{run_id}")
    async def batch_results(request: Request, dag_id: str, run_id: str) -> Response:
        """A run's stored batch results as JSON (numbers redacted)."""
        if mode == "off":
            return _error(404, "the outcome view is turned off on this receiver")
        query = request.query_params
        map_index = _int(query, "map_index", None, -1, None)
        offset = _int(query, "offset", 0, 0, None)
        limit = _int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        for value in (map_index, offset, limit):
            if isinstance(value, str):
                return _error(422, value)
        if mode == "airflow":
            guard = await _airflow_guard(request)
            if isinstance(guard, Response):
                return guard
            try:
                readable = await run_in_threadpool(guard, {dag_id})
            except Exception as exc:
                log.error("batch results: DAG permission check failed (%s)", type(exc).__name__)
                return _error(503, "could not check which DAGs you may read; try again")
            if dag_id not in readable:
                return _error(403, "you may not read this DAG")
        try:
            payload = await run_in_threadpool(
                functools.partial(
                    batch_results_payload,
                    get_store(),
                    dag_id,
                    run_id,
                    task_id=query.get("task_id") or None,
                    map_index=map_index,  # type: ignore[arg-type]
                    offset=offset,  # type: ignore[arg-type]
                    limit=limit,  # type: ignore[arg-type]
                )
            )
        except Exception as exc:
            log.error("batch results: call store error %s", type(exc).__name__)
            return _error(503, "the call store is unavailable")
        return JSONResponse(payload)
