"""An AI Studio emulator: a real HTTP server that behaves like the outbound-call API.

It is strict where the documented API is strict (the ``X-Vgai-Key`` header, the body
fields, the destination format, the per-agent calls-per-second limit) so that tests of
the provider fail for the same reasons production would. It also answers the Insights
endpoints, posts the documented status callbacks for calls the callee did not pick up,
and can inject faults (429, 503, a dropped connection, a response that never comes in
time) to exercise the client's retry and exactly-once logic.

Use it in-process::

    with Emulator(api_keys=("test-key",), agents=("agent-1",)) as emulator:
        emulator.script("447700900123", "busy")
        ...  # point the connection at emulator.url
        assert emulator.calls[0].to == "447700900123"

or from the command line (``python -m airflow_provider_vonage_studio.testing.emulator
--port 8765 --agent agent-1 --key test-key``), or through the pytest fixtures in
:mod:`airflow_provider_vonage_studio.testing.pytest_plugin`.

HTTP API (besides the emulated ``/telephony/make-call`` and ``/insights/...``), meant for
tests only and never authenticated, so never expose an emulator beyond loopback:

=============================  ========================================================
``GET  /_emulator/health``     ``{"status": "ok"}``
``GET  /_emulator/requests``   every recorded API request (keys redacted)
``GET  /_emulator/calls``      accepted (placed) calls
``GET  /_emulator/callbacks``  status-callback delivery attempts
``GET  /_emulator/sessions``   every Insights session (indexed or not yet)
``POST /_emulator/reset``      forget requests, calls, callbacks, sessions, scripts, faults
``POST /_emulator/script``     ``{"to", "outcome", "parameters"}`` (or a list of them)
``POST /_emulator/inject``     ``{"fault", "count", "to", "retry_after", "delay", "path"}``
                               (or a list of them)
``POST /_emulator/sessions``   add Insights sessions (an object or a list of objects)
=============================  ========================================================

Requests to ``/_emulator/...`` are neither recorded nor subject to faults.

Order of checks on ``POST /telephony/make-call`` (each failure answers at once):
fault injection, ``X-Vgai-Key`` (401), JSON body and field types (400), agent known
(404), destination format (400), rate limit (429), preconfigured session (500).
Only accepted calls count towards the rate limit.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    Handler = Callable[[Request], Awaitable[Response]]

__all__ = [
    "AGENT_NUMBER",
    "AgentConfig",
    "CallbackAttempt",
    "Emulator",
    "EmulatorConfigError",
    "Fault",
    "InsightsShape",
    "Outcome",
    "PlacedCall",
    "RecordedRequest",
    "main",
]

#: The number every emulated agent calls from (``source`` of Insights sessions): a UK
#: drama-range number, so it can never reach a real phone.
AGENT_NUMBER = "447700900000"

MAKE_CALL_PATH = "/telephony/make-call"
CONTROL_PREFIX = "/_emulator"
KEY_HEADER = "x-vgai-key"

#: The largest span the Insights search accepts between ``from_date`` and ``to_date``.
MAX_SEARCH_SPAN = timedelta(days=60)
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

_DIGITS_RE = re.compile(r"^[0-9]{7,15}$")
_SIP_RE = re.compile(
    r"^sip:[^@\s:]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)
_SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class EmulatorConfigError(ValueError):
    """An emulator setting, script or fault is malformed (the message names the field)."""


class Outcome(str, Enum):
    """What the emulated callee does with a call; everything but ANSWERED posts a callback."""

    ANSWERED = "answered"
    BUSY = "busy"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Fault(str, Enum):
    """Failures the emulator can inject in front of the API.

    ``RATE_LIMITED`` ("429") and ``UNAVAILABLE`` ("503") answer without processing;
    ``DROP`` closes the connection without any response and without processing (the call
    is not placed); ``TIMEOUT`` processes the request (the call *is* placed) and then holds
    the response back for ``delay`` seconds, so a client with a shorter read timeout gives
    up without knowing the outcome.
    """

    RATE_LIMITED = "429"
    UNAVAILABLE = "503"
    DROP = "drop"
    TIMEOUT = "timeout"


class InsightsShape(str, Enum):
    """Shapes of Insights response bodies (undocumented upstream; clients parse tolerantly).

    ``DEFAULT``: search ``{"total", "page_number", "page_size", "sessions"}``, parameters
    ``{"parameters": [{"name", "value"}, ...]}``. ``LIST``: search a bare list of sessions,
    parameters a bare list of ``{"name", "value"}``. ``ITEMS``: search
    ``{"items": [...], "count": total}``, parameters a bare mapping ``{"NAME": "value"}``.
    ``METADATA``: search as ``DEFAULT``, parameters with the session's metadata beside them
    ``{"session_id", "agent_id", "session_start_time", "parameters": [{"name", "value"}, ...]}``.
    Any shape can be wrapped further with the emulator's ``insights_wrapper``.
    """

    DEFAULT = "default"
    LIST = "list"
    ITEMS = "items"
    METADATA = "metadata"


@dataclass(frozen=True)
class AgentConfig:
    """How one emulated agent behaves.

    ``calls_per_second`` overrides the emulator-wide limit for this agent (``None`` keeps
    it). ``preconfigured=False`` makes every call to the agent fail with the seed's 500
    ``Failed to fetch preconfigured session information``.
    """

    calls_per_second: int | None = None
    preconfigured: bool = True


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulated API received, as the server saw it.

    ``headers`` has lower-case names; the ``X-Vgai-Key`` value is replaced by a
    fingerprint (``<redacted:1a2b3c4d>``, see :meth:`Emulator.key_fingerprint`) and other
    credentials by ``<redacted>``. ``body`` is the parsed JSON body, or ``None`` when the
    body is empty or not JSON. ``status`` is the HTTP status answered (``None`` for a
    dropped connection). ``fault`` names the injected fault applied, if any.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: Any
    status: int | None
    monotonic: float
    received_at: datetime
    fault: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``received_at`` as ISO 8601 UTC)."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": dict(self.headers),
            "body": self.body,
            "status": self.status,
            "monotonic": self.monotonic,
            "received_at": self.received_at.isoformat(),
            "fault": self.fault,
        }


@dataclass(frozen=True)
class PlacedCall:
    """A call the emulator accepted (answered 200 to, or held back under a timeout fault).

    ``session_start_time`` is the naive UTC string that was returned; ``parameters`` is
    what Insights will report (session parameters merged with scripted ones).
    """

    session_id: str
    session_start_time: str
    agent_id: str
    to: str
    status_url: str | None
    hangup_on_answer_machine: bool | None
    session_parameters: tuple[Mapping[str, str], ...]
    outcome: Outcome
    parameters: tuple[Mapping[str, str], ...]
    conversation_uuid: str
    monotonic: float
    received_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "session_id": self.session_id,
            "session_start_time": self.session_start_time,
            "agent_id": self.agent_id,
            "to": self.to,
            "status_url": self.status_url,
            "hangup_on_answer_machine": self.hangup_on_answer_machine,
            "session_parameters": [dict(p) for p in self.session_parameters],
            "outcome": self.outcome.value,
            "parameters": [dict(p) for p in self.parameters],
            "conversation_uuid": self.conversation_uuid,
            "monotonic": self.monotonic,
            "received_at": self.received_at.isoformat(),
        }


@dataclass(frozen=True)
class CallbackAttempt:
    """One POST of a status callback: ``status`` is the receiver's HTTP status, or
    ``None`` with ``error`` set when the request itself failed."""

    url: str
    payload: Mapping[str, Any]
    attempt: int
    status: int | None
    error: str | None
    sent_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "url": self.url,
            "payload": dict(self.payload),
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "sent_at": self.sent_at.isoformat(),
        }


@dataclass
class _PendingFault:
    fault: Fault
    remaining: int
    to: str | None
    path: str
    retry_after: int | None
    delay: float


@dataclass
class _Session:
    """An Insights session; ``indexed_at`` (monotonic) is when searches start seeing it."""

    id: str
    agent_id: str
    destination: str
    source: str
    start: datetime  # naive UTC
    status: str
    duration: int
    parameters: list[dict[str, str]]
    indexed_at: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "agent_id": self.agent_id,
            "destination": self.destination,
            "source": self.source,
            "session_start_time": _format_start_time(self.start),
            "status": self.status,
            "channel_data": {"duration": self.duration},
            "parameters": [dict(p) for p in self.parameters],
        }
        data.update(self.extra)
        return data


class _ApiError(Exception):
    """Answer with the seed's error body ``{"status": N, "message": "..."}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class _ConnectionDropped(Exception):
    """Raised in place of dropping the connection when no transport can be reached
    (in-process ASGI clients): the client sees an exception rather than a response."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _format_start_time(value: datetime) -> str:
    """The API's ``session_start_time``: naive UTC with microseconds."""
    return value.replace(tzinfo=None).isoformat(timespec="microseconds")


def _format_callback_timestamp(value: datetime) -> str:
    """The callback's ``timestamp``: UTC, milliseconds, ``Z`` (``2022-05-31T06:40:45.475Z``)."""
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _parse_datetime(value: str) -> datetime:
    """Parse an ISO date or datetime to naive UTC; a date means its midnight.

    Raises ValueError when ``value`` is neither.
    """
    value = value.strip()
    if not value:
        raise ValueError("empty")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def _valid_destination(to: str) -> bool:
    """Digits with country code (7–15, nothing else) or ``sip:user@host[:port]``."""
    if _DIGITS_RE.match(to):
        return True
    match = _SIP_RE.match(to)
    if match is None:
        return False
    port = match.group("port")
    return port is None or 1 <= int(port) <= 65535


def _as_str_tuple(value: str | Iterable[str], name: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise EmulatorConfigError(f"{name} must contain non-empty strings, got {item!r}")
    return items


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EmulatorConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise EmulatorConfigError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _parameters_list(value: Any, name: str) -> list[dict[str, str]]:
    """Accept ``{"NAME": "value"}`` or ``[{"name", "value"}]``; values become strings."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [{"name": str(k), "value": str(v)} for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        result = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping) or "name" not in item or "value" not in item:
                raise EmulatorConfigError(f"{name}[{index}] must be an object with name and value")
            result.append({"name": str(item["name"]), "value": str(item["value"])})
        return result
    raise EmulatorConfigError(f"{name} must be a mapping or a list of {{name, value}}, got {value!r}")


def _merge_parameters(
    base: Sequence[Mapping[str, str]], extra: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    """``base`` in order, values replaced by ``extra`` for the same name, new names appended."""
    merged: dict[str, str] = {p["name"]: p["value"] for p in base}
    for p in extra:
        merged[p["name"]] = p["value"]
    return [{"name": k, "value": v} for k, v in merged.items()]


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


def _compile_filter(raw: str) -> Callable[[Mapping[str, Any]], bool]:
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


class Emulator:
    """The AI Studio emulator: configuration, recorded traffic and the HTTP server.

    All keyword arguments are optional:

    ``api_keys``: keys accepted in ``X-Vgai-Key``. ``agents``: agent ids, or a mapping
    agent id -> :class:`AgentConfig` (``None`` for defaults). ``calls_per_second``: the
    per-agent limit (Vonage grants 1, 3 or 5; any positive integer is accepted here so a
    test can effectively lift it). ``rate_tolerance``: see below. ``retry_after``: seconds
    to send in ``Retry-After`` on rate-limit 429s (``None``: no header, like the real API
    as far as is documented). ``callback_delay``: seconds between a non-answered call and
    its status callback. ``insights_index_delay``: seconds before a call's session is
    visible to Insights. ``insights_shape``: an :class:`InsightsShape`. ``insights_wrapper``:
    key(s) that wrap every successful Insights body, outermost first (``"data"`` answers
    ``{"data": <body>}``, ``("data", "result")`` answers ``{"data": {"result": <body>}}``;
    ``None``, the default, wraps nothing). ``scripts``: destination -> outcome to start with.

    Rate limit: strict by default, exactly as documented ("any call made over the limit will
    fail and return a 429"): a call is refused with 429 when ``calls_per_second`` calls were
    already accepted for the same agent within the trailing 1.0 s (a sliding window over the
    arrival times of accepted calls; refused calls do not count). A client must leave its own
    margin for arrival jitter: calls spaced exactly ``1 / calls_per_second`` apart by the
    client can *arrive* a few milliseconds closer together and are then refused.
    ``rate_tolerance`` (default 0) shortens the window to ``1.0 - rate_tolerance`` seconds: an
    explicit opt-in for users' own tests against a forgiving limiter; the provider's
    benchmarks and guarantee tests never set it.

    Thread-safe: the server runs in its own thread; every method may be called from any
    thread. Raises :class:`EmulatorConfigError` for malformed settings.
    """

    def __init__(
        self,
        *,
        api_keys: str | Iterable[str] = ("test-key",),
        agents: str | Iterable[str] | Mapping[str, AgentConfig | None] = ("agent-1",),
        calls_per_second: int = 1,
        rate_tolerance: float = 0.0,
        retry_after: int | None = None,
        callback_delay: float = 0.2,
        insights_index_delay: float = 0.5,
        insights_shape: InsightsShape | str = InsightsShape.DEFAULT,
        scripts: Mapping[str, Outcome | str] | None = None,
        insights_wrapper: str | Sequence[str] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.api_keys = _as_str_tuple(api_keys, "api_keys")
        if not self.api_keys:
            raise EmulatorConfigError("api_keys must name at least one key")
        self.agents: dict[str, AgentConfig] = {}
        if isinstance(agents, Mapping):
            for agent_id, config in agents.items():
                self.add_agent(agent_id, config)
        else:
            for agent_id in _as_str_tuple(agents, "agents"):
                self.add_agent(agent_id)
        self.calls_per_second = _check_positive_int(calls_per_second, "calls_per_second")
        self.rate_tolerance = _check_non_negative(rate_tolerance, "rate_tolerance")
        if self.rate_tolerance >= 1:
            raise EmulatorConfigError(f"rate_tolerance must be below 1, got {rate_tolerance!r}")
        self.retry_after = None if retry_after is None else _check_positive_int(retry_after, "retry_after")
        self.callback_delay = _check_non_negative(callback_delay, "callback_delay")
        self.insights_index_delay = _check_non_negative(insights_index_delay, "insights_index_delay")
        self._insights_shape = self._shape(insights_shape)
        self._insights_wrapper = self._wrapper(insights_wrapper)

        self._requests: list[RecordedRequest] = []
        self._calls: list[PlacedCall] = []
        self._callbacks: list[CallbackAttempt] = []
        self._sessions: dict[str, _Session] = {}
        self._scripts: dict[str, tuple[Outcome, list[dict[str, str]]]] = {}
        self._faults: list[_PendingFault] = []
        self._accepted: dict[str, deque[float]] = {}
        self._timers: set[threading.Timer] = set()
        self._generation = 0  # bumped by reset(); stale callback threads check it
        self._stopping = threading.Event()

        self._app: FastAPI | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._host: str | None = None
        self._port: int | None = None

        for to, outcome in (scripts or {}).items():
            self.script(to, outcome)

    # ----------------------------------------------------------------- configuration

    @property
    def insights_shape(self) -> InsightsShape:
        """Shape of Insights responses; may be changed while serving (accepts the string)."""
        return self._insights_shape

    @insights_shape.setter
    def insights_shape(self, value: InsightsShape | str) -> None:
        self._insights_shape = self._shape(value)

    @staticmethod
    def _shape(value: InsightsShape | str) -> InsightsShape:
        try:
            return InsightsShape(value)
        except ValueError:
            choices = ", ".join(s.value for s in InsightsShape)
            raise EmulatorConfigError(f"insights_shape must be one of {choices}, got {value!r}") from None

    @property
    def insights_wrapper(self) -> tuple[str, ...]:
        """Keys wrapping successful Insights bodies, outermost first (``()``: none); may be
        changed while serving (accepts one key, a sequence of keys or ``None``)."""
        return self._insights_wrapper

    @insights_wrapper.setter
    def insights_wrapper(self, value: str | Sequence[str] | None) -> None:
        self._insights_wrapper = self._wrapper(value)

    @staticmethod
    def _wrapper(value: str | Sequence[str] | None) -> tuple[str, ...]:
        if value is None:
            return ()
        keys = (value,) if isinstance(value, str) else value
        if not isinstance(keys, Sequence) or not all(isinstance(k, str) and k for k in keys):
            raise EmulatorConfigError(
                f"insights_wrapper must be a non-empty key, a sequence of them or None, got {value!r}"
            )
        return tuple(keys)

    def _wrap(self, body: Any) -> Any:
        for key in reversed(self._insights_wrapper):
            body = {key: body}
        return body

    def add_agent(self, agent_id: str, config: AgentConfig | None = None) -> None:
        """Make ``agent_id`` known (or change its config). Raises EmulatorConfigError."""
        if not isinstance(agent_id, str) or not agent_id:
            raise EmulatorConfigError(f"agent id must be a non-empty string, got {agent_id!r}")
        config = config or AgentConfig()
        if not isinstance(config, AgentConfig):
            raise EmulatorConfigError(f"agents[{agent_id!r}] must be an AgentConfig, got {config!r}")
        if config.calls_per_second is not None:
            _check_positive_int(config.calls_per_second, f"agents[{agent_id!r}].calls_per_second")
        with self._lock:
            self.agents[agent_id] = config

    def limit_for(self, agent_id: str) -> int:
        """Calls per second allowed for ``agent_id``."""
        config = self.agents.get(agent_id)
        if config is not None and config.calls_per_second is not None:
            return config.calls_per_second
        return self.calls_per_second

    @staticmethod
    def key_fingerprint(key: str) -> str:
        """What recorded requests show instead of an ``X-Vgai-Key`` value."""
        return "<redacted:" + hashlib.sha256(key.encode()).hexdigest()[:8] + ">"

    def script(self, to: str, outcome: Outcome | str, parameters: Any = None) -> None:
        """Make calls to ``to`` (exactly as sent: digits or SIP URI) end with ``outcome``.

        ``parameters`` (mapping or list of ``{"name", "value"}``) are added to what
        Insights reports for answered calls. Scripts stay until :meth:`reset`.
        Raises EmulatorConfigError for an unknown outcome or malformed parameters.
        """
        if not isinstance(to, str) or not to:
            raise EmulatorConfigError(f"script to must be a non-empty string, got {to!r}")
        try:
            resolved = Outcome(outcome)
        except ValueError:
            choices = ", ".join(o.value for o in Outcome)
            raise EmulatorConfigError(f"script outcome must be one of {choices}, got {outcome!r}") from None
        params = _parameters_list(parameters, "script parameters")
        with self._lock:
            self._scripts[to] = (resolved, params)

    def inject(
        self,
        fault: Fault | str | int,
        count: int = 1,
        to: str | None = None,
        *,
        retry_after: int | None = None,
        delay: float = 5.0,
        path: str = MAKE_CALL_PATH,
    ) -> None:
        """Queue ``count`` occurrences of ``fault`` (see :class:`Fault`).

        Faults apply to requests whose path starts with ``path`` (default: make-call) and,
        when ``to`` is given, whose JSON body has that exact ``to``; they are consumed in
        the order injected. ``retry_after`` adds ``Retry-After`` to a 429; ``delay`` is how
        long a ``timeout`` fault holds the response. Raises EmulatorConfigError.
        """
        try:
            # str() of a str-mixin Enum is "Fault.DROP" on 3.11, hence .value; ints (429) welcome.
            kind = Fault(fault.value if isinstance(fault, Fault) else str(fault))
        except ValueError:
            choices = ", ".join(f.value for f in Fault)
            raise EmulatorConfigError(f"fault must be one of {choices}, got {fault!r}") from None
        _check_positive_int(count, "count")
        if retry_after is not None:
            _check_positive_int(retry_after, "retry_after")
        delay = _check_non_negative(delay, "delay")
        if to is not None and (not isinstance(to, str) or not to):
            raise EmulatorConfigError(f"fault to must be a non-empty string or null, got {to!r}")
        if not isinstance(path, str) or not path.startswith("/"):
            raise EmulatorConfigError(f"fault path must start with '/', got {path!r}")
        with self._lock:
            self._faults.append(_PendingFault(kind, count, to, path, retry_after, delay))

    def add_session(self, **fields: Any) -> dict[str, Any]:
        """Add an Insights session, indexed at once, and return it as the API shows it.

        Known fields (all optional): ``id`` (uuid4), ``agent_id`` (first agent),
        ``destination``, ``source`` (:data:`AGENT_NUMBER`), ``session_start_time``
        (datetime or ISO string; now), ``status`` ("answered"), ``channel_data`` or
        ``duration``, ``parameters`` (mapping or list). Other fields are returned as given.
        Raises EmulatorConfigError for an unparseable start time or parameters.
        """
        start_raw = fields.pop("session_start_time", None)
        if start_raw is None:
            start = _utcnow().replace(tzinfo=None)
        elif isinstance(start_raw, datetime):
            start = start_raw.astimezone(timezone.utc).replace(tzinfo=None) if start_raw.tzinfo else start_raw
        else:
            try:
                start = _parse_datetime(str(start_raw))
            except ValueError:
                raise EmulatorConfigError(f"session_start_time is not ISO 8601: {start_raw!r}") from None
        channel_data = fields.pop("channel_data", None) or {}
        duration = fields.pop("duration", channel_data.get("duration", 0))
        session = _Session(
            id=str(fields.pop("id", None) or uuid.uuid4()),
            agent_id=str(fields.pop("agent_id", None) or next(iter(self.agents), "agent-1")),
            destination=str(fields.pop("destination", "447700900123")),
            source=str(fields.pop("source", AGENT_NUMBER)),
            start=start,
            status=str(fields.pop("status", Outcome.ANSWERED.value)),
            duration=int(duration),
            parameters=_parameters_list(fields.pop("parameters", None), "parameters"),
            indexed_at=time.monotonic(),
            extra=fields,
        )
        with self._lock:
            self._sessions[session.id] = session
        return session.to_dict()

    def reset(self) -> None:
        """Forget recorded traffic, calls, callbacks, sessions, scripts, faults and rate state."""
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            self._requests.clear()
            self._calls.clear()
            self._callbacks.clear()
            self._sessions.clear()
            self._scripts.clear()
            self._faults.clear()
            self._accepted.clear()
            self._generation += 1

    # ----------------------------------------------------------------- inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every recorded API request, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def calls(self) -> list[PlacedCall]:
        """Snapshot of accepted calls, oldest first."""
        with self._lock:
            return list(self._calls)

    @property
    def callbacks(self) -> list[CallbackAttempt]:
        """Snapshot of status-callback attempts, oldest first."""
        with self._lock:
            return list(self._callbacks)

    @property
    def sessions(self) -> list[dict[str, Any]]:
        """Snapshot of every Insights session (indexed or not yet), as the API shows them."""
        with self._lock:
            return [s.to_dict() for s in self._sessions.values()]

    def wait_for_callbacks(self, count: int = 1, timeout: float = 5.0) -> list[CallbackAttempt]:
        """Block until at least ``count`` callback attempts are recorded; return them all.

        Raises TimeoutError when ``timeout`` seconds pass first.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._callbacks) >= count, timeout):
                raise TimeoutError(f"{len(self._callbacks)} of {count} callback attempts after {timeout}s")
            return list(self._callbacks)

    # ----------------------------------------------------------------- lifecycle

    @property
    def app(self) -> FastAPI:
        """The ASGI application (a FastAPI app), built on first use."""
        with self._lock:
            if self._app is None:
                self._app = _build_app(self)
            return self._app

    @property
    def port(self) -> int:
        """The TCP port the server listens on. Raises RuntimeError before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765``. Raises RuntimeError before :meth:`start`."""
        host = self._host or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 10.0) -> Emulator:
        """Serve on ``host:port`` (0 picks a free port) from a daemon thread.

        Returns once the server answers HTTP. Raises RuntimeError if already started or if
        it does not come up within ``timeout`` seconds; OSError if the port is taken.
        """
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP, and accepted sockets inherit it. Without it every response on a
        # keep-alive connection waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._host = host
        self._port = sock.getsockname()[1]
        self._stopping.clear()
        config = uvicorn.Config(
            self.app,
            host=host,
            port=self._port,
            loop="asyncio",
            ws="none",
            lifespan="off",
            log_config=None,  # never reconfigure the host process's logging
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"vonage-studio-emulator-{self._port}"
        )
        self._thread.daemon = True
        self._thread.start()
        self._wait_until_serving(timeout)
        return self

    def _wait_until_serving(self, timeout: float) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + timeout
        # Proxies from the environment must never see loopback traffic.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                self._cleanup()
                raise RuntimeError("the emulator server thread exited during start-up")
            if self._server.started:
                try:
                    with opener.open(f"{self.url}{CONTROL_PREFIX}/health", timeout=1.0) as response:
                        if response.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"the emulator did not answer within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, cancel pending callbacks and wait for the server thread."""
        self._stopping.set()
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._server = None
        self._thread = None

    def __enter__(self) -> Emulator:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- Airflow connection

    def connection_json(self, key: str | None = None, **extras: Any) -> str:
        """Value for ``AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT`` (JSON form) pointing here.

        ``key`` defaults to the first accepted key. The extra carries ``calls_per_second``
        (this emulator's limit) plus ``extras``; an extra given as ``None`` is left out.
        """
        return json.dumps(
            {
                "conn_type": "vonage_studio",
                "host": self.url,
                "password": self.api_keys[0] if key is None else key,
                "extra": self._extras(extras),
            }
        )

    def connection_uri(self, key: str | None = None, **extras: Any) -> str:
        """The same connection in Airflow's URI form
        (``vonage-studio://http://:KEY@127.0.0.1%3APORT/?__extra__=...``)."""
        from urllib.parse import quote, urlencode

        host = self.url.split("://", 1)[1]
        password = self.api_keys[0] if key is None else key
        query = urlencode({"__extra__": json.dumps(self._extras(extras))})
        return f"vonage-studio://http://:{quote(password, safe='')}@{quote(host, safe='')}/?{query}"

    def _extras(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {"calls_per_second": self.calls_per_second, **extras}
        return {k: v for k, v in merged.items() if v is not None}

    # ----------------------------------------------------------------- request handling (server thread)

    def _redacted_headers(self, raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name_bytes, value_bytes in raw:
            name = name_bytes.decode("latin-1").lower()
            value = value_bytes.decode("latin-1")
            if name == KEY_HEADER:
                value = self.key_fingerprint(value)
            elif name in _SENSITIVE_HEADERS:
                value = "<redacted>"
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    def _record(self, record: RecordedRequest) -> None:
        with self._changed:
            self._requests.append(record)
            self._changed.notify_all()

    def _take_fault(self, path: str, to: str | None) -> _PendingFault | None:
        with self._lock:
            for pending in self._faults:
                if path.startswith(pending.path) and (pending.to is None or pending.to == to):
                    pending.remaining -= 1
                    if pending.remaining <= 0:
                        self._faults.remove(pending)
                    return pending
        return None

    def _authorise(self, key: str | None) -> None:
        if not key or not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys):
            raise _ApiError(401, "Not Authorised")

    def _make_call(self, key: str | None, raw_body: bytes) -> dict[str, str]:
        """Validate and place one call; returns the success body. Raises _ApiError."""
        self._authorise(key)
        try:
            body = json.loads(raw_body) if raw_body.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _ApiError(400, f"Malformed JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "Request body must be a JSON object with agent_id and to")
        agent_id = body.get("agent_id")
        if not isinstance(agent_id, str) or not agent_id:
            raise _ApiError(400, "agent_id is required and must be a non-empty string")
        to = body.get("to")
        if not isinstance(to, str) or not to:
            raise _ApiError(400, "to is required and must be a non-empty string")
        status_url = body.get("status_url")
        if status_url is not None and not isinstance(status_url, str):
            raise _ApiError(400, "status_url must be a string")
        hangup = body.get("hangup_on_answer_machine")
        if hangup is not None and not isinstance(hangup, bool):
            raise _ApiError(400, "hangup_on_answer_machine must be a boolean")
        session_parameters = self._check_session_parameters(body.get("session_parameters"))

        with self._lock:
            agent = self.agents.get(agent_id)
            if agent is None:
                raise _ApiError(404, f"Version information for number {AGENT_NUMBER} doesn't exist")
            if not _valid_destination(to):
                raise _ApiError(400, "Bad destination number format")
            now = time.monotonic()
            window = 1.0 - self.rate_tolerance
            accepted = self._accepted.setdefault(agent_id, deque())
            while accepted and now - accepted[0] >= window:
                accepted.popleft()
            if len(accepted) >= self.limit_for(agent_id):
                headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
                raise _ApiError(429, "Too Many Requests", headers)
            if not agent.preconfigured:
                raise _ApiError(500, "Failed to fetch preconfigured session information")
            accepted.append(now)

            outcome, scripted = self._scripts.get(to, (Outcome.ANSWERED, []))
            started = _utcnow()
            call = PlacedCall(
                session_id=str(uuid.uuid4()),
                session_start_time=_format_start_time(started),
                agent_id=agent_id,
                to=to,
                status_url=status_url,
                hangup_on_answer_machine=hangup,
                session_parameters=tuple(session_parameters),
                outcome=outcome,
                parameters=tuple(_merge_parameters(session_parameters, scripted)),
                conversation_uuid=f"CON-{uuid.uuid4()}",
                monotonic=now,
                received_at=started,
            )
            self._calls.append(call)
            self._sessions[call.session_id] = _Session(
                id=call.session_id,
                agent_id=agent_id,
                destination=to,
                source=AGENT_NUMBER,
                start=started.replace(tzinfo=None),
                status=outcome.value,
                duration=30 if outcome is Outcome.ANSWERED else 0,
                parameters=[dict(p) for p in call.parameters],
                indexed_at=now + self.insights_index_delay,
            )
            if outcome is not Outcome.ANSWERED and status_url:
                self._schedule_callback(call)
            self._changed.notify_all()
        return {"session_id": call.session_id, "session_start_time": call.session_start_time}

    @staticmethod
    def _check_session_parameters(value: Any) -> list[dict[str, str]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise _ApiError(400, "session_parameters must be a list of {name, value} objects")
        result = []
        for index, item in enumerate(value):
            if not isinstance(item, dict) or set(item) != {"name", "value"}:
                raise _ApiError(
                    400, f"session_parameters[{index}] must be an object with exactly name and value"
                )
            for part in ("name", "value"):
                if not isinstance(item[part], str):
                    raise _ApiError(400, f"session_parameters[{index}].{part} must be a string")
            result.append({"name": item["name"], "value": item["value"]})
        return result

    # ----------------------------------------------------------------- callbacks (timer threads)

    def _schedule_callback(self, call: PlacedCall) -> None:
        """Post the seed's callback for a non-answered call after ``callback_delay`` (lock held)."""
        assert call.status_url is not None
        timer = threading.Timer(self.callback_delay, self._deliver_callback, args=(call, self._generation))
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def _deliver_callback(self, call: PlacedCall, generation: int) -> None:
        """POST the callback; one retry when the receiver cannot be reached. Attempts made
        after :meth:`reset` or :meth:`stop` are abandoned so they never leak into the next test."""
        import requests

        assert call.status_url is not None
        with self._lock:
            self._timers = {t for t in self._timers if t.is_alive() and t is not threading.current_thread()}
        payload = {
            "agent_id": call.agent_id,
            "to": call.to,
            "conversation_uuid": call.conversation_uuid,
            "status": call.outcome.value,
            "timestamp": _format_callback_timestamp(_utcnow()),
        }
        with requests.Session() as session:
            session.trust_env = False  # loopback receivers must not go through a proxy
            for attempt in (1, 2):
                if self._stopping.is_set() or generation != self._generation:
                    return
                status: int | None = None
                error: str | None = None
                unreachable = False
                try:
                    response = session.post(call.status_url, json=payload, timeout=5)
                    status = response.status_code
                except requests.RequestException as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    unreachable = isinstance(exc, requests.ConnectionError)
                with self._changed:
                    if generation != self._generation:
                        return
                    self._callbacks.append(
                        CallbackAttempt(call.status_url, payload, attempt, status, error, _utcnow())
                    )
                    self._changed.notify_all()
                # One retry, and only when the receiver could not be reached at all.
                if not unreachable or attempt == 2 or self._stopping.wait(0.2):
                    return

    # ----------------------------------------------------------------- Insights

    def _session_parameters(
        self, key: str | None, session_id: str, session_start_time: str | None
    ) -> list[dict[str, str]]:
        """Parameters of an indexed, answered session. Raises _ApiError (401, 404).

        ``session_start_time`` must parse but is not compared with the session's: clients
        pass back what make-call returned, and the real service only uses it to find the
        right index.
        """
        self._authorise(key)
        if not session_start_time:
            raise _ApiError(401, "session_start_time is required")
        try:
            _parse_datetime(session_start_time)
        except ValueError:
            raise _ApiError(401, "session_start_time must be an ISO 8601 date or datetime") from None
        with self._lock:
            session = self._sessions.get(session_id)
            if (
                session is None
                or session.indexed_at > time.monotonic()
                or session.status != Outcome.ANSWERED.value
            ):
                raise _ApiError(404, "Session not found")
            return [dict(p) for p in session.parameters]

    def _search(self, key: str | None, query: Mapping[str, list[str]]) -> tuple[int, int, int, list[Any]]:
        """Run an Insights search; returns (total, page_number, page_size, page). Raises _ApiError."""
        self._authorise(key)

        def single(name: str) -> str | None:
            values = query.get(name) or []
            return values[-1] if values else None

        bounds = {}
        for name in ("from_date", "to_date"):
            raw = single(name)
            if not raw:
                raise _ApiError(401, f"{name} is required")
            try:
                bounds[name] = _parse_datetime(raw)
            except ValueError:
                raise _ApiError(401, f"{name} must be an ISO 8601 datetime") from None
        from_date, to_date = bounds["from_date"], bounds["to_date"]
        if to_date < from_date:
            raise _ApiError(401, "to_date must not be before from_date")
        if to_date - from_date > MAX_SEARCH_SPAN:
            raise _ApiError(401, "from_date and to_date must be at most 60 days apart")
        page_number = self._int_param(single("page_number"), "page_number", 0, 0, None)
        page_size = self._int_param(single("page_size"), "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)

        sort_keys: list[tuple[str, bool]] = []
        for item in (single("sort_by") or "session_start_time:asc").split(","):
            if not item.strip():
                continue
            attr, _, direction = item.strip().partition(":")
            direction = direction.strip().lower() or "asc"
            if not attr.strip() or direction not in ("asc", "desc"):
                raise _ApiError(401, f"sort_by entries must be attr:asc or attr:desc, got {item!r}")
            sort_keys.append((attr.strip(), direction == "desc"))

        fields = [f.strip() for raw in query.get("project_fields") or [] for f in raw.split(",") if f.strip()]
        predicate: Callable[[Mapping[str, Any]], bool] | None = None
        raw_filter = single("filter_by")
        if raw_filter:
            try:
                predicate = _compile_filter(raw_filter)
            except ValueError as exc:
                raise _ApiError(401, f"filter_by: {exc}") from None

        now = time.monotonic()
        with self._lock:
            candidates = [
                s.to_dict()
                for s in self._sessions.values()
                if s.indexed_at <= now and from_date <= s.start <= to_date
            ]
        try:
            matched = [d for d in candidates if predicate is None or predicate(d)]
        except ValueError as exc:
            raise _ApiError(401, f"filter_by: {exc}") from None
        for attr, descending in reversed(sort_keys):  # stable sorts, last key first
            matched.sort(key=_sort_key_for(attr), reverse=descending)
        page = matched[page_number * page_size : (page_number + 1) * page_size]
        if fields:
            page = [_project(d, fields) for d in page]
        return len(matched), page_number, page_size, page

    @staticmethod
    def _int_param(raw: str | None, name: str, default: int, low: int, high: int | None) -> int:
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise _ApiError(401, f"{name} must be an integer, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise _ApiError(401, f"{name} must be {bound}, got {value}")
        return value

    # ----------------------------------------------------------------- control API helpers

    def _apply_control(self, kind: str, payload: Any) -> int:
        """Apply ``/_emulator/script|inject|sessions`` payloads; returns how many. Raises
        EmulatorConfigError (answered 400)."""
        items = payload if isinstance(payload, list) else [payload]
        prepared: list[Mapping[str, Any]] = []
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise EmulatorConfigError(f"item {index} must be a JSON object")
            prepared.append(item)
        for item in prepared:
            if kind == "script":
                unknown = set(item) - {"to", "outcome", "parameters"}
                if unknown:
                    raise EmulatorConfigError(f"unknown script fields {sorted(unknown)}")
                to, outcome = item.get("to"), item.get("outcome", Outcome.ANSWERED)
                # script() checks the types itself and names the bad field.
                self.script(to, outcome, item.get("parameters"))  # type: ignore[arg-type]
            elif kind == "inject":
                unknown = set(item) - {"fault", "count", "to", "retry_after", "delay", "path"}
                if unknown:
                    raise EmulatorConfigError(f"unknown fault fields {sorted(unknown)}")
                self.inject(
                    item.get("fault"),  # type: ignore[arg-type]
                    item.get("count", 1),
                    item.get("to"),
                    retry_after=item.get("retry_after"),
                    delay=item.get("delay", 5.0),
                    path=item.get("path", MAKE_CALL_PATH),
                )
            else:
                self.add_session(**{str(k): v for k, v in item.items()})
        return len(prepared)

    async def _interruptible_sleep(self, seconds: float) -> None:
        """Sleep, but give up when the emulator stops (so stop() never waits on a fault)."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(0.05, remaining))


async def _drop_connection(receive: Receive, send: Send) -> None:
    """Close the client's connection without writing a byte of response.

    uvicorn's ASGI ``send`` is a bound method of its request cycle, which holds the
    transport; closing it and waiting for ``http.disconnect`` means uvicorn sees a
    disconnected client and does not fall back to a 500. Without a reachable transport
    (in-process ASGI clients) raises _ConnectionDropped instead.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "close"):
        raise _ConnectionDropped("connection dropped by fault injection")
    transport.close()
    try:
        while True:
            message = await asyncio.wait_for(receive(), timeout=2.0)
            if message.get("type") == "http.disconnect":
                return
    except asyncio.TimeoutError:
        return


def _build_app(emulator: Emulator) -> FastAPI:
    """Build the FastAPI app serving ``emulator``.

    Recording and fault injection happen in ``__call__`` (raw ASGI, in front of the
    routes) rather than in a middleware: only there is uvicorn's own ``send`` at hand,
    which dropping a connection needs.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"status": status, "message": message}, status_code=status, headers=headers)

    class EmulatorApp(FastAPI):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
                await super().__call__(scope, receive, send)
                return
            await self._serve_api(scope, cast("Receive", receive), cast("Send", send))

        async def _serve_api(self, scope: Any, receive: Receive, send: Send) -> None:
            monotonic, received_at = time.monotonic(), _utcnow()
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            raw_body = b"".join(chunks)
            try:
                body: Any = json.loads(raw_body) if raw_body.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = None
            to = body.get("to") if isinstance(body, dict) and isinstance(body.get("to"), str) else None
            pending = emulator._take_fault(scope["path"], to)

            def record(status: int | None) -> None:
                emulator._record(
                    RecordedRequest(
                        method=scope["method"],
                        path=scope["path"],
                        query=scope.get("query_string", b"").decode("latin-1"),
                        headers=emulator._redacted_headers(scope.get("headers", [])),
                        body=body,
                        status=status,
                        monotonic=monotonic,
                        received_at=received_at,
                        fault=None if pending is None else pending.fault.value,
                    )
                )

            if pending is not None and pending.fault is Fault.DROP:
                record(None)
                await _drop_connection(receive, send)
                return
            if pending is not None and pending.fault in (Fault.RATE_LIMITED, Fault.UNAVAILABLE):
                if pending.fault is Fault.RATE_LIMITED:
                    headers = {} if pending.retry_after is None else {"Retry-After": str(pending.retry_after)}
                    response = error(429, "Too Many Requests", headers)
                else:
                    response = error(503, "Service Unavailable")
                record(response.status_code)
                await response(scope, receive, send)
                return

            # Buffer the routed response so it is recorded before the client can see it
            # (tests read emulator.requests right after their request returns).
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": raw_body, "more_body": False}
                return await receive()

            messages: list[Message] = []

            async def buffer(message: Message) -> None:
                messages.append(message)

            await super().__call__(scope, replay, buffer)
            status = next((m["status"] for m in messages if m["type"] == "http.response.start"), None)
            record(status)
            if pending is not None and pending.fault is Fault.TIMEOUT:
                await emulator._interruptible_sleep(pending.delay)
            for message in messages:
                try:
                    await send(message)
                except OSError:  # the client gave up (timeout fault): nothing to tell it
                    return

    app = EmulatorApp(title="Vonage AI Studio emulator", docs_url=None, redoc_url=None, openapi_url=None)

    # Routes are added Starlette-style (the handler gets the Request, nothing is
    # injected): the emulator parses and validates everything itself, to answer with the
    # API's own status codes and bodies rather than FastAPI's 422s.
    def route(path: str, *methods: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            app.add_route(path, handler, methods=list(methods), include_in_schema=False)
            return handler

        return register

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error(exc.status_code, str(exc.detail), exc.headers)

    app.add_exception_handler(StarletteHTTPException, http_error)

    @route(MAKE_CALL_PATH, "POST")
    async def make_call(request: Request) -> Response:
        try:
            result = emulator._make_call(request.headers.get(KEY_HEADER), await request.body())
        except _ApiError as exc:
            return error(exc.status, exc.message, exc.headers)
        return JSONResponse(result)

    @route("/insights/sessions/{session_id}/parameters", "GET")
    async def session_parameters(request: Request) -> Response:
        try:
            params = emulator._session_parameters(
                request.headers.get(KEY_HEADER),
                request.path_params["session_id"],
                request.query_params.get("session_start_time"),
            )
        except _ApiError as exc:
            return error(exc.status, exc.message, exc.headers)
        shape = emulator.insights_shape
        body: Any
        if shape is InsightsShape.LIST:
            body = params
        elif shape is InsightsShape.ITEMS:
            body = {p["name"]: p["value"] for p in params}
        elif shape is InsightsShape.METADATA:
            session = next((s for s in emulator.sessions if s["id"] == request.path_params["session_id"]), {})
            body = {
                "session_id": session.get("id"),
                "agent_id": session.get("agent_id"),
                "session_start_time": session.get("session_start_time"),
                "parameters": params,
            }
        else:
            body = {"parameters": params}
        return JSONResponse(emulator._wrap(body))

    @route("/insights/sessions", "GET")
    async def search_sessions(request: Request) -> Response:
        query: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            query.setdefault(name, []).append(value)
        try:
            total, page_number, page_size, page = emulator._search(request.headers.get(KEY_HEADER), query)
        except _ApiError as exc:
            return error(exc.status, exc.message, exc.headers)
        shape = emulator.insights_shape
        body: Any
        if shape is InsightsShape.LIST:
            body = page
        elif shape is InsightsShape.ITEMS:
            body = {"items": page, "count": total}
        else:
            body = {"total": total, "page_number": page_number, "page_size": page_size, "sessions": page}
        return JSONResponse(emulator._wrap(body))

    @route(f"{CONTROL_PREFIX}/health", "GET")
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @route(f"{CONTROL_PREFIX}/requests", "GET")
    async def list_requests(request: Request) -> Response:
        return JSONResponse([r.to_dict() for r in emulator.requests])

    @route(f"{CONTROL_PREFIX}/calls", "GET")
    async def list_calls(request: Request) -> Response:
        return JSONResponse([c.to_dict() for c in emulator.calls])

    @route(f"{CONTROL_PREFIX}/callbacks", "GET")
    async def list_callbacks(request: Request) -> Response:
        return JSONResponse([c.to_dict() for c in emulator.callbacks])

    @route(f"{CONTROL_PREFIX}/sessions", "GET")
    async def list_sessions(request: Request) -> Response:
        return JSONResponse(emulator.sessions)

    @route(f"{CONTROL_PREFIX}/reset", "POST")
    async def reset(request: Request) -> Response:
        emulator.reset()
        return JSONResponse({"status": "ok"})

    def control(kind: str) -> Handler:
        async def handler(request: Request) -> Response:
            try:
                payload = json.loads(await request.body())
                count = emulator._apply_control(kind, payload)
            except json.JSONDecodeError as exc:
                return error(400, f"Malformed JSON body: {exc.msg}")
            except (EmulatorConfigError, TypeError, ValueError) as exc:
                return error(400, str(exc))
            return JSONResponse({"status": "ok", "count": count})

        return handler

    route(f"{CONTROL_PREFIX}/script", "POST")(control("script"))
    route(f"{CONTROL_PREFIX}/inject", "POST")(control("inject"))
    route(f"{CONTROL_PREFIX}/sessions", "POST")(control("sessions"))

    return app


# --------------------------------------------------------------------------- CLI


def _parse_agent(value: str) -> tuple[str, AgentConfig]:
    agent_id, sep, rate = value.partition("=")
    if not agent_id:
        raise argparse.ArgumentTypeError(f"--agent needs an agent id, got {value!r}")
    if not sep:
        return agent_id, AgentConfig()
    try:
        return agent_id, AgentConfig(calls_per_second=int(rate))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--agent {value!r}: calls per second must be an integer") from None


def _parse_script(value: str) -> tuple[str, str]:
    to, sep, outcome = value.rpartition("=")
    if not sep or not to or not outcome:
        raise argparse.ArgumentTypeError(f"--script must be TO=OUTCOME, got {value!r}")
    return to, outcome


KEYS_ENV = "VONAGE_STUDIO_EMULATOR_KEYS"


def _keys_from_env() -> tuple[str, ...]:
    return tuple(k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip())


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_vonage_studio.testing.emulator",
        description="Run the Vonage AI Studio emulator in the foreground (stop with Ctrl-C or SIGTERM).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--agent",
        action="append",
        type=_parse_agent,
        metavar="ID[=CPS]",
        help="known agent, optionally with its own calls per second (repeatable; default agent-1)",
    )
    parser.add_argument(
        "--key",
        action="append",
        metavar="KEY",
        help=f"accepted X-Vgai-Key (repeatable; default: comma-separated ${KEYS_ENV}, else test-key). "
        f"Prefer ${KEYS_ENV} for real-looking keys: arguments are visible to every user in ps",
    )
    parser.add_argument("--calls-per-second", type=int, default=1, help="per-agent limit (default 1)")
    parser.add_argument(
        "--rate-tolerance",
        type=float,
        default=0.0,
        help="opt-in slack: shorten the 1 s rate window by this many seconds (default 0: strict)",
    )
    parser.add_argument("--retry-after", type=int, default=None, help="Retry-After seconds on 429")
    parser.add_argument(
        "--script",
        action="append",
        type=_parse_script,
        default=[],
        metavar="TO=OUTCOME",
        help="scripted outcome for a destination (repeatable), e.g. 447700900123=busy",
    )
    parser.add_argument("--callback-delay", type=float, default=0.2, help="seconds before a callback")
    parser.add_argument("--index-delay", type=float, default=0.5, help="seconds before Insights sees a call")
    parser.add_argument(
        "--insights-shape",
        choices=[s.value for s in InsightsShape],
        default=InsightsShape.DEFAULT.value,
        help="shape of Insights responses",
    )
    parser.add_argument(
        "--insights-wrapper",
        default=None,
        metavar="KEY[,KEY...]",
        help="wrap successful Insights bodies in these keys, outermost first (e.g. data,result)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGTERM or SIGINT; returns the process exit status."""
    parser = _argument_parser()
    args = parser.parse_args(argv)
    try:
        emulator = Emulator(
            api_keys=tuple(args.key or _keys_from_env() or ("test-key",)),
            agents=dict(args.agent or [("agent-1", AgentConfig())]),
            calls_per_second=args.calls_per_second,
            rate_tolerance=args.rate_tolerance,
            retry_after=args.retry_after,
            callback_delay=args.callback_delay,
            insights_index_delay=args.index_delay,
            insights_shape=args.insights_shape,
            insights_wrapper=args.insights_wrapper.split(",") if args.insights_wrapper else None,
        )
        for to, outcome in args.script:
            emulator.script(to, outcome)
    except EmulatorConfigError as exc:
        parser.error(str(exc))

    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        emulator.start(args.host, args.port)
        print(f"emulator listening on {emulator.url}", flush=True)
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(0.5):
            if not emulator.running:
                print("emulator server stopped unexpectedly", file=sys.stderr, flush=True)
                return 1
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
