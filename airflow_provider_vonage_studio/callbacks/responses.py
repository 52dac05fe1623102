"""The receiver's answers that more than one route gives (bodies built once where they repeat)."""

from __future__ import annotations

import functools
import json
from datetime import timedelta

from fastapi.responses import JSONResponse


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _too_late(max_age: timedelta) -> JSONResponse:
    return _error(
        410,
        f"callback too late: callbacks are accepted for {int(max_age.total_seconds())} seconds after "
        "the call started",
    )


def _store_unavailable() -> JSONResponse:
    return _error(503, "the call store is unavailable; the callback was not recorded")


@functools.lru_cache(maxsize=8)
def _result_body(result: str) -> bytes:
    """The body ``JSONResponse({"result": result})`` renders, built once per result."""
    return json.dumps({"result": result}, separators=(",", ":")).encode()
