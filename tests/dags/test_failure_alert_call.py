"""The failure_alert_call example in real Airflow (`airflow dags test`) against the emulator.

The billing check fails; the task's and the DAG's notifiers each phone on-call once, with
the failure in the session parameters. A second run is a new failure and rings again.
(That invoking a callback twice for one failure rings once is shown, with a real store, in
tests/unit/test_notifier.py.)
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_vonage_studio._compat import AIRFLOW_V_3_3_PLUS
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "failure_alert_call"
KEY = "failure-alert-key-3e5d7f9a1c"
ON_CALL, ON_CALL_DIGITS = "+44 7700 900999", "447700900999"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    emu = Emulator(api_keys=(KEY,), agents=("agent-1",), calls_per_second=1).start()
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, emulator: Emulator) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    dags.mkdir()
    # Only this DAG in the folder: every `dags test` parses the folder.
    shutil.copy(ROOT / "example_dags" / f"{DAG_ID}.py", dags)
    env = airflow_env(
        home,
        dags,
        {
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(),
            "VONAGE_STUDIO_DEMO_AGENT_ID": "agent-1",
            "VONAGE_STUDIO_DEMO_ON_CALL": ON_CALL,
        },
    )
    migrate(env)
    return env


def _ti_states(env: dict[str, str], run_id: str) -> dict[str, str]:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        rows = conn.execute(
            "select task_id, state from task_instance where dag_id = ? and run_id = ?", (DAG_ID, run_id)
        ).fetchall()
    return dict(rows)


def _run_ids(env: dict[str, str]) -> list[str]:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        rows = conn.execute("select run_id from dag_run where dag_id = ? order by id", (DAG_ID,)).fetchall()
    return [run_id for (run_id,) in rows]


def _params(call: Any) -> dict[str, str]:
    return {p["name"]: p["value"] for p in call.session_parameters}


def test_each_failure_event_rings_on_call_once(env: dict[str, str], emulator: Emulator) -> None:
    proc = dags_test(DAG_ID, env)
    output = proc.stdout + proc.stderr
    (run_id,) = _run_ids(env)
    assert _ti_states(env, run_id) == {"check_billing": "failed", "publish_invoices": "upstream_failed"}, (
        output[-3000:]
    )

    # One call for the task's failure, one for the run's: both to on-call, from the agent.
    assert [(c.to, c.agent_id) for c in emulator.calls] == [(ON_CALL_DIGITS, "agent-1")] * 2, output[-3000:]
    by_alert = {_params(c)["ALERT"]: _params(c) for c in emulator.calls}
    task_alert, run_alert = by_alert["task failed"], by_alert["run failed"]
    assert task_alert["DAG_ID"] == DAG_ID and task_alert["TASK_ID"] == "check_billing"
    assert task_alert["TRY_NUMBER"] == "1"
    if AIRFLOW_V_3_3_PLUS:
        assert task_alert["ERROR"].startswith("billing check: invoiced total 10250 != paid + open 10140")
    else:
        # Before 3.3, `airflow dags test` runs task callbacks without `exception` in the context
        # (workers pass it); the alert still rings, with an empty ERROR.
        assert task_alert["ERROR"] == ""
    # Airflow 3.3 gives the run's callback the task that failed as `ti`; 3.1 gives the run's
    # last task (publish_invoices, upstream_failed).
    expected_task = {"check_billing"} if AIRFLOW_V_3_3_PLUS else {"check_billing", "publish_invoices"}
    assert run_alert.pop("TASK_ID") in expected_task, run_alert
    assert run_alert == {"ALERT": "run failed", "DAG_ID": DAG_ID, "REASON": "task_failure"}

    # Both are in the call ledger under this run: the task's under its task id, the run's under __dag__.
    store = CallStore(env["AIRFLOW__VONAGE_STUDIO__STORE_URL"])
    try:
        rows = [c for c in store.recent_calls() if c.run_id == run_id]
    finally:
        store.dispose()
    assert sorted((c.task_id, c.state.value) for c in rows) == [
        ("__dag__", "placed"),
        ("check_billing", "placed"),
    ]
    assert {c.session_id for c in rows} == {c.session_id for c in emulator.calls}

    # Neither the key nor the full number reaches the output or the task logs.
    logs = "\n".join(p.read_text() for p in (Path(env["AIRFLOW_HOME"]) / "logs").rglob("*") if p.is_file())
    assert KEY not in logs + output
    assert ON_CALL_DIGITS not in logs + output and "7700 900999" not in logs + output
    assert "+44•••••0999" in logs + output

    # The next run fails again: a new failure, so on-call is rung again (twice: task and run).
    dags_test(DAG_ID, env)
    assert len(_run_ids(env)) == 2
    assert len(emulator.calls) == 4
    assert [r.status for r in emulator.requests] == [200] * 4
