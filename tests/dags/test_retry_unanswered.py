"""The retry_unanswered example in real Airflow (`airflow dags test`) against the emulator.

The call store is seeded with the previous day's calls of every kind; only the numbers
whose last call was ``busy`` or ``timeout`` are dialed again, inside a calling window that
is open now (so the run does not defer for hours).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from airflow_provider_vonage_studio.callbacks.app import create_app
from airflow_provider_vonage_studio.callbacks.tokens import sign_token
from airflow_provider_vonage_studio.store import CallStore, calls_table
from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate, window_open_now
from airflow_provider_vonage_studio.testing.emulator import Emulator
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "retry_unanswered"
KEY = "retry-unanswered-key-8b6a4c2e0f"

BUSY = "447700900111"  # Europe/London
REFUSED = "447700900122"
TIMEOUT = "12125550122"  # America/New_York


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    emu = Emulator(api_keys=(KEY,), agents=("agent-1",), calls_per_second=1).start()
    yield emu
    emu.stop()


def _seed(store: CallStore) -> None:
    """Yesterday's ledger, as the reminder DAG and the callback receiver left it."""
    start = datetime.now(timezone.utc) - timedelta(hours=3)

    def call(
        ref: str, to: str, status: str | None, *, agent: str = "agent-1", dag_id: str = "reminder_calls"
    ) -> None:
        store.begin_call(
            ref, agent_id=agent, destination=to, dag_id=dag_id, run_id="scheduled__yesterday", task_id="t"
        )
        store.mark_placed(ref, f"session-{ref}", start)
        if status:
            store.record_status(
                ref, status=status, conversation_uuid=f"CON-{ref}", timestamp=start, payload={}
            )

    call("vs-busy", BUSY, "busy")
    call("vs-timeout", TIMEOUT, "timeout")
    call("vs-answered", "447700900133", None)  # placed, no failure reported: answered
    call("vs-declined", "447700900144", "rejected")  # the callee declined: not called back
    call("vs-failed", "447700900177", "failed")
    # Busy first, answered on a later call the same day: the last call decides.
    call("vs-busy-then-answered-1", "447700900155", "busy")
    call("vs-busy-then-answered-2", "447700900155", None)
    call("vs-other-agent", "447700900188", "busy", agent="agent-2")
    call("vs-own-retry", "447700900199", "busy", dag_id=DAG_ID)  # one call back, not one a day
    call("vs-old", "447700900166", "busy")  # two days ago: an earlier run's business
    # AI Studio refused the call (no session, no status).
    store.begin_call("vs-refused", agent_id="agent-1", destination=REFUSED, dag_id="reminder_calls")
    store.mark_rejected("vs-refused", 400, "Bad destination number format")
    # Someone holding that call's token posts "busy" for it: the receiver refuses (the call was
    # never placed), so this DAG is not tricked into dialing a number AI Studio never called.
    receiver = create_app(store=store, secret_provider=lambda: [TEST_SECRET], outcome_view="off")
    with TestClient(receiver) as client:
        forged_busy = client.post(
            f"/calls/{sign_token('vs-refused', TEST_SECRET)}/status",
            json={
                "agent_id": "agent-1",
                "to": REFUSED,
                "conversation_uuid": "CON-forged",
                "status": "busy",
                "timestamp": start.isoformat(),
            },
        )
    assert forged_busy.status_code == 409, forged_busy.text
    refused = store.get_call("vs-refused")
    assert refused is not None and refused.status is None

    engine = sa.create_engine(store.url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # the store rightly has no method to rewrite history
        conn.execute(
            calls_table.update()
            .where(calls_table.c.call_ref == "vs-old")
            .values(created_at=datetime.now(timezone.utc) - timedelta(days=2))
        )
    engine.dispose()


def _params(call: Any) -> dict[str, str]:
    return {p["name"]: p["value"] for p in call.session_parameters}


def test_only_busy_and_timeout_numbers_are_called_back(tmp_path: Path, emulator: Emulator) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(ROOT / "example_dags" / f"{DAG_ID}.py", dags)
    env = airflow_env(
        tmp_path,
        dags,
        {
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(),
            "VONAGE_STUDIO_DEMO_AGENT_ID": "agent-1",
            "VONAGE_STUDIO_DEMO_CALLING_WINDOW": window_open_now(),
        },
    )
    migrate(env)
    store = CallStore(env["AIRFLOW__VONAGE_STUDIO__STORE_URL"])
    try:
        _seed(store)

        proc = dags_test(DAG_ID, env)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-3000:]

        assert sorted(c.to for c in emulator.calls) == sorted([BUSY, TIMEOUT]), output[-3000:]
        by_to = {c.to: _params(c) for c in emulator.calls}
        assert by_to[BUSY] == {"CALL_BACK": "true", "PREVIOUS_STATUS": "busy"}
        assert by_to[TIMEOUT] == {"CALL_BACK": "true", "PREVIOUS_STATUS": "timeout"}
        assert "2 of 7 number(s) called between" in output

        # The call backs are in the ledger under this DAG, so tomorrow's run leaves them alone.
        ours = sorted(
            c.destination for c in store.recent_calls() if c.dag_id == DAG_ID and c.call_ref != "vs-own-retry"
        )
        assert ours == sorted([BUSY, TIMEOUT])
    finally:
        store.dispose()

    with sqlite3.connect(tmp_path / "airflow.db") as conn:
        states = dict(conn.execute("select task_id, state from task_instance where dag_id = ?", (DAG_ID,)))
    assert states == {"yesterdays_unanswered": "success", "call_back": "success"}
    # The numbers travel through XCom, but the output and the task logs show them redacted.
    logs = "\n".join(p.read_text() for p in (tmp_path / "logs").rglob("*") if p.is_file()) + output
    assert BUSY not in logs and TIMEOUT not in logs and "+44•••••0111" in logs
    assert KEY not in logs
