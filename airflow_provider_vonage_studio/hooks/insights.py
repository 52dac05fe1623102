"""AI Studio Insights: session parameters and paged session search, and the tolerant readers
of their undocumented bodies (:func:`parse_parameters_body`, :func:`parse_search_body`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any, TypeVar

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioError
from airflow_provider_vonage_studio.hooks.http import HttpMixin, _json, parse_api_time
from airflow_provider_vonage_studio.timeutil import is_date_only, to_utc

__all__ = [
    "INSIGHTS_MAX_RANGE",
    "INSIGHTS_MAX_WRAPPERS",
    "InsightsMixin",
    "parse_parameters_body",
    "parse_search_body",
]

#: The longest range one session search may span.
INSIGHTS_MAX_RANGE = timedelta(days=60)
#: How many single-key wrapper objects (``{"data": ...}``, ``{"result": ...}``) around an Insights
#: body are looked through; deeper bodies are refused rather than searched.
INSIGHTS_MAX_WRAPPERS = 3


class InsightsMixin(HttpMixin):
    """The hook's Insights methods (reads only: retried as idempotent requests)."""

    def get_session_parameters(
        self, session_id: str, session_start_time: datetime | date | str
    ) -> dict[str, str]:
        """What the conversation collected: ``GET /insights/sessions/{id}/parameters``.

        ``session_start_time``: a day (``date`` or ``"YYYY-MM-DD"``, sent as the day) or an
        instant (stdlib or pendulum datetime, naive meaning UTC, or an ISO-8601 string).

        :raises VonageStudioConfigError: an empty ``session_id``, or a ``session_start_time`` that
            is neither (nothing is sent).
        :raises SessionNotFound: 404 — unknown, or not indexed yet (normal right after a call).
        :raises VonageStudioAuthError: 401 — bad key, or parameters the API refused.
        """
        if not session_id or not str(session_id).strip():
            raise VonageStudioConfigError("session_id must be a non-empty string")
        start = _iso_param(session_start_time, "session_start_time")
        resp = self._with_retries(
            lambda: self._send(
                "GET",
                f"/insights/sessions/{_quote(session_id)}/parameters",
                params={"session_start_time": start},
                idempotent=True,
            ),
            what="get session parameters",
        )
        return parse_parameters_body(_json(resp))

    def search_sessions(
        self,
        from_date: datetime | date | str,
        to_date: datetime | date | str,
        *,
        filter_by: Mapping[str, Any] | None = None,
        sort_by: str | Sequence[str] | None = None,
        project_fields: str | Sequence[str] | None = None,
        page_size: int = 100,
        split_range: bool = False,
        include_to_date: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Sessions between ``from_date`` and ``to_date``, page by page, lazily.

        Arguments are checked at once; requests start when the iterator is first advanced and
        only one page is held at a time. ``from_date``/``to_date``: stdlib or pendulum datetimes
        (naive means UTC), dates (their midnight UTC) or ISO-8601 strings, normalised by
        :func:`~airflow_provider_vonage_studio.timeutil.to_utc`.

        :param filter_by: an Elasticsearch-style bool query (``must``/``must_not``/``should``),
            sent as JSON.
        :param sort_by: ``"attribute:asc|desc"`` items (a list or one comma-separated string).
        :param project_fields: field names to return (a list, or one comma-separated string).
        :param page_size: sessions per request (1..1000).
        :param split_range: search a range longer than 60 days in consecutive windows of at
            most 60 days (a session on a shared boundary is returned once).
        :param include_to_date: the API's bounds are inclusive; ``False`` leaves out sessions
            that start exactly at ``to_date``, so consecutive half-open windows (Airflow data
            intervals) never return one session twice.
        :raises VonageStudioConfigError: a bound that is not a datetime, date or ISO-8601 string;
            the range is reversed, or longer than 60 days without ``split_range=True``; a bad
            ``page_size``.
        :raises VonageStudioAuthError: 401 — bad key, or parameters the API refused (while iterating).
        :raises VonageStudioError: a page whose body has an unknown shape, or an API that returned
            a short page while its total says more sessions exist (it caps ``page_size``).
        """
        start = to_utc(from_date, field="from_date")
        end = to_utc(to_date, field="to_date")
        if end < start:
            raise VonageStudioConfigError("to_date is before from_date")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise VonageStudioConfigError(
                f"page_size must be an integer between 1 and 1000, got {page_size!r}"
            )
        if end - start > INSIGHTS_MAX_RANGE and not split_range:
            raise VonageStudioConfigError(
                f"from_date..to_date spans {(end - start).days} days; AI Studio searches at most 60 days "
                "at once. Narrow the range or pass split_range=True."
            )
        windows: list[tuple[datetime, datetime]] = []
        cursor = start
        while True:
            window_end = min(cursor + INSIGHTS_MAX_RANGE, end)
            windows.append((cursor, window_end))
            if window_end >= end:
                break
            cursor = window_end
        fields = _field_list(project_fields, "project_fields")
        # Boundary handling reads each session's start time: request it even when the caller
        # projected it away, and drop it again before yielding.
        strip_start = (
            bool(fields) and "session_start_time" not in fields and (len(windows) > 1 or not include_to_date)
        )
        if strip_start:
            fields.append("session_start_time")
        return self._search_pages(
            windows,
            filter_by,
            sort_by,
            fields,
            page_size,
            include_to_date=include_to_date,
            strip_start=strip_start,
        )

    def _search_pages(
        self,
        windows: list[tuple[datetime, datetime]],
        filter_by: Mapping[str, Any] | None,
        sort_by: str | Sequence[str] | None,
        project_fields: Sequence[str],
        page_size: int,
        *,
        include_to_date: bool,
        strip_start: bool,
    ) -> Iterator[dict[str, Any]]:
        import json as jsonlib

        for index, (start, end) in enumerate(windows):
            last_window = index == len(windows) - 1
            # Consecutive windows share their boundary instant: a session there belongs to the
            # later window (and to none when the caller's own end is exclusive).
            end_exclusive = not last_window or not include_to_date
            page = 0
            while True:
                params: list[tuple[str, Any]] = [
                    ("from_date", _fmt_dt(start)),
                    ("to_date", _fmt_dt(end)),
                    ("page_number", page),
                    ("page_size", page_size),
                ]
                if sort_by:
                    params.append(("sort_by", sort_by if isinstance(sort_by, str) else ",".join(sort_by)))
                for field in project_fields:
                    params.append(("project_fields", field))
                if filter_by:
                    params.append(("filter_by", jsonlib.dumps(filter_by, separators=(",", ":"))))
                resp = self._with_retries(
                    lambda query=params: self._send(  # type: ignore[misc]
                        "GET", "/insights/sessions", params=query, idempotent=True
                    ),
                    what=f"search sessions page {page}",
                )
                sessions, total = parse_search_body(_json(resp))
                del resp  # the decoded page is all that is needed; let the raw body go
                for session in sessions:
                    at = _session_at(session)
                    if end_exclusive and at is not None and at >= end:
                        continue
                    if strip_start:
                        session.pop("session_start_time", None)
                    yield session
                page += 1
                if total is not None and len(sessions) < page_size and page * page_size < total:
                    # Paging on would skip sessions (page_number counts pages of our size).
                    raise VonageStudioError(
                        f"AI Studio returned {len(sessions)} sessions for page {page - 1} of size "
                        f"{page_size} while reporting {total} in total: it seems to cap page_size; "
                        f"retry with page_size={len(sessions)} or less"
                    )
                if len(sessions) < page_size or (total is not None and page * page_size >= total):
                    break


def parse_parameters_body(data: Any) -> dict[str, str]:
    """Session parameters from an undocumented body. Accepted, and nothing else:

    1. a list of ``{"name": ..., "value": ...}`` objects;
    2. an object of parameter name -> scalar value (``{"CONFIRMED": "yes"}``), without a
       ``value`` key (that is one parameter's record, e.g. ``{"CONFIRMED": {"value": "yes"}}``);
    3. an object holding exactly one list or object of form 1 or 2 beside any number of
       scalar keys (metadata): ``{"session_id": "...", "parameters": [...]}``;
    4. any of these inside up to :data:`INSIGHTS_MAX_WRAPPERS` nested single-key objects
       (``{"data": {...}}``, ``{"data": {"result": {...}}}``).

    Values become strings (``None`` -> ``""``, booleans ``true``/``false``, lists and objects JSON).

    :raises VonageStudioError: for any other shape (two candidate lists or objects, a list of
        something else, deeper nesting), naming the keys and types seen, never values: they are
        what callers said.
    """
    return _unwrapped(data, _parameters_form, "session parameters")


_T = TypeVar("_T")


def _unwrapped(data: Any, form: Callable[[Any], _T | None], what: str) -> _T:
    """``form``'s reading of ``data`` or of what up to :data:`INSIGHTS_MAX_WRAPPERS` nested
    single-key objects wrap; raises :class:`VonageStudioError` naming keys and types only."""
    inner: Any = data
    path: list[str] = []
    while True:
        found = form(inner)
        if found is not None:
            return found
        if not _is_wrapper(inner) or len(path) == INSIGHTS_MAX_WRAPPERS:
            break
        ((key, inner),) = inner.items()
        path.append(str(key))
    raise VonageStudioError(f"unexpected shape of {what} from AI Studio: " + _shape_at(data, inner, path))


def _parameters_form(data: Any) -> dict[str, str] | None:
    """Forms 1-3 of :func:`parse_parameters_body` at this level, or ``None``."""
    direct = _parameters_container(data)
    if direct is not None or not isinstance(data, Mapping):
        return direct
    containers = [value for value in data.values() if not _is_scalar(value)]
    if len(containers) != 1:
        return None
    return _parameters_container(containers[0])


def _parameters_container(data: Any) -> dict[str, str] | None:
    """Form 1 (list of ``{name, value}``) or form 2 (name -> scalar), or ``None``."""
    if isinstance(data, list):
        if all(isinstance(item, Mapping) and "name" in item for item in data):
            return {str(item["name"]): _str(item.get("value")) for item in data}
        return None
    if isinstance(data, Mapping) and all(_is_scalar(value) for value in data.values()):
        if "value" in data:
            # One parameter's record ({"CONFIRMED": {"value": "yes"}} seen through its key), not
            # the parameters: AI Studio's names are capitals, never "value".
            return None
        return {str(key): _str(value) for key, value in data.items()}
    return None


def parse_search_body(data: Any) -> tuple[list[dict[str, Any]], int | None]:
    """Sessions and total from an undocumented search body. Accepted, and nothing else:

    1. a bare list of session objects (no total);
    2. an object with exactly one list, of session objects, beside any other keys; the total is
       the first integer among ``total``, ``count``, ``total_count``, ``totalCount``,
       ``total_sessions``, ``total_elements`` at that level (else unknown); ``{}`` is no sessions;
    3. either inside up to :data:`INSIGHTS_MAX_WRAPPERS` nested single-key objects
       (``{"data": {"sessions": [...], "total": 2}}``).

    :raises VonageStudioError: for any other shape (no list, two lists, a list of something
        else, deeper nesting), naming the keys and types seen, never values.
    """
    return _unwrapped(data, _search_form, "session search results")


def _search_form(data: Any) -> tuple[list[dict[str, Any]], int | None] | None:
    """Forms 1-2 of :func:`parse_search_body` at this level, or ``None``."""
    if isinstance(data, list):
        if all(isinstance(item, Mapping) for item in data):
            return [dict(item) for item in data], None
        return None
    if not isinstance(data, Mapping):
        return None
    if not data:
        return [], 0
    lists = [value for value in data.values() if isinstance(value, list)]
    if len(lists) != 1 or not all(isinstance(item, Mapping) for item in lists[0]):
        return None
    total = None
    for key in ("total", "count", "total_count", "totalCount", "total_sessions", "total_elements"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            total = value
            break
    return [dict(item) for item in lists[0]], total


def _is_wrapper(data: Any) -> bool:
    """A single-key object around another object: ``{"data": {...}}``."""
    return isinstance(data, Mapping) and len(data) == 1 and isinstance(next(iter(data.values())), Mapping)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _shape_at(original: Any, inner: Any, path: list[str]) -> str:
    """The refused body's shape, and where the search stopped inside its wrappers."""
    if not path:
        return _shape(original)
    where = ".".join(path)
    deeper = (
        f" (looked through at most {INSIGHTS_MAX_WRAPPERS} wrappers)"
        if len(path) == INSIGHTS_MAX_WRAPPERS
        else ""
    )
    return f"{_shape(original)}; inside {where}: {_shape(inner)}{deeper}"


def _shape(data: Any) -> str:
    if isinstance(data, Mapping):
        return "object with keys " + ", ".join(f"{k!s}: {type(v).__name__}" for k, v in data.items())
    if isinstance(data, list):
        kinds = sorted({type(item).__name__ for item in data})
        return f"list of {len(data)} ({', '.join(kinds) or 'empty'})"
    return type(data).__name__


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (Mapping, list)):
        import json

        # JSON, not Python's repr: the value may end up in a warehouse column.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _session_at(session: Mapping[str, Any]) -> datetime | None:
    value = session.get("session_start_time")
    if not isinstance(value, str):
        return None
    try:
        return parse_api_time(value)
    except ValueError:
        return None


def _fmt_dt(value: datetime) -> str:
    # Milliseconds as usual; microseconds only when the value has them, so a bound sent to the
    # API is exactly the one the client compares session times against (window boundaries).
    spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _field_list(value: str | Sequence[str] | None, field: str) -> list[str]:
    """``project_fields`` as a list: a string is one comma-separated list (never its characters)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    result = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise VonageStudioConfigError(f"{field} must hold non-empty field names, got {item!r}")
        result.append(item.strip())
    return result


def _iso_param(value: datetime | date | str, field: str) -> str:
    """A day as the day (``2020-10-14``), an instant as the API's UTC timestamp."""
    instant = to_utc(value, field=field)  # checks the day as well
    return instant.date().isoformat() if is_date_only(value) else _fmt_dt(instant)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value).strip(), safe="")
