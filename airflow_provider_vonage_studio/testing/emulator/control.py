"""The emulator's own HTTP API under ``/_emulator``: for tests only, never authenticated,
neither recorded nor subject to faults (so never expose an emulator beyond loopback).

=====================================  ================================================
``GET  /_emulator/health``             ``{"status": "ok"}``
``GET  /_emulator/requests``           every recorded API request (keys redacted)
``GET  /_emulator/calls``              accepted (placed) calls
``GET  /_emulator/messages``           accepted messages
``GET  /_emulator/callbacks``          call status-callback delivery attempts
``GET  /_emulator/end-calls``          end-call webhook delivery attempts
``GET  /_emulator/message-callbacks``  message status-callback delivery attempts
``GET  /_emulator/sessions``           every Insights session (indexed or not yet)
``POST /_emulator/reset``              forget requests, calls, messages, callbacks,
                                       sessions, scripts, faults
``POST /_emulator/script``             ``{"to", "outcome", "parameters", "talk_time",
                                       "end_call", "end_call_delay", "index_delay"}``
                                       (``outcome`` may be a list; or a list of them)
``POST /_emulator/message-script``     ``{"to", "outcome"}`` (or a list of them)
``POST /_emulator/inject``             ``{"fault", "count", "to", "retry_after", "delay",
                                       "path"}`` (or a list of them)
``POST /_emulator/sessions``           add Insights sessions (an object or a list)
=====================================  ================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.testing.emulator.answers import error_response
from airflow_provider_vonage_studio.testing.emulator.config import (
    CONTROL_PREFIX,
    MAKE_CALL_PATH,
    EmulatorConfigError,
    Outcome,
)
from airflow_provider_vonage_studio.testing.emulator.records import ApiError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from airflow_provider_vonage_studio.testing.emulator.state import EmulatorState

Handler = Callable[["Request"], Any]

_SCRIPT_FIELDS = {"to", "outcome", "parameters", "talk_time", "end_call", "end_call_delay", "index_delay"}
_MESSAGE_SCRIPT_FIELDS = {"to", "outcome"}
_FAULT_FIELDS = {"fault", "count", "to", "retry_after", "delay", "path"}


def _check_fields(item: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(item) - allowed
    if unknown:
        raise EmulatorConfigError(f"unknown {what} fields {sorted(unknown)}")


def _apply_one(emulator: EmulatorState, kind: str, item: Mapping[str, Any]) -> None:
    # The Emulator's methods check types themselves and name the bad field.
    if kind == "script":
        _check_fields(item, _SCRIPT_FIELDS, "script")
        emulator.script(
            item.get("to"),  # type: ignore[arg-type]
            item.get("outcome", Outcome.ANSWERED),
            item.get("parameters"),
            talk_time=item.get("talk_time"),
            end_call=item.get("end_call", True),
            end_call_delay=item.get("end_call_delay", 0.0),
            index_delay=item.get("index_delay"),
        )
    elif kind == "message-script":
        _check_fields(item, _MESSAGE_SCRIPT_FIELDS, "message script")
        emulator.script_message(item.get("to"), item.get("outcome", "delivered"))  # type: ignore[arg-type]
    elif kind == "inject":
        _check_fields(item, _FAULT_FIELDS, "fault")
        emulator.inject(
            item.get("fault"),  # type: ignore[arg-type]
            item.get("count", 1),
            item.get("to"),
            retry_after=item.get("retry_after"),
            delay=item.get("delay", 5.0),
            path=item.get("path", MAKE_CALL_PATH),
        )
    else:
        emulator.add_session(**{str(k): v for k, v in item.items()})


def apply_control(emulator: EmulatorState, kind: str, payload: Any) -> int:
    """Apply a ``script``, ``message-script``, ``inject`` or ``sessions`` payload (one
    object or a list); returns how many. Raises EmulatorConfigError (answered 400)."""
    items = payload if isinstance(payload, list) else [payload]
    prepared: list[Mapping[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise EmulatorConfigError(f"item {index} must be a JSON object")
        prepared.append(item)
    for item in prepared:
        _apply_one(emulator, kind, item)
    return len(prepared)


def _listing(read: Callable[[EmulatorState], Any]) -> Handler:
    async def handler(request: Request) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse(read(request.app.state.emulator))

    return handler


def _changing(kind: str) -> Handler:
    async def handler(request: Request) -> Response:
        from starlette.responses import JSONResponse

        try:
            payload = json.loads(await request.body())
            count = apply_control(request.app.state.emulator, kind, payload)
        except json.JSONDecodeError as exc:
            return error_response(ApiError(400, f"Malformed JSON body: {exc.msg}"))
        except (EmulatorConfigError, TypeError, ValueError) as exc:
            return error_response(ApiError(400, str(exc)))
        return JSONResponse({"status": "ok", "count": count})

    return handler


async def _reset(request: Request) -> Response:
    from starlette.responses import JSONResponse

    request.app.state.emulator.reset()
    return JSONResponse({"status": "ok"})


def _as_dicts(items: list[Any]) -> list[dict[str, Any]]:
    return [item.to_dict() for item in items]


ROUTES: tuple[tuple[str, tuple[str, ...], Handler], ...] = (
    (f"{CONTROL_PREFIX}/health", ("GET",), _listing(lambda e: {"status": "ok"})),
    (f"{CONTROL_PREFIX}/requests", ("GET",), _listing(lambda e: _as_dicts(e.requests))),
    (f"{CONTROL_PREFIX}/calls", ("GET",), _listing(lambda e: _as_dicts(e.calls))),
    (f"{CONTROL_PREFIX}/messages", ("GET",), _listing(lambda e: _as_dicts(e.messages))),
    (f"{CONTROL_PREFIX}/callbacks", ("GET",), _listing(lambda e: _as_dicts(e.callbacks))),
    (f"{CONTROL_PREFIX}/end-calls", ("GET",), _listing(lambda e: _as_dicts(e.end_calls))),
    (f"{CONTROL_PREFIX}/message-callbacks", ("GET",), _listing(lambda e: _as_dicts(e.message_callbacks))),
    (f"{CONTROL_PREFIX}/sessions", ("GET",), _listing(lambda e: e.sessions)),
    (f"{CONTROL_PREFIX}/reset", ("POST",), _reset),
    (f"{CONTROL_PREFIX}/script", ("POST",), _changing("script")),
    (f"{CONTROL_PREFIX}/message-script", ("POST",), _changing("message-script")),
    (f"{CONTROL_PREFIX}/inject", ("POST",), _changing("inject")),
    (f"{CONTROL_PREFIX}/sessions", ("POST",), _changing("sessions")),
)
