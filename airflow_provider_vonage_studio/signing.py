"""The signed tokens carried in each call's ``status_url`` (and its end-call webhook).

AI Studio's status callback carries no ``session_id``, so every call we place gets a
``status_url`` of the form ``<callback_base_url>/calls/<token>/status`` where the token is
our own ``call_ref``, an HMAC-SHA256 signature and the time the token was issued. The
receiver is not behind Airflow's authentication (plugin apps mounted through
``fastapi_apps`` are public), so the signature is the only thing that stops a stranger from
posting fake statuses: tokens are verified with a constant-time comparison and never stored
or logged (see :func:`elide_token`). The issue time lets the receiver refuse a token long
after its call (see :class:`VerifiedToken`).

Two token forms verify:

* ``<call_ref>.<signature>.<issued>``, what :func:`sign_token` makes: ``issued`` is the
  issue time in Unix seconds, base 36, lowercase; the signature covers ``call_ref`` and
  ``issued``.
* ``<call_ref>.<signature>``, the legacy form without an issue time (signed by builds from
  before tokens carried one): still verified during a transition, so callbacks of calls
  placed before an upgrade are not refused. Release 0.3.0 (:data:`LEGACY_TOKENS_UNTIL`)
  stops accepting them.

The two are told apart by the last segment alone (a signature is always 43 characters, an
issue time at most 12), and the signed messages are domain-separated, so a signature of one
form can never be replayed as the other.

This module is pure standard library (plus :mod:`calls`) so that anything may import it cheaply.
:func:`make_call_ref` lives in :mod:`calls` and is re-exported here for one release.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from airflow_provider_vonage_studio.calls import CALL_REF_RE, make_call_ref

__all__ = [
    "LEGACY_TOKENS_UNTIL",
    "InvalidToken",
    "VerifiedToken",
    "build_status_url",
    "elide_token",
    "make_call_ref",
    "sign_token",
    "verify_token",
    "verify_token_details",
]

#: The release that stops accepting tokens without an issue time (the 0.1.x form).
LEGACY_TOKENS_UNTIL = "0.3.0"

_CALL_REF_RE = CALL_REF_RE
# URL-safe base64 of a 32-byte HMAC-SHA256 digest without "=" padding is always 43 chars.
_SIG_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# Issue time: Unix seconds in base 36 (lowercase when signed; the signature covers the exact
# text, so any other spelling fails to verify). 12 characters would reach far past year 9999.
_ISSUED_RE = re.compile(r"[0-9A-Za-z]{1,12}")
# Domain separation of the stamped form: the legacy message is the bare call_ref, which can
# contain neither NUL nor this prefix, so no signature of one form verifies as the other.
_STAMPED_PREFIX = b"vs-token-v2\x00"
# The token segment in a status URL built by build_status_url.
# Every path that carries a token: a call's status and end-call routes, a message's status route.
_STATUS_PATH_RE = re.compile(r"(/calls/|/messages/)[^/?#]+(/status|/ended)(?=$|[/?#])")


@dataclass(frozen=True)
class VerifiedToken:
    """What a genuine token says: its call and, for a stamped token, when it was issued.

    ``issued_at`` is ``None`` for a legacy token (no issue time): its age can then only
    be measured from the call's ``session_start_time``.
    """

    call_ref: str
    issued_at: datetime | None


class InvalidToken(ValueError):
    """A callback token is malformed or its signature does not match.

    The message never repeats the token: a valid-looking token is a capability to post
    statuses for a call, so it must not end up in logs.
    """


def _check_secret(secret: str) -> bytes:
    if not isinstance(secret, str):
        raise ValueError(f"callback_secret must be a str, got {type(secret).__name__}")
    if not secret:
        # An empty HMAC key still "works", which would make every token forgeable.
        raise ValueError("callback_secret is empty: set a long random secret on the connection")
    return secret.encode("utf-8")


def _check_call_ref(call_ref: str) -> None:
    if not isinstance(call_ref, str) or not _CALL_REF_RE.fullmatch(call_ref):
        raise ValueError(
            "call_ref must be 1-64 URL-safe characters (letters, digits, '-', '_', '.', '~'), "
            f"got {call_ref!r}"
        )


def _signature(message: bytes, key: bytes) -> str:
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _stamped_message(call_ref: str, issued: str) -> bytes:
    return _STAMPED_PREFIX + call_ref.encode("ascii") + b"\x00" + issued.encode("ascii")


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if not number:
            return text


def sign_token(call_ref: str, secret: str, *, issued_at: datetime | None = None) -> str:
    """Return ``"<call_ref>.<signature>.<issued>"``, the token put into a call's ``status_url``.

    ``issued`` is ``issued_at`` (default: now) in whole Unix seconds, base 36; a naive
    ``issued_at`` is UTC. The signature is the URL-safe base64 (no padding) of HMAC-SHA256
    keyed with ``secret`` over ``b"vs-token-v2\\0" + call_ref + b"\\0" + issued``.

    :raises ValueError: when ``secret`` is empty or not a str, ``call_ref`` is not 1-64
        URL-safe characters, or ``issued_at`` is not a datetime at or after 1970.
    """
    key = _check_secret(secret)
    _check_call_ref(call_ref)
    if issued_at is None:
        issued_at = datetime.now(timezone.utc)
    elif not isinstance(issued_at, datetime):
        raise ValueError(f"issued_at must be a datetime, got {type(issued_at).__name__}")
    elif issued_at.tzinfo is None or issued_at.utcoffset() is None:
        issued_at = issued_at.replace(tzinfo=timezone.utc)
    seconds = int(issued_at.timestamp())
    if seconds < 0:
        raise ValueError("issued_at must not be before 1970")
    issued = _base36(seconds)
    return f"{call_ref}.{_signature(_stamped_message(call_ref, issued), key)}.{issued}"


def verify_token_details(token: str, secret: str) -> VerifiedToken:
    """Verify ``token`` against ``secret``; return its ``call_ref`` and issue time.

    Both forms verify (see the module docstring): a legacy token without an issue time gets
    ``issued_at=None``. Exactly one signature is computed and compared, with
    :func:`hmac.compare_digest`, so the time taken does not reveal how much of a forged
    signature was right.

    :raises ValueError: when ``secret`` is empty or not a str (a configuration error, raised
        before looking at the token).
    :raises InvalidToken: when the token is not a str, is malformed, or its signature does
        not match.
    """
    key = _check_secret(secret)
    if not isinstance(token, str):
        raise InvalidToken("callback token is not a string")
    # Neither a signature nor an issue time contains ".", so the last one or two "." split them
    # off even when a caller supplied call_ref contains dots.
    head, dot, last = token.rpartition(".")
    if not dot:
        raise InvalidToken("callback token is malformed")
    issued: str | None = None
    if _SIG_RE.fullmatch(last):
        call_ref, sig = head, last
        message = call_ref.encode("ascii") if _CALL_REF_RE.fullmatch(call_ref) else b""
    elif _ISSUED_RE.fullmatch(last):
        call_ref, dot, sig = head.rpartition(".")
        if not dot or not _SIG_RE.fullmatch(sig):
            raise InvalidToken("callback token is malformed")
        issued = last
        message = _stamped_message(call_ref, issued) if _CALL_REF_RE.fullmatch(call_ref) else b""
    else:
        raise InvalidToken("callback token is malformed")
    if not message:
        raise InvalidToken("callback token is malformed")
    expected = _signature(message, key)
    if not hmac.compare_digest(sig.encode("ascii"), expected.encode("ascii")):
        raise InvalidToken("callback token signature does not match")
    if issued is None:
        return VerifiedToken(call_ref, None)
    try:
        issued_at = datetime.fromtimestamp(int(issued, 36), tz=timezone.utc)
    except (OverflowError, OSError, ValueError):  # only a secret holder could sign such a time
        raise InvalidToken("callback token has an impossible issue time") from None
    return VerifiedToken(call_ref, issued_at)


def verify_token(token: str, secret: str) -> str:
    """Return the ``call_ref`` inside ``token`` if its signature was made with ``secret``.

    Accepts both token forms; use :func:`verify_token_details` for the issue time too.

    :raises ValueError: when ``secret`` is empty or not a str (a configuration error, raised
        before looking at the token).
    :raises InvalidToken: when the token is not a str, is malformed, or its signature does
        not match.
    """
    return verify_token_details(token, secret).call_ref


def build_status_url(base_url: str, call_ref: str, secret: str) -> str:
    """Return ``<base_url>/calls/<token>/status`` for one call.

    ``base_url`` is the connection's ``callback_base_url``: the public address of the
    callback receiver, optionally with a path prefix (trailing slashes are ignored).

    :raises ValueError: when ``base_url`` is not an http(s) URL with a host, or has a query
        or fragment (the path would be appended after them); or as :func:`sign_token`.
    """
    if not isinstance(base_url, str):
        raise ValueError(f"callback_base_url must be a str, got {type(base_url).__name__}")
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"callback_base_url {base_url!r} must be an http(s) URL such as https://calls.example.com"
        )
    if parts.query or parts.fragment or base_url.strip().endswith(("?", "#")):
        raise ValueError(f"callback_base_url {base_url!r} must not have a query string or fragment")
    # Issued now: the receiver measures the callback's age from here (or the call's start).
    token = sign_token(call_ref, secret)
    return f"{base_url.strip().rstrip('/')}/calls/{token}/status"


def elide_token(url: str) -> str:
    """Return ``url`` with the token of a ``.../calls/<token>/status`` (or ``/ended``) or
    ``.../messages/<token>/status`` path replaced by ``***``.

    Use it before logging a status URL or a receiver request path. A URL without such a
    path is returned unchanged.
    """
    return _STATUS_PATH_RE.sub(r"\1***\2", url)
