"""``POST /messages/{token}/status``: a messaging agent's status callback for one message.

Each message the hook sends carries ``<callback_base_url>/messages/<token>/status``, the token
being the message's ``call_ref`` signed as a call's is. The rules are the call route's: the
token is checked before the body is read (``401`` forged, malformed or of another secret;
``410`` issued longer than ``callback_max_age`` ago), the body before the store is touched
(``413`` over 16 KiB; ``422`` not a JSON object with a ``status``, or a field over-long or
holding control characters), and nothing is stored on a refusal (``404`` no such message,
a call's token included; ``409`` the message was not accepted by AI Studio, the body's
``to`` is not its destination, or its history is full; ``410`` too late). ``503``: no
callback secret, or the store is unreachable.

The body is not documented in detail (the emulator posts ``{agent_id, to, session_id,
channel, status, timestamp}``): only ``status`` is required, the other fields are checked
when present, and the whole object is kept as the status's payload. Every distinct status is
recorded as it arrives (``200 {"result": "recorded"}``; a repeat answers ``"duplicate"``), in
the message's status history (``CallStore.status_history``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from airflow_provider_vonage_studio.callbacks.body import (
    _CONTROL_RE,
    _describe,
    destinations_match,
    parse_callback_time,
)
from airflow_provider_vonage_studio.callbacks.responses import (
    _error,
    _result_body,
    _store_unavailable,
    _too_late,
)
from airflow_provider_vonage_studio.callbacks.settings import LOGGER_NAME
from airflow_provider_vonage_studio.callbacks.status import _verified_token, read_body

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.calls import RecordOutcome
    from airflow_provider_vonage_studio.store import CallStore

__all__ = ["MESSAGE_STATUS_PATH", "MessageStatusCallback", "add_message_status_route", "message_status_route"]

log = logging.getLogger(LOGGER_NAME)

MESSAGE_STATUS_PATH = "/messages/{token}/status"


class MessageStatusCallback(BaseModel):
    """A message status callback: ``status`` required, the rest checked when present."""

    model_config = ConfigDict(extra="allow", frozen=True)

    status: str = Field(min_length=1, max_length=64)
    agent_id: str | None = Field(default=None, max_length=255)
    to: str | None = Field(default=None, min_length=1, max_length=512)
    session_id: str | None = Field(default=None, max_length=255)
    channel: str | None = Field(default=None, max_length=32)
    timestamp: str | None = Field(default=None, max_length=64)

    @field_validator("status", "agent_id", "to", "session_id", "channel", "timestamp")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL_RE.search(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("timestamp")
    @classmethod
    def _iso_timestamp(cls, value: str | None) -> str | None:
        if value is not None and parse_callback_time(value) is None:
            raise ValueError("must be an ISO 8601 date-time such as 2022-05-31T06:40:45.475Z")
        return value


def add_message_status_route(
    app: FastAPI,
    conn_id: str,
    load_secrets: Callable[[], Awaitable[list[str]]],
    max_age: timedelta,
    get_store: Callable[[], CallStore],
) -> None:
    """Add ``POST /messages/{token}/status`` to the receiver ``app`` (a plain route, as the calls' is)."""
    app.router.add_route(
        MESSAGE_STATUS_PATH, message_status_route(conn_id, load_secrets, max_age, get_store), methods=["POST"]
    )


def message_status_route(
    conn_id: str,
    load_secrets: Callable[[], Awaitable[list[str]]],
    max_age: timedelta,
    get_store: Callable[[], CallStore],
) -> Callable[[Request], Awaitable[Response]]:
    """The handler of ``POST /messages/{token}/status`` (answers in the module docstring)."""

    async def receive_message_status(request: Request) -> Response:
        verified = await _verified_token(request.path_params["token"], conn_id, load_secrets)
        if isinstance(verified, Response):
            return verified
        ref = verified.call_ref
        if verified.issued_at is not None and datetime.now(timezone.utc) - verified.issued_at > max_age:
            log.warning(
                "message callback for %s refused: its token was issued more than %s ago", ref, max_age
            )
            return _too_late(max_age)
        parsed = await _read_body(request, ref)
        if isinstance(parsed, Response):
            return parsed
        callback, payload = parsed
        from airflow_provider_vonage_studio.store.messages import MessageStatus

        update = MessageStatus(
            call_ref=ref,
            status=callback.status,
            session_id=callback.session_id or None,
            timestamp=parse_callback_time(callback.timestamp) if callback.timestamp else None,
            payload=payload,
            to=callback.to,
            issued_at=verified.issued_at,
        )
        try:
            outcome = await run_in_threadpool(
                lambda: get_store().record_message_status(
                    update, max_age=max_age, destination_matches=destinations_match
                )
            )
        except Exception as exc:
            log.error("message callback for %s not recorded: call store error %s", ref, type(exc).__name__)
            return _store_unavailable()
        return _answer(ref, callback.status, outcome, max_age)

    return receive_message_status


async def _read_body(request: Request, ref: str) -> tuple[MessageStatusCallback, dict[str, Any]] | Response:
    """The validated body and the object as received, or the refusal (413, 400, 422)."""
    raw = await read_body(request, f"message callback for {ref}")
    if isinstance(raw, Response):
        return raw
    try:
        callback = MessageStatusCallback.model_validate_json(raw)
        payload = json.loads(raw)
    except ValidationError as exc:
        detail = _describe(exc).replace(
            "agent_id, to, conversation_uuid, status, timestamp",
            "status (agent_id, to, session_id, timestamp)",
        )
        log.warning("message callback for %s refused: %s", ref, detail)
        return _error(422, detail)
    return callback, payload


def _answer(ref: str, status: str, outcome: RecordOutcome, max_age: timedelta) -> Response:
    from airflow_provider_vonage_studio.calls import RecordOutcome
    from airflow_provider_vonage_studio.store import MAX_STATUS_HISTORY

    refusals = {
        RecordOutcome.UNKNOWN_CALL: (404, "unknown message"),
        RecordOutcome.NOT_PLACED: (
            409,
            "the message was not accepted by AI Studio: no status is accepted for it",
        ),
        RecordOutcome.MISMATCH: (409, "the callback's 'to' is not the destination of this message"),
        RecordOutcome.HISTORY_FULL: (409, f"the message already has {MAX_STATUS_HISTORY} statuses"),
    }
    if outcome is RecordOutcome.STALE:
        log.warning("message callback for %s refused: too late", ref)
        return _too_late(max_age)
    if outcome in refusals:
        code, detail = refusals[outcome]
        log.warning("message callback for %s refused: %s", ref, outcome.value)
        return _error(code, detail)
    log.info("message callback for %s: status %s (%s)", ref, status, outcome.value)
    return Response(_result_body(outcome.value), media_type="application/json")
