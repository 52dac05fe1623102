"""The call_and_branch example end to end in real Airflow (`airflow dags test`), over real HTTP.

The emulator places the call and posts the scripted status callback to the callback receiver,
which records it in the store the DAG run reads. Each outcome runs once with the sensor in
poke mode and once deferrable (``airflow dags test`` runs the trigger in line).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "call_and_branch"
KEY = "branch-dag-key-0a9b8c7d"
SECRET = "branch-dag-callback-secret-31f2"
BUSY_TO, BUSY_DIGITS = "+44 7700 900123", "447700900123"
ANSWER_TO, ANSWER_DIGITS = "+44 7700 900456", "447700900456"
ANSWER_WINDOW = 20.0


@pytest.fixture(scope="module")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    dags.mkdir()
    # Only this DAG in the folder: every `dags test` parses the folder.
    shutil.copy(ROOT / "example_dags" / "call_and_branch.py", dags)
    env = airflow_env(
        home,
        dags,
        {
            "VONAGE_STUDIO_DEMO_AGENT_ID": "agent-1",
            "VONAGE_STUDIO_DEMO_ANSWER_WINDOW": str(ANSWER_WINDOW),
            "VONAGE_STUDIO_DEMO_POKE_INTERVAL": "0.5",
        },
    )
    migrate(env)
    return env


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    # The callback comes 12 s after the dial: well after the sensor's first check (~0.2 s on
    # Airflow 3.3, over a second on 3.1 and 3.2, whose `dags test` starts tasks slower, several
    # seconds on a busy machine), so the deferrable runs really wait in the trigger instead of
    # finding the status already there; it still comes well inside ANSWER_WINDOW.
    emu = Emulator(api_keys=(KEY,), agents=("agent-1",), calls_per_second=1, callback_delay=12.0).start()
    emu.script(BUSY_DIGITS, "busy")
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def env(
    base_env: dict[str, str], emulator: Emulator, callback_receiver_factory: Callable[[str, str], str]
) -> dict[str, str]:
    # The receiver records into the very store file the DAG run reads.
    receiver_url = callback_receiver_factory(base_env["AIRFLOW__VONAGE_STUDIO__STORE_URL"], SECRET)
    return {
        **base_env,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(
            callback_base_url=receiver_url, callback_secret=SECRET
        ),
    }


def _run(env: dict[str, str], *, to: str, deferrable: bool) -> tuple[str, dict[str, str], Any, str]:
    """Run the DAG; return its run_id, task states, the sensor's XCom and the combined output."""
    proc = dags_test(
        DAG_ID,
        {
            **env,
            "VONAGE_STUDIO_DEMO_TO": to,
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": str(deferrable),
        },
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        (run_id,) = conn.execute(
            "select run_id from dag_run where dag_id = ? order by id desc limit 1", (DAG_ID,)
        ).fetchone()
        states = dict(
            conn.execute(
                "select task_id, state from task_instance where dag_id = ? and run_id = ?", (DAG_ID, run_id)
            ).fetchall()
        )
        (value,) = conn.execute(
            "select value from xcom where dag_id = ? and run_id = ? and task_id = 'wait_for_outcome' "
            "and key = 'return_value'",
            (DAG_ID, run_id),
        ).fetchone()
    return run_id, states, json.loads(value), output


def _task_log(env: dict[str, str], run_id: str, task_id: str) -> str:
    logs = Path(env["AIRFLOW_HOME"]) / "logs"
    return "\n".join(
        p.read_text() for p in logs.rglob("*") if p.is_file() and run_id in str(p) and task_id in str(p)
    )


def _assert_went_through_trigger(output: str, deferrable: bool) -> None:
    # `airflow dags test` announces the in-line trigger run; our trigger logs its wait.
    assert ("[DAG TEST] running trigger in line" in output) is deferrable, output[-3000:]
    assert ("deferring to the triggerer" in output) is deferrable


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_busy_takes_retry_later(env: dict[str, str], emulator: Emulator, deferrable: bool) -> None:
    callbacks_before = len(emulator.callbacks)
    _run_id, states, status, output = _run(env, to=BUSY_TO, deferrable=deferrable)
    assert status == "busy"
    assert states == {
        "make_call": "success",
        "wait_for_outcome": "success",
        "route": "success",
        "retry_later": "success",
        "mark_reminded": "skipped",
        "give_up": "skipped",
    }
    # The busy status came over HTTP: the emulator posted it and the receiver answered 200.
    new = emulator.callbacks[callbacks_before:]
    assert [(c.payload["status"], c.status) for c in new] == [("busy", 200)]
    assert emulator.calls[-1].to == BUSY_DIGITS
    _assert_went_through_trigger(output, deferrable)


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_answered_takes_mark_reminded(env: dict[str, str], emulator: Emulator, deferrable: bool) -> None:
    calls_before = len(emulator.calls)
    callbacks_before = len(emulator.callbacks)
    run_id, states, status, output = _run(env, to=ANSWER_TO, deferrable=deferrable)
    assert status == "answered"
    assert states["wait_for_outcome"] == "success"
    assert states["mark_reminded"] == "success"
    assert states["retry_later"] == states["give_up"] == "skipped"
    assert len(emulator.calls) == calls_before + 1 and emulator.calls[-1].to == ANSWER_DIGITS
    assert emulator.callbacks[callbacks_before:] == []  # nobody reported a failure
    _assert_went_through_trigger(output, deferrable)
    assert "answered (no failure reported within the answer window)" in output + _task_log(
        env, run_id, "wait_for_outcome"
    )
