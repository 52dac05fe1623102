"""Unit tests for call references and signed callback tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_vonage_studio import signing as tokens
from airflow_provider_vonage_studio.calls import make_call_ref
from airflow_provider_vonage_studio.signing import (
    InvalidToken,
    VerifiedToken,
    build_status_url,
    elide_token,
    sign_token,
    verify_token,
    verify_token_details,
)

SECRET = "s3cret-for-tests"
URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")
FAST = settings(max_examples=100, deadline=None)


# --- make_call_ref ------------------------------------------------------------------


def test_call_ref_shape_and_determinism() -> None:
    ref = make_call_ref("dag", "run", "task")
    assert ref == make_call_ref("dag", "run", "task", -1, None)
    assert re.fullmatch(r"vs-[0-9a-f]{32}", ref)


def test_call_ref_is_sha256_of_json_list() -> None:
    # The construction is part of the interface: other tools may recompute it.
    payload = json.dumps(["d", "r", "t", 3, "k"], separators=(",", ":"))
    expected = "vs-" + hashlib.sha256(payload.encode()).hexdigest()[:32]
    assert make_call_ref("d", "r", "t", 3, "k") == expected


@pytest.mark.parametrize(
    "other",
    [
        ("dag2", "run", "task", -1, None),
        ("dag", "run2", "task", -1, None),
        ("dag", "run", "task2", -1, None),
        ("dag", "run", "task", 0, None),  # unmapped (-1) vs first mapped index
        ("dag", "run", "task", -1, ""),  # no key vs empty key
        ("dag", "run", "task", -1, "None"),
    ],
)
def test_call_ref_differs_for_each_input(other: tuple[Any, ...]) -> None:
    assert make_call_ref("dag", "run", "task", -1, None) != make_call_ref(*other)


def test_call_ref_fields_do_not_run_together() -> None:
    assert make_call_ref("a_b", "c", "t") != make_call_ref("a", "b_c", "t")
    assert make_call_ref("a", "bc", "t") != make_call_ref("ab", "c", "t")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((None, "r", "t"), "dag_id"),
        (("d", 1, "t"), "run_id"),
        (("d", "r", b"t"), "task_id"),
        (("d", "r", "t", "0"), "map_index"),
        (("d", "r", "t", True), "map_index"),
        (("d", "r", "t", -1, 5), "key"),
    ],
)
def test_call_ref_rejects_wrong_types(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(TypeError, match=field):
        make_call_ref(*args)


@FAST
@given(
    st.text(),
    st.text(),
    st.text(),
    st.integers(min_value=-1, max_value=10**6),
    st.none() | st.text(),
)
def test_call_ref_always_url_safe_and_signable(
    dag_id: str, run_id: str, task_id: str, map_index: int, key: str | None
) -> None:
    ref = make_call_ref(dag_id, run_id, task_id, map_index, key)
    assert re.fullmatch(r"vs-[0-9a-f]{32}", ref)
    assert verify_token(sign_token(ref, SECRET), SECRET) == ref


# --- sign / verify ------------------------------------------------------------------


def test_round_trip() -> None:
    ref = make_call_ref("dag", "run", "task")
    token = sign_token(ref, SECRET)
    assert token.startswith(ref + ".")
    assert verify_token(token, SECRET) == ref


def _legacy_token(ref: str, secret: str = SECRET) -> str:
    """A token as signed before tokens carried their issue time: ``<call_ref>.<sig>``."""
    digest = hmac.new(secret.encode(), ref.encode(), hashlib.sha256).digest()
    return f"{ref}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def test_signature_is_unpadded_urlsafe_hmac_sha256_over_ref_and_issue_time() -> None:
    # The construction is part of the interface (docs/security.md): pin it.
    ref = "vs-0123"
    issued = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    stamp = base36(int(issued.timestamp()))
    message = b"vs-token-v2\x00" + ref.encode() + b"\x00" + stamp.encode()
    digest = hmac.new(SECRET.encode(), message, hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert sign_token(ref, SECRET, issued_at=issued) == f"{ref}.{sig}.{stamp}"
    assert URL_SAFE.fullmatch(sig)
    assert len(sig) == 43
    assert int(stamp, 36) == 1772366400


def base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out or "0"


def test_token_carries_its_issue_time() -> None:
    issued = datetime(2026, 3, 1, 12, 0, 0, 999999, tzinfo=timezone.utc)
    details = verify_token_details(sign_token("vs-abc", SECRET, issued_at=issued), SECRET)
    assert details == VerifiedToken("vs-abc", issued.replace(microsecond=0))
    # Naive is UTC; another zone is converted; the default is now.
    naive = verify_token_details(sign_token("vs-abc", SECRET, issued_at=datetime(2026, 3, 1, 12)), SECRET)
    assert naive.issued_at == datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    fresh = verify_token_details(sign_token("vs-abc", SECRET), SECRET).issued_at
    assert fresh is not None and before <= fresh <= datetime.now(timezone.utc)


def test_issue_time_cannot_be_changed_without_the_secret() -> None:
    token = sign_token("vs-abc", SECRET, issued_at=datetime(2026, 3, 1, tzinfo=timezone.utc))
    head, _, stamp = token.rpartition(".")
    for other in (base36(int(stamp, 36) + 86400 * 200), stamp.upper(), "0" + stamp):
        with pytest.raises(InvalidToken, match="does not match"):
            verify_token(f"{head}.{other}", SECRET)


def test_legacy_token_without_issue_time_still_verifies() -> None:
    legacy = _legacy_token("vs-0123")
    assert verify_token(legacy, SECRET) == "vs-0123"
    assert verify_token_details(legacy, SECRET) == VerifiedToken("vs-0123", None)
    assert verify_token_details(_legacy_token("my.custom.123"), SECRET) == VerifiedToken(
        "my.custom.123", None
    )
    with pytest.raises(InvalidToken):
        verify_token(_legacy_token("vs-0123", "another-secret"), SECRET)


def test_a_signature_of_one_form_never_verifies_as_the_other() -> None:
    # A legacy signature over "x.<stamp>" must not pass as a stamped token of call "x", nor the reverse.
    stamp = base36(1772366400)
    legacy_sig = _legacy_token(f"vs-x.{stamp}").rpartition(".")[2]
    with pytest.raises(InvalidToken, match="does not match"):
        verify_token(f"vs-x.{legacy_sig}.{stamp}", SECRET)
    stamped = sign_token("vs-x", SECRET, issued_at=datetime(2026, 3, 1, 12, tzinfo=timezone.utc))
    ref, sig, stamp = stamped.split(".")
    with pytest.raises(InvalidToken):
        verify_token(f"{ref}.{sig}", SECRET)


@pytest.mark.parametrize("issued_at", ["2026-03-01", 1772366400, datetime(1969, 12, 31, tzinfo=timezone.utc)])
def test_sign_refuses_a_bad_issue_time(issued_at: Any) -> None:
    with pytest.raises(ValueError, match="issued_at"):
        sign_token("vs-abc", SECRET, issued_at=issued_at)


def test_token_charset_is_url_safe() -> None:
    for i in range(50):
        token = sign_token(make_call_ref("d", "r", "t", i), SECRET)
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)


def _flip(char: str) -> str:
    return "A" if char != "A" else "B"


def test_tampered_signature_is_refused() -> None:
    token = sign_token("vs-abc", SECRET)
    for position in (-1, -20, -43):
        forged = token[:position] + _flip(token[position]) + (token[position + 1 :] if position != -1 else "")
        with pytest.raises(InvalidToken, match="does not match"):
            verify_token(forged, SECRET)


def test_wrong_secret_is_refused() -> None:
    token = sign_token("vs-abc", SECRET)
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET + "x")


def test_other_calls_signature_is_refused() -> None:
    token_a = sign_token("vs-aaaa", SECRET)
    token_b = sign_token("vs-bbbb", SECRET)
    swapped = "vs-aaaa." + token_b.rpartition(".")[2]
    assert swapped != token_a
    with pytest.raises(InvalidToken):
        verify_token(swapped, SECRET)


@pytest.mark.parametrize("cut", [1, 10, 42, 43, 44])
def test_truncated_token_is_refused(cut: int) -> None:
    token = sign_token("vs-abc", SECRET)
    with pytest.raises(InvalidToken):
        verify_token(token[:-cut], SECRET)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ".",
        "vs-abc",
        "vs-abc.",
        ".sig",
        "a b." + "A" * 43,
        "vs/abc." + "A" * 43,
        "vs-abc." + "=" * 43,
        None,
        42,
    ],
)
def test_garbage_is_refused(garbage: Any) -> None:
    with pytest.raises(InvalidToken):
        verify_token(garbage, SECRET)


def test_invalid_token_message_never_repeats_the_token() -> None:
    token = sign_token("vs-abc", SECRET)
    forged = token[:-1] + _flip(token[-1])
    with pytest.raises(InvalidToken) as info:
        verify_token(forged, SECRET)
    assert forged not in str(info.value)
    assert "vs-abc" not in str(info.value)


def test_invalid_token_is_a_value_error() -> None:
    assert issubclass(InvalidToken, ValueError)


@pytest.mark.parametrize("secret", ["", None, b"bytes"])
def test_empty_or_non_str_secret_is_a_config_error(secret: Any) -> None:
    with pytest.raises(ValueError, match="callback_secret"):
        sign_token("vs-abc", secret)
    with pytest.raises(ValueError, match="callback_secret") as info:
        verify_token("vs-abc." + "A" * 43, secret)
    # A misconfigured receiver is not the caller's fault: not reported as a bad token.
    assert not isinstance(info.value, InvalidToken)


@pytest.mark.parametrize("call_ref", ["", "a/b", "a b", "é", "x" * 65, None])
def test_sign_refuses_call_refs_that_are_not_one_url_segment(call_ref: Any) -> None:
    with pytest.raises(ValueError, match="call_ref"):
        sign_token(call_ref, SECRET)


def test_caller_supplied_call_ref_with_dots_round_trips() -> None:
    assert verify_token(sign_token("my.custom.ref", SECRET), SECRET) == "my.custom.ref"


def test_unicode_secret_works() -> None:
    assert verify_token(sign_token("vs-abc", "clé-secrète"), "clé-secrète") == "vs-abc"


def test_compare_digest_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    token = sign_token("vs-abc", SECRET)
    assert verify_token(token, SECRET) == "vs-abc"
    with pytest.raises(InvalidToken):
        verify_token(token[:-1] + _flip(token[-1]), SECRET)
    assert len(calls) == 2


@FAST
@given(st.text(max_size=200))
def test_random_text_never_verifies_and_raises_only_invalid_token(text: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(text, SECRET)


@FAST
@given(st.from_regex(r"[A-Za-z0-9._~-]{1,64}", fullmatch=True), st.text(min_size=1, max_size=50))
def test_round_trip_property(call_ref: str, secret: str) -> None:
    assert verify_token(sign_token(call_ref, secret), secret) == call_ref


# --- status URLs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "base",
    ["https://calls.example.com", "https://calls.example.com/", "https://calls.example.com///"],
)
def test_build_status_url(base: str) -> None:
    url = build_status_url(base, "vs-abc", SECRET)
    assert url == f"https://calls.example.com/calls/{sign_token('vs-abc', SECRET)}/status"


def test_build_status_url_keeps_path_prefix_and_port() -> None:
    url = build_status_url("http://127.0.0.1:8080/vonage-studio/", "vs-abc", SECRET)
    assert url.startswith("http://127.0.0.1:8080/vonage-studio/calls/vs-abc.")
    assert url.endswith("/status")
    token = url.split("/calls/")[1].split("/")[0]
    assert verify_token(token, SECRET) == "vs-abc"


@pytest.mark.parametrize(
    "base",
    ["", "calls.example.com", "ftp://x", "https://", "https://x/?a=1", "https://x/#f", "https://x?", None],
)
def test_build_status_url_refuses_bad_base(base: Any) -> None:
    with pytest.raises(ValueError, match="callback_base_url"):
        build_status_url(base, "vs-abc", SECRET)


def test_build_status_url_refuses_empty_secret() -> None:
    with pytest.raises(ValueError, match="callback_secret"):
        build_status_url("https://x", "vs-abc", "")


def test_elide_token() -> None:
    url = build_status_url("https://calls.example.com/prefix", "vs-abc", SECRET)
    elided = elide_token(url)
    assert elided == "https://calls.example.com/prefix/calls/***/status"
    assert "vs-abc" not in elided


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("/calls/vs-abc.SIG/status", "/calls/***/status"),
        ("POST /calls/vs-abc.SIG/status?x=1 HTTP/1.1", "POST /calls/***/status?x=1 HTTP/1.1"),
        ("https://h/calls/t/status/", "https://h/calls/***/status/"),
        ("https://h/healthz", "https://h/healthz"),
        ("https://h/calls/t/statusx", "https://h/calls/t/statusx"),
        ("", ""),
    ],
)
def test_elide_token_forms(given_url: str, expected: str) -> None:
    assert elide_token(given_url) == expected


def test_old_tokens_module_still_exports_every_name() -> None:
    """``callbacks.tokens`` was the home of these names until signing.py; it re-exports them
    for one release, as the very same objects."""
    from airflow_provider_vonage_studio import calls, signing
    from airflow_provider_vonage_studio.callbacks import tokens as old

    for name in old.__all__:
        home = calls if name in ("CALL_REF_PREFIX", "make_call_ref") else signing
        assert getattr(old, name) is getattr(home, name), name


@pytest.mark.parametrize(
    "path",
    [
        "/vonage-studio/calls/{t}/status",
        "/vonage-studio/calls/{t}/ended",
        "/vonage-studio/messages/{t}/status",
    ],
)
def test_every_route_that_carries_a_token_is_elided(path: str) -> None:
    token = sign_token("vs-abc", SECRET)
    elided = elide_token("https://example.test" + path.format(t=token) + "?x=1")
    assert token not in elided and "/***/" in elided and elided.endswith("?x=1")


def test_the_receiver_middleware_elides_a_message_token_before_the_access_log() -> None:
    import asyncio

    from airflow_provider_vonage_studio.callbacks.middleware import _ElideTokenInPath

    token = sign_token("vs-msg", SECRET)
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(scope["path"])

    async def send(message: Any) -> None:
        return None

    scope: dict[str, Any] = {"type": "http", "path": f"/messages/{token}/status", "raw_path": b""}
    asyncio.run(_ElideTokenInPath(app)(scope, None, send))  # type: ignore[arg-type]
    assert seen == ["/messages/***/status"] and token not in scope["path"]
