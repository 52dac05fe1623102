"""The two-phase ledger over real HTTP and real process kills: ``queued`` before the slot wait,
``sending`` only immediately before the request.

A batch's dialing process is killed with SIGKILL, as a worker crash would, at the two moments
that matter: while it waits for its pacing slot (nothing was sent: the next try must dial
that recipient, exactly once) and while its request is held open by the emulator (the call
was placed: the next try must report it unknown and never send it again). Both on SQLite and
on PostgreSQL; the emulator is strict (1 call/s, no tolerance) and records every request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_vonage_studio.batch import BatchDialer, plan_recipients
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.store import CallStore, pacing_slots_table
from airflow_provider_vonage_studio.testing.emulator import MAKE_CALL_PATH, Emulator
from tests.store_fixtures import postgres_schema_url, require_postgres

ROOT = Path(__file__).resolve().parents[2]
KEY = "ledger-phases-key-7c6b5a49"
AGENT = "agent-1"
NUMBERS = ["447700900201", "447700900202", "447700900203"]


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    with postgres_schema_url(require_postgres()) as url:
        yield url


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=1) as running:
        monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", running.connection_json())
        yield running


def _requests_by_to(emulator: Emulator) -> Counter[str]:
    return Counter(
        r.body["to"] for r in emulator.requests if r.path == MAKE_CALL_PATH and isinstance(r.body, dict)
    )


def _start_try(tmp_path: Path, store_url: str, number: int) -> tuple[subprocess.Popen[bytes], Path]:
    """One try of the batch task: a process running the batch loop, paced through the store."""
    (tmp_path / "recipients.json").write_text(json.dumps(NUMBERS))
    log = tmp_path / f"try-{number}.log"
    env = {**os.environ, "AIRFLOW__VONAGE_STUDIO__STORE_URL": store_url}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.dial_workers",
                "batch",
                "--pace",
                "--recipients",
                str(tmp_path / "recipients.json"),
                "--store-url",
                store_url,
                "--results",
                str(tmp_path / f"results-{number}.json"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def _wait_until(predicate: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 90
    while not predicate():
        assert proc.poll() is None, f"the try ended before {what}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log.read_text()[-3000:]}"
        time.sleep(0.01)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _states(store: CallStore, dialer: BatchDialer) -> dict[str, str]:
    plan = plan_recipients(NUMBERS)
    refs = {dialer.call_ref_for(r): NUMBERS[r.index] for r in plan}
    return {refs[ref]: record.state.value for ref, record in store.get_calls(list(refs)).items()}


def _dialer(store: CallStore) -> BatchDialer:
    """The identity the worker processes dial under (tests.integration.dial_workers' defaults)."""
    return BatchDialer(
        VonageStudioHook(store=store), AGENT, dag_id="fault_dag", run_id="manual__fault", task_id="dial"
    )


def test_sigkill_in_the_slot_wait_leaves_queued_and_the_next_try_dials_once(
    tmp_path: Path, shared_store_url: str, emulator: Emulator
) -> None:
    store = CallStore(shared_store_url)
    hook = VonageStudioHook(store=store)
    key = hook.pacing_key(AGENT)
    try:
        # Another dialer holds the agent's slots for the next minute: the try must wait for its slot.
        store.reserve_slot(key, 60.0)
        first, log = _start_try(tmp_path, shared_store_url, 1)
        dialer = _dialer(store)
        _wait_until(lambda: _states(store, dialer).get(NUMBERS[0]) == "queued", first, log, "the queued row")
        time.sleep(0.5)  # well inside the slot wait
        _kill(first)
        assert _requests_by_to(emulator) == Counter()  # nothing was sent
        assert _states(store, dialer) == {NUMBERS[0]: "queued"}  # not "unknown": it never left
        # The blocking dialer is gone; the slots are free again.
        with store._engine.begin() as conn:
            conn.execute(sa.update(pacing_slots_table).values(next_at=0.0))

        second, log = _start_try(tmp_path, shared_store_url, 2)
        assert second.wait(120) == 0, log.read_text()[-3000:]
        results = json.loads((tmp_path / "results-2.json").read_text())
        assert [r["result"] for r in results] == ["placed"] * len(NUMBERS)
        assert _requests_by_to(emulator) == Counter(dict.fromkeys(NUMBERS, 1))  # each exactly once
        assert [r.status for r in emulator.requests] == [200] * len(NUMBERS)  # and never a 429
        assert _states(store, dialer) == dict.fromkeys(NUMBERS, "placed")
    finally:
        store.dispose()


def test_sigkill_during_the_request_leaves_unknown_and_is_never_resent(
    tmp_path: Path, shared_store_url: str, emulator: Emulator
) -> None:
    store = CallStore(shared_store_url)
    try:
        # The emulator places the second call, then holds its answer back for 30 s.
        emulator.inject("timeout", to=NUMBERS[1], delay=30.0)
        first, log = _start_try(tmp_path, shared_store_url, 1)
        _wait_until(lambda: _requests_by_to(emulator)[NUMBERS[1]] == 1, first, log, "the held request")
        time.sleep(0.2)
        _kill(first)
        dialer = _dialer(store)
        assert _states(store, dialer) == {NUMBERS[0]: "placed", NUMBERS[1]: "sending"}

        second, log = _start_try(tmp_path, shared_store_url, 2)
        assert second.wait(120) == 0, log.read_text()[-3000:]
        results: list[dict[str, Any]] = json.loads((tmp_path / "results-2.json").read_text())
        assert [r["result"] for r in results] == ["placed", "unknown", "placed"]
        # The held call reached the API once and was never sent again; the others once each.
        assert _requests_by_to(emulator) == Counter(dict.fromkeys(NUMBERS, 1))
        assert [c.to for c in emulator.calls] == NUMBERS
        assert _states(store, dialer) == {NUMBERS[0]: "placed", NUMBERS[1]: "unknown", NUMBERS[2]: "placed"}
    finally:
        store.dispose()
