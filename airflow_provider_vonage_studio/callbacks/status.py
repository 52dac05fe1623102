"""``POST /calls/{token}/status``: verify the token, read and validate the body, hand it to the recorder.

The answers are listed in :mod:`~airflow_provider_vonage_studio.callbacks.app`. The token is
checked before the body is read, the body before the store is touched.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from airflow_provider_vonage_studio.callbacks.body import MAX_BODY_BYTES, StatusCallback, _describe
from airflow_provider_vonage_studio.callbacks.recorder import _Recorder
from airflow_provider_vonage_studio.callbacks.responses import _error, _too_late
from airflow_provider_vonage_studio.callbacks.settings import LOGGER_NAME
from airflow_provider_vonage_studio.signing import InvalidToken, VerifiedToken, verify_token_details

log = logging.getLogger(LOGGER_NAME)


class _BodyTooLarge(Exception):
    pass


def status_route(
    conn_id: str,
    load_secrets: Callable[[], Awaitable[list[str]]],
    max_age: timedelta,
    recorder: _Recorder,
) -> Callable[[Request], Awaitable[Response]]:
    """The handler of ``POST /calls/{token}/status`` (a plain Starlette endpoint, no injection)."""

    async def receive_status(request: Request) -> Response:
        """Verify, validate and record one status callback (answers in the app's docstring)."""
        token: str = request.path_params["token"]
        verified = await _verified_token(token, conn_id, load_secrets)
        if isinstance(verified, Response):
            return verified
        call_ref = verified.call_ref
        if verified.issued_at is not None and datetime.now(timezone.utc) - verified.issued_at > max_age:
            # The call started after its token was issued, so it is too old as well: no need to
            # read the body or ask the store.
            log.warning("callback for %s refused: its token was issued more than %s ago", call_ref, max_age)
            return _too_late(max_age)
        callback = await _read_callback(request, call_ref)
        if isinstance(callback, Response):
            return callback
        return await recorder.submit(verified, callback)

    return receive_status


async def _verified_token(
    token: str, conn_id: str, load_secrets: Callable[[], Awaitable[list[str]]]
) -> VerifiedToken | Response:
    """The verified token, or the refusal: 503 without a usable secret, 401 for a bad token."""
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
            f"the receiver has no callback secret: set the extra 'callback_secret' of connection {conn_id!r}",
        )
    verified = _verify(token, keys)
    if verified is None:
        # The token itself is never logged: a fingerprint lets an operator match repeats.
        log.warning("callback refused: invalid token (fingerprint %s)", _fingerprint(token))
        return _error(401, "invalid callback token")
    return verified


async def _read_callback(request: Request, call_ref: str) -> StatusCallback | Response:
    """The validated body, or the refusal: 413 too large, 400 incomplete, 422 invalid."""
    body = await read_body(request, f"callback for {call_ref}")
    if isinstance(body, Response):
        return body
    try:
        return StatusCallback.model_validate_json(body)
    except ValidationError as exc:
        detail = _describe(exc)
        log.warning("callback for %s refused: %s", call_ref, detail)
        return _error(422, detail)


def _verify(token: str, secrets: list[str]) -> VerifiedToken | None:
    for secret in secrets:
        try:
            return verify_token_details(token, secret)
        except InvalidToken:
            continue
    return None


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]


async def read_body(request: Request, what: str) -> bytes | Response:
    """The request body of a receiver route, or the refusal: 413 over :data:`MAX_BODY_BYTES`
    (declared or streamed), 400 when the client hung up mid-body. ``what`` names the request in
    the log line of a refusal (never the token)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
        log.warning("%s refused: body of %s bytes declared", what, declared.strip())
        return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        return await _read_capped(request, MAX_BODY_BYTES)
    except _BodyTooLarge:
        log.warning("%s refused: body over %d bytes", what, MAX_BODY_BYTES)
        return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
    except ClientDisconnect:
        log.warning("%s not recorded: the client hung up before sending the whole body", what)
        return _error(400, "the request body was incomplete")


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
