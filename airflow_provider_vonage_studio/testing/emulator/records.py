"""What the emulator records and serves: requests, placed calls and messages, callback
attempts, Insights sessions; the API's time formats; the API's error as an exception."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from airflow_provider_vonage_studio.testing.emulator.config import (
    AGENT_NUMBER,
    EmulatorConfigError,
    Fault,
    MessageOutcome,
    Outcome,
    parameters_list,
)


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
    what Insights will report (session parameters merged with scripted ones). ``attempt``
    counts the accepted calls to ``to`` since the last :meth:`Emulator.reset` or since ``to``
    was last scripted, this one included (it picks the scripted outcome).
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
    attempt: int = 1

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
            "attempt": self.attempt,
        }


@dataclass(frozen=True)
class PlacedMessage:
    """A message the emulator accepted on ``/messaging/conversation``.

    ``namespace``, ``template``, ``locale`` and ``components`` are set for WhatsApp only;
    ``attempt`` counts accepted messages to ``to`` as :attr:`PlacedCall.attempt` counts calls.
    """

    session_id: str
    session_start_time: str
    agent_id: str
    to: str
    channel: str
    status_url: str
    session_parameters: tuple[Mapping[str, str], ...]
    outcome: MessageOutcome
    monotonic: float
    received_at: datetime
    namespace: str | None = None
    template: str | None = None
    locale: str | None = None
    components: Any = None
    attempt: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "session_id": self.session_id,
            "session_start_time": self.session_start_time,
            "agent_id": self.agent_id,
            "to": self.to,
            "channel": self.channel,
            "status_url": self.status_url,
            "session_parameters": [dict(p) for p in self.session_parameters],
            "outcome": self.outcome.value,
            "namespace": self.namespace,
            "template": self.template,
            "locale": self.locale,
            "components": self.components,
            "monotonic": self.monotonic,
            "received_at": self.received_at.isoformat(),
            "attempt": self.attempt,
        }


@dataclass(frozen=True)
class CallbackAttempt:
    """One POST of a callback (a call's or message's status, or an end-call webhook):
    ``status`` is the receiver's HTTP status, or ``None`` with ``error`` set when the
    request itself failed."""

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
class PendingFault:
    """An injected fault waiting for ``remaining`` more matching requests."""

    fault: Fault
    remaining: int
    to: str | None
    path: str
    retry_after: int | None
    delay: float


@dataclass
class Session:
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
        """The session as the Insights API shows it."""
        data: dict[str, Any] = {
            "id": self.id,
            "agent_id": self.agent_id,
            "destination": self.destination,
            "source": self.source,
            "session_start_time": format_start_time(self.start),
            "status": self.status,
            "channel_data": {"duration": self.duration},
            "parameters": [dict(p) for p in self.parameters],
        }
        data.update(self.extra)
        return data


class ApiError(Exception):
    """Answer with the seed's error body ``{"status": N, "message": "..."}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def utcnow() -> datetime:
    """Now, aware UTC."""
    return datetime.now(timezone.utc)


def format_start_time(value: datetime) -> str:
    """The API's ``session_start_time``: naive UTC with microseconds."""
    return value.replace(tzinfo=None).isoformat(timespec="microseconds")


def format_callback_timestamp(value: datetime) -> str:
    """The callback's ``timestamp``: UTC, milliseconds, ``Z`` (``2022-05-31T06:40:45.475Z``)."""
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_datetime(value: str) -> datetime:
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


def merge_parameters(
    base: Sequence[Mapping[str, str]], extra: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    """``base`` in order, values replaced by ``extra`` for the same name, new names appended."""
    merged: dict[str, str] = {p["name"]: p["value"] for p in base}
    for p in extra:
        merged[p["name"]] = p["value"]
    return [{"name": k, "value": v} for k, v in merged.items()]


def check_session_parameters(value: Any) -> list[dict[str, str]]:
    """The request's ``session_parameters``: a list of exactly ``{name, value}`` strings.

    Raises ApiError (400) naming the bad item.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(400, "session_parameters must be a list of {name, value} objects")
    result = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"name", "value"}:
            raise ApiError(400, f"session_parameters[{index}] must be an object with exactly name and value")
        for part in ("name", "value"):
            if not isinstance(item[part], str):
                raise ApiError(400, f"session_parameters[{index}].{part} must be a string")
        result.append({"name": item["name"], "value": item["value"]})
    return result


def new_session(fields: dict[str, Any], default_agent: str) -> Session:
    """A session from :meth:`Emulator.add_session`'s ``fields`` (consumed), indexed now;
    ``default_agent`` is its agent when ``fields`` names none.

    Raises EmulatorConfigError for an unparseable start time or parameters.
    """
    start_raw = fields.pop("session_start_time", None)
    if start_raw is None:
        start = utcnow().replace(tzinfo=None)
    elif isinstance(start_raw, datetime):
        start = start_raw.astimezone(timezone.utc).replace(tzinfo=None) if start_raw.tzinfo else start_raw
    else:
        try:
            start = parse_datetime(str(start_raw))
        except ValueError:
            raise EmulatorConfigError(f"session_start_time is not ISO 8601: {start_raw!r}") from None
    channel_data = fields.pop("channel_data", None) or {}
    duration = fields.pop("duration", channel_data.get("duration", 0))
    return Session(
        id=str(fields.pop("id", None) or uuid.uuid4()),
        agent_id=str(fields.pop("agent_id", None) or default_agent),
        destination=str(fields.pop("destination", "447700900123")),
        source=str(fields.pop("source", AGENT_NUMBER)),
        start=start,
        status=str(fields.pop("status", Outcome.ANSWERED.value)),
        duration=int(duration),
        parameters=parameters_list(fields.pop("parameters", None), "parameters"),
        indexed_at=time.monotonic(),
        extra=fields,
    )
