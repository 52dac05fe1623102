"""MakeCallsOperator streaming a file URI in real Airflow (`airflow dags test`) against the emulator."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
KEY = "batch-file-dag-key-1a2b3c4d"


def test_a_file_of_1005_recipients_streams_into_the_store_and_a_summary_xcom(tmp_path):
    env = airflow_env(tmp_path / "airflow-home", ROOT / "tests" / "dags" / "dag_files")
    migrate(env)
    # 1,005 recipients (over the full-list threshold of 1,000), three distinct numbers: three calls.
    lines = [
        "+44 7700 900301",
        json.dumps({"to": "447700900302", "session_parameters": {"CALLER_NAME": "Ann"}}),
    ]
    lines += ['"447700900303"'] + ['"0044 7700 900301"'] * 1001 + ["{broken"]
    uri = tmp_path / "campaign.jsonl"
    uri.write_text(json.dumps(lines[0]) + "\n" + "\n".join(lines[1:]) + "\n")
    with Emulator(api_keys=(KEY,), agents=("agent-1",), calls_per_second=1) as emulator:
        env = {**env, "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json()}
        proc = dags_test("vs_batch_file_calls", env, conf=json.dumps({"recipients_uri": uri.as_uri()}))
        calls = [c.to for c in emulator.calls]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert calls == ["447700900301", "447700900302", "447700900303"]
    assert {r.status for r in emulator.requests} == {200}  # paced at the connection's 1 call/s
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        (value,) = conn.execute(
            "select value from xcom where dag_id = 'vs_batch_file_calls' and key = 'return_value'"
        ).fetchone()
        (run_id,) = conn.execute("select run_id from dag_run where dag_id = 'vs_batch_file_calls'").fetchone()
    summary = json.loads(value)
    assert summary["recipients"] == 1005
    assert summary["counts"] == {"placed": 3, "rejected": 1, "skipped": 1001, "unknown": 0, "deferred": 0}
    assert summary["results"]["run_id"] == run_id and summary["results"]["task_id"] == "call_file"
    assert len(value) < 64 * 1024
    store = CallStore(env["AIRFLOW__VONAGE_STUDIO__STORE_URL"])
    rows = store.batch_results("vs_batch_file_calls", run_id, "call_file", limit=None)
    store.dispose()
    assert len(rows) == 1005 and rows[1]["destination"] == "447700900302"
    assert rows[1004]["result"] == "rejected" and "not a JSON value" in rows[1004]["reason"]
    assert "Progress: " in output and "447700900302" not in output  # numbers redacted in the log
