"""The callback receiver: a small FastAPI app that records AI Studio's status callbacks.

AI Studio posts to a call's ``status_url`` only when the callee did not pick up, with the
five fields ``agent_id``, ``to``, ``conversation_uuid``, ``status`` and ``timestamp``. Each
call we place carries ``<callback_base_url>/calls/<token>/status`` where the token is the
call's ``call_ref`` signed with the connection's ``callback_secret``
(:mod:`~airflow_provider_vonage_studio.callbacks.tokens`). This app verifies the token,
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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from airflow_provider_vonage_studio.callbacks.tokens import (
    InvalidToken,
    VerifiedToken,
    elide_token,
    verify_token_details,
)
from airflow_provider_vonage_studio.destinations import redact

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallRecord, CallStore, RecordOutcome

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

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "vonage_studio_default"
#: Largest callback body accepted. The seed's payload is ~200 bytes; 16 KiB leaves room for
#: fields AI Studio may add without letting anyone make the receiver buffer megabytes.
MAX_BODY_BYTES = 16 * 1024
#: How long secrets read from the connection are reused: short enough that a rotation takes
#: effect within half a minute, long enough that a burst of callbacks does not look the
#: connection up (possibly in the metadata database or a secrets backend) every time.
SECRET_CACHE_SECONDS = 30.0
#: How long after a call started (or its token was issued, where earlier) its callbacks are
#: accepted. AI Studio reports a missed call within minutes; hours leave room for its retries
#: and for a receiver that was down for a while, without letting an old token rewrite history.
DEFAULT_CALLBACK_MAX_AGE = timedelta(hours=6)
#: The largest ``callback_max_age`` accepted: beyond a week the bound protects nothing.
MAX_CALLBACK_MAX_AGE = timedelta(days=7)
#: The statuses AI Studio posts (see the seed); anything else is refused.
CallbackStatus = Literal["cancelled", "rejected", "busy", "timeout", "failed"]
#: Who may see the outcome view: ``"airflow"`` any user logged in to the Airflow API server
#: this app is mounted in (rows limited to the DAGs they may read), ``"public"`` anyone who
#: can reach the app, ``"off"`` nobody (404).
OutcomeViewMode = Literal["airflow", "public", "off"]

# Anything below 0x20, DEL and the C1 controls (U+0080-U+009F, NEL among them): no field of a
# callback has a use for them, NUL breaks PostgreSQL text columns, and line breaks would let a
# value forge log lines. The Unicode line and paragraph separators break lines too (in log
# viewers, in JavaScript), and the bidirectional embedding, override and isolate controls
# (U+202A-U+202E, U+2066-U+2069) make a value display as something other than it is.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SIP_SCHEME_RE = re.compile(r"^sips?:", re.IGNORECASE)


# ------------------------------------------------------------------------------ the body


class StatusCallback(BaseModel):
    """The body AI Studio posts to ``status_url`` (the seed's five fields; extras ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    agent_id: str = Field(min_length=1, max_length=255)
    to: str = Field(min_length=1, max_length=512)
    # Empty is tolerated (the store treats it as "none"); 255 is the store's column width.
    conversation_uuid: str = Field(max_length=255)
    status: CallbackStatus
    timestamp: str = Field(min_length=1, max_length=64)

    @field_validator("agent_id", "to", "conversation_uuid", "timestamp")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _CONTROL_RE.search(value):
            raise ValueError("must not contain control characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
            raise ValueError("must be valid Unicode text") from None
        return value

    @field_validator("timestamp")
    @classmethod
    def _iso_timestamp(cls, value: str) -> str:
        if parse_callback_time(value) is None:
            raise ValueError("must be an ISO 8601 date-time such as 2022-05-31T06:40:45.475Z")
        return value

    def event_time(self) -> datetime | None:
        """``timestamp`` as an aware UTC datetime (naive values are UTC, as in the seed)."""
        return parse_callback_time(self.timestamp)


def parse_callback_time(value: str) -> datetime | None:
    """Parse a callback ``timestamp`` (ISO 8601, ``Z`` allowed) to aware UTC, or ``None``."""
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat has no "Z"
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            return parsed.replace(tzinfo=timezone.utc)
        # Year 1 at +05:00 is before datetime.min in UTC: OverflowError, i.e. not a real time.
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def destinations_match(callback_to: str, destination: str) -> bool:
    """Whether a callback's ``to`` names the destination a call was placed to.

    Phone numbers are compared by their digits without leading zeros (so ``+44 7700…``,
    ``0044…`` and ``447700…`` agree); SIP URIs by ``user@host`` without scheme, port or
    parameters, the host case-insensitively. Never raises.
    """
    if _SIP_SCHEME_RE.match(destination):
        return _sip_key(callback_to) == _sip_key(destination)
    theirs = "".join(ch for ch in callback_to if "0" <= ch <= "9").lstrip("0")
    ours = "".join(ch for ch in destination if "0" <= ch <= "9").lstrip("0")
    return bool(ours) and theirs == ours


def _sip_key(value: str) -> tuple[str, str]:
    text = _SIP_SCHEME_RE.sub("", value.strip())
    text = text.split(";", 1)[0].split("?", 1)[0]
    user, _, hostport = text.rpartition("@")
    host = hostport.rsplit("]", 1)[0] + "]" if hostport.startswith("[") else hostport.split(":", 1)[0]
    return user, host.lower()


# ---------------------------------------------------------------------------- secrets


def connection_secrets(conn_id: str = DEFAULT_CONN_ID) -> list[str]:
    """The callback secrets of connection ``conn_id``: current first, then previous ones.

    The current secret is the connection's ``callback_secret`` extra (read through
    :class:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook`, which also
    registers it with Airflow's log masker). During a rotation, secrets listed in the
    optional extra ``previous_callback_secrets`` (a list, or one comma-separated string)
    keep verifying the tokens of calls placed before the change. A receiver-only
    connection without an API key is fine: only the secrets are read.

    Returns an empty list when no secret is configured.

    :raises Exception: whatever Airflow raises when the connection does not exist or the
        secrets backend fails (the receiver answers 503).
    """
    from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

    hook = VonageStudioHook(conn_id)
    conn = hook.get_connection(conn_id)
    extra = dict(conn.extra_dejson or {})
    try:
        current = hook.config.callback_secret
    except VonageStudioConfigError:
        # The hook insists on an API key; the receiver does not need one.
        current = (str(extra.get("callback_secret") or "")).strip() or None
    previous = extra.get("previous_callback_secrets") or []
    if isinstance(previous, str):
        previous = previous.split(",")
    secrets = [current] if current else []
    for item in previous if isinstance(previous, list) else []:
        text = str(item).strip()
        if text and text not in secrets:
            secrets.append(text)
    _mask_secrets(secrets)
    return secrets


def _mask_secrets(secrets: list[str]) -> None:
    try:
        from airflow.providers.common.compat.sdk import mask_secret

        for secret in secrets:
            mask_secret(secret)
    except Exception:  # best effort: masking needs Airflow's logging set up
        log.debug("could not register the callback secrets with the log masker")


class _SecretCache:
    """Secrets from a provider, reused for ``ttl`` seconds; thread-safe.

    A failed lookup is remembered for ``retry_after`` seconds, so that an outage of the
    secrets backend is not hit again by every callback that arrives meanwhile.
    """

    def __init__(self, provider: Callable[[], list[str]], ttl: float, retry_after: float = 5.0) -> None:
        self._provider = provider
        self._ttl = ttl
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._value: list[str] | None = None
        self._expires = 0.0
        self._failure: Exception | None = None
        self._failure_until = 0.0

    def cached(self) -> list[str] | None:
        """The secrets when still fresh, else ``None`` (never blocks on the provider)."""
        value = self._value
        return value if value is not None and time.monotonic() < self._expires else None

    def get(self) -> list[str]:
        """Fresh secrets, asking the provider when the cached ones expired (may block)."""
        with self._lock:
            value = self.cached()
            if value is not None:
                return value
            if self._failure is not None and time.monotonic() < self._failure_until:
                raise self._failure
            try:
                value = [s for s in self._provider() if isinstance(s, str) and s]
            except Exception as exc:
                self._failure, self._failure_until = exc, time.monotonic() + self._retry_after
                raise
            self._failure = None
            self._value, self._expires = value, time.monotonic() + self._ttl
            return value


# ------------------------------------------------------------------------ middleware


class _ElideTokenInPath:
    """ASGI middleware: rewrite the request path with the token elided before it is logged.

    Access loggers (uvicorn's, which logs when the response starts, and the Airflow API
    server's, which logs when the request ends) read ``scope["path"]`` from the scope
    dict that is handed down to this app. Routing is over by the time the response
    starts, so the path is replaced then, and again at the end in case no response was
    sent.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or "/calls/" not in scope.get("path", ""):
            await self.app(scope, receive, send)
            return

        def elide() -> None:
            scope["path"] = elide_token(scope["path"])
            raw = scope.get("raw_path")
            if isinstance(raw, bytes):
                scope["raw_path"] = elide_token(raw.decode("latin-1")).encode("latin-1")

        async def send_elided(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                elide()
            await send(message)

        try:
            await self.app(scope, receive, send_elided)
        finally:
            elide()


# -------------------------------------------------------------------------------- app


class _BodyTooLarge(Exception):
    pass


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def resolve_callback_max_age(value: float | timedelta | None = None) -> timedelta:
    """The callbacks' maximum age: ``value``, else ``[vonage_studio] callback_max_age``, else 6 h.

    ``value`` is a :class:`~datetime.timedelta` or a number of seconds; the configuration
    option (env ``AIRFLOW__VONAGE_STUDIO__CALLBACK_MAX_AGE``) is a number of seconds.

    :raises VonageStudioConfigError: naming the setting, when it is not a number of seconds
        (a bool, a non-numeric string, NaN, infinity), not positive, or over 7 days
        (:data:`MAX_CALLBACK_MAX_AGE`).
    """
    from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

    field = "callback_max_age"
    seconds: float
    if value is None:
        from airflow_provider_vonage_studio._compat import conf

        raw = conf.get("vonage_studio", "callback_max_age", fallback=None)
        if raw is None or not str(raw).strip():
            return DEFAULT_CALLBACK_MAX_AGE
        field = "[vonage_studio] callback_max_age"
        try:
            seconds = float(str(raw).strip())
        except ValueError:
            raise VonageStudioConfigError(
                f"{field}: must be a number of seconds such as 21600, got {str(raw)[:40]!r}"
            ) from None
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VonageStudioConfigError(
            f"{field}: must be a timedelta or a number of seconds, got {type(value).__name__}"
        )
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise VonageStudioConfigError(
            f"{field}: must be a positive, finite number of seconds, got {seconds!r}"
        )
    if seconds > MAX_CALLBACK_MAX_AGE.total_seconds():
        raise VonageStudioConfigError(
            f"{field}: must be at most {int(MAX_CALLBACK_MAX_AGE.total_seconds())} seconds (7 days), "
            f"got {seconds:g}"
        )
    return timedelta(seconds=seconds)


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
    secrets = _SecretCache(secret_provider or (lambda: connection_secrets(conn_id)), secret_cache_seconds)

    def get_store() -> CallStore:
        if store is not None:
            return store
        from airflow_provider_vonage_studio.store import CallStore

        # Looked up per request (a dict lookup in CallStore's per-URL cache), so a changed
        # [vonage_studio] store_url is honoured without rebuilding the app.
        return CallStore.default()

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

    async def load_secrets() -> list[str]:
        cached = secrets.cached()
        return cached if cached is not None else await run_in_threadpool(secrets.get)

    async def receive_status(request: Request) -> Response:
        """Verify, validate and record one status callback (answers in the module docstring)."""
        token: str = request.path_params["token"]
        try:
            keys = await load_secrets()
        except Exception as exc:
            log.error(
                "callback refused: could not read the callback secret of %r (%s)", conn_id, type(exc).__name__
            )
            return _error(503, "the receiver could not read its callback secret; see the receiver's log")
        if not keys:
            log.error("callback refused: connection %r has no callback_secret", conn_id)
            return _error(
                503,
                "the receiver has no callback secret: set the extra 'callback_secret' of connection "
                f"{conn_id!r}",
            )
        verified = _verify(token, keys)
        if verified is None:
            # The token itself is never logged: a fingerprint lets an operator match repeats.
            log.warning("callback refused: invalid token (fingerprint %s)", _fingerprint(token))
            return _error(401, "invalid callback token")
        call_ref = verified.call_ref
        if verified.issued_at is not None and datetime.now(timezone.utc) - verified.issued_at > max_age:
            # The call started after its token was issued, so it is too old as well: no need to
            # read the body or ask the store.
            log.warning("callback for %s refused: its token was issued more than %s ago", call_ref, max_age)
            return _too_late(max_age)

        declared = request.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
            log.warning("callback for %s refused: body of %s bytes declared", call_ref, declared.strip())
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            body = await _read_capped(request, MAX_BODY_BYTES)
        except _BodyTooLarge:
            log.warning("callback for %s refused: body over %d bytes", call_ref, MAX_BODY_BYTES)
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        except ClientDisconnect:
            # Routine on the Internet (a timeout, a probe): one line, not an ASGI traceback. The
            # answer below is never delivered; returning normally ends the request cleanly.
            log.warning(
                "callback for %s not recorded: the client hung up before sending the whole body", call_ref
            )
            return _error(400, "the request body was incomplete")

        try:
            callback = StatusCallback.model_validate_json(body)
        except ValidationError as exc:
            detail = _describe(exc)
            log.warning("callback for %s refused: %s", call_ref, detail)
            return _error(422, detail)

        return await recorder.submit(verified, callback)

    # A plain route, not FastAPI's dependency injection: the handler reads its one path
    # parameter itself, which saves a good part of the per-callback cost under load (see
    # benchmarks/callbacks.py). Same path, method and answers; 405 for other methods.
    app.router.add_route("/calls/{token}/status", receive_status, methods=["POST"])

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

    _add_outcome_routes(app, get_store, outcome_view)
    return app


def _verify(token: str, secrets: list[str]) -> VerifiedToken | None:
    for secret in secrets:
        try:
            return verify_token_details(token, secret)
        except InvalidToken:
            continue
    return None


def _too_late(max_age: timedelta) -> JSONResponse:
    return _error(
        410,
        f"callback too late: callbacks are accepted for {int(max_age.total_seconds())} seconds after "
        "the call started",
    )


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, or :class:`_BodyTooLarge` as soon as more than ``limit`` bytes arrived.

    Reading the stream (rather than trusting ``Content-Length``) also caps chunked bodies.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: ValidationError) -> str:
    """A 422 message naming each bad field and the rule, never the value sent."""
    problems = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False)[:10]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        message = error["msg"]
        if error["type"] == "missing":
            message = "is required"
        elif error["type"] in ("json_invalid", "json_type", "model_type", "model_attributes_type"):
            where, message = (
                "body",
                "must be a JSON object with agent_id, to, conversation_uuid, status, timestamp",
            )
        problems.append(f"{where}: {message}")
    return "; ".join(problems) or "invalid body"


_Pending = tuple[VerifiedToken, StatusCallback, "asyncio.Future[Response]"]


class _Recorder:
    """Records verified callbacks in small batches, off the event loop.

    Callbacks that arrive while a batch is being written queue up and go together into
    the next one: the whole batch is one store transaction (one query for its calls, one
    commit) and one hop to a worker thread. Under light load a batch is a single
    callback, so nothing waits for company.

    At most ``workers`` batches run at once, each on a thread of the recorder's own; by
    default 2 on SQLite, which serialises writes anyway (one batch writes while the next one
    reads), and 4 on a server database, where each statement waits on a round trip but more
    writers only make smaller batches. A few busy threads also contend less for the GIL than
    one thread per request (measured with ``benchmarks/callbacks.py``).
    """

    def __init__(
        self,
        get_store: Callable[[], CallStore],
        max_age: timedelta,
        *,
        workers: int | None = None,
        max_batch: int = 64,
    ) -> None:
        self._get_store = get_store
        self._max_age = max_age
        self._workers = workers
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._running = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Strong references: the event loop keeps only weak ones to tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, verified: VerifiedToken, callback: StatusCallback) -> Response:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending.append((verified, callback, future))
        if self._workers is None:
            try:
                self._workers = 2 if self._get_store().url.startswith("sqlite") else 4
            except Exception:  # the batch itself will report the store problem
                self._workers = 2
        if self._executor is None:
            # Threads of our own, as many as batches may run: a batch goes straight to one, without
            # the bookkeeping (and the capacity shared with every other blocking call) of the
            # generic thread pool.
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="vonage-studio-callbacks"
            )
        if self._running < self._workers:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a client that hangs up must not cancel a write another batch member shares.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    answers = await asyncio.get_running_loop().run_in_executor(
                        self._executor, _record_batch, self._get_store, batch, self._max_age
                    )
                except Exception as exc:  # pragma: no cover - _record_batch answers per item
                    log.error("callbacks not recorded: %s", type(exc).__name__)
                    answers = [_store_unavailable() for _ in batch]
                for (_, _, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._running -= 1


@functools.lru_cache(maxsize=8)
def _result_body(result: str) -> bytes:
    """The body ``JSONResponse({"result": result})`` renders, built once per result."""
    return json.dumps({"result": result}, separators=(",", ":")).encode()


def _store_unavailable() -> Response:
    return _error(503, "the call store is unavailable; the callback was not recorded")


def _record_batch(
    get_store: Callable[[], CallStore], batch: list[_Pending], max_age: timedelta
) -> list[Response]:
    """Check and record a batch of callbacks (in a worker thread: the store blocks).

    The whole batch is one store transaction (``record_statuses``), the checks included:
    placed calls only, within ``max_age``, with the call's destination, within the history
    cap. Never raises: a store failure answers 503 for every callback of the batch, as
    none of them was recorded. The log names the exception type only, as a database error
    message may quote the payload.
    """
    from airflow_provider_vonage_studio.store import StatusUpdate

    updates = [
        StatusUpdate(
            verified.call_ref,
            callback.status,
            callback.conversation_uuid or None,
            callback.event_time(),
            callback.model_dump(),
            to=callback.to,
            issued_at=verified.issued_at,
        )
        for verified, callback, _ in batch
    ]
    try:
        outcomes = get_store().record_statuses(
            updates, destination_matches=destinations_match, placed_only=True, max_age=max_age
        )
    except Exception as exc:
        log.error("%d callback(s) not recorded: call store error %s", len(batch), type(exc).__name__)
        return [_store_unavailable() for _ in batch]
    answers = [
        _answer(verified.call_ref, callback, outcome, max_age)
        for (verified, callback, _), outcome in zip(batch, outcomes, strict=True)
    ]
    # One line per batch, not per callback: under load, a log record per callback costs more than
    # recording it. The line still names each call and what became of its callback; refusals
    # keep a warning each (above), and the redacted number of each stored one is at DEBUG.
    stored = [
        f"{verified.call_ref} {callback.status} ({outcome.value})"
        for (verified, callback, _), outcome in zip(batch, outcomes, strict=True)
        if outcome.value in ("recorded", "history", "duplicate")
    ]
    if stored:
        log.info("%d callback(s) stored: %s", len(stored), ", ".join(stored))
    return answers


def _answer(call_ref: str, callback: StatusCallback, outcome: RecordOutcome, max_age: timedelta) -> Response:
    """The response (and log line) for one callback the store has dealt with."""
    from airflow_provider_vonage_studio.store import MAX_STATUS_HISTORY, RecordOutcome

    if outcome is RecordOutcome.UNKNOWN_CALL:
        log.warning("callback for %s refused: no such call in the store", call_ref)
        return _error(404, "unknown call")
    if outcome is RecordOutcome.NOT_PLACED:
        log.warning("callback for %s refused: the call was not placed", call_ref)
        return _error(409, "the call was not placed: no status is accepted for it")
    if outcome is RecordOutcome.STALE:
        log.warning("callback for %s refused: more than %s after the call started", call_ref, max_age)
        return _too_late(max_age)
    if outcome is RecordOutcome.HISTORY_FULL:
        log.warning("callback for %s refused: its status history is full", call_ref)
        return _error(409, f"the call already has {MAX_STATUS_HISTORY} statuses: no more are kept")
    if outcome is RecordOutcome.MISMATCH:
        log.warning(
            "callback for %s refused: to %s is not the call's destination", call_ref, redact(callback.to)
        )
        return _error(409, "the callback's 'to' is not the destination of this call")
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "callback for %s: status %s for %s (%s)",
            call_ref,
            callback.status,
            redact(callback.to),
            outcome.value,
        )
    return Response(_result_body(outcome.value), media_type="application/json")


# ---------------------------------------------------------------------- outcome view


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
            calls = await run_in_threadpool(
                functools.partial(
                    get_store().recent_calls, filters.limit, dag_id=filters.dag_id, run_id=filters.run_id
                )
            )
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
