"""Insights: ``GET /insights/sessions/{id}/parameters`` and ``GET /insights/sessions``.

A placed call's session is indexed ``insights_index_delay`` seconds after it started (a
script can set its own delay); until then the search does not see it and its parameters
are 404. Only answered sessions have readable parameters: the session parameters sent with
the call merged with what the script says the conversation collected.

The search takes ``from_date`` / ``to_date`` (required, at most 60 days apart),
``page_number`` (from 0), ``page_size`` (1–1000, default 100), ``sort_by``
(``attr:asc|desc`` list, dotted attributes), ``project_fields`` and ``filter_by`` (an
Elasticsearch-style bool query, see :func:`compile_filter`). Bad parameters answer 401, as
the real service is reported to. Response shapes follow :class:`InsightsShape`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.testing.emulator.answers import error_response
from airflow_provider_vonage_studio.testing.emulator.config import (
    DEFAULT_PAGE_SIZE,
    KEY_HEADER,
    MAX_PAGE_SIZE,
    MAX_SEARCH_SPAN_DAYS,
    InsightsShape,
    Outcome,
)
from airflow_provider_vonage_studio.testing.emulator.records import ApiError, parse_datetime

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from airflow_provider_vonage_studio.testing.emulator.state import EmulatorState

#: The largest span the Insights search accepts between ``from_date`` and ``to_date``.
MAX_SEARCH_SPAN = timedelta(days=MAX_SEARCH_SPAN_DAYS)

Predicate = Callable[[Mapping[str, Any]], bool]

# --------------------------------------------------------------------------- filter_by


def _resolve(document: Mapping[str, Any], dotted: str) -> Any:
    """Value at a dotted path; a list of ``{"name", "value"}`` is looked up by name
    (so ``parameters.CONFIRMED`` reaches a session parameter)."""
    current: Any = document
    for part in dotted.split("."):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list):
            current = next(
                (p.get("value") for p in current if isinstance(p, Mapping) and p.get("name") == part), None
            )
        else:
            return None
        if current is None:
            return None
    return current


def _project(document: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """Keep only ``fields`` (dotted paths keep the nested key only)."""
    result: dict[str, Any] = {}
    for dotted in fields:
        parts = dotted.split(".")
        source: Any = document
        for part in parts:
            if not isinstance(source, Mapping) or part not in source:
                break
            source = source[part]
        else:
            target = result
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = source
    return result


def _sort_key(value: Any) -> tuple[int, Any]:
    # Missing values sort last; numbers before strings so mixed fields never raise.
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _sort_key_for(attr: str) -> Callable[[Mapping[str, Any]], tuple[int, Any]]:
    def key(document: Mapping[str, Any]) -> tuple[int, Any]:
        return _sort_key(_resolve(document, attr))

    return key


def _matches(document: Mapping[str, Any], clause: Any) -> bool:
    """Evaluate one filter clause: ``{"match": {field: value}}`` (``term`` is a synonym),
    or a nested ``{"bool": {...}}``. Values compare as strings, ignoring case (as an
    Elasticsearch ``match`` on a keyword-like field would)."""
    if not isinstance(clause, Mapping) or len(clause) != 1:
        raise ValueError(f"filter clause must be an object with one key, got {clause!r}")
    ((kind, body),) = clause.items()
    if kind == "bool":
        return _bool_query(document, body)
    if kind not in ("match", "term"):
        raise ValueError(f"unsupported filter clause {kind!r} (use match, term or bool)")
    if not isinstance(body, Mapping) or not body:
        raise ValueError(f"{kind} must map field names to values")
    for name, expected in body.items():
        if isinstance(expected, Mapping) and "query" in expected:
            expected = expected["query"]  # Elasticsearch's long form {"field": {"query": v}}
        actual = _resolve(document, str(name))
        if actual is None or str(actual).casefold() != str(expected).casefold():
            return False
    return True


def _clauses(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping):
        return [value]
    raise ValueError(f"{name} must be a clause or a list of clauses")


def _bool_query(document: Mapping[str, Any], query: Any) -> bool:
    if not isinstance(query, Mapping):
        raise ValueError("bool must be an object")
    unknown = set(query) - {"must", "must_not", "should", "filter"}
    if unknown:
        raise ValueError(f"unsupported bool keys {sorted(unknown)} (use must, must_not, should)")
    must = _clauses(query.get("must"), "must") + _clauses(query.get("filter"), "filter")
    must_not = _clauses(query.get("must_not"), "must_not")
    should = _clauses(query.get("should"), "should")
    if not all(_matches(document, c) for c in must):
        return False
    if any(_matches(document, c) for c in must_not):
        return False
    return not should or any(_matches(document, c) for c in should)


def compile_filter(raw: str) -> Callable[[Mapping[str, Any]], bool]:
    """Parse ``filter_by``: JSON of an Elasticsearch-style bool query.

    Supported: ``{"bool": {"must": [...], "must_not": [...], "should": [...]}}`` (the
    ``bool`` wrapper may be omitted; ``filter`` acts as ``must``), each clause
    ``{"match": {"field": "value"}}`` / ``{"term": ...}`` / a nested ``bool``. Field names
    may be dotted (``channel_data.duration``, ``parameters.CONFIRMED``). ``should`` needs at
    least one matching clause when present. Raises ValueError on anything else.
    """
    try:
        query = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"filter_by is not valid JSON: {exc.msg}") from None
    if not isinstance(query, Mapping):
        raise ValueError("filter_by must be a JSON object")
    if "bool" not in query and set(query) <= {"must", "must_not", "should", "filter"}:
        query = {"bool": query}

    def predicate(document: Mapping[str, Any]) -> bool:
        return _matches(document, query)

    # Evaluate once on an empty document so structural errors surface as 401 up front.
    predicate({})
    return predicate


# --------------------------------------------------------------------------- reads


def session_parameters(
    emulator: EmulatorState, key: str | None, session_id: str, session_start_time: str | None
) -> list[dict[str, str]]:
    """Parameters of an indexed, answered session. Raises ApiError (401, 404).

    ``session_start_time`` must parse but is not compared with the session's: clients
    pass back what make-call returned, and the real service only uses it to find the
    right index.
    """
    emulator._authorise(key)
    if not session_start_time:
        raise ApiError(401, "session_start_time is required")
    try:
        parse_datetime(session_start_time)
    except ValueError:
        raise ApiError(401, "session_start_time must be an ISO 8601 date or datetime") from None
    with emulator._lock:
        session = emulator._sessions.get(session_id)
        if (
            session is None
            or session.indexed_at > time.monotonic()
            or session.status != Outcome.ANSWERED.value
        ):
            raise ApiError(404, "Session not found")
        return [dict(p) for p in session.parameters]


@dataclass(frozen=True)
class SearchQuery:
    """A parsed, checked Insights search."""

    from_date: datetime
    to_date: datetime
    page_number: int
    page_size: int
    sort_keys: tuple[tuple[str, bool], ...]  # (dotted attribute, descending)
    fields: tuple[str, ...]
    predicate: Predicate | None


def parse_search(query: Mapping[str, list[str]]) -> SearchQuery:
    """Check the search's query parameters. Raises ApiError (401) naming the parameter."""

    def single(name: str) -> str | None:
        values = query.get(name) or []
        return values[-1] if values else None

    bounds = {}
    for name in ("from_date", "to_date"):
        raw = single(name)
        if not raw:
            raise ApiError(401, f"{name} is required")
        try:
            bounds[name] = parse_datetime(raw)
        except ValueError:
            raise ApiError(401, f"{name} must be an ISO 8601 datetime") from None
    from_date, to_date = bounds["from_date"], bounds["to_date"]
    if to_date < from_date:
        raise ApiError(401, "to_date must not be before from_date")
    if to_date - from_date > MAX_SEARCH_SPAN:
        raise ApiError(401, "from_date and to_date must be at most 60 days apart")
    predicate: Predicate | None = None
    raw_filter = single("filter_by")
    if raw_filter:
        try:
            predicate = compile_filter(raw_filter)
        except ValueError as exc:
            raise ApiError(401, f"filter_by: {exc}") from None
    return SearchQuery(
        from_date=from_date,
        to_date=to_date,
        page_number=_int_param(single("page_number"), "page_number", 0, 0, None),
        page_size=_int_param(single("page_size"), "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
        sort_keys=_sort_keys(single("sort_by") or "session_start_time:asc"),
        fields=tuple(
            f.strip() for raw in query.get("project_fields") or [] for f in raw.split(",") if f.strip()
        ),
        predicate=predicate,
    )


def _sort_keys(raw: str) -> tuple[tuple[str, bool], ...]:
    sort_keys: list[tuple[str, bool]] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        attr, _, direction = item.strip().partition(":")
        direction = direction.strip().lower() or "asc"
        if not attr.strip() or direction not in ("asc", "desc"):
            raise ApiError(401, f"sort_by entries must be attr:asc or attr:desc, got {item!r}")
        sort_keys.append((attr.strip(), direction == "desc"))
    return tuple(sort_keys)


def search(
    emulator: EmulatorState, key: str | None, query: Mapping[str, list[str]]
) -> tuple[int, list[Any], SearchQuery]:
    """Run an Insights search; returns (total, page, parsed query). Raises ApiError."""
    emulator._authorise(key)
    parsed = parse_search(query)
    now = time.monotonic()
    with emulator._lock:
        candidates = [
            s.to_dict()
            for s in emulator._sessions.values()
            if s.indexed_at <= now and parsed.from_date <= s.start <= parsed.to_date
        ]
    try:
        matched = [d for d in candidates if parsed.predicate is None or parsed.predicate(d)]
    except ValueError as exc:
        raise ApiError(401, f"filter_by: {exc}") from None
    for attr, descending in reversed(parsed.sort_keys):  # stable sorts, last key first
        matched.sort(key=_sort_key_for(attr), reverse=descending)
    start = parsed.page_number * parsed.page_size
    page = matched[start : start + parsed.page_size]
    if parsed.fields:
        page = [_project(d, parsed.fields) for d in page]
    return len(matched), page, parsed


def _int_param(raw: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(401, f"{name} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(401, f"{name} must be {bound}, got {value}")
    return value


# --------------------------------------------------------------------------- routes


async def parameters_route(request: Request) -> Response:
    """``GET /insights/sessions/{session_id}/parameters`` in the emulator's shape."""
    from starlette.responses import JSONResponse

    emulator: EmulatorState = request.app.state.emulator
    session_id = request.path_params["session_id"]
    try:
        params = session_parameters(
            emulator,
            request.headers.get(KEY_HEADER),
            session_id,
            request.query_params.get("session_start_time"),
        )
    except ApiError as exc:
        return error_response(exc)
    shape = emulator.insights_shape
    body: Any
    if shape is InsightsShape.LIST:
        body = params
    elif shape is InsightsShape.ITEMS:
        body = {p["name"]: p["value"] for p in params}
    elif shape is InsightsShape.METADATA:
        session = next((s for s in emulator.sessions if s["id"] == session_id), {})
        body = {
            "session_id": session.get("id"),
            "agent_id": session.get("agent_id"),
            "session_start_time": session.get("session_start_time"),
            "parameters": params,
        }
    else:
        body = {"parameters": params}
    return JSONResponse(emulator._wrap(body))


async def search_route(request: Request) -> Response:
    """``GET /insights/sessions`` in the emulator's shape."""
    from starlette.responses import JSONResponse

    emulator: EmulatorState = request.app.state.emulator
    query: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        query.setdefault(name, []).append(value)
    try:
        total, page, parsed = search(emulator, request.headers.get(KEY_HEADER), query)
    except ApiError as exc:
        return error_response(exc)
    shape = emulator.insights_shape
    body: Any
    if shape is InsightsShape.LIST:
        body = page
    elif shape is InsightsShape.ITEMS:
        body = {"items": page, "count": total}
    else:
        body = {
            "total": total,
            "page_number": parsed.page_number,
            "page_size": parsed.page_size,
            "sessions": page,
        }
    return JSONResponse(emulator._wrap(body))


ROUTES = (
    ("/insights/sessions/{session_id}/parameters", ("GET",), parameters_route),
    ("/insights/sessions", ("GET",), search_route),
)
