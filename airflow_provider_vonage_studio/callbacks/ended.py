"""``POST /calls/{token}/ended``: the agent's End Call Event webhook, answered confirmed by push.

With the connection's extra ``end_call_webhook`` on, every placed call carries its signed token
as the session parameter ``VS_CALL_TOKEN``; the agent's End Call Event flow runs a Webhook node
that posts to ``<callback_base_url>/calls/$VS_CALL_TOKEN/ended`` with a JSON body of the session
parameters it collected (docs/outcomes.md shows what to paste). This route records the call as
``answered`` with ``outcome_source='end_call'``, its end time and those parameters, so a waiting
sensor or batch finishes at once instead of sitting out the answer window.

Same token rules as the status route, checked in the same order (token before body, body before
store; nothing stored on a refusal):

* ``200 {"result": "recorded"}``; ``{"result": "duplicate"}`` for a repeat (nothing changes);
* ``401`` malformed, forged or otherwise-signed token; ``404`` no such call;
* ``409`` the call was not placed; or a failure status (``busy``, ...) was recorded for it first:
  that report stays the call's truth (a call cannot have been both busy and answered); or the
  body's ``VS_CALL_TOKEN`` is not the token of the path;
* ``410`` older than ``callback_max_age`` since the call started (or its token was issued);
* ``413`` body over 16 KiB; ``422`` the body is not a flat JSON object (a nested object or array
  as a value), has more than :data:`MAX_FIELDS` fields, or a name that is empty, too long or
  holds control characters;
* ``503`` no callback secret configured, or the store unreachable.

The body's ``ended_at`` (ISO 8601) is the call's end time when it is a valid time not in the
future, else the time received. Values are stored as strings (``true``/``false`` for booleans,
``""`` for null), ``VS_CALL_TOKEN`` and ``ended_at`` never among them. Values are what the
callee said (personal data): they are never logged, names only by count.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_vonage_studio.callbacks.body import _CONTROL_RE, parse_callback_time
from airflow_provider_vonage_studio.callbacks.responses import (
    _error,
    _result_body,
    _store_unavailable,
    _too_late,
)
from airflow_provider_vonage_studio.callbacks.settings import LOGGER_NAME
from airflow_provider_vonage_studio.callbacks.status import _verified_token, read_body
from airflow_provider_vonage_studio.hooks.connection import END_CALL_TOKEN_PARAMETER

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallStore

__all__ = ["MAX_FIELDS", "MAX_NAME_LENGTH", "ended_route", "parse_end_call_body"]

log = logging.getLogger(LOGGER_NAME)

#: Most fields an end-call body may have: an agent collects a handful of parameters.
MAX_FIELDS = 100
#: Longest field name accepted (AI Studio's parameter names are short UPPER_CASE words).
MAX_NAME_LENGTH = 128
# Fields of the body that are about the webhook, not what the conversation collected.
_NOT_PARAMETERS = (END_CALL_TOKEN_PARAMETER, "ended_at")


class EndCallBody:
    """A parsed end-call body: the collected ``parameters`` (strings), the ``token`` it names
    (``VS_CALL_TOKEN``, or ``None``) and the raw ``ended_at`` text (or ``None``)."""

    __slots__ = ("ended_at", "parameters", "token")

    def __init__(self, parameters: dict[str, str], token: str | None, ended_at: str | None) -> None:
        self.parameters = parameters
        self.token = token
        self.ended_at = ended_at


def parse_end_call_body(raw: bytes) -> EndCallBody | str:
    """The body of an end-call webhook, or why it is refused (a 422 message naming the field,
    never a value). An empty body is an empty object (a webhook node without a body)."""
    if not raw.strip():
        return EndCallBody({}, None, None)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return "body: must be a JSON object of parameter names and values"
    if not isinstance(data, dict):
        return "body: must be a JSON object of parameter names and values"
    if len(data) > MAX_FIELDS:
        return f"body: at most {MAX_FIELDS} fields, got {len(data)}"
    parameters: dict[str, str] = {}
    for name, value in data.items():
        if not name or len(name) > MAX_NAME_LENGTH or _CONTROL_RE.search(name):
            return f"body: a field name must be 1..{MAX_NAME_LENGTH} characters without control characters"
        if isinstance(value, (dict, list)):
            return f"{name}: must be a string, number, true/false or null (a flat object), not nested"
        parameters[name] = _as_text(value)
    token = data.get(END_CALL_TOKEN_PARAMETER)
    ended_at = data.get("ended_at")
    for name in _NOT_PARAMETERS:
        parameters.pop(name, None)
    return EndCallBody(
        parameters,
        token if isinstance(token, str) else None,
        ended_at if isinstance(ended_at, str) else None,
    )


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    # NUL cannot be stored in a PostgreSQL text column; nothing else is changed.
    return str(value).replace("\x00", "")


def _ended_at(text: str | None, now: datetime) -> datetime:
    """The call's end: the body's ``ended_at`` when a valid time not in the future, else ``now``."""
    parsed = parse_callback_time(text) if text else None
    return parsed if parsed is not None and parsed <= now else now


def ended_route(
    conn_id: str,
    load_secrets: Callable[[], Awaitable[list[str]]],
    max_age: timedelta,
    get_store: Callable[[], CallStore],
) -> Callable[[Request], Awaitable[Response]]:
    """The handler of ``POST /calls/{token}/ended`` (a plain Starlette endpoint, no injection)."""

    async def receive_end_call(request: Request) -> Response:
        """Verify, validate and record one end-call webhook (answers in the module docstring)."""
        token: str = request.path_params["token"]
        verified = await _verified_token(token, conn_id, load_secrets)
        if isinstance(verified, Response):
            return verified
        call_ref = verified.call_ref
        now = datetime.now(timezone.utc)
        if verified.issued_at is not None and now - verified.issued_at > max_age:
            log.warning("end-call for %s refused: its token was issued more than %s ago", call_ref, max_age)
            return _too_late(max_age)
        body = await _read_body(request, call_ref)
        if isinstance(body, Response):
            return body
        if body.token is not None and not hmac.compare_digest(body.token.encode(), token.encode()):
            log.warning(
                "end-call for %s refused: the body's %s is another token", call_ref, END_CALL_TOKEN_PARAMETER
            )
            return _error(409, f"the body's {END_CALL_TOKEN_PARAMETER} is not the token of this URL")
        record = functools.partial(
            _record,
            get_store,
            call_ref,
            ended_at=_ended_at(body.ended_at, now),
            parameters=body.parameters,
            max_age=max_age,
            issued_at=verified.issued_at,
        )
        return await run_in_threadpool(record)

    return receive_end_call


async def _read_body(request: Request, call_ref: str) -> EndCallBody | Response:
    """The parsed body, or the refusal: 413 too large, 400 incomplete, 422 invalid."""
    raw = await read_body(request, f"end-call for {call_ref}")
    if isinstance(raw, Response):
        return raw
    parsed = parse_end_call_body(raw)
    if isinstance(parsed, str):
        log.warning("end-call for %s refused: %s", call_ref, parsed)
        return _error(422, parsed)
    return parsed


def _record(
    get_store: Callable[[], CallStore],
    call_ref: str,
    *,
    ended_at: datetime,
    parameters: dict[str, str],
    max_age: timedelta,
    issued_at: datetime | None,
) -> Response:
    """Write the end-call record (in a worker thread) and answer for what became of it."""
    from airflow_provider_vonage_studio.store import EndCallOutcome

    try:
        outcome = get_store().record_end_call(
            call_ref, ended_at=ended_at, parameters=parameters, max_age=max_age, issued_at=issued_at
        )
    except Exception as exc:
        log.error("end-call for %s not recorded: call store error %s", call_ref, type(exc).__name__)
        return _store_unavailable()
    if outcome is EndCallOutcome.UNKNOWN_CALL:
        log.warning("end-call for %s refused: no such call in the store", call_ref)
        return _error(404, "unknown call")
    if outcome is EndCallOutcome.NOT_PLACED:
        log.warning("end-call for %s refused: the call was not placed", call_ref)
        return _error(409, "the call was not placed: it cannot have ended")
    if outcome is EndCallOutcome.STALE:
        log.warning("end-call for %s refused: more than %s after the call started", call_ref, max_age)
        return _too_late(max_age)
    if outcome is EndCallOutcome.FAILED_EARLIER:
        log.warning("end-call for %s refused: a failure status was recorded for it first", call_ref)
        return _error(409, "a failure status was recorded for this call first; it stays the call's outcome")
    log.info(
        "end-call for %s: answered, confirmed by its agent (%s, %d parameter(s))",
        call_ref,
        outcome.value,
        len(parameters),
    )
    return Response(_result_body(outcome.value), media_type="application/json")
