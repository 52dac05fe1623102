"""Narrow unit tests of the hook's Insights side with requests-mock: body shapes, the 60-day
rule, pagination, error mapping and retries (real HTTP lives in tests/integration)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pendulum
import pytest
import requests

from airflow_provider_vonage_studio.exceptions import (
    SessionNotFound,
    VonageStudioAuthError,
    VonageStudioConfigError,
    VonageStudioConnectionError,
    VonageStudioError,
    VonageStudioServerError,
)
from airflow_provider_vonage_studio.hooks.insights import parse_parameters_body, parse_search_body
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from tests.conftest import TEST_KEY

BASE = "https://studio.test"
SESSION_ID = "5a61cc84-4c89-4ef9-a983-5349c7112fdb"
PARAMS_URL = f"{BASE}/insights/sessions/{SESSION_ID}/parameters"
SEARCH_URL = f"{BASE}/insights/sessions"
SEARCH_RE = re.compile(re.escape(SEARCH_URL) + r"(\?.*)?$")
START = "2020-10-14T09:42:07.151657"
PII = "Diane Miller +447700900123"


@pytest.fixture
def hook(vs_conn):
    h = VonageStudioHook(pace=False, retry_backoff=0.01)
    h.waits = []
    h._sleep = h.waits.append
    return h


def _query(request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.url).query)


def _session(i: int, at: datetime) -> dict:
    return {
        "id": f"s-{i:04d}",
        "session_start_time": at.replace(tzinfo=None).isoformat(timespec="microseconds"),
    }


# --------------------------------------------------------------------------- parameters: shapes


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([{"name": "CONFIRMED", "value": "yes"}, {"name": "SLOT", "value": "09:30"}], id="list"),
        pytest.param({"CONFIRMED": "yes", "SLOT": "09:30"}, id="mapping"),
        pytest.param(
            {"parameters": [{"name": "CONFIRMED", "value": "yes"}, {"name": "SLOT", "value": "09:30"}]},
            id="list-under-key",
        ),
        pytest.param({"data": {"CONFIRMED": "yes", "SLOT": "09:30"}}, id="mapping-under-key"),
    ],
)
def test_each_parameters_shape(hook, requests_mock, body):
    requests_mock.get(PARAMS_URL, json=body)
    assert hook.get_session_parameters(SESSION_ID, START) == {"CONFIRMED": "yes", "SLOT": "09:30"}
    request = requests_mock.request_history[0]
    assert request.headers["X-Vgai-Key"] == TEST_KEY
    assert _query(request)["session_start_time"] == ["2020-10-14T09:42:07.151657Z"]


def test_parameter_values_become_strings():
    body = [
        {"name": "N", "value": 3},
        {"name": "B", "value": True},
        {"name": "E", "value": None},
        {"name": "L", "value": ["a", 1]},
    ]
    assert parse_parameters_body(body) == {"N": "3", "B": "true", "E": "", "L": '["a",1]'}
    assert parse_parameters_body({"parameters": []}) == {}
    assert parse_parameters_body({}) == {}


def test_start_time_may_be_a_day(hook, requests_mock):
    requests_mock.get(PARAMS_URL, json=[])
    hook.get_session_parameters(SESSION_ID, "2020-10-14")
    hook.get_session_parameters(SESSION_ID, date(2020, 10, 14))
    hook.get_session_parameters(
        SESSION_ID, datetime(2020, 10, 14, 11, 42, tzinfo=timezone(timedelta(hours=2)))
    )
    sent = [_query(r)["session_start_time"][0] for r in requests_mock.request_history]
    assert sent == ["2020-10-14", "2020-10-14", "2020-10-14T09:42:00.000Z"]


def test_session_id_is_quoted_into_one_path_segment(hook, requests_mock):
    requests_mock.get(f"{BASE}/insights/sessions/a%2Fb%3F/parameters", json=[])
    hook.get_session_parameters("a/b?", START)
    assert requests_mock.call_count == 1


PARAMS = [{"name": "CONFIRMED", "value": "yes"}, {"name": "SLOT", "value": "09:30"}]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"session_id": SESSION_ID, "parameters": PARAMS}, id="list-beside-metadata"),
        pytest.param(
            {
                "session_id": SESSION_ID,
                "session_start_time": START,
                "agent_id": "agent-1",
                "count": 2,
                "complete": True,
                "error": None,
                "parameters": PARAMS,
            },
            id="list-beside-every-scalar-type",
        ),
        pytest.param(
            {"session_id": SESSION_ID, "parameters": {"CONFIRMED": "yes", "SLOT": "09:30"}},
            id="mapping-beside-metadata",
        ),
        pytest.param({"data": {"parameters": PARAMS}}, id="data-wrapper"),
        pytest.param(
            {"result": {"session_id": SESSION_ID, "parameters": PARAMS}}, id="result-wrapper-metadata"
        ),
        pytest.param({"data": PARAMS}, id="list-under-data"),
        pytest.param({"data": {"result": {"CONFIRMED": "yes", "SLOT": "09:30"}}}, id="two-wrappers-mapping"),
        pytest.param(
            {"a": {"b": {"c": {"session_id": SESSION_ID, "parameters": PARAMS}}}}, id="three-wrappers"
        ),
    ],
)
def test_parameters_beside_metadata_and_inside_wrappers(hook, requests_mock, body):
    requests_mock.get(PARAMS_URL, json=body)
    assert hook.get_session_parameters(SESSION_ID, START) == {"CONFIRMED": "yes", "SLOT": "09:30"}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        pytest.param(
            {"session_id": SESSION_ID, "parameters": PARAMS, "history": [PII]},
            "session_id: str, parameters: list, history: list",
            id="two-lists-beside-metadata",
        ),
        pytest.param(
            {"session_id": PII, "parameters": PARAMS, "caller": {"NAME": PII}},
            "session_id: str, parameters: list, caller: dict",
            id="list-and-mapping-beside-metadata",
        ),
        pytest.param(
            {"session_id": PII, "parameters": [PII]},
            "session_id: str, parameters: list",
            id="list-of-strings-beside-metadata",
        ),
        pytest.param(
            {"session_id": PII, "parameters": {"CALLER": {"NAME": PII}}},
            "session_id: str, parameters: dict",
            id="nested-mapping-beside-metadata",
        ),
        pytest.param(
            {"data": {"parameters": PARAMS, "other": [{"name": PII}]}},
            "inside data: object with keys parameters: list, other: list",
            id="two-lists-inside-a-wrapper",
        ),
        pytest.param(
            {"CONFIRMED": {"value": PII, "type": "string"}},
            "inside CONFIRMED: object with keys value: str, type: str",
            id="one-parameter-record-by-name",
        ),
        pytest.param(
            {"session_id": PII, "parameters": {"name": "CONFIRMED", "value": PII}},
            "session_id: str, parameters: dict",
            id="one-name-value-record-beside-metadata",
        ),
        pytest.param(
            {"name": "CONFIRMED", "value": PII}, "object with keys name: str, value: str", id="bare-record"
        ),
        pytest.param(
            {"a": {"b": {"c": {"d": {"session_id": PII, "parameters": PARAMS}}}}},
            "inside a.b.c: object with keys d: dict (looked through at most 3 wrappers)",
            id="four-wrappers",
        ),
    ],
)
def test_ambiguous_or_too_deep_parameters_are_refused_by_keys_and_types(hook, requests_mock, body, where):
    requests_mock.get(PARAMS_URL, json=body)
    with pytest.raises(VonageStudioError, match="unexpected shape of session parameters") as info:
        hook.get_session_parameters(SESSION_ID, START)
    message = str(info.value)
    assert where in message
    assert "Diane" not in message and "7700900123" not in message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"session": {"CONFIRMED": {"value": PII}}, "id": PII}, id="two-keys"),
        pytest.param([{"label": "CONFIRMED", "value": PII}], id="list-without-name"),
        pytest.param({"parameters": [{"name": "CONFIRMED", "value": "yes"}, PII]}, id="mixed-list-under-key"),
        pytest.param(PII, id="bare-string"),
    ],
)
def test_unknown_parameters_shape_names_keys_and_types_never_values(hook, requests_mock, body):
    requests_mock.get(PARAMS_URL, json=body)
    with pytest.raises(VonageStudioError, match="unexpected shape of session parameters") as info:
        hook.get_session_parameters(SESSION_ID, START)
    message = str(info.value)
    assert "Diane" not in message and "7700900123" not in message
    if isinstance(body, dict):
        assert all(f"{key}: {type(value).__name__}" in message for key, value in body.items())


def test_unknown_shape_message_in_detail():
    with pytest.raises(VonageStudioError) as info:
        parse_parameters_body({"session": {"CALLER": PII}, "caller": {"NAME": PII}, "count": 2})
    assert "object with keys session: dict, caller: dict, count: int" in str(info.value)
    assert "Diane" not in str(info.value)
    with pytest.raises(VonageStudioError) as info:
        parse_search_body({"items": [{"to": PII}], "more": [PII]})
    assert "items: list, more: list" in str(info.value)
    assert "Diane" not in str(info.value)


# --------------------------------------------------------------------------- parameters: errors


@pytest.mark.parametrize(
    ("status", "message", "exc_type"),
    [
        (401, "Not Authorised", VonageStudioAuthError),
        (401, "Invalid parameters: session_start_time", VonageStudioAuthError),
        (404, "Session not found", SessionNotFound),
        (500, "Internal Server Error", VonageStudioServerError),
    ],
)
def test_parameters_errors(hook, requests_mock, status, message, exc_type):
    requests_mock.get(PARAMS_URL, status_code=status, json={"status": status, "message": message})
    with pytest.raises(exc_type) as info:
        hook.get_session_parameters(SESSION_ID, START)
    assert info.value.status == status
    assert info.value.message == message
    # None of them is worth a retry inside the hook: 404 is the sensor's to wait out.
    assert requests_mock.call_count == 1


def test_session_not_found_is_its_own_retryable_error(hook, requests_mock):
    requests_mock.get(PARAMS_URL, status_code=404, json={"status": 404, "message": "Session not found"})
    with pytest.raises(SessionNotFound) as info:
        hook.get_session_parameters(SESSION_ID, START)
    assert info.value.retryable  # "not indexed yet" is normal right after a call


def test_read_timeout_on_get_is_retried(hook, requests_mock):
    requests_mock.get(
        PARAMS_URL, [{"exc": requests.exceptions.ReadTimeout}, {"status_code": 503}, {"json": {"A": "1"}}]
    )
    assert hook.get_session_parameters(SESSION_ID, START) == {"A": "1"}
    assert requests_mock.call_count == 3
    assert len(hook.waits) == 2


def test_read_timeouts_give_up_after_max_attempts(vs_conn, requests_mock):
    hook = VonageStudioHook(pace=False, retry_backoff=0.01, max_attempts=3)
    hook._sleep = lambda seconds: None
    requests_mock.get(PARAMS_URL, exc=requests.exceptions.ReadTimeout)
    with pytest.raises(VonageStudioConnectionError, match="no answer"):
        hook.get_session_parameters(SESSION_ID, START)
    assert requests_mock.call_count == 3


def test_empty_session_id_is_refused_locally(hook, requests_mock):
    with pytest.raises(VonageStudioConfigError, match="session_id"):
        hook.get_session_parameters("  ", START)
    with pytest.raises(VonageStudioConfigError, match="session_start_time"):
        hook.get_session_parameters(SESSION_ID, "yesterday")
    assert requests_mock.call_count == 0


# --------------------------------------------------------------------------- search: shapes


T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("body", "total"),
    [
        pytest.param([{"id": "a"}, {"id": "b"}], None, id="bare-list"),
        pytest.param(
            {"sessions": [{"id": "a"}, {"id": "b"}], "total": 2, "page_number": 0}, 2, id="under-key"
        ),
        pytest.param({"items": [{"id": "a"}, {"id": "b"}], "count": 2}, 2, id="items-count"),
        pytest.param({"results": [{"id": "a"}, {"id": "b"}]}, None, id="under-key-no-total"),
        pytest.param({"data": {"sessions": [{"id": "a"}, {"id": "b"}], "total": 2}}, 2, id="data-wrapper"),
        pytest.param({"result": [{"id": "a"}, {"id": "b"}]}, None, id="bare-list-under-result"),
        pytest.param(
            {"data": {"result": {"items": [{"id": "a"}, {"id": "b"}], "count": 2, "links": {"next": None}}}},
            2,
            id="two-wrappers",
        ),
        pytest.param(
            {"a": {"b": {"c": {"sessions": [{"id": "a"}, {"id": "b"}], "total_count": 2}}}},
            2,
            id="three-wrappers",
        ),
    ],
)
def test_each_search_shape(hook, requests_mock, body, total):
    assert parse_search_body(body) == ([{"id": "a"}, {"id": "b"}], total)
    requests_mock.get(SEARCH_RE, json=body)
    assert [s["id"] for s in hook.search_sessions(T0, T0 + timedelta(days=1))] == ["a", "b"]
    # A page shorter than page_size is the last one: one request.
    assert requests_mock.call_count == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"sessions": [{"id": PII}], "other": []}, id="two-lists"),
        pytest.param({"total": 1, "next": PII}, id="no-list"),
        pytest.param([PII], id="list-of-strings"),
        pytest.param({"data": {"sessions": [{"id": PII}], "other": [PII]}}, id="two-lists-inside-a-wrapper"),
        pytest.param({"data": {"total": 1, "next": PII}}, id="no-list-inside-a-wrapper"),
        pytest.param({"data": {"sessions": {"id": PII}}, "meta": {"total": 1}}, id="two-objects"),
        pytest.param({"a": {"b": {"c": {"d": {"sessions": [{"id": PII}]}}}}}, id="four-wrappers"),
    ],
)
def test_unknown_search_shape(hook, requests_mock, body):
    requests_mock.get(SEARCH_RE, json=body)
    with pytest.raises(VonageStudioError, match="unexpected shape of session search results") as info:
        list(hook.search_sessions(T0, T0 + timedelta(days=1)))
    assert "Diane" not in str(info.value)


def test_refused_search_body_names_keys_and_where_the_search_stopped():
    with pytest.raises(VonageStudioError) as info:
        parse_search_body({"data": {"result": {"sessions": [{"to": PII}], "more": [PII]}}})
    assert str(info.value).endswith(
        "object with keys data: dict; inside data.result: object with keys sessions: list, more: list"
    )


def test_a_total_inside_a_wrapper_drives_paging(hook, requests_mock):
    """The total is read where the list is: a wrapped total that says 'more' must page on (and a
    capped page_size is still detected)."""
    sessions = [{"id": f"s-{i}"} for i in range(5)]

    def page(request, context):
        q = _query(request)
        number, size = int(q["page_number"][0]), int(q["page_size"][0])
        return {"data": {"sessions": sessions[number * size : (number + 1) * size], "total": 5}}

    requests_mock.get(SEARCH_RE, json=page)
    found = [s["id"] for s in hook.search_sessions(T0, T0 + timedelta(days=1), page_size=2)]
    assert found == [s["id"] for s in sessions]
    assert requests_mock.call_count == 3
    requests_mock.get(SEARCH_RE, json={"data": {"sessions": [{"id": "a"}], "total": 5}})
    with pytest.raises(VonageStudioError, match="cap page_size"):
        list(hook.search_sessions(T0, T0 + timedelta(days=1), page_size=2))


# --------------------------------------------------------------------------- every datetime form


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(
            pendulum.datetime(2026, 3, 10, tz="UTC"), pendulum.datetime(2026, 3, 11, tz="UTC"), id="pendulum"
        ),
        pytest.param(
            pendulum.datetime(2026, 3, 10, 1, tz="Europe/Paris"),
            pendulum.datetime(2026, 3, 11, 1, tz="Europe/Paris"),
            id="pendulum-paris",
        ),
        pytest.param(
            pendulum.datetime(2026, 3, 10, tz="UTC").astimezone(timezone.utc),
            pendulum.datetime(2026, 3, 11, tz="UTC").astimezone(timezone.utc),
            id="pendulum-with-stdlib-utc",
        ),
        pytest.param(datetime(2026, 3, 10), datetime(2026, 3, 11), id="naive"),
        pytest.param(
            datetime(2026, 3, 10, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            datetime(2026, 3, 11, tzinfo=timezone.utc),
            id="mixed-offsets",
        ),
        pytest.param(date(2026, 3, 10), date(2026, 3, 11), id="dates"),
        pytest.param("2026-03-10T00:00:00Z", "2026-03-11 00:00:00+00:00", id="strings"),
        pytest.param("2026-03-10", pendulum.datetime(2026, 3, 11, tz="UTC"), id="string-and-pendulum"),
    ],
)
def test_search_bounds_in_every_form(hook, requests_mock, start, end):
    """The reported failure: pendulum bounds (what Airflow hands a task) raised TypeError."""
    requests_mock.get(SEARCH_RE, json=[])
    assert list(hook.search_sessions(start, end)) == []
    q = _query(requests_mock.request_history[0])
    assert q["from_date"] == ["2026-03-10T00:00:00.000Z"] and q["to_date"] == ["2026-03-11T00:00:00.000Z"]


def test_split_range_with_pendulum_bounds(hook, requests_mock):
    requests_mock.get(SEARCH_RE, json=[])
    start = pendulum.datetime(2026, 1, 1, tz="America/New_York")
    list(hook.search_sessions(start, start.add(days=130), split_range=True))
    windows = [(_query(r)["from_date"][0], _query(r)["to_date"][0]) for r in requests_mock.request_history]
    assert windows == [
        ("2026-01-01T05:00:00.000Z", "2026-03-02T05:00:00.000Z"),
        ("2026-03-02T05:00:00.000Z", "2026-05-01T05:00:00.000Z"),
        ("2026-05-01T05:00:00.000Z", "2026-05-11T04:00:00.000Z"),  # DST began in between
    ]


def test_pendulum_range_over_60_days_is_refused_like_any_other(hook, requests_mock):
    start = pendulum.datetime(2026, 3, 10, tz="UTC")
    with pytest.raises(VonageStudioConfigError, match="at most 60 days"):
        hook.search_sessions(start, start.add(days=61))
    assert requests_mock.call_count == 0


@pytest.mark.parametrize(
    ("value", "field"),
    [
        pytest.param(True, "from_date", id="bool"),
        pytest.param(1773100800, "from_date", id="epoch"),
        pytest.param(float("nan"), "from_date", id="nan"),
        pytest.param(None, "from_date", id="none"),
        pytest.param("last tuesday", "from_date", id="garbage"),
    ],
)
def test_bad_search_bounds_are_refused_before_any_request(hook, requests_mock, value, field):
    with pytest.raises(VonageStudioConfigError, match=field):
        hook.search_sessions(value, T0)
    with pytest.raises(VonageStudioConfigError, match="to_date"):
        hook.search_sessions(T0, value)
    assert requests_mock.call_count == 0


def test_session_start_time_in_every_form(hook, requests_mock):
    requests_mock.get(PARAMS_URL, json=[])
    for value in (
        pendulum.datetime(2020, 10, 14, 11, 42, 7, 151657, tz="Europe/Paris"),
        pendulum.datetime(2020, 10, 14, 9, 42, 7, 151657, tz="UTC").astimezone(timezone.utc),
        datetime(2020, 10, 14, 9, 42, 7, 151657),
        "2020-10-14T09:42:07.151657Z",
    ):
        hook.get_session_parameters(SESSION_ID, value)
    hook.get_session_parameters(SESSION_ID, pendulum.date(2020, 10, 14))
    sent = [_query(r)["session_start_time"][0] for r in requests_mock.request_history]
    assert sent == ["2020-10-14T09:42:07.151657Z"] * 4 + ["2020-10-14"]


@pytest.mark.parametrize("value", [True, 1602668527, float("inf"), None, "", "2020-10-45", "soon"])
def test_bad_session_start_time_is_refused_before_any_request(hook, requests_mock, value):
    with pytest.raises(VonageStudioConfigError, match="session_start_time"):
        hook.get_session_parameters(SESSION_ID, value)
    assert requests_mock.call_count == 0


# --------------------------------------------------------------------------- search: pagination


def test_three_pages_lazily_with_the_documented_query(hook, requests_mock):
    sessions = [_session(i, T0 + timedelta(minutes=i)) for i in range(250)]

    def page(request, context):
        q = _query(request)
        number, size = int(q["page_number"][0]), int(q["page_size"][0])
        return {"sessions": sessions[number * size : (number + 1) * size], "total": len(sessions)}

    requests_mock.get(SEARCH_RE, json=page)
    found = hook.search_sessions(
        T0,
        T0 + timedelta(days=2),
        filter_by={"bool": {"must": [{"match": {"status": "answered"}}]}},
        sort_by=["session_start_time:asc", "id:desc"],
        project_fields=["id", "session_start_time", "channel_data.duration"],
    )
    assert requests_mock.call_count == 0  # nothing is sent before the first item is asked for
    first = next(found)
    assert first["id"] == "s-0000" and requests_mock.call_count == 1
    rest = list(found)
    assert [s["id"] for s in [first, *rest]] == [s["id"] for s in sessions]
    assert requests_mock.call_count == 3
    queries = [_query(r) for r in requests_mock.request_history]
    assert [q["page_number"] for q in queries] == [["0"], ["1"], ["2"]]
    q = queries[0]
    assert q["from_date"] == ["2026-03-01T00:00:00.000Z"] and q["to_date"] == ["2026-03-03T00:00:00.000Z"]
    assert q["page_size"] == ["100"]
    assert q["sort_by"] == ["session_start_time:asc,id:desc"]
    assert q["project_fields"] == ["id", "session_start_time", "channel_data.duration"]
    assert q["filter_by"] == ['{"bool":{"must":[{"match":{"status":"answered"}}]}}']


def test_pages_without_total_end_on_a_short_or_empty_page(hook, requests_mock):
    requests_mock.get(
        SEARCH_RE,
        [{"json": [{"id": "a"}, {"id": "b"}]}, {"json": [{"id": "c"}, {"id": "d"}]}, {"json": []}],
    )
    assert [s["id"] for s in hook.search_sessions(T0, T0 + timedelta(days=1), page_size=2)] == list("abcd")
    assert requests_mock.call_count == 3


def test_a_capped_page_size_is_an_error_not_silent_loss(hook, requests_mock):
    requests_mock.get(SEARCH_RE, json={"sessions": [{"id": "a"}] * 50, "total": 120})
    with pytest.raises(VonageStudioError, match="cap page_size"):
        list(hook.search_sessions(T0, T0 + timedelta(days=1), page_size=100))


def test_project_fields_as_one_string(hook, requests_mock):
    requests_mock.get(SEARCH_RE, json=[])
    list(hook.search_sessions(T0, T0 + timedelta(days=1), project_fields="id, agent_id", sort_by="id:asc"))
    assert _query(requests_mock.request_history[0])["project_fields"] == ["id", "agent_id"]


def test_search_errors(hook, requests_mock):
    requests_mock.get(SEARCH_RE, status_code=401, json={"status": 401, "message": "Invalid filter_by"})
    with pytest.raises(VonageStudioAuthError, match="Invalid filter_by"):
        list(hook.search_sessions(T0, T0 + timedelta(days=1), filter_by={"bool": {"nope": []}}))
    requests_mock.get(SEARCH_RE, [{"exc": requests.exceptions.ReadTimeout}, {"json": [{"id": "a"}]}])
    assert [s["id"] for s in hook.search_sessions(T0, T0 + timedelta(days=1))] == ["a"]


# --------------------------------------------------------------------------- search: the 60-day rule


def test_more_than_60_days_is_refused_before_any_request(hook, requests_mock):
    with pytest.raises(VonageStudioConfigError, match="at most 60 days"):
        hook.search_sessions(T0, T0 + timedelta(days=60, seconds=1))
    with pytest.raises(VonageStudioConfigError, match="before from_date"):
        hook.search_sessions(T0, T0 - timedelta(seconds=1))
    with pytest.raises(VonageStudioConfigError, match="page_size"):
        hook.search_sessions(T0, T0 + timedelta(days=1), page_size=0)
    assert requests_mock.call_count == 0
    requests_mock.get(SEARCH_RE, json=[])
    list(hook.search_sessions(T0, T0 + timedelta(days=60)))  # exactly 60 days is allowed
    assert requests_mock.call_count == 1


def _serve_inclusive(sessions):
    """A search endpoint with inclusive bounds (as the emulator has), paging on page_size."""

    def page(request, context):
        q = _query(request)
        low = datetime.fromisoformat(q["from_date"][0].replace("Z", "+00:00"))
        high = datetime.fromisoformat(q["to_date"][0].replace("Z", "+00:00"))
        number, size = int(q["page_number"][0]), int(q["page_size"][0])
        match = [
            s
            for s in sessions
            if low <= datetime.fromisoformat(s["session_start_time"]).replace(tzinfo=timezone.utc) <= high
        ]
        return {"sessions": match[number * size : (number + 1) * size], "total": len(match)}

    return page


def test_split_range_searches_60_day_windows_and_keeps_boundary_sessions_once(hook, requests_mock):
    end = T0 + timedelta(days=150)
    boundaries = [T0, T0 + timedelta(days=60), T0 + timedelta(days=120), end]
    sessions = [_session(i, at) for i, at in enumerate(boundaries)]
    sessions += [_session(10 + i, T0 + timedelta(days=d)) for i, d in enumerate((1, 59.5, 61, 130))]
    requests_mock.get(SEARCH_RE, json=_serve_inclusive(sessions))
    found = list(hook.search_sessions(T0, end, split_range=True, page_size=2))
    assert sorted(s["id"] for s in found) == sorted(s["id"] for s in sessions)
    assert len(found) == len(sessions)  # nothing twice
    windows = sorted(
        {(_query(r)["from_date"][0], _query(r)["to_date"][0]) for r in requests_mock.request_history}
    )
    assert windows == [
        ("2026-03-01T00:00:00.000Z", "2026-04-30T00:00:00.000Z"),
        ("2026-04-30T00:00:00.000Z", "2026-06-29T00:00:00.000Z"),
        ("2026-06-29T00:00:00.000Z", "2026-07-29T00:00:00.000Z"),
    ]


def test_boundaries_with_microseconds_are_sent_exactly(hook, requests_mock):
    start = T0 + timedelta(microseconds=123456)
    end = start + timedelta(days=61)
    sessions = [_session(0, start + timedelta(days=60)), _session(1, end)]
    requests_mock.get(SEARCH_RE, json=_serve_inclusive(sessions))
    found = list(hook.search_sessions(start, end, split_range=True))
    assert [s["id"] for s in found] == ["s-0000", "s-0001"]
    assert _query(requests_mock.request_history[0])["from_date"] == ["2026-03-01T00:00:00.123456Z"]


def test_exclusive_end_and_projection_keep_boundaries_right(hook, requests_mock):
    end = T0 + timedelta(days=1)
    sessions = [_session(0, T0), _session(1, T0 + timedelta(hours=5)), _session(2, end)]
    requests_mock.get(SEARCH_RE, json=_serve_inclusive(sessions))
    found = list(hook.search_sessions(T0, end, include_to_date=False, project_fields=["id"]))
    # The start time was requested for the boundary check, then dropped as projected away.
    assert found == [{"id": "s-0000"}, {"id": "s-0001"}]
    assert _query(requests_mock.request_history[0])["project_fields"] == ["id", "session_start_time"]
