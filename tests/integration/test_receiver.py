"""The callback receiver: answers, refusals, bad input, logs, and 5,000 concurrent callbacks."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from airflow_provider_vonage_studio.callbacks.app import (
    MAX_BODY_BYTES,
    create_app,
    destinations_match,
)
from airflow_provider_vonage_studio.callbacks.tokens import make_call_ref, sign_token
from airflow_provider_vonage_studio.store import CallStore, calls_table
from tests.conftest import TEST_SECRET, conn_json

NUMBER = "447700900123"
OTHER_NUMBER = "12125550100"
AGENT = "agent-1"


def body(**overrides: Any) -> dict[str, Any]:
    """A callback body as the seed shows it."""
    base = {
        "agent_id": AGENT,
        "to": NUMBER,
        "conversation_uuid": "CON-4ee2e523-4ee13-4e98-ae94-e6e3e1ab9ac6",
        "status": "busy",
        "timestamp": "2022-05-31T06:40:45.475Z",
    }
    base.update(overrides)
    return base


def place(store: CallStore, key: str, destination: str = NUMBER) -> str:
    """Write a placed call to the store and return its call_ref."""
    call_ref = make_call_ref("dag", "run", "task", key=key)
    store.begin_call(
        call_ref, agent_id=AGENT, destination=destination, dag_id="dag", run_id="run", task_id="task"
    )
    store.mark_placed(call_ref, str(uuid.uuid4()), datetime.now(timezone.utc))
    return call_ref


def url(call_ref: str, secret: str = TEST_SECRET) -> str:
    return f"/calls/{sign_token(call_ref, secret)}/status"


def nothing_stored(store: CallStore, call_ref: str) -> bool:
    record = store.get_call(call_ref)
    return (record is None or record.status is None) and store.status_history(call_ref) == []


@pytest.fixture
def client(store: CallStore) -> Iterator[TestClient]:
    app = create_app(store=store, secret_provider=lambda: [TEST_SECRET], outcome_view="off")
    with TestClient(app) as test_client:
        yield test_client


# ------------------------------------------------------------------------------ answers


def test_first_callback_recorded_same_again_duplicate_other_status_history(
    client: TestClient, store: CallStore
) -> None:
    call_ref = place(store, "a")

    first = client.post(url(call_ref), json=body())
    assert (first.status_code, first.json()) == (200, {"result": "recorded"})
    again = client.post(url(call_ref), json=body())
    assert (again.status_code, again.json()) == (200, {"result": "duplicate"})
    later = client.post(url(call_ref), json=body(status="timeout"))
    assert (later.status_code, later.json()) == (200, {"result": "history"})

    record = store.get_call(call_ref)
    assert record is not None
    assert record.status == "busy"  # the first terminal status wins
    assert record.conversation_uuid == body()["conversation_uuid"]
    assert record.status_at == datetime(2022, 5, 31, 6, 40, 45, 475000, tzinfo=timezone.utc)
    assert record.callback_payload == body()
    assert [event["status"] for event in store.status_history(call_ref)] == ["busy", "timeout"]


def test_extra_fields_are_ignored_and_not_stored(client: TestClient, store: CallStore) -> None:
    call_ref = place(store, "extra")
    resp = client.post(url(call_ref), json=body(surprise={"nested": [1, 2]}, session_id="abc"))
    assert resp.status_code == 200
    record = store.get_call(call_ref)
    assert record is not None and record.callback_payload == body()


@pytest.mark.parametrize(
    ("destination", "callback_to"),
    [
        (NUMBER, "+44 7700 900123"),
        (NUMBER, "0044-7700-900123"),
        ("sip:alice@pbx.example.com", "sip:alice@PBX.example.com:5060"),
        ("sip:alice@pbx.example.com", "alice@pbx.example.com"),
    ],
)
def test_to_matching_forgives_formatting(
    client: TestClient, store: CallStore, destination: str, callback_to: str
) -> None:
    call_ref = place(store, f"fmt-{destination}-{callback_to}", destination=destination)
    resp = client.post(url(call_ref), json=body(to=callback_to))
    assert resp.status_code == 200, resp.text


def test_destinations_match_rules() -> None:
    assert destinations_match("447700900123", "447700900123")
    assert not destinations_match("447700900124", "447700900123")
    assert not destinations_match("", "447700900123")
    assert not destinations_match("sip:bob@pbx.example.com", "sip:alice@pbx.example.com")
    assert not destinations_match("447700900123", "sip:alice@pbx.example.com")


# ------------------------------------------------------------------------------ refusals


def test_token_for_another_secret_forged_or_truncated_is_refused(
    client: TestClient, store: CallStore
) -> None:
    call_ref = place(store, "victim")
    good = sign_token(call_ref, TEST_SECRET)
    tokens = [
        sign_token(call_ref, "another-secret-entirely"),  # signed with another secret
        f"{call_ref}.{'A' * 43}",  # forged signature
        good[:-1],  # truncated by one character
        good[: len(call_ref) + 10],  # truncated signature
        call_ref,  # no signature at all
        good + "A",  # one character too many
        good.swapcase(),
        "x",
    ]
    for token in tokens:
        resp = client.post(f"/calls/{quote(token, safe='')}/status", json=body())
        assert resp.status_code == 401, (token, resp.text)
        assert resp.json() == {"detail": "invalid callback token"}
    assert nothing_stored(store, call_ref)


def test_valid_token_of_a_call_not_in_the_store_is_404(client: TestClient, store: CallStore) -> None:
    stranger = make_call_ref("dag", "run", "task", key="never-placed")
    resp = client.post(url(stranger), json=body())
    assert resp.status_code == 404
    assert store.get_call(stranger) is None
    assert store.status_history(stranger) == []


def test_token_of_call_a_with_the_number_of_call_b_is_409(client: TestClient, store: CallStore) -> None:
    call_a = place(store, "a", destination=NUMBER)
    call_b = place(store, "b", destination=OTHER_NUMBER)
    resp = client.post(url(call_a), json=body(to=OTHER_NUMBER))
    assert resp.status_code == 409
    assert "to" in resp.json()["detail"]
    assert nothing_stored(store, call_a)
    assert nothing_stored(store, call_b)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (body(status="answered"), "status"),
        (body(status="BUSY"), "status"),
        (body(timestamp="yesterday"), "timestamp"),
        (body(timestamp="0001-01-01T00:00:00+05:00"), "timestamp"),
        (body(to=447700900123), "to"),
        (body(conversation_uuid="CON\x00-1"), "conversation_uuid"),
        (body(agent_id="a\nforged log line"), "agent_id"),
        (body(conversation_uuid="c" * 256), "conversation_uuid"),
        ({k: v for k, v in body().items() if k != "status"}, "status"),
        ([body()], "body"),
        ("busy", "body"),
        (None, "body"),
    ],
)
def test_malformed_body_is_422_naming_the_field(
    client: TestClient, store: CallStore, payload: Any, field: str
) -> None:
    call_ref = place(store, "malformed")
    resp = client.post(url(call_ref), content=json.dumps(payload).encode())
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert detail.startswith(field) or f"; {field}" in detail, detail
    assert NUMBER not in detail
    assert nothing_stored(store, call_ref)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe{}", b'{"to": "\\ud800"}', b"[" * 5000 + b"]" * 5000])
def test_unparseable_body_is_422(client: TestClient, store: CallStore, raw: bytes) -> None:
    call_ref = place(store, "raw")
    resp = client.post(url(call_ref), content=raw)
    assert resp.status_code == 422, resp.text
    assert nothing_stored(store, call_ref)


def test_body_over_16_kib_is_413_declared_or_streamed(client: TestClient, store: CallStore) -> None:
    call_ref = place(store, "big")
    padded = json.dumps(body(padding="x" * MAX_BODY_BYTES)).encode()
    declared = client.post(url(call_ref), content=padded)
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for start in range(0, len(padded), 1000):
            yield padded[start : start + 1000]

    streamed = client.post(url(call_ref), content=chunks())
    assert streamed.status_code == 413
    assert nothing_stored(store, call_ref)

    # A lying Content-Length cannot smuggle a larger body past the cap either.
    small_claim = client.post(url(call_ref), content=padded, headers={"Content-Length": "100"})
    assert small_claim.status_code in (400, 413, 422)
    assert nothing_stored(store, call_ref)

    # Exactly at the limit is fine.
    exact = json.dumps(body()).encode()
    exact = exact[:-1] + b" " * (MAX_BODY_BYTES - len(exact)) + b"}"
    assert len(exact) == MAX_BODY_BYTES
    assert client.post(url(call_ref), content=exact).status_code == 200


def test_no_secret_configured_is_503_not_401(store: CallStore) -> None:
    call_ref = place(store, "nosecret")
    for provider in (lambda: [], lambda: ["", None]):
        app = create_app(store=store, secret_provider=provider, outcome_view="off")  # type: ignore[arg-type]
        with TestClient(app) as client:
            resp = client.post(url(call_ref), json=body())
            assert resp.status_code == 503
            assert "callback_secret" in resp.json()["detail"]
            assert client.get("/health").status_code == 503
    assert nothing_stored(store, call_ref)


def test_secret_lookup_failure_is_503_and_not_retried_for_every_callback(store: CallStore) -> None:
    lookups = []

    def broken() -> list[str]:
        lookups.append(1)
        raise RuntimeError("secrets backend down")

    call_ref = place(store, "broken")
    with TestClient(create_app(store=store, secret_provider=broken, outcome_view="off")) as client:
        assert client.post(url(call_ref), json=body()).status_code == 503
        assert client.post(url(call_ref), json=body()).status_code == 503
    assert len(lookups) == 1
    assert nothing_stored(store, call_ref)


def test_secrets_are_cached_then_reread(store: CallStore) -> None:
    current = ["first-secret-000000"]
    call_ref = place(store, "rotate")
    cached = create_app(store=store, secret_provider=lambda: list(current), outcome_view="off")
    fresh = create_app(
        store=store, secret_provider=lambda: list(current), outcome_view="off", secret_cache_seconds=0
    )
    with TestClient(cached) as cached_client, TestClient(fresh) as fresh_client:
        assert cached_client.post(url(call_ref, "first-secret-000000"), json=body()).status_code == 200
        current[:] = ["second-secret-11111"]
        # Within the cache period the old secret still verifies; a zero period re-reads at once.
        assert cached_client.post(url(call_ref, "first-secret-000000"), json=body()).status_code == 200
        assert fresh_client.post(url(call_ref, "first-secret-000000"), json=body()).status_code == 401
        assert fresh_client.post(url(call_ref, "second-secret-11111"), json=body()).status_code == 200


class _BrokenStore:
    def get_calls(self, refs: Any) -> Any:
        raise sa.exc.OperationalError("SELECT", {"to": NUMBER}, Exception("database is down"))

    def recent_calls(self, limit: int = 500) -> Any:
        return self.get_calls([])


def test_store_failure_is_503_and_does_not_log_the_payload(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(store=_BrokenStore(), secret_provider=lambda: [TEST_SECRET])  # type: ignore[arg-type]
    with TestClient(app) as client, caplog.at_level(logging.DEBUG):
        assert client.post(url("vs-down"), json=body()).status_code == 503
        health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "error"
    assert NUMBER not in caplog.text


def test_health_ok(client: TestClient) -> None:
    resp = client.get("/health")
    assert (resp.status_code, resp.json()) == (200, {"status": "ok"})


def test_wrong_method_and_unknown_path_are_4xx(client: TestClient, store: CallStore) -> None:
    call_ref = place(store, "method")
    assert client.get(url(call_ref)).status_code == 405
    assert client.put(url(call_ref), json=body()).status_code == 405
    assert (
        client.post(f"/calls/{sign_token(call_ref, TEST_SECRET)}/status/extra", json=body()).status_code
        == 404
    )
    assert client.get("/docs").status_code == 404  # no API docs advertised on a public receiver
    assert nothing_stored(store, call_ref)


# ------------------------------------------------------------------ secrets from the connection


def test_secret_read_from_the_connection_with_rotation(
    monkeypatch: pytest.MonkeyPatch, store: CallStore
) -> None:
    # No API key: a receiver-only connection needs nothing but the secrets.
    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_RECEIVER",
        json.dumps(
            {
                "conn_type": "vonage_studio",
                "extra": {
                    "callback_secret": "new-secret-0123456789",
                    "previous_callback_secrets": "old-secret-987654",
                },
            }
        ),
    )
    new_ref, old_ref = place(store, "new"), place(store, "old")
    with TestClient(create_app(store=store, conn_id="vonage_studio_receiver", outcome_view="off")) as client:
        assert client.post(url(new_ref, "new-secret-0123456789"), json=body()).status_code == 200
        assert client.post(url(old_ref, "old-secret-987654"), json=body()).status_code == 200
        assert client.post(url(old_ref, TEST_SECRET), json=body()).status_code == 401


def test_missing_connection_is_503(store: CallStore) -> None:
    with TestClient(create_app(store=store, conn_id="no_such_connection_here", outcome_view="off")) as client:
        resp = client.post(url(place(store, "noconn")), json=body())
    assert resp.status_code == 503


# ------------------------------------------------------------------------------------- logs


def test_logs_never_show_secret_token_or_number(
    client: TestClient, store: CallStore, caplog: pytest.LogCaptureFixture
) -> None:
    call_ref = place(store, "logs")
    token = sign_token(call_ref, TEST_SECRET)
    forged = f"{call_ref}.{'B' * 43}"
    with caplog.at_level(logging.DEBUG):
        client.post(url(call_ref), json=body())  # recorded
        client.post(url(call_ref), json=body(status="teapot"))  # 422
        client.post(url(call_ref), json=body(to=OTHER_NUMBER))  # 409
        client.post(f"/calls/{forged}/status", json=body())  # 401
        client.post(url(call_ref), content=b"x" * (MAX_BODY_BYTES + 1))  # 413
        client.post(url(make_call_ref("d", "r", "t", key="none")), json=body())  # 404
    text = caplog.text
    assert call_ref in text  # the log does say which call
    for secret_thing in (TEST_SECRET, token, token.rpartition(".")[2], forged.rpartition(".")[2]):
        assert secret_thing not in text
    assert NUMBER not in text and OTHER_NUMBER not in text
    assert "+44•••••0123" in text


# ---------------------------------------------------------------------- property-based input


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_field_values = st.one_of(
    _json_values,
    st.sampled_from(["busy", "timeout", "failed", "rejected", "cancelled", NUMBER, "+44 7700 900123"]),
    st.text(max_size=300),
)
_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            name: _field_values
            for name in ("agent_id", "to", "conversation_uuid", "status", "timestamp", "other")
        },
    ).map(lambda d: json.dumps(d).encode()),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
)
_headers = st.dictionaries(
    st.sampled_from(["Content-Type", "Content-Encoding", "Transfer-Encoding", "Expect", "X-Forwarded-For"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    max_size=3,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=_bodies, headers=_headers, token_kind=st.sampled_from(["good", "forged", "random"]), junk=st.text()
)
def test_random_input_is_never_5xx_and_refusals_store_nothing(
    client: TestClient, store: CallStore, raw: bytes, headers: dict[str, str], token_kind: str, junk: str
) -> None:
    call_ref = make_call_ref("dag", "run", "task", key="hypothesis")
    if store.get_call(call_ref) is None:
        place(store, "hypothesis")
    before = store.status_history(call_ref)
    token = {
        "good": sign_token(call_ref, TEST_SECRET),
        "forged": f"{call_ref}.{'C' * 43}",
        "random": junk or "x",
    }[token_kind]
    try:
        resp = client.post(f"/calls/{quote(token, safe='')}/status", content=raw, headers=headers)
    except Exception:  # a header the HTTP client itself refuses to send is not our concern
        reject()
    assert 200 <= resp.status_code < 500, (resp.status_code, resp.text)
    if resp.status_code != 200:
        assert store.status_history(call_ref) == before


# ------------------------------------------------------------------ 5,000 callbacks under uvicorn


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _seed_placed_calls(url_: str, refs: list[str]) -> None:
    """Insert placed calls in one statement (5,000 begin_call transactions would be slow on PostgreSQL)."""
    CallStore(url_).get_call("schema")  # creates the tables
    now = datetime.now(timezone.utc)
    engine = sa.create_engine(url_, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            calls_table.insert(),
            [
                {
                    "call_ref": ref,
                    "agent_id": AGENT,
                    "destination": NUMBER,
                    "state": "placed",
                    "map_index": i,
                    "session_start_time": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for i, ref in enumerate(refs)
            ],
        )
    engine.dispose()


@pytest.fixture
def uvicorn_receiver(store_url: str, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The receiver under uvicorn in a subprocess, configured from the environment like a deployment."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__VONAGE_STUDIO__STORE_URL=store_url,
        AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT=conn_json(callback_secret=TEST_SECRET),
    )
    log_path = tmp_path / "receiver.log"
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "airflow_provider_vonage_studio.callbacks.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            yield port, log_path
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_5000_concurrent_callbacks_for_distinct_calls_give_5000_rows(
    store_url: str, uvicorn_receiver: tuple[int, Path]
) -> None:
    port, log_path = uvicorn_receiver
    refs = [make_call_ref("load", "run", "call", map_index=i) for i in range(5000)]
    _seed_placed_calls(store_url, refs)
    tokens = [sign_token(ref, TEST_SECRET) for ref in refs]
    statuses: list[int] = []
    lock = threading.Lock()
    next_i = [0]

    def client_thread() -> None:
        with requests.Session() as session:
            session.trust_env = False
            mine = []
            while True:
                with lock:
                    i = next_i[0]
                    next_i[0] += 1
                if i >= len(refs):
                    break
                resp = session.post(
                    f"http://127.0.0.1:{port}/calls/{tokens[i]}/status",
                    json=body(conversation_uuid=f"CON-{i}", status=("busy", "timeout", "failed")[i % 3]),
                    timeout=60,
                )
                mine.append(resp.status_code)
            with lock:
                statuses.extend(mine)

    threads = [threading.Thread(target=client_thread) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    assert statuses.count(200) == 5000, {code: statuses.count(code) for code in set(statuses)}
    checker = CallStore(store_url)
    try:
        records = checker.get_calls(refs)
        assert sum(1 for r in records.values() if r.status) == 5000
        assert all(records[ref].status == ("busy", "timeout", "failed")[i % 3] for i, ref in enumerate(refs))
    finally:
        checker.dispose()

    # Whatever the server printed (its log lines, an access log if one is configured: see
    # test_cli for uvicorn's own), neither the secret nor any token is in it.
    logged = log_path.read_text(errors="replace")
    assert "(recorded)" in logged
    assert TEST_SECRET not in logged
    assert not any(token.rpartition(".")[2] in logged for token in tokens[:200])


# ---------------------------------------------------- placed calls only, bounded age and history


def _legacy_url(call_ref: str, secret: str = TEST_SECRET) -> str:
    """A status URL as signed before tokens carried their issue time (``<call_ref>.<sig>``)."""
    import base64
    import hashlib
    import hmac

    digest = hmac.new(secret.encode(), call_ref.encode(), hashlib.sha256).digest()
    return f"/calls/{call_ref}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}/status"


def _place_started(store: CallStore, key: str, started: datetime) -> str:
    call_ref = make_call_ref("dag", "run", "task", key=key)
    store.begin_call(call_ref, agent_id=AGENT, destination=NUMBER)
    store.mark_placed(call_ref, str(uuid.uuid4()), started)
    return call_ref


def test_token_issued_200_days_ago_is_410(client: TestClient, store: CallStore) -> None:
    call_ref = place(store, "old-token")
    old = sign_token(call_ref, TEST_SECRET, issued_at=datetime.now(timezone.utc) - timedelta(days=200))
    resp = client.post(f"/calls/{old}/status", json=body())
    assert resp.status_code == 410, resp.text
    assert "too late" in resp.json()["detail"]
    assert nothing_stored(store, call_ref)
    # The same call with a fresh token is fine: the token's age alone refused it.
    assert client.post(url(call_ref), json=body()).status_code == 200


def test_rewriting_the_issue_time_of_an_old_token_is_401(client: TestClient, store: CallStore) -> None:
    call_ref = place(store, "rewritten")
    old = sign_token(call_ref, TEST_SECRET, issued_at=datetime.now(timezone.utc) - timedelta(days=200))
    fresh_stamp = sign_token(call_ref, TEST_SECRET).rpartition(".")[2]
    forged = f"{old.rpartition('.')[0]}.{fresh_stamp}"
    assert client.post(f"/calls/{forged}/status", json=body()).status_code == 401
    assert nothing_stored(store, call_ref)


def test_callback_for_a_call_started_7_hours_ago_is_410(client: TestClient, store: CallStore) -> None:
    call_ref = _place_started(store, "stale-call", datetime.now(timezone.utc) - timedelta(hours=7))
    resp = client.post(url(call_ref), json=body())  # a token issued just now does not make it young
    assert resp.status_code == 410, resp.text
    assert nothing_stored(store, call_ref)


def test_legacy_token_is_accepted_and_aged_from_the_call_start(client: TestClient, store: CallStore) -> None:
    recent = _place_started(store, "legacy-recent", datetime.now(timezone.utc) - timedelta(minutes=5))
    resp = client.post(_legacy_url(recent), json=body())
    assert (resp.status_code, resp.json()) == (200, {"result": "recorded"})
    ancient = _place_started(store, "legacy-ancient", datetime.now(timezone.utc) - timedelta(days=200))
    assert client.post(_legacy_url(ancient), json=body()).status_code == 410
    assert nothing_stored(store, ancient)


@pytest.mark.parametrize("state", ["not sent", "rejected", "unknown"])
def test_callback_for_a_call_that_was_not_placed_is_409(
    client: TestClient, store: CallStore, state: str
) -> None:
    call_ref = make_call_ref("dag", "run", "task", key=f"not-placed-{state}")
    store.begin_call(call_ref, agent_id=AGENT, destination=NUMBER)
    if state == "rejected":
        store.mark_rejected(call_ref, 400, "Bad destination number format")
    elif state == "unknown":
        store.mark_unknown(call_ref, "read timeout")
    before = store.get_call(call_ref)
    resp = client.post(url(call_ref), json=body())
    assert resp.status_code == 409, resp.text
    assert "not placed" in resp.json()["detail"]
    assert nothing_stored(store, call_ref)
    assert store.get_call(call_ref) == before  # state, error and updated_at untouched


def test_history_flood_with_varying_conversation_uuid_is_capped(client: TestClient, store: CallStore) -> None:
    from airflow_provider_vonage_studio.store import MAX_STATUS_HISTORY

    call_ref = place(store, "flood")
    answers = [
        client.post(url(call_ref), json=body(conversation_uuid=f"CON-{i}")).status_code
        for i in range(MAX_STATUS_HISTORY + 10)
    ]
    assert answers == [200] * MAX_STATUS_HISTORY + [409] * 10
    assert len(store.status_history(call_ref)) == MAX_STATUS_HISTORY
    resp = client.post(url(call_ref), json=body(conversation_uuid="CON-more", status="failed"))
    assert resp.status_code == 409 and f"{MAX_STATUS_HISTORY} statuses" in resp.json()["detail"]
    # AI Studio repeating a callback it already delivered still gets its 200.
    assert client.post(url(call_ref), json=body(conversation_uuid="CON-0")).json() == {"result": "duplicate"}
    assert store.get_call(call_ref).status == "busy"  # type: ignore[union-attr]


def test_callback_max_age_is_configurable(store: CallStore, monkeypatch: pytest.MonkeyPatch) -> None:
    call_ref = _place_started(store, "configured", datetime.now(timezone.utc) - timedelta(minutes=2))
    short = create_app(
        store=store, secret_provider=lambda: [TEST_SECRET], outcome_view="off", callback_max_age=60
    )
    with TestClient(short) as client:
        assert client.post(url(call_ref), json=body()).status_code == 410
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__CALLBACK_MAX_AGE", "90")
    configured = create_app(store=store, secret_provider=lambda: [TEST_SECRET], outcome_view="off")
    assert configured.state.callback_max_age == timedelta(seconds=90)
    with TestClient(configured) as client:
        assert client.post(url(call_ref), json=body()).status_code == 410
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__CALLBACK_MAX_AGE", "600")
    roomy = create_app(store=store, secret_provider=lambda: [TEST_SECRET], outcome_view="off")
    with TestClient(roomy) as client:
        assert client.post(url(call_ref), json=body()).status_code == 200
    monkeypatch.delenv("AIRFLOW__VONAGE_STUDIO__CALLBACK_MAX_AGE")
    assert create_app(store=store, outcome_view="off").state.callback_max_age == timedelta(hours=6)


@pytest.mark.parametrize(
    "value",
    [True, False, float("nan"), float("inf"), -1, 0, "3600", [3600], 8 * 86400, timedelta(seconds=-5)],
)
def test_bad_callback_max_age_argument_is_refused(store: CallStore, value: Any) -> None:
    from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

    with pytest.raises(VonageStudioConfigError, match="callback_max_age"):
        create_app(store=store, outcome_view="off", callback_max_age=value)


@pytest.mark.parametrize("raw", ["true", "nan", "inf", "-inf", "-5", "0", "six hours", "604801"])
def test_bad_callback_max_age_option_is_refused(
    store: CallStore, monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__CALLBACK_MAX_AGE", raw)
    with pytest.raises(VonageStudioConfigError, match=r"\[vonage_studio\] callback_max_age"):
        create_app(store=store, outcome_view="off")


@pytest.mark.parametrize("char", ["\x85", "\x9b", "\u2028", "\u2029", "\u202a", "\u202e", "\u2066", "\u2069"])
@pytest.mark.parametrize("field", ["agent_id", "to", "conversation_uuid", "timestamp"])
def test_unicode_line_breaks_and_bidi_controls_are_422(
    client: TestClient, store: CallStore, char: str, field: str
) -> None:
    call_ref = place(store, "unicode")
    value = body()[field]
    resp = client.post(url(call_ref), json=body(**{field: value[:3] + char + value[3:]}))
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"].startswith(field) and "control characters" in resp.json()["detail"]
    assert nothing_stored(store, call_ref)


def test_ordinary_unicode_is_still_accepted(client: TestClient, store: CallStore) -> None:
    call_ref = place(store, "unicode-ok")
    resp = client.post(url(call_ref), json=body(conversation_uuid="CON-é-日本-\u00a0-\u200b"))
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_schema_or_docs_are_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_client_hanging_up_mid_body_is_one_log_line(
    store_url: str, uvicorn_receiver: tuple[int, Path]
) -> None:
    port, log_path = uvicorn_receiver
    store = CallStore(store_url)
    try:
        call_ref = place(store, "hang-up")
    finally:
        store.dispose()
    partial = json.dumps(body()).encode()[:40]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /calls/{sign_token(call_ref, TEST_SECRET)}/status HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(partial) + 500}\r\n\r\n"
            ).encode()
            + partial
        )
    marker = "the client hung up before sending the whole body"
    deadline = time.monotonic() + 30
    while marker not in log_path.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.1)
    # The receiver carries on serving.
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    logged = log_path.read_text(errors="replace")
    assert logged.count(marker) == 1, logged[-3000:]
    line = next(line for line in logged.splitlines() if marker in line)
    assert call_ref in line
    assert "Traceback" not in logged and "Exception in ASGI application" not in logged, logged[-3000:]
    checker = CallStore(store_url)
    try:
        assert nothing_stored(checker, call_ref)
    finally:
        checker.dispose()


def test_declared_default_of_callback_max_age_is_the_receivers() -> None:
    from airflow_provider_vonage_studio import get_provider_info
    from airflow_provider_vonage_studio.callbacks.app import DEFAULT_CALLBACK_MAX_AGE

    option = get_provider_info()["config"]["vonage_studio"]["options"]["callback_max_age"]
    assert float(option["default"]) == DEFAULT_CALLBACK_MAX_AGE.total_seconds()
    assert option["type"] == "float"


def test_names_of_the_receiver_stay_importable_from_callbacks_app() -> None:
    # The receiver lives in several modules of callbacks/; what app.py defined before the split
    # is the same object from its old path, for one release.
    from airflow_provider_vonage_studio.callbacks import (
        app,
        body,
        middleware,
        outcomes,
        recorder,
        secret_cache,
        settings,
        status,
    )

    moved = {
        body: ["MAX_BODY_BYTES", "StatusCallback", "parse_callback_time", "destinations_match", "_sip_key"],
        recorder: ["_Recorder", "_record_batch", "_answer"],
        secret_cache: ["SECRET_CACHE_SECONDS", "connection_secrets", "_SecretCache", "_mask_secrets"],
        middleware: ["_ElideTokenInPath"],
        outcomes: ["_add_outcome_routes", "_airflow_guard"],
        settings: [
            "DEFAULT_CALLBACK_MAX_AGE",
            "DEFAULT_CONN_ID",
            "MAX_CALLBACK_MAX_AGE",
            "OutcomeViewMode",
            "resolve_callback_max_age",
        ],
        status: ["_verify", "_fingerprint", "_read_capped", "_BodyTooLarge"],
    }
    for module, names in moved.items():
        for name in names:
            assert getattr(app, name) is getattr(module, name), f"{module.__name__}.{name}"
    # Every room logs under the one name deployments configure.
    assert {m.log.name for m in (app, recorder, secret_cache, outcomes, status)} == {app.__name__}
