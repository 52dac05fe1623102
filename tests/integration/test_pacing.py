"""Shared pacing over real HTTP: several worker processes, one agent, one limit, no 429.

Each worker process runs ``MakeCallOperator.execute`` for its mapped task instances, as a
worker running mapped tasks does; the processes share the call store (PostgreSQL, the
several-machines deployment, and SQLite, the one-machine default) and dial one agent of an
emulator that is strict at 1 call/s. The emulator is the judge: it answers 429 to any call
that arrives less than 1.0 s after the previous accepted one for that agent (no tolerance).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import MAKE_CALL_PATH, Emulator
from tests.integration.dial_workers import FakeTI
from tests.store_fixtures import postgres_schema_url, require_postgres

ROOT = Path(__file__).resolve().parents[2]
KEY = "pacing-key-3e2d1c0b"
AGENT = "agent-1"
PROCESSES = 4
PER_PROCESS = 4  # 16 calls at 1/s: about 15 s per database


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    with postgres_schema_url(require_postgres()) as url:
        yield url


def _start_workers(tmp_path: Path, env: dict[str, str]) -> list[tuple[subprocess.Popen[bytes], Path, Path]]:
    workers = []
    for process in range(PROCESSES):
        map_indexes = [process * PER_PROCESS + i for i in range(PER_PROCESS)]
        log = tmp_path / f"worker-{process}.log"
        command = [
            sys.executable,
            "-m",
            "tests.integration.dial_workers",
            "mapped",
            "--map-indexes",
            *map(str, map_indexes),
            "--to",
            *(f"447700900{m:03d}" for m in map_indexes),
            "--ready-file",
            str(tmp_path / f"ready-{process}"),
            "--go-file",
            str(tmp_path / "go"),
            "--results",
            str(tmp_path / f"results-{process}.json"),
        ]
        with log.open("w") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        workers.append((proc, log, tmp_path / f"ready-{process}"))
    return workers


def test_four_worker_processes_share_one_agents_limit(tmp_path: Path, shared_store_url: str) -> None:
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=1) as emulator:
        env = {
            **os.environ,
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(),  # calls_per_second=1
            "AIRFLOW__VONAGE_STUDIO__STORE_URL": shared_store_url,
        }
        workers = _start_workers(tmp_path, env)
        try:
            # Start dialing together, once every process has imported everything.
            deadline = time.monotonic() + 90
            while not all(ready.exists() for _, _, ready in workers):
                failed = [log.read_text()[-2000:] for proc, log, _ in workers if proc.poll() not in (None, 0)]
                assert not failed, failed
                assert time.monotonic() < deadline, "the worker processes did not start"
                time.sleep(0.05)
            (tmp_path / "go").touch()
            for proc, log, _ in workers:
                assert proc.wait(120) == 0, log.read_text()[-3000:]
        finally:
            for proc, _, _ in workers:
                if proc.poll() is None:
                    proc.kill()
        made = [r for r in emulator.requests if r.path == MAKE_CALL_PATH]
        calls = emulator.calls

    statuses = [r.status for r in made]
    # The emulator never had to refuse a call: every request was accepted at the first try.
    assert statuses == [200] * PROCESSES * PER_PROCESS, statuses
    assert sorted(c.to for c in calls) == [f"447700900{m:03d}" for m in range(PROCESSES * PER_PROCESS)]
    # The processes really dialed concurrently (their calls interleave), yet the agent saw
    # one call per second: at least a full second between consecutive arrivals.
    owners = [int(c.to[-3:]) // PER_PROCESS for c in calls]
    assert len({owners[i] for i in range(PROCESSES)}) > 1 or len(set(owners[:8])) > 1, owners
    gaps = [b.monotonic - a.monotonic for a, b in itertools.pairwise(calls)]
    assert min(gaps) >= 1.0, gaps
    if shared_store_url.startswith("sqlite"):
        CallStore._clear_default_cache(shared_store_url)


@pytest.fixture
def strict_one_per_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", url)
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=1, retry_after=1) as emulator:
        yield emulator
    CallStore._clear_default_cache(url)


def test_a_429_is_absorbed_and_counted_in_the_task_log(
    strict_one_per_second: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = strict_one_per_second
    # The connection claims 5 calls/s but the agent is granted 1: AI Studio answers 429.
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json(calls_per_second=5))
    numbers = ["447700900101", "447700900102", "447700900103"]
    context: dict[str, Any] = {"ti": FakeTI("pacing_dag", "manual__429", "calls", -1)}
    results = MakeCallsOperator(task_id="calls", recipients=numbers, agent_id=AGENT).execute(context)  # type: ignore[arg-type]

    assert [r["result"] for r in results] == ["placed"] * 3
    assert sorted(c.to for c in emulator.calls) == numbers  # each placed once despite the 429s
    refused = sum(1 for r in emulator.requests if r.status == 429)
    assert refused >= 1
    out = capsys.readouterr()
    assert f"AI Studio answered 429 (rate limited) {refused} time(s)" in out.out + out.err
