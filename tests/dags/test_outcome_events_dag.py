"""example_dags/call_back_missed.py under a real triggerer: outcome events drive DAG runs.

A real Airflow (API server, scheduler with LocalExecutor, DAG processor, triggerer; metadata in
a fresh PostgreSQL database, the call store in a schema of it) runs the event-driven example
DAG against the emulator. Missed calls are recorded in the store as a campaign's callbacks
would record them; the asset watcher's CallOutcomeEventTrigger turns each into an asset
event, and the DAG calls the number back. Mid-stream the triggerer is killed with SIGKILL and
started again. Asserted, never timed: every missed number is called back exactly once (the
emulator's record), answered/rejected ones and other agents' never, and every run succeeds.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.harness import AirflowProcesses, Console, free_port
from tests.store_fixtures import require_postgres

pytestmark = pytest.mark.airflow_dags

EXAMPLE = Path(__file__).resolve().parents[2] / "example_dags" / "call_back_missed.py"
AGENT = "agent-1"
KEY = "test-key-outcome-events"
WATCHER = "call_back_missed"  # the trigger's cursor name in the example DAG


def _record(store: CallStore, ref: str, number: str, status: str, agent: str = AGENT) -> None:
    """A campaign's call and what its callback (or its waiting task) recorded."""
    store.begin_call(ref, agent_id=agent, destination=number, dag_id="campaign", run_id="r1", task_id="call")
    store.mark_sending(ref)
    store.mark_placed(ref, f"session-{ref}", datetime.now(timezone.utc))
    if status == "answered":
        store.record_outcome(ref, "answered")
    else:
        store.record_status(
            ref,
            status=status,
            conversation_uuid=f"CON-{ref}",
            timestamp=datetime.now(timezone.utc),
            payload={},
        )


def _env(airflow: AirflowProcesses, emulator_url: str, postgres_url: str) -> tuple[dict[str, str], str]:
    import sqlalchemy as sa

    from airflow_provider_vonage_studio.testing.dagrun import airflow_env

    dags = airflow.home / "dags"
    dags.mkdir(exist_ok=True)
    shutil.copy(EXAMPLE, dags / EXAMPLE.name)
    base = sa.engine.make_url(postgres_url).set(database=airflow.pg_database)
    sql_conn = base.render_as_string(hide_password=False)
    engine = sa.create_engine(sql_conn, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA IF NOT EXISTS "vonage_studio_store"'))
    engine.dispose()
    store_url = base.update_query_dict({"options": "-csearch_path=vonage_studio_store"}).render_as_string(
        hide_password=False
    )
    settings = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_conn,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": sql_conn,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        **airflow.api_server_settings(),
        # Asset-triggered runs are scheduled runs: the harness turns those off by default.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__VONAGE_STUDIO__STORE_URL": store_url,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # The watcher is registered when the file is parsed again after the DAG was unpaused.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "VONAGE_STUDIO_OUTCOME_POLL_SECONDS": "0.5",
        # Events Airflow lost or whose run failed before claiming come again soon.
        "VONAGE_STUDIO_OUTCOME_REDELIVER_SECONDS": "20",
        "VONAGE_STUDIO_DEMO_AGENT_ID": AGENT,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": json.dumps(
            {"conn_type": "vonage_studio", "host": emulator_url, "password": KEY}
        ),
    }
    return airflow_env(airflow.home, dags, settings), store_url


@pytest.mark.timeout(600)
def test_each_missed_call_is_called_back_once_across_a_triggerer_kill() -> None:
    from airflow_provider_vonage_studio.testing.dagrun import airflow_bin
    from airflow_provider_vonage_studio.testing.emulator import Emulator

    postgres_url = require_postgres()
    emulator = Emulator(api_keys=(KEY,), agents=(AGENT,)).start()
    home = Path(tempfile.mkdtemp(prefix="vonage-studio-outcome-events-"))
    airflow = AirflowProcesses(
        Console(io.StringIO()), database="postgres", postgres_url=postgres_url, home=home, log_dir="logs"
    )
    store: CallStore | None = None
    try:
        airflow.api_port = free_port()
        airflow.create_postgres_database()
        env, store_url = _env(airflow, emulator.url, postgres_url)
        airflow.migrate(env)
        airflow.start_airflow(env, ("api-server", "scheduler", "dag-processor", "triggerer"))
        airflow.wait_until(
            "the API server",
            lambda: airflow.http.get(f"{airflow.api_url}/api/v2/monitor/health", timeout=5).ok,
            timeout=300,
        )
        airflow.fetch_token()
        airflow.wait_until(
            "the DAG to be parsed",
            lambda: airflow.api("GET", f"/api/v2/dags/{WATCHER}").status_code == 200,
            timeout=300,
        )
        response = airflow.api("PATCH", f"/api/v2/dags/{WATCHER}", json={"is_paused": False})
        assert response.status_code == 200, response.text[:300]
        store = CallStore(store_url)
        # The watcher runs once its cursor exists (it starts "now": earlier outcomes are history).
        airflow.wait_until(
            "the watcher to start", lambda: store.load_cursor(WATCHER) is not None, timeout=300
        )

        missed = {f"vs-miss-{i}": f"44770090{i:04d}" for i in range(9)}
        statuses = ["busy", "timeout"]
        refs = list(missed)
        for i, ref in enumerate(refs[:3]):
            _record(store, ref, missed[ref], statuses[i % 2])
        # Not called back: answered, rejected, another agent's miss.
        _record(store, "vs-answered", "447700911111", "answered")
        _record(store, "vs-rejected", "447700922222", "rejected")
        _record(store, "vs-other-agent", "447700933333", "busy", agent="agent-2")
        airflow.wait_until(
            "the first misses to be handed over",
            lambda: store.handed_over(WATCHER, refs[:3]) == set(refs[:3]),
            timeout=300,
            interval=0.2,
        )
        # Mid-stream: more misses, and the triggerer dies while it hands them over.
        for i, ref in enumerate(refs[3:6]):
            _record(store, ref, missed[ref], statuses[i % 2])
        airflow.wait_until(
            "a miss of the second batch to be handed over",
            lambda: store.handed_over(WATCHER, refs[3:6]),
            timeout=300,
            interval=0.05,
        )
        killed = airflow.components.pop("triggerer")  # dead on purpose: not a failure of the run
        killed.signal(signal.SIGKILL)
        airflow.wait_until("the triggerer to die", lambda: killed.stopped, timeout=30, interval=0.1)
        for i, ref in enumerate(refs[6:]):
            _record(store, ref, missed[ref], statuses[i % 2])
        airflow.start("triggerer-restarted", [airflow_bin(), "triggerer"], env)

        def called_back() -> Counter[str]:
            return Counter(c.to.lstrip("+") for c in emulator.calls if c.agent_id == AGENT)

        airflow.wait_until(
            "every miss to be called back",
            lambda: set(missed.values()) <= set(called_back()),
            timeout=400,
        )

        def runs_finished() -> list[dict[str, object]] | None:
            runs = airflow.api("GET", f"/api/v2/dags/{WATCHER}/dagRuns").json().get("dag_runs", [])
            return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else None

        runs = airflow.wait_until("the runs to finish", runs_finished, timeout=300)
        assert "success" in {r["state"] for r in runs}, runs
        calls = called_back()
        assert {number: calls[number] for number in missed.values()} == dict.fromkeys(missed.values(), 1)
        assert sum(calls.values()) == len(missed)  # nobody else: not answered, rejected, other agents
        assert store.handed_over(WATCHER, [*refs, "vs-answered", "vs-rejected", "vs-other-agent"]) == set(
            refs
        )
    finally:
        if store is not None:
            store.dispose()
        airflow.shutdown()
        airflow.drop_postgres_database()
        emulator.stop()
        shutil.rmtree(home, ignore_errors=True)
