"""MakeCallsOperator and calling windows in real Airflow (`airflow dags test`) against the emulator."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.dagrun import airflow_bin, airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
KEY = "batch-dag-key-5e6f7a8b"


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    env = airflow_env(home, ROOT / "tests" / "dags" / "dag_files")
    migrate(env)
    return env


@pytest.fixture
def emulator():
    emu = Emulator(api_keys=(KEY,), agents=("agent-1",), calls_per_second=1).start()
    yield emu
    emu.stop()


def _return_value(env, dag_id, task_id):
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        (value,) = conn.execute(
            "select value from xcom where dag_id = ? and task_id = ? and key = 'return_value'",
            (dag_id, task_id),
        ).fetchone()
    return json.loads(value)


def _run_id(env, dag_id):
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        (run_id,) = conn.execute("select run_id from dag_run where dag_id = ?", (dag_id,)).fetchone()
    return run_id


def _output(proc) -> str:
    return proc.stdout + proc.stderr


def test_batch_from_an_upstream_list_and_a_rerun_of_the_same_run(base_env, emulator):
    env = {**base_env, "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json()}
    # On the do-not-call list (what `airflow vonage-studio dnc add` writes).
    store = CallStore(env["AIRFLOW__VONAGE_STUDIO__STORE_URL"])
    store.dnc_add("447700900203", reason="asked not to be called")
    store.dispose()

    proc = dags_test("vs_batch_calls", env)
    assert proc.returncode == 0, _output(proc)[-4000:]
    results = _return_value(env, "vs_batch_calls", "call_all")
    assert [(r["result"], r["reason"]) for r in results] == [
        ("placed", None),
        ("placed", None),
        ("rejected", results[2]["reason"]),
        ("skipped", "duplicate"),
        ("skipped", "do-not-call"),
        ("placed", None),
    ]
    assert [c.to for c in emulator.calls] == ["447700900201", "447700900202", "12125550104"]
    params = {p["name"]: p["value"] for p in emulator.calls[1].session_parameters}
    assert params == {"CAMPAIGN": "vs_batch_calls", "CALLER_NAME": "Ann"}
    # Paced at the connection's 1 call/s: the strict emulator never refused one.
    assert {r.status for r in emulator.requests} == {200}
    out = _output(proc)
    assert "AI Studio answered 429 (rate limited) 0 time(s)" in out
    assert "Progress: 6/6 recipients done" in out
    assert "447700900201" not in out and KEY not in out

    # The task run again in the same DAG run (what a manual clear in the UI leads to): the same
    # call_refs, so every placed call comes back from the ledger and nobody is dialed twice.
    again = subprocess.run(
        [airflow_bin(), "tasks", "test", "vs_batch_calls", "call_all", _run_id(env, "vs_batch_calls")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, _output(again)[-4000:]
    assert "was placed on an earlier try" not in _output(again)  # read in bulk, not call by call
    assert "Batch pass done: placed 3, rejected 1, skipped 2 of 6 recipient(s); 0 dial(s) sent" in _output(
        again
    )
    assert len(emulator.requests) == 3


def test_calls_wait_for_their_calling_window_in_the_triggerer(base_env, emulator, tmp_path):
    state = tmp_path / "windows.json"  # the DAG file writes when its windows open
    env = {
        **base_env,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(),
        "VS_WINDOW_STATE": str(state),
    }
    proc = dags_test("vs_window_calls", env)
    assert proc.returncode == 0, _output(proc)[-4000:]
    # Windows are given to the second ("HH:MM:SS"): they open at the whole second.
    opens = json.loads(state.read_text())
    batch_opens, single_opens = int(opens["batch"]), int(opens["single"])
    calls = {c.to: c for c in emulator.calls}
    assert list(calls) == ["447700900221", "447700900222", "442079460222"]
    # The one inside its window was dialed at once; each other one only once its window opened.
    assert calls["447700900221"].received_at.timestamp() < batch_opens
    assert calls["447700900222"].received_at.timestamp() >= batch_opens
    assert calls["442079460222"].received_at.timestamp() >= single_opens
    out = _output(proc)
    assert "outside their calling window; deferring until" in out
    assert "is closed; deferring the call until" in out
    results = _return_value(base_env, "vs_window_calls", "call_in_window")
    assert [r["result"] for r in results] == ["placed", "placed"]
    assert datetime.fromtimestamp(batch_opens, timezone.utc) <= datetime.fromisoformat(
        results[1]["session_start_time"]
    )
