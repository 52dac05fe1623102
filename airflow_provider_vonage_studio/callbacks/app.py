"""The callback receiver: a small FastAPI app that records AI Studio's status callbacks.

AI Studio posts to a call's ``status_url`` only when the callee did not pick up, with the
five fields ``agent_id``, ``to``, ``conversation_uuid``, ``status`` and ``timestamp``. Each
call we place carries ``<callback_base_url>/calls/<token>/status`` where the token is the
call's ``call_ref`` signed with the connection's ``callback_secret``
(:mod:`~airflow_provider_vonage_studio.signing`). This app verifies the token,
validates the body and records the status once in the
:class:`~airflow_provider_vonage_studio.store.CallStore`.

Routes (relative to where the app is mounted; the plugin mounts it at ``/vonage-studio``):

``POST /calls/{token}/status``
    ``200 {"result": "recorded"}`` for the call's first status, ``"duplicate"`` for the
    same callback again (nothing written), ``"history"`` for a different later status
    (kept in the history; the first one stays the call's status). Refusals, each with
    ``{"detail": "..."}`` and nothing stored:

    * ``401`` the token is malformed, truncated, forged or signed with another secret;
    * ``404`` the token is genuine but its call is not in the store;
    * ``409`` the call was not placed: its ledger state is not ``placed`` (the API refused
      it, it was never sent, or its outcome is unknown), so AI Studio cannot have reported
      on it and a status would only mislead whoever reads it (a DAG re-dialing ``busy``
      calls, say);
    * ``409`` the body's ``to`` is not the number (or SIP URI) the call was placed to.
      A token only ever travels to AI Studio inside the status URL of *that* call, so a
      mismatch means a token was leaked and reused, or calls were mixed up: recording it
      would attach somebody else's outcome to the call. Formatting is forgiven (digits
      are compared, ``+``/``00``/spaces ignored; SIP URIs compared without scheme,
      parameters or case of the host);
    * ``409`` the call already has :data:`~airflow_provider_vonage_studio.store.MAX_STATUS_HISTORY`
      (20) statuses: AI Studio posts one per call, so more is a flood (a repeat of a stored
      status still answers ``duplicate``);
    * ``410`` the callback is too late: more than ``callback_max_age`` (default 6 hours)
      after the call started, or after its token was issued where that is earlier. AI
      Studio reports a missed call within minutes; a late one is a replayed or stolen
      token. A token whose own issue time is too old is refused before the body is read;
    * ``413`` the body is larger than 16 KiB (declared ``Content-Length`` or bytes
      actually sent);
    * ``422`` the body is not a JSON object with the five fields, ``status`` is not one of
      ``cancelled``, ``rejected``, ``busy``, ``timeout``, ``failed``, ``timestamp`` is not
      an ISO 8601 date-time, or a field is over-long or holds control characters (ASCII
      and C1 controls, Unicode line and paragraph separators, bidirectional controls).
      Extra fields are ignored. The answer names the fields, never their values.

    ``503`` is a configuration or infrastructure problem, not bad input: no
    ``callback_secret`` is configured on the connection (no token could ever be
    verified), or the call store cannot be reached. The token is checked before the body
    is read, the body before the store is touched. A client that hangs up before its
    body is complete is logged as one warning line; nothing is stored.

``POST /calls/{token}/ended``
    The agent's End Call Event webhook (connection extra ``end_call_webhook``): records the call
    as answered, confirmed (``outcome_source='end_call'``), with its end time and the flat JSON
    body's parameters. Same token rules as above; answers in
    :mod:`~airflow_provider_vonage_studio.callbacks.ended`.

``GET /health``
    ``{"status": "ok"}`` after a cheap store query; ``503`` with the reason when the store
    is unreachable or no callback secret is configured (the receiver could accept
    nothing).

``GET /outcomes`` and ``GET /outcomes.json``
    The read-only outcome view (:mod:`~airflow_provider_vonage_studio.callbacks.view`);
    see :func:`create_app` for who may see it.

The app serves no OpenAPI schema or interactive docs (``/openapi.json``, ``/docs`` and
``/redoc`` answer 404): a receiver facing the Internet has nothing to advertise.

Security: the app is not behind Airflow's authentication (apps mounted through a plugin's
``fastapi_apps`` never are); the token is the only guard of the callback route. Tokens
and secrets are never logged: log lines name the ``call_ref``, and the request path is
rewritten with the token elided before any access logger (uvicorn's or the Airflow API
server's) sees it. Phone numbers are logged redacted.

This module builds the app from its parts, each in a module of its own:
:mod:`~airflow_provider_vonage_studio.callbacks.status` (the callback route),
:mod:`~airflow_provider_vonage_studio.callbacks.recorder` (batched writes and their answers),
:mod:`~airflow_provider_vonage_studio.callbacks.body` (the body model and its parsing),
:mod:`~airflow_provider_vonage_studio.callbacks.secret_cache` (the connection's secrets),
:mod:`~airflow_provider_vonage_studio.callbacks.middleware` (the token elided from paths),
:mod:`~airflow_provider_vonage_studio.callbacks.outcomes` (the outcome view's routes) and
:mod:`~airflow_provider_vonage_studio.callbacks.settings`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_vonage_studio.callbacks.batch_results import add_batch_result_routes

# The names below were all defined here before the receiver was split into rooms; they stay
# importable from this module for one release (tests, benchmarks and users import some).
from airflow_provider_vonage_studio.callbacks.body import (  # noqa: F401
    _CONTROL_RE,
    _SIP_SCHEME_RE,
    MAX_BODY_BYTES,
    CallbackStatus,
    StatusCallback,
    _describe,
    _sip_key,
    destinations_match,
    parse_callback_time,
)
from airflow_provider_vonage_studio.callbacks.ended import ended_route
from airflow_provider_vonage_studio.callbacks.messages import add_message_status_route
from airflow_provider_vonage_studio.callbacks.middleware import _ElideTokenInPath
from airflow_provider_vonage_studio.callbacks.outcomes import _add_outcome_routes, _airflow_guard  # noqa: F401
from airflow_provider_vonage_studio.callbacks.recorder import (  # noqa: F401
    _answer,
    _Pending,
    _record_batch,
    _Recorder,
)
from airflow_provider_vonage_studio.callbacks.responses import (  # noqa: F401
    _error,
    _result_body,
    _store_unavailable,
    _too_late,
)
from airflow_provider_vonage_studio.callbacks.secret_cache import (  # noqa: F401
    SECRET_CACHE_SECONDS,
    _mask_secrets,
    _SecretCache,
    connection_secrets,
)
from airflow_provider_vonage_studio.callbacks.settings import (
    DEFAULT_CALLBACK_MAX_AGE,
    DEFAULT_CONN_ID,
    LOGGER_NAME,
    MAX_CALLBACK_MAX_AGE,
    OutcomeViewMode,
    resolve_callback_max_age,
)
from airflow_provider_vonage_studio.callbacks.status import (  # noqa: F401
    _BodyTooLarge,
    _fingerprint,
    _read_capped,
    _verify,
    status_route,
)

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallStore

__all__ = [
    "DEFAULT_CALLBACK_MAX_AGE",
    "DEFAULT_CONN_ID",
    "MAX_BODY_BYTES",
    "MAX_CALLBACK_MAX_AGE",
    "OutcomeViewMode",
    "StatusCallback",
    "connection_secrets",
    "create_app",
    "resolve_callback_max_age",
]

log = logging.getLogger(LOGGER_NAME)


def create_app(
    *,
    store: CallStore | None = None,
    secret_provider: Callable[[], list[str]] | None = None,
    conn_id: str = DEFAULT_CONN_ID,
    outcome_view: OutcomeViewMode = "airflow",
    secret_cache_seconds: float = SECRET_CACHE_SECONDS,
    callback_max_age: float | timedelta | None = None,
) -> FastAPI:
    """Build the receiver app (see the module docstring for its routes and answers).

    :param store: where statuses are recorded; default :meth:`CallStore.default`, opened on
        the first request (so building the app touches no database).
    :param secret_provider: returns the secrets that may have signed a token, current
        first; default :func:`connection_secrets` of ``conn_id``. Its answer is cached for
        ``secret_cache_seconds``.
    :param conn_id: the ``vonage_studio`` connection holding ``callback_secret``.
    :param outcome_view: who may see ``/outcomes``: ``"airflow"`` (default; for the plugin)
        requires a user logged in to the Airflow API server the app is mounted in, by its
        JWT cookie or bearer token, and shows only the DAGs that user may read;
        ``"public"`` shows it to anyone who can reach the app (numbers are always
        redacted; use it only behind an authenticating proxy or on a private address);
        ``"off"`` answers 404.
    :param callback_max_age: how long after a call started (or its token was issued, where
        earlier) its callbacks are accepted: a timedelta or seconds; default
        ``[vonage_studio] callback_max_age``, else 6 hours (see
        :func:`resolve_callback_max_age`). Later ones answer 410.
    :raises ValueError: for an unknown ``outcome_view``.
    :raises VonageStudioConfigError: for a bad ``callback_max_age`` (or configuration option).
    """
    if outcome_view not in ("airflow", "public", "off"):
        raise ValueError(f"outcome_view must be 'airflow', 'public' or 'off', got {outcome_view!r}")
    max_age = resolve_callback_max_age(callback_max_age)
    load_secrets = _secret_loader(
        _SecretCache(secret_provider or (lambda: connection_secrets(conn_id)), secret_cache_seconds)
    )
    get_store = _store_getter(store)

    app = FastAPI(
        title="Vonage AI Studio callbacks",
        description="Receives AI Studio's status callbacks for calls placed by Airflow.",
        # The receiver may face the Internet: no schema or interactive docs to advertise it.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(_ElideTokenInPath)
    app.state.call_store = get_store
    app.state.callback_max_age = max_age
    recorder = _Recorder(get_store, max_age)
    # A plain route, not FastAPI's dependency injection: the handler reads its one path
    # parameter itself, which saves a good part of the per-callback cost under load (see
    # benchmarks/callbacks.py). Same path, method and answers; 405 for other methods.
    app.router.add_route(
        "/calls/{token}/status", status_route(conn_id, load_secrets, max_age, recorder), methods=["POST"]
    )
    add_message_status_route(app, conn_id, load_secrets, max_age, get_store)  # callbacks/messages.py
    # The agent's End Call Event webhook (callbacks/ended.py): answered, confirmed by push.
    app.router.add_route(
        "/calls/{token}/ended", ended_route(conn_id, load_secrets, max_age, get_store), methods=["POST"]
    )

    _add_health_route(app, get_store, load_secrets, conn_id)
    _add_outcome_routes(app, get_store, outcome_view)
    add_batch_result_routes(app, get_store, outcome_view)
    return app


def _store_getter(store: CallStore | None) -> Callable[[], CallStore]:
    """``store``, or the default store looked up per request."""

    def get_store() -> CallStore:
        if store is not None:
            return store
        from airflow_provider_vonage_studio.store import CallStore

        # Looked up per request (a dict lookup in CallStore's per-URL cache), so a changed
        # [vonage_studio] store_url is honoured without rebuilding the app.
        return CallStore.default()

    return get_store


def _secret_loader(secrets: _SecretCache) -> Callable[[], Awaitable[list[str]]]:
    """The cached secrets without leaving the event loop; a lookup goes to a worker thread."""

    async def load_secrets() -> list[str]:
        cached = secrets.cached()
        return cached if cached is not None else await run_in_threadpool(secrets.get)

    return load_secrets


def _add_health_route(
    app: FastAPI,
    get_store: Callable[[], CallStore],
    load_secrets: Callable[[], Awaitable[list[str]]],
    conn_id: str,
) -> None:
    """``GET /health``: 200 when the store answers and a callback secret is configured."""

    @app.get("/health")
    async def health() -> Response:
        """Liveness for load balancers: store reachable and a callback secret configured."""
        try:
            await run_in_threadpool(get_store().recent_calls, 0)
        except Exception as exc:
            log.error("health check: call store error %s", type(exc).__name__)
            return JSONResponse({"status": "error", "detail": "call store unavailable"}, status_code=503)
        try:
            keys = await load_secrets()
        except Exception as exc:
            log.error("health check: could not read the callback secret (%s)", type(exc).__name__)
            detail = f"could not read connection {conn_id!r}"
            return JSONResponse({"status": "error", "detail": detail}, status_code=503)
        if not keys:
            detail = f"no callback_secret on connection {conn_id!r}"
            return JSONResponse({"status": "error", "detail": detail}, status_code=503)
        return JSONResponse({"status": "ok"})
