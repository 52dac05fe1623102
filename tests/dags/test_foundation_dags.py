"""The operator and the reminder_calls example in real Airflow (`airflow dags test`) against the emulator."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
KEY = "dag-test-key-9f8e7d6c5b4a"
SECRET = "dag-test-callback-secret-5e4d3c2b"
#: The reminder_calls recipients (as sent: digits) and what the emulator makes of each call.
REMINDER_SCRIPT = {
    "447700900123": "answered",
    "12125550100": "busy",
    "972541116037": "timeout",
    "447700900456": "rejected",
}


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


def _ti_states(env, dag_id):
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "select task_id, map_index, state from task_instance where dag_id = ? order by map_index",
            (dag_id,),
        ).fetchall()


def _xcoms(env, dag_id):
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select map_index, value from xcom where dag_id = ? and key = 'return_value' order by map_index",
            (dag_id,),
        ).fetchall()
    return [json.loads(value) for _, value in rows]


def _assert_no_full_number(env, proc, *numbers):
    """No task log (nor the command's output) shows a recipient's number in full."""
    logs = "\n".join(p.read_text() for p in (Path(env["AIRFLOW_HOME"]) / "logs").rglob("*") if p.is_file())
    for number in numbers:
        assert number not in logs + proc.stdout + proc.stderr, number


def test_mapped_expand_over_three_numbers(base_env, emulator):
    env = {**base_env, "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json()}
    proc = dags_test("vs_mapped_calls", env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(c.to for c in emulator.calls) == ["12125550100", "447700900123", "972541116037"]
    assert {p["name"]: p["value"] for p in emulator.calls[0].session_parameters}[
        "CALLER_NAME"
    ] == "vs_mapped_calls"
    assert [s for *_, s in _ti_states(env, "vs_mapped_calls")] == ["success"] * 3
    results = _xcoms(env, "vs_mapped_calls")
    assert {r["session_id"] for r in results} == {c.session_id for c in emulator.calls}
    assert all(r["session_start_time"].endswith("+00:00") for r in results)
    assert len({r["call_ref"] for r in results}) == 3
    # Paced at the connection's 1 call/s, so the strict emulator never had to refuse one.
    assert [r.status for r in emulator.requests] == [200, 200, 200]
    # Neither the key nor a full number reaches the task logs.
    logs = "\n".join(p.read_text() for p in (Path(env["AIRFLOW_HOME"]) / "logs").rglob("*") if p.is_file())
    assert KEY not in logs + proc.stdout + proc.stderr
    # Nor the rendered template fields Airflow stores for the UI, nor any XCom.
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rendered = db.execute(
            "select rendered_fields from rendered_task_instance_fields where dag_id = 'vs_mapped_calls'"
        ).fetchall()
        xcoms = db.execute("select value from xcom where dag_id = 'vs_mapped_calls'").fetchall()
    assert len(rendered) == 3 and "CALLER_NAME" in str(rendered)
    assert KEY not in str(rendered) + str(xcoms)
    assert "447700900123" not in logs


def test_429_from_the_strict_limit_is_absorbed(base_env, emulator):
    # The second call is not paced with the first (another pace scope): within a second of it
    # the strict emulator answers 429. Where `airflow dags test` starts the next task later than
    # that (before Airflow 3.3), the 429 the limit would give is injected instead.
    from airflow_provider_vonage_studio._compat import AIRFLOW_V_3_3_PLUS

    if not AIRFLOW_V_3_3_PLUS:
        emulator.inject("429", to="12125550100")
    env = {
        **base_env,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(),
        "AIRFLOW_CONN_VS_OTHER": emulator.connection_json(pace_scope="key"),
    }
    proc = dags_test("vs_unpaced_pair", env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    statuses = [r.status for r in emulator.requests]
    assert statuses[0] == 200 and statuses[-1] == 200 and 429 in statuses, statuses
    assert [c.to for c in emulator.calls] == ["447700900123", "12125550100"]
    assert "answered 429" in proc.stdout + proc.stderr


def test_bad_key_fails_without_task_retries(base_env, emulator):
    env = {**base_env, "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(key="wrong-key")}
    proc = dags_test("vs_single_call", env)
    assert "Not Authorised" in proc.stdout + proc.stderr
    assert _ti_states(env, "vs_single_call")[-1][2] == "failed"
    assert emulator.calls == []


def test_bad_number_fails_before_any_request(base_env, emulator):
    env = {
        **base_env,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(),
        "VS_TEST_TO": "call me maybe",
    }
    proc = dags_test("vs_single_call", env)
    assert "is not a phone number" in proc.stdout + proc.stderr
    assert "AirflowFailException" in proc.stdout + proc.stderr
    assert emulator.requests == []


def test_reminder_calls_mapped_example(tmp_path, emulator):
    env = airflow_env(
        tmp_path, ROOT / "example_dags", {"AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json()}
    )
    migrate(env)
    proc = dags_test("reminder_calls_mapped", env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert sorted(c.to for c in emulator.calls) == ["12125550100", "447700900123", "972541116037"]
    by_to = {c.to: {p["name"]: p["value"] for p in c.session_parameters} for c in emulator.calls}
    assert by_to["447700900123"]["CALLER_NAME"] == "Diane Miller"
    assert by_to["447700900123"]["APPOINTMENT_TIME"] == "09:30"
    _assert_no_full_number(env, proc, "447700900123", "+44 7700 900123", "+1 (212) 555-0100")


def test_reminder_calls_example(tmp_path, emulator, callback_receiver_factory):
    # MakeCallsOperator over the list, waiting (deferrable; `dags test` runs the trigger in
    # line) for the callbacks the emulator posts to a real receiver sharing the run's store.
    env = airflow_env(
        tmp_path,
        ROOT / "example_dags",
        {"VONAGE_STUDIO_DEMO_ANSWER_WINDOW": "3", "VONAGE_STUDIO_DEMO_POKE_INTERVAL": "0.5"},
    )
    receiver = callback_receiver_factory(env["AIRFLOW__VONAGE_STUDIO__STORE_URL"], SECRET)
    env["AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT"] = emulator.connection_json(
        callback_base_url=receiver, callback_secret=SECRET
    )
    for to, outcome in REMINDER_SCRIPT.items():
        emulator.script(to, outcome)
    migrate(env)
    proc = dags_test("reminder_calls", env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert sorted(c.to for c in emulator.calls) == sorted(REMINDER_SCRIPT)
    by_to = {c.to: {p["name"]: p["value"] for p in c.session_parameters} for c in emulator.calls}
    assert by_to["447700900123"]["CALLER_NAME"] == "Diane Miller"
    assert by_to["447700900123"]["APPOINTMENT_TIME"] == "09:30"
    assert "APPOINTMENT_DAY" in by_to["12125550100"]
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        (value,) = conn.execute(
            "select value from xcom where dag_id = 'reminder_calls' and task_id = 'collect_unanswered' "
            "and key = 'return_value'"
        ).fetchone()
    assert json.loads(value) == [
        {"key": "appt-1002", "outcome": "busy"},
        {"key": "appt-1003", "outcome": "timeout"},
        {"key": "appt-1004", "outcome": "rejected"},
    ]
    _assert_no_full_number(env, proc, "447700900123", "+44 7700 900123", "+1 (212) 555-0100")
    assert SECRET not in proc.stdout + proc.stderr
