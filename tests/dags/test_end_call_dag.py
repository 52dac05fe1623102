"""The end-call webhook in real Airflow (`airflow dags test`): emulator → receiver → sensor.

The call's agent (the emulator) posts its End Call Event webhook to the receiver after the
scripted talk time; the sensor, with an answer window far longer than the run, returns
``answered`` with the XCom ``outcome_source`` ``end_call``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
KEY = "end-call-dag-key-9f8e7d6c"
SECRET = "end-call-dag-callback-secret-a1b2"


def _xcom(env: dict[str, str], task_id: str, key: str) -> object:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        (value,) = conn.execute(
            "select value from xcom where dag_id = 'vs_end_call' and task_id = ? and key = ?", (task_id, key)
        ).fetchone()
    return json.loads(value)


def test_the_sensor_returns_answered_from_the_end_call_webhook(
    tmp_path: Path, callback_receiver_factory: Callable[[str, str], str]
) -> None:
    env = airflow_env(tmp_path / "home", ROOT / "tests" / "dags" / "dag_files")
    migrate(env)
    receiver_url = callback_receiver_factory(env["AIRFLOW__VONAGE_STUDIO__STORE_URL"], SECRET)
    with Emulator(api_keys=(KEY,), agents=("agent-1",), calls_per_second=1, talk_time=1.0) as emulator:
        emulator.script("447700900456", "answered", {"CALLER_NAME": "Ada", "CONFIRMED": "yes"})
        env["AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT"] = emulator.connection_json(
            callback_base_url=receiver_url, callback_secret=SECRET, end_call_webhook=True
        )
        proc = dags_test("vs_end_call", env, timeout=180)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        (delivery,) = emulator.end_calls
        assert delivery.status == 200
    assert _xcom(env, "wait", "return_value") == "answered"
    assert _xcom(env, "wait", "outcome_source") == "end_call"
    store = CallStore(env["AIRFLOW__VONAGE_STUDIO__STORE_URL"])
    try:
        (record,) = store.recent_calls(5, dag_id="vs_end_call")
    finally:
        store.dispose()
    assert (record.outcome, record.outcome_source) == ("answered", "end_call")
    assert record.parameters is not None and record.parameters["CONFIRMED"] == "yes"
    assert record.session_start_time is not None and record.ended_at is not None
    assert record.ended_at < record.session_start_time + timedelta(seconds=600)
