"""do_not_call from an upstream task's XCom and from a template, in real Airflow (`airflow dags test`).

A do-not-call list given as one string used to be split into characters and the number
dialed; the emulator records every request, so "not dialed" is observed at the API.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
KEY = "dnc-dag-test-key-4b3a2c1d"


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    env = airflow_env(home, ROOT / "tests" / "dags" / "dag_files")
    migrate(env)
    return env


@pytest.fixture
def emulator():
    emu = Emulator(api_keys=(KEY,), agents=("agent-1",), calls_per_second=5).start()
    yield emu
    emu.stop()


def _states(env, dag_id):
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return dict(
            db.execute("select task_id, state from task_instance where dag_id = ?", (dag_id,)).fetchall()
        )


def test_do_not_call_from_an_upstream_xcom_is_never_dialed(base_env, emulator):
    env = {**base_env, "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(calls_per_second=5)}
    proc = dags_test("vs_dnc_from_xcom", env)
    output = proc.stdout + proc.stderr
    assert "is on the do-not-call list; not dialed" in output, output[-3000:]
    assert _states(env, "vs_dnc_from_xcom") == {"opted_out": "success", "call": "failed"}
    assert emulator.requests == []


def test_do_not_call_from_a_template_skips_the_listed_recipient(base_env, emulator):
    env = {**base_env, "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(calls_per_second=5)}
    proc = dags_test("vs_dnc_from_template", env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert [c.to for c in emulator.calls] == ["447700900314"]
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        (value,) = db.execute(
            "select value from xcom where dag_id = 'vs_dnc_from_template' and key = 'return_value'"
        ).fetchone()
    assert [(r["result"], r["reason"]) for r in json.loads(value)] == [
        ("skipped", "do-not-call"),
        ("placed", None),
    ]
