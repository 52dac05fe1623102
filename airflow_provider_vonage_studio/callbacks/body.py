"""The body of a status callback: its model, its size bound, and how its fields are read.

AI Studio posts the seed's five fields (``agent_id``, ``to``, ``conversation_uuid``,
``status``, ``timestamp``) to a call's ``status_url``; extra fields are ignored.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "MAX_BODY_BYTES",
    "CallbackStatus",
    "StatusCallback",
    "destinations_match",
    "parse_callback_time",
]

#: Largest callback body accepted. The seed's payload is ~200 bytes; 16 KiB leaves room for
#: fields AI Studio may add without letting anyone make the receiver buffer megabytes.
MAX_BODY_BYTES = 16 * 1024
#: The statuses AI Studio posts (see the seed); anything else is refused.
CallbackStatus = Literal["cancelled", "rejected", "busy", "timeout", "failed"]

# Anything below 0x20, DEL and the C1 controls (U+0080-U+009F, NEL among them): no field of a
# callback has a use for them, NUL breaks PostgreSQL text columns, and line breaks would let a
# value forge log lines. The Unicode line and paragraph separators break lines too (in log
# viewers, in JavaScript), and the bidirectional embedding, override and isolate controls
# (U+202A-U+202E, U+2066-U+2069) make a value display as something other than it is.
#
# Narrower than validation.has_control_characters (which refuses every Cc, Cf, Zl and Zp
# character) on purpose: that one guards what a DAG author types; this one decides whether a
# report AI Studio already made is kept. A refused callback is a lost outcome, so only what
# could forge a log line or disguise a value is refused here; other format characters (a
# zero-width space, a soft hyphen) neither break a line nor turn text around, and are kept.
# One compiled search per field also keeps the check cheap on the receiver's hot path.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SIP_SCHEME_RE = re.compile(r"^sips?:", re.IGNORECASE)


class StatusCallback(BaseModel):
    """The body AI Studio posts to ``status_url`` (the seed's five fields; extras ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    agent_id: str = Field(min_length=1, max_length=255)
    to: str = Field(min_length=1, max_length=512)
    # Empty is tolerated (the store treats it as "none"); 255 is the store's column width.
    conversation_uuid: str = Field(max_length=255)
    status: CallbackStatus
    timestamp: str = Field(min_length=1, max_length=64)

    @field_validator("agent_id", "to", "conversation_uuid", "timestamp")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _CONTROL_RE.search(value):
            raise ValueError("must not contain control characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
            raise ValueError("must be valid Unicode text") from None
        return value

    @field_validator("timestamp")
    @classmethod
    def _iso_timestamp(cls, value: str) -> str:
        if parse_callback_time(value) is None:
            raise ValueError("must be an ISO 8601 date-time such as 2022-05-31T06:40:45.475Z")
        return value

    def event_time(self) -> datetime | None:
        """``timestamp`` as an aware UTC datetime (naive values are UTC, as in the seed)."""
        return parse_callback_time(self.timestamp)


def parse_callback_time(value: str) -> datetime | None:
    """Parse a callback ``timestamp`` (ISO 8601, ``Z`` allowed) to aware UTC, or ``None``."""
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat has no "Z"
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            return parsed.replace(tzinfo=timezone.utc)
        # Year 1 at +05:00 is before datetime.min in UTC: OverflowError, i.e. not a real time.
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def destinations_match(callback_to: str, destination: str) -> bool:
    """Whether a callback's ``to`` names the destination a call was placed to.

    Phone numbers are compared by their digits without leading zeros (so ``+44 7700…``,
    ``0044…`` and ``447700…`` agree); SIP URIs by ``user@host`` without scheme, port or
    parameters, the host case-insensitively. Never raises.
    """
    if _SIP_SCHEME_RE.match(destination):
        return _sip_key(callback_to) == _sip_key(destination)
    theirs = "".join(ch for ch in callback_to if "0" <= ch <= "9").lstrip("0")
    ours = "".join(ch for ch in destination if "0" <= ch <= "9").lstrip("0")
    return bool(ours) and theirs == ours


def _sip_key(value: str) -> tuple[str, str]:
    text = _SIP_SCHEME_RE.sub("", value.strip())
    text = text.split(";", 1)[0].split("?", 1)[0]
    user, _, hostport = text.rpartition("@")
    host = hostport.rsplit("]", 1)[0] + "]" if hostport.startswith("[") else hostport.split(":", 1)[0]
    return user, host.lower()


def _describe(exc: ValidationError) -> str:
    """A 422 message naming each bad field and the rule, never the value sent."""
    problems = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False)[:10]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        message = error["msg"]
        if error["type"] == "missing":
            message = "is required"
        elif error["type"] in ("json_invalid", "json_type", "model_type", "model_attributes_type"):
            where, message = (
                "body",
                "must be a JSON object with agent_id, to, conversation_uuid, status, timestamp",
            )
        problems.append(f"{where}: {message}")
    return "; ".join(problems) or "invalid body"
