"""``POST /telephony/make-call``: validate, place, and what follows a placed call.

Order of checks (each failure answers at once): ``X-Vgai-Key`` (401), JSON body and field
types (400), agent known (404), destination format (400), rate limit (429), preconfigured
session (500). Only accepted calls count towards the rate limit.

After an accepted call: a non-answered outcome posts the seed's status callback to
``status_url`` after ``callback_delay``; an answered call carrying ``VS_CALL_TOKEN`` posts
the end-call webhook after its talk time (see :class:`Emulator`); its Insights session is
indexed after the index delay (answered sessions only are readable by id).
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.testing.emulator import delivery
from airflow_provider_vonage_studio.testing.emulator.answers import (
    error_response,
    parse_body,
    required_string,
)
from airflow_provider_vonage_studio.testing.emulator.config import (
    AGENT_NUMBER,
    END_CALL_TOKEN_PARAMETER,
    KEY_HEADER,
    MAKE_CALL_PATH,
    CallScript,
    Outcome,
    valid_destination,
)
from airflow_provider_vonage_studio.testing.emulator.records import (
    ApiError,
    PlacedCall,
    Session,
    check_session_parameters,
    format_callback_timestamp,
    format_start_time,
    merge_parameters,
    utcnow,
)

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from airflow_provider_vonage_studio.testing.emulator.state import EmulatorState

_DEFAULT_SCRIPT = CallScript(outcomes=(Outcome.ANSWERED,))
_STATUS_TAIL_RE = re.compile(r"/calls/[^/]+/status/?$")


def place_call(emulator: EmulatorState, key: str | None, raw_body: bytes) -> dict[str, str]:
    """Validate and place one call; returns the success body. Raises ApiError."""
    emulator._authorise(key)
    body = parse_body(raw_body, "agent_id and to")
    agent_id = required_string(body, "agent_id")
    to = required_string(body, "to")
    status_url = body.get("status_url")
    if status_url is not None and not isinstance(status_url, str):
        raise ApiError(400, "status_url must be a string")
    hangup = body.get("hangup_on_answer_machine")
    if hangup is not None and not isinstance(hangup, bool):
        raise ApiError(400, "hangup_on_answer_machine must be a boolean")
    session_parameters = check_session_parameters(body.get("session_parameters"))

    with emulator._lock:
        agent = emulator._known_agent(agent_id)
        if not valid_destination(to):
            raise ApiError(400, "Bad destination number format")
        now = time.monotonic()
        emulator._admit(agent_id, agent, "voice", now)
        script = emulator._scripts.get(to, _DEFAULT_SCRIPT)
        attempt = emulator._next_attempt(emulator._call_attempts, to)
        outcome = script.outcome_for(attempt)
        started = utcnow()
        call = PlacedCall(
            session_id=str(uuid.uuid4()),
            session_start_time=format_start_time(started),
            agent_id=agent_id,
            to=to,
            status_url=status_url,
            hangup_on_answer_machine=hangup,
            session_parameters=tuple(session_parameters),
            outcome=outcome,
            parameters=tuple(merge_parameters(session_parameters, script.parameters)),
            conversation_uuid=f"CON-{uuid.uuid4()}",
            monotonic=now,
            received_at=started,
            attempt=attempt,
        )
        emulator._calls.append(call)
        _index(emulator, call, script, now)
        if outcome is not Outcome.ANSWERED and status_url:
            _schedule_status_callback(emulator, call)
        elif outcome is Outcome.ANSWERED:
            _schedule_end_call(emulator, call, script)
        emulator._changed.notify_all()
    return {"session_id": call.session_id, "session_start_time": call.session_start_time}


def _index(emulator: EmulatorState, call: PlacedCall, script: CallScript, now: float) -> None:
    """Add the call's Insights session, visible after the (scripted) index delay."""
    delay = emulator.insights_index_delay if script.index_delay is None else script.index_delay
    emulator._sessions[call.session_id] = Session(
        id=call.session_id,
        agent_id=call.agent_id,
        destination=call.to,
        source=AGENT_NUMBER,
        start=call.received_at.replace(tzinfo=None),
        status=call.outcome.value,
        duration=30 if call.outcome is Outcome.ANSWERED else 0,
        parameters=[dict(p) for p in call.parameters],
        indexed_at=now + delay,
    )


def _schedule_status_callback(emulator: EmulatorState, call: PlacedCall) -> None:
    """The seed's callback for a non-answered call, after ``callback_delay`` (lock held)."""
    assert call.status_url is not None

    def payload() -> dict[str, Any]:
        return {
            "agent_id": call.agent_id,
            "to": call.to,
            "conversation_uuid": call.conversation_uuid,
            "status": call.outcome.value,
            "timestamp": format_callback_timestamp(utcnow()),
        }

    delivery.schedule(emulator, emulator.callback_delay, call.status_url, [payload], emulator._callbacks)


def end_call_url(emulator: EmulatorState, call: PlacedCall, token: str) -> str | None:
    """Where the agent's End Call Event webhook posts for ``call``, or ``None`` (no URL).

    ``end_call_url`` with ``$VS_CALL_TOKEN`` in it is a template (as pasted into the agent's
    webhook node); without, a base that ``/calls/<token>/ended`` is appended to. Unset, the
    call's ``status_url`` gives the base: its trailing ``/calls/<x>/status`` (else
    ``/status``) becomes ``/calls/<token>/ended`` (else ``/ended``).
    """
    template = emulator.end_call_url
    if template is not None:
        placeholder = f"${END_CALL_TOKEN_PARAMETER}"
        if placeholder in template:
            return template.replace(placeholder, token)
        return f"{template.rstrip('/')}/calls/{token}/ended"
    if not call.status_url:
        return None
    if _STATUS_TAIL_RE.search(call.status_url):
        return _STATUS_TAIL_RE.sub(f"/calls/{token}/ended", call.status_url)
    if call.status_url.rstrip("/").endswith("/status"):
        return call.status_url.rstrip("/")[: -len("/status")] + "/ended"
    return None


def _schedule_end_call(emulator: EmulatorState, call: PlacedCall, script: CallScript) -> None:
    """The agent's end-call webhook for an answered call, after its talk time (lock held)."""
    if not emulator.end_call_webhook or not script.end_call:
        return
    token = next((p["value"] for p in call.session_parameters if p["name"] == END_CALL_TOKEN_PARAMETER), None)
    if token is None:
        return
    url = end_call_url(emulator, call, token)
    if url is None:
        return
    talk_time = emulator.talk_time if script.talk_time is None else script.talk_time
    ended_at = call.received_at + timedelta(seconds=talk_time)

    def payload() -> dict[str, Any]:
        body: dict[str, Any] = {END_CALL_TOKEN_PARAMETER: token}
        body.update({p["name"]: p["value"] for p in script.parameters})
        body["session_id"] = call.session_id
        body["ended_at"] = ended_at.isoformat(timespec="milliseconds")
        return body

    delay = talk_time + script.end_call_delay
    delivery.schedule(emulator, delay, url, [payload], emulator._end_calls)


async def make_call_route(request: Request) -> Response:
    """The route: answers the success body or the seed's error body."""
    from starlette.responses import JSONResponse

    emulator: EmulatorState = request.app.state.emulator
    try:
        result = place_call(emulator, request.headers.get(KEY_HEADER), await request.body())
    except ApiError as exc:
        return error_response(exc)
    return JSONResponse(result)


ROUTES = ((MAKE_CALL_PATH, ("POST",), make_call_route),)
