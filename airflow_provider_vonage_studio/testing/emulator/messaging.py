"""``POST /messaging/conversation``: start an SMS or WhatsApp conversation, strictly.

Body ``{to, agent_id, channel, status_url, session_parameters}``; ``channel`` is ``sms``
or ``whatsapp``. WhatsApp also needs ``namespace``, ``template`` and ``locale`` (strings)
and accepts ``components`` (a list of objects each with a string ``type``, as WhatsApp
template components are); SMS refuses those four fields. ``status_url`` is mandatory on
both channels (the docs call it mandatory for WhatsApp; the emulator takes the strictest
reading). ``to`` is digits with country code only (no SIP).

Order of checks: ``X-Vgai-Key`` (401), JSON body and fields (400, naming the field), agent
known (404), destination format (400), rate limit (429: the agent's budget, shared with
calls unless ``shared_rate_budget=False``), preconfigured session (500). The answer is
``{"session_id", "session_start_time"}`` (assumed to match make-call's; undocumented).

Each accepted message's scripted :class:`MessageOutcome` is posted to ``status_url`` after
``callback_delay`` as ``{agent_id, to, session_id, channel, status, timestamp}``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.testing.emulator import delivery
from airflow_provider_vonage_studio.testing.emulator.answers import (
    error_response,
    parse_body,
    required_string,
)
from airflow_provider_vonage_studio.testing.emulator.config import (
    KEY_HEADER,
    MESSAGING_PATH,
    Channel,
    MessageOutcome,
    MessageScript,
    valid_destination,
)
from airflow_provider_vonage_studio.testing.emulator.records import (
    ApiError,
    PlacedMessage,
    check_session_parameters,
    format_callback_timestamp,
    format_start_time,
    utcnow,
)

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from airflow_provider_vonage_studio.testing.emulator.state import EmulatorState

#: Fields WhatsApp requires and SMS refuses.
WHATSAPP_REQUIRED = ("namespace", "template", "locale")
#: Every WhatsApp-only field.
WHATSAPP_ONLY = (*WHATSAPP_REQUIRED, "components")

_DEFAULT_SCRIPT = MessageScript(outcomes=(MessageOutcome.DELIVERED,))


def _channel(body: Mapping[str, Any]) -> Channel:
    raw = body.get("channel")
    try:
        return Channel(raw)
    except ValueError:
        choices = ", ".join(c.value for c in Channel)
        raise ApiError(400, f"channel is required and must be one of {choices}, got {raw!r}") from None


def _check_components(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and isinstance(item.get("type"), str) for item in value
    ):
        raise ApiError(400, "components must be a list of objects, each with a string type")
    return value


def _template_fields(body: Mapping[str, Any], channel: Channel) -> dict[str, Any]:
    """WhatsApp's template fields, or nothing for SMS. Raises ApiError (400) naming the field."""
    if channel is Channel.SMS:
        for name in WHATSAPP_ONLY:
            if name in body:
                raise ApiError(400, f"{name} is only accepted for the whatsapp channel")
        return {}
    fields: dict[str, Any] = {name: required_string(body, name) for name in WHATSAPP_REQUIRED}
    fields["components"] = _check_components(body.get("components"))
    return fields


def send_message(emulator: EmulatorState, key: str | None, raw_body: bytes) -> dict[str, str]:
    """Validate and accept one message; returns the success body. Raises ApiError."""
    emulator._authorise(key)
    body = parse_body(raw_body, "to, agent_id, channel and status_url")
    to = required_string(body, "to")
    agent_id = required_string(body, "agent_id")
    channel = _channel(body)
    status_url = required_string(body, "status_url")
    session_parameters = check_session_parameters(body.get("session_parameters"))
    template = _template_fields(body, channel)

    with emulator._lock:
        agent = emulator._known_agent(agent_id)
        if not valid_destination(to, sip=False):
            raise ApiError(400, "Bad destination number format")
        now = time.monotonic()
        emulator._admit(agent_id, agent, "messaging", now)
        script = emulator._message_scripts.get(to, _DEFAULT_SCRIPT)
        attempt = emulator._next_attempt(emulator._message_attempts, to)
        started = utcnow()
        message = PlacedMessage(
            session_id=str(uuid.uuid4()),
            session_start_time=format_start_time(started),
            agent_id=agent_id,
            to=to,
            channel=channel.value,
            status_url=status_url,
            session_parameters=tuple(session_parameters),
            outcome=script.outcome_for(attempt),
            monotonic=now,
            received_at=started,
            attempt=attempt,
            **template,
        )
        emulator._messages.append(message)
        _schedule_status_callbacks(emulator, message)
        emulator._changed.notify_all()
    return {"session_id": message.session_id, "session_start_time": message.session_start_time}


def _schedule_status_callbacks(emulator: EmulatorState, message: PlacedMessage) -> None:
    """The outcome's statuses, in order, after ``callback_delay`` (lock held)."""

    def payload_for(status: str) -> delivery.PayloadFactory:
        def payload() -> dict[str, Any]:
            return {
                "agent_id": message.agent_id,
                "to": message.to,
                "session_id": message.session_id,
                "channel": message.channel,
                "status": status,
                "timestamp": format_callback_timestamp(utcnow()),
            }

        return payload

    payloads = [payload_for(status) for status in message.outcome.statuses]
    delivery.schedule(
        emulator, emulator.callback_delay, message.status_url, payloads, emulator._message_callbacks
    )


async def conversation_route(request: Request) -> Response:
    """The route: answers the success body or the seed's error body."""
    from starlette.responses import JSONResponse

    emulator: EmulatorState = request.app.state.emulator
    try:
        result = send_message(emulator, request.headers.get(KEY_HEADER), await request.body())
    except ApiError as exc:
        return error_response(exc)
    return JSONResponse(result)


ROUTES = ((MESSAGING_PATH, ("POST",), conversation_route),)
