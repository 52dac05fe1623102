"""The confirm_appointments example in real Airflow (`airflow dags test`) against the emulator:
CallResultSensor in poke mode, in deferrable mode (through CallResultTrigger), and a call
that fails (busy, reported through the callback receiver)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from airflow_provider_vonage_studio._compat import AIRFLOW_V_3_3_PLUS
from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
KEY = "confirm-test-key-1b2c3d"
SECRET = "confirm-callback-secret-4e5f"
TO = "447700900123"
DAG_ID = "confirm_appointments"
# The session becomes readable this long after the call: long enough that read_confirmation
# starts before it (after the 1 s answer window and three task starts, which `airflow dags test`
# makes slower before Airflow 3.3), so it has to wait (and, deferrable, defer).
INDEX_DELAY = 8.0 if AIRFLOW_V_3_3_PLUS else 30.0
# Before Airflow 3.3, `airflow dags test` does not print what operators log (self.log): only
# Airflow's own lines, so what our sensors say can be checked from 3.3 on.
OPERATOR_LOGS_IN_OUTPUT = AIRFLOW_V_3_3_PLUS


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("confirm-home")
    env = airflow_env(
        home,
        ROOT / "example_dags",
        {"VONAGE_STUDIO_DEMO_ANSWER_WINDOW": "1", "VONAGE_STUDIO_DEMO_POKE_INTERVAL": "0.5"},
    )
    migrate(env)
    return env


@pytest.fixture
def emulator():
    emu = Emulator(api_keys=(KEY,), agents=("agent-1",), insights_index_delay=INDEX_DELAY).start()
    yield emu
    emu.stop()


@pytest.fixture
def answers_db(tmp_path):
    return tmp_path / "appointments.db"


def _env(base_env, emulator, answers_db, **extra):
    connection = emulator.connection_json(**extra.pop("connection_extras", {}))
    return {
        **base_env,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": connection,
        "AIRFLOW_CONN_SQLITE_DEFAULT": json.dumps({"conn_type": "sqlite", "host": str(answers_db)}),
        **extra,
    }


def _db(env, sql, *args):
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        return conn.execute(sql, args).fetchall()


def _last_run(env):
    (run_id,) = _db(env, "select run_id from dag_run where dag_id = ? order by id desc limit 1", DAG_ID)[0]
    states = dict(
        _db(env, "select task_id, state from task_instance where dag_id = ? and run_id = ?", DAG_ID, run_id)
    )
    xcoms = {
        task_id: json.loads(value)
        for task_id, value in _db(
            env,
            "select task_id, value from xcom where dag_id = ? and run_id = ? and key = 'return_value'",
            DAG_ID,
            run_id,
        )
    }
    return run_id, states, xcoms


def _task_output(output: str, task_id: str) -> str:
    """What one task printed: `airflow dags test` runs tasks in-process and logs to stdout."""
    lines, inside = [], False
    for line in output.splitlines():
        if f"[DAG TEST] starting task_id={task_id} " in line:
            inside = True
        elif f"[DAG TEST] end task task_id={task_id} " in line:
            inside = False
        if inside:
            lines.append(line)
    return "\n".join(lines)


def _answers(answers_db):
    with sqlite3.connect(answers_db) as conn:
        return conn.execute(
            "select call_ref, session_id, call_status, confirmed from appointment_confirmations"
        ).fetchall()


def _stored_call(env, call_ref):
    from airflow_provider_vonage_studio.store import CallStore

    store = CallStore(env["AIRFLOW__VONAGE_STUDIO__STORE_URL"])
    try:
        return store.get_call(call_ref)
    finally:
        store.dispose()


def _check_confirmed_run(env, emulator, answers_db, proc):
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    _, states, xcoms = _last_run(env)
    assert set(states.values()) == {"success"}, states
    (call,) = emulator.calls
    assert xcoms["read_confirmation"] == {
        "CALLER_NAME": "Diane Miller",
        "APPOINTMENT_TIME": "09:30",
        "CONFIRMED": "yes",
    }
    call_ref = xcoms["call_customer"]["call_ref"]
    assert _answers(answers_db) == [(call_ref, call.session_id, "answered", "yes")]
    # The parameters are kept with the call in the store as well.
    assert _stored_call(env, call_ref).parameters == xcoms["read_confirmation"]
    # Insights answered 404 (not indexed yet) before the parameters were there.
    statuses = [r.status for r in emulator.requests if r.path.startswith("/insights/")]
    assert statuses[0] == 404 and statuses[-1] == 200, statuses
    # Neither the key nor the full number reach the output; the sensor logs no parameter values.
    log = _task_output(output, "read_confirmation")
    if OPERATOR_LOGS_IN_OUTPUT:
        assert "Session " in log and "read 3 parameter(s)" in log
    assert KEY not in output and TO not in log and "Diane Miller" not in log
    return log


def test_poke_mode(base_env, emulator, answers_db):
    emulator.script(TO, "answered", {"CONFIRMED": "yes"})
    env = _env(base_env, emulator, answers_db)
    proc = dags_test(DAG_ID, env)
    log = _check_confirmed_run(env, emulator, answers_db, proc)
    assert "[DAG TEST] running trigger in line" not in log
    if OPERATOR_LOGS_IN_OUTPUT:
        assert "No session parameters to return yet" in log
        assert "deferring" not in log.lower()


def test_deferrable_mode_goes_through_the_trigger(base_env, emulator, answers_db):
    emulator.script(TO, "answered", {"CONFIRMED": "yes"})
    env = _env(base_env, emulator, answers_db, AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE="True")
    proc = dags_test(DAG_ID, env)
    log = _check_confirmed_run(env, emulator, answers_db, proc)
    # The worker deferred; the trigger ran (in line, as `dags test` runs triggers) and reported;
    # the task resumed in execute_complete.
    assert "[DAG TEST] running trigger in line" in log
    if OPERATOR_LOGS_IN_OUTPUT:
        assert "No session parameters yet; deferring to the triggerer" in log
        assert "Pausing task as DEFERRED" in log
        assert "Waiting for the session parameters of" in log
        assert "Result reported by the trigger" in log


@pytest.fixture
def receiver(base_env):
    """The provider's callback receiver under uvicorn, writing to the DAG runs' call store."""
    from airflow_provider_vonage_studio.callbacks.app import create_app
    from airflow_provider_vonage_studio.store import CallStore
    from airflow_provider_vonage_studio.testing.servers import ThreadedServer

    store = CallStore(base_env["AIRFLOW__VONAGE_STUDIO__STORE_URL"])
    app = create_app(store=store, secret_provider=lambda: [SECRET], outcome_view="off")
    with ThreadedServer(app) as server:
        yield server.url
    store.dispose()


def test_busy_call_is_saved_without_waiting_for_parameters(base_env, emulator, answers_db, receiver):
    emulator.script(TO, "busy")
    env = _env(
        base_env,
        emulator,
        answers_db,
        connection_extras={"callback_base_url": receiver, "callback_secret": SECRET},
        # Failure reports need time to arrive before a silent call counts as answered.
        VONAGE_STUDIO_DEMO_ANSWER_WINDOW="5",
    )
    proc = dags_test(DAG_ID, env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _, states, xcoms = _last_run(env)
    assert set(states.values()) == {"success"}, states
    assert [c.status for c in emulator.callbacks] == [200]
    assert xcoms["wait_for_status"] == "busy"
    assert xcoms["read_confirmation"] == {"status": "busy"}
    call_ref = xcoms["call_customer"]["call_ref"]
    assert _answers(answers_db) == [(call_ref, emulator.calls[0].session_id, "busy", None)]
    # A busy call has no parameters: Insights was never asked.
    assert not [r for r in emulator.requests if r.path.startswith("/insights/")]
