"""What the emulator can be told: constants, enums, agent settings, scripts, and the checks
that refuse a malformed setting with :class:`EmulatorConfigError` naming the field."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

#: The number every emulated agent calls from (``source`` of Insights sessions): a UK
#: drama-range number, so it can never reach a real phone.
AGENT_NUMBER = "447700900000"

MAKE_CALL_PATH = "/telephony/make-call"
MESSAGING_PATH = "/messaging/conversation"
CONTROL_PREFIX = "/_emulator"
KEY_HEADER = "x-vgai-key"

#: The session parameter that carries a call's token to the agent's End Call Event webhook.
END_CALL_TOKEN_PARAMETER = "VS_CALL_TOKEN"

#: The largest span the Insights search accepts between ``from_date`` and ``to_date``.
MAX_SEARCH_SPAN_DAYS = 60
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

_DIGITS_RE = re.compile(r"^[0-9]{7,15}$")
_SIP_RE = re.compile(
    r"^sip:[^@\s:]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


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


class MessageOutcome(str, Enum):
    """What happens to an emulated SMS or WhatsApp message.

    Each posts its status callbacks in order: ``read`` posts ``delivered`` then ``read``;
    every other outcome posts itself once.
    """

    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    REJECTED = "rejected"
    UNDELIVERABLE = "undeliverable"

    @property
    def statuses(self) -> tuple[str, ...]:
        """The status callbacks this outcome posts, in order."""
        if self is MessageOutcome.READ:
            return (MessageOutcome.DELIVERED.value, MessageOutcome.READ.value)
        return (self.value,)


class Channel(str, Enum):
    """Channels of ``/messaging/conversation``."""

    SMS = "sms"
    WHATSAPP = "whatsapp"


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
    it). ``preconfigured=False`` makes every call (and message) to the agent fail with the
    seed's 500 ``Failed to fetch preconfigured session information``.
    """

    calls_per_second: int | None = None
    preconfigured: bool = True


@dataclass(frozen=True)
class CallScript:
    """What calls to one destination do, attempt after attempt.

    ``outcomes[n]`` is the outcome of the (n+1)-th accepted call since the script was set;
    the last one repeats. ``parameters`` are what the conversation collects on an answered
    call (Insights reports them merged over the session parameters; the end-call webhook
    posts them). ``talk_time`` (``None``: the emulator's) is how long an answered call
    lasts before its end-call webhook; ``end_call=False`` means the agent never posts it;
    ``end_call_delay`` holds the webhook back that many seconds after the call ended (a late
    webhook: ``ended_at`` still says when the call ended). ``index_delay`` (``None``: the
    emulator's) is when Insights starts seeing the session, counted from the call's start.
    """

    outcomes: tuple[Outcome, ...]
    parameters: tuple[Mapping[str, str], ...] = ()
    talk_time: float | None = None
    end_call: bool = True
    end_call_delay: float = 0.0
    index_delay: float | None = None

    def outcome_for(self, attempt: int) -> Outcome:
        """Outcome of the 1-based ``attempt``; past the end of the list, the last repeats."""
        return self.outcomes[min(attempt, len(self.outcomes)) - 1]


@dataclass(frozen=True)
class MessageScript:
    """What messages to one destination do: ``outcomes`` one per accepted message, the last
    repeating (as :class:`CallScript`)."""

    outcomes: tuple[MessageOutcome, ...]

    def outcome_for(self, attempt: int) -> MessageOutcome:
        """Outcome of the 1-based ``attempt``; past the end of the list, the last repeats."""
        return self.outcomes[min(attempt, len(self.outcomes)) - 1]


def valid_destination(to: str, *, sip: bool = True) -> bool:
    """Digits with country code (7–15, nothing else) or, when ``sip``, ``sip:user@host[:port]``."""
    if _DIGITS_RE.match(to):
        return True
    match = _SIP_RE.match(to) if sip else None
    if match is None:
        return False
    port = match.group("port")
    return port is None or 1 <= int(port) <= 65535


def as_str_tuple(value: str | Iterable[str], name: str) -> tuple[str, ...]:
    """One string or several, each non-empty. Raises EmulatorConfigError."""
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise EmulatorConfigError(f"{name} must contain non-empty strings, got {item!r}")
    return items


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is an int ≥ 1 (not a bool). Raises EmulatorConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EmulatorConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative(value: Any, name: str) -> float:
    """``value`` as a float if it is a number ≥ 0. Raises EmulatorConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise EmulatorConfigError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def parameters_list(value: Any, name: str) -> list[dict[str, str]]:
    """Accept ``{"NAME": "value"}`` or ``[{"name", "value"}]``; values become strings.

    Raises EmulatorConfigError naming ``name``.
    """
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


def _outcome_list(value: Any, kind: type[Enum], name: str) -> tuple[Any, ...]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise EmulatorConfigError(f"{name} must name at least one outcome")
    resolved = []
    for item in items:
        try:
            resolved.append(kind(item.value if isinstance(item, Enum) else item))
        except ValueError:
            choices = ", ".join(str(o.value) for o in kind)
            raise EmulatorConfigError(f"{name} must be one of {choices}, got {item!r}") from None
    return tuple(resolved)


def call_script(
    outcome: Any,
    parameters: Any = None,
    *,
    talk_time: float | None = None,
    end_call: bool = True,
    end_call_delay: float = 0.0,
    index_delay: float | None = None,
) -> CallScript:
    """Build a :class:`CallScript` from loose input (one outcome or a list of them).

    Raises EmulatorConfigError naming the bad field.
    """
    if not isinstance(end_call, bool):
        raise EmulatorConfigError(f"script end_call must be a boolean, got {end_call!r}")
    return CallScript(
        outcomes=_outcome_list(outcome, Outcome, "script outcome"),
        parameters=tuple(parameters_list(parameters, "script parameters")),
        talk_time=None if talk_time is None else check_non_negative(talk_time, "script talk_time"),
        end_call=end_call,
        end_call_delay=check_non_negative(end_call_delay, "script end_call_delay"),
        index_delay=None if index_delay is None else check_non_negative(index_delay, "script index_delay"),
    )


def message_script(outcome: Any) -> MessageScript:
    """Build a :class:`MessageScript` from one outcome or a list. Raises EmulatorConfigError."""
    return MessageScript(_outcome_list(outcome, MessageOutcome, "message script outcome"))


def check_destination_key(to: Any, name: str) -> str:
    """A script's or fault's ``to``: a non-empty string. Raises EmulatorConfigError."""
    if not isinstance(to, str) or not to:
        raise EmulatorConfigError(f"{name} must be a non-empty string, got {to!r}")
    return to


def check_wrapper(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Keys wrapping Insights bodies, outermost first. Raises EmulatorConfigError."""
    if value is None:
        return ()
    keys = (value,) if isinstance(value, str) else value
    if not isinstance(keys, Sequence) or not all(isinstance(k, str) and k for k in keys):
        raise EmulatorConfigError(
            f"insights_wrapper must be a non-empty key, a sequence of them or None, got {value!r}"
        )
    return tuple(keys)


def check_shape(value: InsightsShape | str) -> InsightsShape:
    """An :class:`InsightsShape` from itself or its value. Raises EmulatorConfigError."""
    try:
        return InsightsShape(value)
    except ValueError:
        choices = ", ".join(s.value for s in InsightsShape)
        raise EmulatorConfigError(f"insights_shape must be one of {choices}, got {value!r}") from None
