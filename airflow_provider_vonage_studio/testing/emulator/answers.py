"""Reading request bodies and answering errors the way the AI Studio API does."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.testing.emulator.records import ApiError

if TYPE_CHECKING:
    from starlette.responses import Response


def parse_body(raw_body: bytes, what: str) -> dict[str, Any]:
    """The request's JSON object. Raises ApiError (400) naming what it must contain."""
    try:
        body = json.loads(raw_body) if raw_body.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"Request body must be a JSON object with {what}")
    return body


def required_string(body: Mapping[str, Any], name: str) -> str:
    """``body[name]`` as a non-empty string. Raises ApiError (400) naming the field."""
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{name} is required and must be a non-empty string")
    return value


def error_response(exc: ApiError) -> Response:
    """The seed's error body ``{"status": N, "message": "..."}`` with ``exc``'s headers."""
    from starlette.responses import JSONResponse

    return JSONResponse(
        {"status": exc.status, "message": exc.message}, status_code=exc.status, headers=exc.headers
    )
