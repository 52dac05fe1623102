"""Checks of the arguments every entry point shares: durations, agent ids, URLs, templates.

Operators, sensors, triggers, the notifier, the batch dialer and the hook all take the same
kinds of argument. Each kind is checked here, once, so that a bad value gets the same clear
error wherever it is passed, names the field, and is refused before anything is written or
sent. Phone numbers and do-not-call lists are checked in
:mod:`~airflow_provider_vonage_studio.destinations`, session parameters in
:mod:`~airflow_provider_vonage_studio.params`.

Standard library only: operator and sensor modules import this one while DAG files are parsed.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

__all__ = [
    "MAX_AGENT_ID_LENGTH",
    "MAX_DURATION",
    "MAX_REQUEST_TIMEOUT",
    "MAX_RETRY_BACKOFF",
    "MAX_RETRY_TIME",
    "MAX_URL_LENGTH",
    "check_agent_id",
    "check_call_arguments",
    "check_duration",
    "check_http_url",
    "check_request_timeout",
    "check_seconds",
    "check_status_url",
    "has_control_characters",
    "is_templated",
]

#: The default upper bound of a duration argument. Every wait in the provider (answer
#: windows, polling, back-off) is measured in seconds or minutes; a value over a day is a
#: unit mistake (milliseconds given as seconds, a timedelta(days=...) meant as hours).
MAX_DURATION = timedelta(days=1)

#: Upper bound of a request's read timeout. AI Studio answers make-call in well under a
#: second; a dial must also finish (retries included) well inside ``PENDING_TIMEOUT``
#: (10 minutes), after which its ledger row counts as abandoned by a killed try.
MAX_REQUEST_TIMEOUT = timedelta(seconds=120)

#: Upper bound of the hook's total retry time per request (``max_retry_seconds``), for the
#: same reason: a dial must end well inside ``PENDING_TIMEOUT``.
MAX_RETRY_TIME = timedelta(minutes=5)

#: Upper bound of the hook's first back-off (``retry_backoff``); back-offs are capped at 30 s.
MAX_RETRY_BACKOFF = timedelta(seconds=30)

#: An agent id longer than this is not an id (AI Studio's are 24 hex digits).
MAX_AGENT_ID_LENGTH = 128

#: Longest ``status_url`` accepted: what browsers and common servers reliably handle.
MAX_URL_LENGTH = 2048

# What a rendered template or a pasted value may carry around an id or URL: dropped. Unicode
# spaces and separators (U+00A0, U+2028, ...) are not: they are refused like controls.
_ASCII_WHITESPACE = " \t\r\n"
# Jinja's default delimiters: a value holding one is rendered by Airflow before execute().
_TEMPLATE_RE = re.compile(r"\{\{|\{%|\{#")
# Host part of an http(s) URL: a DNS name (underscores tolerated: container service names
# have them), an IPv4 address, or an IPv6 address in brackets (checked separately).
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._~-]*[A-Za-z0-9])?")


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a character that must never reach an id, URL or log line.

    That is every ASCII and C1 control (Unicode category ``Cc``: NUL, CR, LF, TAB, U+0085,
    ...), every format character (``Cf``: bidi embeddings and overrides U+202A-U+202E,
    isolates U+2066-U+2069, zero-width spaces, the byte-order mark) and the line and
    paragraph separators U+2028/U+2029 (``Zl``/``Zp``). Such characters split log lines, turn
    text around on screen, or make two different ids look the same.
    """
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def is_templated(value: Any) -> bool:
    """Whether ``value`` is resolved by Airflow only when the task runs.

    True for a string holding a Jinja delimiter (``{{``, ``{%``, ``{#``), for an XCom
    reference (``task.output``, anything with a ``resolve`` method), and for a list, tuple,
    set or mapping that holds one. Arguments that are templated are checked after rendering,
    in ``execute()``, before any request; the others are checked at construction.
    """
    if isinstance(value, str):
        return bool(_TEMPLATE_RE.search(value))
    if isinstance(value, (bytes, bytearray, int, float, bool)) or value is None:
        return False
    if isinstance(value, Mapping):
        return any(is_templated(k) or is_templated(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(is_templated(item) for item in value)
    return callable(getattr(value, "resolve", None))


def check_duration(
    value: Any,
    *,
    field: str,
    minimum: timedelta = timedelta(0),
    maximum: timedelta = MAX_DURATION,
    exclusive_minimum: bool = False,
) -> timedelta:
    """Return the duration argument ``value`` as a ``timedelta``, or raise naming ``field``.

    ``value`` is a ``timedelta`` or a number of seconds (``int`` or ``float``). It must lie in
    ``[minimum, maximum]`` (``(minimum, maximum]`` with ``exclusive_minimum``).

    :raises VonageStudioConfigError: ``value`` is of another type (``bool``, a string, ...),
        is NaN or infinite, lies outside the bounds (negative, or over ``maximum``: a day by
        default), or is too large for a ``timedelta`` at all. Never a raw ``ValueError`` or
        ``OverflowError``.
    """
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise VonageStudioConfigError(
                f"{field}: must be a finite duration, got {value!r} (give a timedelta or a number of seconds)"
            )
        try:
            duration = timedelta(seconds=value)
        except OverflowError:
            raise VonageStudioConfigError(
                f"{field}: {value!r} seconds is far over the maximum of {_human(maximum)}"
            ) from None
    else:
        raise VonageStudioConfigError(
            f"{field}: expected a timedelta or a number of seconds, got {type(value).__name__}"
        )
    if duration < minimum or (exclusive_minimum and duration == minimum):
        bound = "more than" if exclusive_minimum else "at least"
        what = (
            "must not be negative"
            if minimum == timedelta(0) and not exclusive_minimum
            else (f"must be {bound} {_human(minimum)}")
        )
        raise VonageStudioConfigError(f"{field}: {what}, got {_shown(value)}")
    if duration > maximum:
        raise VonageStudioConfigError(
            f"{field}: must be at most {_human(maximum)}, got {_shown(value)} (a unit mistake? numbers "
            "are seconds)"
        )
    return duration


def check_seconds(
    value: Any,
    *,
    field: str,
    minimum: float = 0.0,
    maximum: timedelta = MAX_DURATION,
    exclusive_minimum: bool = False,
) -> float:
    """:func:`check_duration` for arguments kept as a number of seconds; returns a ``float``.

    :raises VonageStudioConfigError: as :func:`check_duration`.
    """
    return check_duration(
        value,
        field=field,
        minimum=timedelta(seconds=minimum),
        maximum=maximum,
        exclusive_minimum=exclusive_minimum,
    ).total_seconds()


def check_agent_id(value: Any, *, field: str = "agent_id") -> str:
    """Return the agent id ``value`` without surrounding whitespace, or raise naming ``field``.

    An agent id is sent to AI Studio, written to the ledger and logged: it must be a
    non-empty string of at most :data:`MAX_AGENT_ID_LENGTH` characters with no whitespace
    inside and no control, format or separator characters (see
    :func:`has_control_characters`). Surrounding ASCII whitespace (a template's trailing
    newline) is dropped; other Unicode spaces and separators are refused anywhere.

    :raises VonageStudioConfigError: ``value`` is not a string, is empty, too long, or holds
        such a character (the message says which and where, not the value itself when it
        holds controls).
    """
    if not isinstance(value, str):
        raise VonageStudioConfigError(
            f"{field}: expected a string (the agent's id), got {type(value).__name__}"
        )
    text = value.strip(_ASCII_WHITESPACE)
    if not text:
        raise VonageStudioConfigError(f"{field}: must be a non-empty string (the agent's id), got {value!r}")
    for position, ch in enumerate(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise VonageStudioConfigError(
                f"{field}: holds the control character U+{ord(ch):04X} at position {position}; an agent "
                "id is letters, digits and punctuation only"
            )
        if ch.isspace():
            raise VonageStudioConfigError(
                f"{field}: holds whitespace at position {position} ({text!r}); an agent id has none "
                "(copy it from the agent's settings in AI Studio)"
            )
    if len(text) > MAX_AGENT_ID_LENGTH:
        raise VonageStudioConfigError(
            f"{field}: is {len(text)} characters long; an agent id has at most {MAX_AGENT_ID_LENGTH}"
        )
    return text


def check_http_url(value: Any, *, field: str, allow_query: bool = True) -> str:
    """Return ``value`` if it is a well-formed absolute ``http://`` or ``https://`` URL.

    The URL must have a host (a DNS name, an IPv4 address or a bracketed IPv6 address) and a
    valid port if one is given, no user name or password (they would be logged with the
    URL), no whitespace and no control characters anywhere (see
    :func:`has_control_characters`), and at most :data:`MAX_URL_LENGTH` characters. With
    ``allow_query=False`` a query or fragment is refused as well (for base URLs that paths
    are appended to). Surrounding ASCII whitespace is dropped.

    :raises VonageStudioConfigError: naming ``field`` and the problem. The URL itself is not
        quoted: it may carry a token.
    """
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        raise VonageStudioConfigError(f"{field}: expected an http(s) URL string, got {type(value).__name__}")
    text = value.strip(_ASCII_WHITESPACE)

    def bad(problem: str) -> VonageStudioConfigError:
        return VonageStudioConfigError(f"{field}: not a well-formed absolute http(s) URL: {problem}")

    if not text:
        raise bad("it is empty")
    if len(text) > MAX_URL_LENGTH:
        raise bad(f"longer than {MAX_URL_LENGTH} characters")
    if has_control_characters(text):
        raise bad("it holds control characters")
    if any(ch.isspace() for ch in text):
        raise bad("it holds whitespace (encode spaces as %20)")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a port that is not 0..65535
    except ValueError as exc:
        raise bad(f"it cannot be parsed ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise bad(f"the scheme must be http or https, not {parts.scheme or 'missing'!r}")
    if not parts.netloc:
        raise bad("the host is missing (write http://host/... or https://host/...)")
    if parts.username is not None or parts.password is not None:
        raise bad("it holds a user name or password (user:password@...), which would be logged with it")
    host = parts.hostname or ""
    if not host:
        raise bad("the host is missing")
    if "[" in parts.netloc:
        import ipaddress

        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise bad("the host in [...] is not an IPv6 address") from None
    elif not _valid_host(host):
        raise bad("the host must be a host name or an IP address")
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise bad("the port must be a number from 1 to 65535")
    if not allow_query and (parts.query or parts.fragment or "?" in text or "#" in text):
        raise bad("it must not have a query or fragment (the receiver's path is appended to it)")
    return text


def check_status_url(value: Any, *, field: str = "status_url") -> str:
    """Return the ``status_url`` argument checked by :func:`check_http_url`.

    :raises VonageStudioConfigError: naming ``field``, for anything but a well-formed absolute
        http(s) URL with a host.
    """
    return check_http_url(value, field=field)


def check_call_arguments(
    *,
    agent_id: Any,
    status_url: Any = None,
    session_parameters: Any = None,
    strict_parameter_names: bool = True,
    do_not_call: Any = None,
    default_country: str | None = None,
    rendered: bool,
) -> Any:
    """Check the arguments a calling operator shares; return ``do_not_call`` as it should be kept.

    At construction (``rendered=False``) a value that is a template or an XCom reference is
    left for later; every other value is checked now, so a mistake fails when the DAG is
    parsed. After rendering (``rendered=True``, first thing in ``execute``) everything is
    checked, before any request or deferral. ``do_not_call`` comes back split into its
    entries (a template or XCom reference unchanged at construction); its entries are
    checked for shape at construction, and once rendered for being possible numbers with
    ``default_country`` (:func:`~airflow_provider_vonage_studio.destinations.parse_number_list`),
    so that parsing a DAG file loads no phone-number metadata.

    :raises VonageStudioConfigError: naming the field: ``agent_id`` empty or holding
        whitespace or control characters, ``status_url`` not a well-formed absolute http(s)
        URL with a host, ``do_not_call`` of the wrong type or with an entry that is not a
        (possible) number or SIP URI.
    :raises InvalidSessionParameter: ``session_parameters`` break AI Studio's rules or the
        documented limits.
    """
    if rendered or not is_templated(agent_id):
        check_agent_id(agent_id)
    if status_url is not None and (rendered or not is_templated(status_url)):
        check_status_url(status_url)
    if session_parameters is not None and (rendered or not is_templated(session_parameters)):
        from airflow_provider_vonage_studio.params import normalize_session_parameters

        normalize_session_parameters(session_parameters, strict_names=strict_parameter_names)
    from airflow_provider_vonage_studio.destinations import parse_number_list, split_number_list

    if rendered:
        parse_number_list(do_not_call, field="do_not_call", default_country=default_country)
    elif is_templated(do_not_call):
        return do_not_call
    # The entries as typed: the hook (or the batch dialer) reads them with default_country,
    # exactly as it reads the destination.
    return split_number_list(do_not_call, field="do_not_call")


def check_request_timeout(timeout: Any) -> float | None:
    """The ``timeout`` argument of an operator or notifier (seconds, or ``None`` for the
    connection's), checked.

    :raises VonageStudioConfigError: naming ``timeout``, unless it is a finite number of
        seconds in ``(0, 120]`` (:data:`MAX_REQUEST_TIMEOUT`).
    """
    if timeout is None:
        return None
    return check_seconds(timeout, field="timeout", exclusive_minimum=True, maximum=MAX_REQUEST_TIMEOUT)


def _valid_host(host: str) -> bool:
    if not host.isascii():
        # An internationalised name: valid when IDNA can encode it.
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    return all(label and len(label) <= 63 and _HOST_RE.fullmatch(label) for label in name.split("."))


def _human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 86400 and seconds % 86400 == 0:
        days = int(seconds // 86400)
        return f"{days} day" + ("s" if days != 1 else "")
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return f"{hours} hour" + ("s" if hours != 1 else "")
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _shown(value: Any) -> str:
    if isinstance(value, timedelta):
        return f"{value} ({value.total_seconds():g} s)"
    return f"{value!r} s"
