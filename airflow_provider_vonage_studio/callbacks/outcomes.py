"""``GET /outcomes`` and ``GET /outcomes.json``: the outcome view's routes and who may see them.

What the view shows is :mod:`~airflow_provider_vonage_studio.callbacks.view`; this module
selects the calls and guards them as the app's ``outcome_view`` mode says.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_vonage_studio.callbacks.responses import _error
from airflow_provider_vonage_studio.callbacks.settings import LOGGER_NAME, OutcomeViewMode

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.callbacks import view
    from airflow_provider_vonage_studio.store import CallRecord, CallStore

log = logging.getLogger(LOGGER_NAME)


def _add_outcome_routes(app: FastAPI, get_store: Callable[[], CallStore], mode: OutcomeViewMode) -> None:
    """``GET /outcomes`` (HTML) and ``GET /outcomes.json``, guarded as ``mode`` says."""
    from airflow_provider_vonage_studio.callbacks import view

    async def select(request: Request) -> tuple[list[CallRecord], view.Filters] | Response:
        if mode == "off":
            return _error(404, "the outcome view is turned off on this receiver")
        filters = view.Filters.from_query(request.query_params)
        if isinstance(filters, str):
            return _error(422, filters)
        allowed: Callable[[set[str]], set[str]] | None = None
        if mode == "airflow":
            guard = await _airflow_guard(request)
            if isinstance(guard, Response):
                return guard
            allowed = guard
        try:
            calls = await run_in_threadpool(functools.partial(_read_calls, get_store(), filters))
        except Exception as exc:
            log.error("outcome view: call store error %s", type(exc).__name__)
            return _error(503, "the call store is unavailable")
        if allowed is not None:
            try:
                readable = await run_in_threadpool(allowed, {c.dag_id for c in calls if c.dag_id})
            except Exception as exc:
                log.error("outcome view: DAG permission check failed (%s)", type(exc).__name__)
                return _error(503, "could not check which DAGs you may read; try again")
            # Calls made outside a DAG (a plain hook) belong to no DAG: any logged-in user sees them.
            calls = [c for c in calls if c.dag_id is None or c.dag_id in readable]
        return calls, filters

    @app.get("/outcomes", response_class=HTMLResponse)
    async def outcomes_page(request: Request) -> Response:
        """The outcome view as a self-contained HTML page (no scripts, no external assets)."""
        selected = await select(request)
        if isinstance(selected, Response):
            if mode == "airflow" and selected.status_code == 401:
                return HTMLResponse(view.render_login_needed(), status_code=401)
            return selected
        calls, filters = selected
        return HTMLResponse(view.render_outcomes_html(calls, filters=filters))

    @app.get("/outcomes.json")
    async def outcomes_json(request: Request) -> Response:
        """The data of the outcome view as JSON (numbers redacted)."""
        selected = await select(request)
        if isinstance(selected, Response):
            return selected
        calls, filters = selected
        return JSONResponse(view.outcomes_payload(calls, filters=filters))


def _read_calls(store: CallStore, filters: view.Filters) -> list[CallRecord]:
    """The calls the filters select, newest first. ``task_id``/``map_index`` are applied here,
    over the run's most recent :data:`~.view.MAX_LIMIT` calls (the store filters by DAG and run
    only), then cut to ``limit``."""
    from airflow_provider_vonage_studio.callbacks.view import MAX_LIMIT

    if not filters.by_task:
        return store.recent_calls(filters.limit, dag_id=filters.dag_id, run_id=filters.run_id)
    calls = store.recent_calls(MAX_LIMIT, dag_id=filters.dag_id, run_id=filters.run_id)
    return [call for call in calls if filters.matches_task(call)][: filters.limit]


async def _airflow_guard(request: Request) -> Callable[[set[str]], set[str]] | Response:
    """Authenticate the request as an Airflow user; return a filter of the DAG ids they may read.

    Uses the auth manager of the Airflow API server this app is mounted in, and the same
    credentials the Airflow UI sends: the ``_token`` cookie (an iframe of the UI carries
    it) or an ``Authorization: Bearer`` JWT.
    """
    try:
        from airflow.api_fastapi.app import get_auth_manager

        auth_manager = get_auth_manager()
    except Exception:
        return _error(
            503,
            "the outcome view needs the Airflow API server's login; serve it inside the API server "
            "(the provider's plugin) or run the receiver with the outcome view public",
        )
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get("_token")
    if not token:
        return _error(401, "log in to Airflow to see call outcomes")
    try:
        user = await auth_manager.get_user_from_token(token)
    except Exception:
        return _error(401, "your Airflow login has expired or is invalid: log in again")

    def readable(dag_ids: set[str]) -> set[str]:
        if not dag_ids:
            return set()
        return set(auth_manager.filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method="GET"))

    return readable
