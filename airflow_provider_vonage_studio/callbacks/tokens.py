"""Call references and the signed tokens carried in each call's ``status_url``.

AI Studio's status callback carries no ``session_id``, so every call we place gets a
``status_url`` of the form ``<callback_base_url>/calls/<token>/status`` where the token is
our own ``call_ref`` plus an HMAC-SHA256 signature. The receiver is not behind Airflow's
authentication (plugin apps mounted through ``fastapi_apps`` are public), so the signature
is the only thing that stops a stranger from posting fake statuses: tokens are verified
with a constant-time comparison and never stored or logged (see :func:`elide_token`).

This module is pure standard library so that anything may import it cheaply.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from urllib.parse import urlsplit

__all__ = [
    "InvalidToken",
    "build_status_url",
    "elide_token",
    "make_call_ref",
    "sign_token",
    "verify_token",
]

#: Prefix of every call reference built by :func:`make_call_ref`.
CALL_REF_PREFIX = "vs-"

# A call_ref becomes one URL path segment, so it is limited to RFC 3986 "unreserved"
# characters: no escaping is ever needed and the token round-trips through any proxy.
# The length cap keeps the status_url well inside every URL length limit.
# 64: the call store's call_ref column; a longer ref could be signed but never recorded.
_CALL_REF_RE = re.compile(r"[A-Za-z0-9._~-]{1,64}")
# URL-safe base64 of a 32-byte HMAC-SHA256 digest without "=" padding is always 43 chars.
_SIG_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# The token segment in a status URL built by build_status_url.
_STATUS_PATH_RE = re.compile(r"(/calls/)[^/?#]+(/status)(?=$|[/?#])")


class InvalidToken(ValueError):
    """A callback token is malformed or its signature does not match.

    The message never repeats the token: a valid-looking token is a capability to post
    statuses for a call, so it must not end up in logs.
    """


def make_call_ref(
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int = -1,
    key: str | None = None,
) -> str:
    """Return the deterministic reference of one call made by one task instance.

    The same inputs always give the same reference, so a retried task finds the calls it
    made on an earlier try in the call store. ``key`` tells apart the recipients of a
    batch dialled by one task; ``None`` (no key) and ``""`` are different keys, as are
    ``map_index`` ``-1`` (unmapped) and ``0``.

    The result is ``"vs-"`` plus 32 lowercase hex characters (128 bits of SHA-256 over a
    JSON list of the inputs); it is URL-safe.

    :raises TypeError: when an argument has the wrong type (``map_index`` must be an
        ``int``, not a ``bool``; ``key`` a ``str`` or ``None``).
    """
    for name, value in (("dag_id", dag_id), ("run_id", run_id), ("task_id", task_id)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    # bool is an int subclass; True would silently collide with map_index 1.
    if not isinstance(map_index, int) or isinstance(map_index, bool):
        raise TypeError(f"map_index must be an int, got {type(map_index).__name__}")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a str or None, got {type(key).__name__}")
    # A JSON list (not string concatenation) keeps the fields apart: ("a_b", "c") and
    # ("a", "b_c") hash differently, and null differs from "". Fixed separators and
    # ensure_ascii make the bytes independent of the json module's defaults.
    payload = json.dumps([dag_id, run_id, task_id, map_index, key], separators=(",", ":"), ensure_ascii=True)
    return CALL_REF_PREFIX + hashlib.sha256(payload.encode("ascii")).hexdigest()[:32]


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


def _signature(call_ref: str, key: bytes) -> str:
    digest = hmac.new(key, call_ref.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_token(call_ref: str, secret: str) -> str:
    """Return ``"<call_ref>.<signature>"``, the token put into a call's ``status_url``.

    The signature is the URL-safe base64 (no padding) of HMAC-SHA256 keyed with ``secret``
    over ``call_ref``.

    :raises ValueError: when ``secret`` is empty or not a str, or ``call_ref`` is not 1-64
        URL-safe characters.
    """
    key = _check_secret(secret)
    _check_call_ref(call_ref)
    return f"{call_ref}.{_signature(call_ref, key)}"


def verify_token(token: str, secret: str) -> str:
    """Return the ``call_ref`` inside ``token`` if its signature was made with ``secret``.

    The signature is compared with :func:`hmac.compare_digest`, so the time taken does not
    reveal how much of a forged signature was right.

    :raises ValueError: when ``secret`` is empty or not a str (a configuration error, raised
        before looking at the token).
    :raises InvalidToken: when the token is not a str, is malformed, or its signature does
        not match.
    """
    key = _check_secret(secret)
    if not isinstance(token, str):
        raise InvalidToken("callback token is not a string")
    # The signature never contains ".", so the last "." separates it even when a caller
    # supplied call_ref contains dots.
    call_ref, dot, sig = token.rpartition(".")
    if not dot or not _CALL_REF_RE.fullmatch(call_ref) or not _SIG_RE.fullmatch(sig):
        raise InvalidToken("callback token is malformed")
    expected = _signature(call_ref, key)
    if not hmac.compare_digest(sig.encode("ascii"), expected.encode("ascii")):
        raise InvalidToken("callback token signature does not match")
    return call_ref


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
    token = sign_token(call_ref, secret)
    return f"{base_url.strip().rstrip('/')}/calls/{token}/status"


def elide_token(url: str) -> str:
    """Return ``url`` with the token of a ``.../calls/<token>/status`` path replaced by ``***``.

    Use it before logging a status URL or a receiver request path. A URL without such a
    path is returned unchanged.
    """
    return _STATUS_PATH_RE.sub(r"\1***\2", url)
