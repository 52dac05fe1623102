"""The emulator's ASGI app: recording and fault injection in front of the route modules.

Recording and faults happen in ``EmulatorApp.__call__`` (raw ASGI, in front of the
routes) rather than in a middleware: only there is uvicorn's own ``send`` at hand, which
dropping a connection needs. Requests to ``/_emulator/...`` are neither recorded nor
subject to faults.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, cast

from airflow_provider_vonage_studio.testing.emulator import control, insights, messaging, telephony
from airflow_provider_vonage_studio.testing.emulator.answers import error_response
from airflow_provider_vonage_studio.testing.emulator.config import CONTROL_PREFIX, KEY_HEADER, Fault
from airflow_provider_vonage_studio.testing.emulator.records import (
    ApiError,
    PendingFault,
    RecordedRequest,
    utcnow,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from airflow_provider_vonage_studio.testing.emulator.state import EmulatorState

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Every route module's ``ROUTES``: (path, methods, handler).
ROUTE_MODULES = (telephony, messaging, insights, control)

_SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class ConnectionDropped(Exception):
    """Raised in place of dropping the connection when no transport can be reached
    (in-process ASGI clients): the client sees an exception rather than a response."""


def redacted_headers(emulator: EmulatorState, raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request headers, lower-cased, with the key fingerprinted and other credentials hidden."""
    headers: dict[str, str] = {}
    for name_bytes, value_bytes in raw:
        name = name_bytes.decode("latin-1").lower()
        value = value_bytes.decode("latin-1")
        if name == KEY_HEADER:
            value = emulator.key_fingerprint(value)
        elif name in _SENSITIVE_HEADERS:
            value = "<redacted>"
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def record_request(emulator: EmulatorState, record: RecordedRequest) -> None:
    """Append to the request log and wake waiters."""
    with emulator._changed:
        emulator._requests.append(record)
        emulator._changed.notify_all()


def take_fault(emulator: EmulatorState, path: str, to: str | None) -> PendingFault | None:
    """Consume one occurrence of the first injected fault matching ``path`` and ``to``."""
    with emulator._lock:
        for pending in emulator._faults:
            if path.startswith(pending.path) and (pending.to is None or pending.to == to):
                pending.remaining -= 1
                if pending.remaining <= 0:
                    emulator._faults.remove(pending)
                return pending
    return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` when the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json_or_none(raw_body: bytes) -> Any:
    try:
        return json.loads(raw_body) if raw_body.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _fault_response(pending: PendingFault) -> Any:
    """The answer of a 429 or 503 fault (nothing is processed)."""
    if pending.fault is Fault.RATE_LIMITED:
        headers = {} if pending.retry_after is None else {"Retry-After": str(pending.retry_after)}
        return error_response(ApiError(429, "Too Many Requests", headers))
    return error_response(ApiError(503, "Service Unavailable"))


async def drop_connection(receive: Receive, send: Send) -> None:
    """Close the client's connection without writing a byte of response.

    uvicorn's ASGI ``send`` is a bound method of its request cycle, which holds the
    transport; closing it and waiting for ``http.disconnect`` means uvicorn sees a
    disconnected client and does not fall back to a 500. Without a reachable transport
    (in-process ASGI clients) raises ConnectionDropped instead.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "close"):
        raise ConnectionDropped("connection dropped by fault injection")
    transport.close()
    try:
        while True:
            message = await asyncio.wait_for(receive(), timeout=2.0)
            if message.get("type") == "http.disconnect":
                return
    except asyncio.TimeoutError:
        return


async def interruptible_sleep(emulator: EmulatorState, seconds: float) -> None:
    """Sleep, but give up when the emulator stops (so stop() never waits on a fault)."""
    deadline = time.monotonic() + seconds
    while not emulator._stopping.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        await asyncio.sleep(min(0.05, remaining))


def build_app(emulator: EmulatorState) -> FastAPI:
    """Build the FastAPI app serving ``emulator`` from the route modules."""
    # Long only because the app class is defined here, so that FastAPI loads when an app
    # is built rather than when the emulator is imported; its methods are short.
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException as StarletteHTTPException

    class EmulatorApp(FastAPI):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
                await super().__call__(scope, receive, send)
                return
            await self._serve_api(scope, cast("Receive", receive), cast("Send", send))

        async def _serve_api(self, scope: Any, receive: Receive, send: Send) -> None:
            monotonic, received_at = time.monotonic(), utcnow()
            raw_body = await _read_body(receive)
            if raw_body is None:
                return
            body = _json_or_none(raw_body)
            to = body.get("to") if isinstance(body, dict) and isinstance(body.get("to"), str) else None
            pending = take_fault(emulator, scope["path"], to)

            def record(status: int | None) -> None:
                record_request(
                    emulator,
                    RecordedRequest(
                        method=scope["method"],
                        path=scope["path"],
                        query=scope.get("query_string", b"").decode("latin-1"),
                        headers=redacted_headers(emulator, scope.get("headers", [])),
                        body=body,
                        status=status,
                        monotonic=monotonic,
                        received_at=received_at,
                        fault=None if pending is None else pending.fault.value,
                    ),
                )

            if pending is not None and pending.fault is Fault.DROP:
                record(None)
                await drop_connection(receive, send)
            elif pending is not None and pending.fault in (Fault.RATE_LIMITED, Fault.UNAVAILABLE):
                response = _fault_response(pending)
                record(response.status_code)
                await response(scope, receive, send)
            else:
                await self._route(scope, receive, send, raw_body, record, pending)

        async def _route(
            self,
            scope: Any,
            receive: Receive,
            send: Send,
            raw_body: bytes,
            record: Callable[[int | None], None],
            pending: PendingFault | None,
        ) -> None:
            # Buffer the routed response so it is recorded before the client can see it
            # (tests read emulator.requests right after their request returns).
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": raw_body, "more_body": False}
                return await receive()

            messages: list[Message] = []

            async def buffer(message: Message) -> None:
                messages.append(message)

            await super().__call__(scope, replay, buffer)
            record(next((m["status"] for m in messages if m["type"] == "http.response.start"), None))
            if pending is not None and pending.fault is Fault.TIMEOUT:
                await interruptible_sleep(emulator, pending.delay)
            for message in messages:
                try:
                    await send(message)
                except OSError:  # the client gave up (timeout fault): nothing to tell it
                    return

    app = EmulatorApp(title="Vonage AI Studio emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = emulator

    async def http_error(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(ApiError(exc.status_code, str(exc.detail), exc.headers))

    app.add_exception_handler(StarletteHTTPException, http_error)
    # Routes are added Starlette-style (the handler gets the Request, nothing is
    # injected): the emulator parses and validates everything itself, to answer with the
    # API's own status codes and bodies rather than FastAPI's 422s.
    for module in ROUTE_MODULES:
        for path, methods, handler in module.ROUTES:
            app.add_route(path, handler, methods=list(methods), include_in_schema=False)
    return app
