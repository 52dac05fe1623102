"""The outcome view shows the verdict the waiting task stored (``answered`` above all)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from airflow_provider_vonage_studio.callbacks import view
from airflow_provider_vonage_studio.callbacks.app import create_app
from airflow_provider_vonage_studio.store import CallStore
from tests.conftest import TEST_SECRET

DAG, RUN = "reminder_calls", "manual__2024-06-01T08:00:00+00:00"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, CallStore]]:
    store = CallStore(f"sqlite:///{tmp_path / 'vonage_studio.db'}")
    app = create_app(store=store, secret_provider=lambda: [TEST_SECRET], outcome_view="public")
    started = datetime.now(timezone.utc) - timedelta(minutes=30)
    # ref -> (status callback, stored verdict)
    script = {
        "vs-answered": (None, "answered"),
        "vs-silent": (None, None),  # placed, no task decided yet
        "vs-busy": ("busy", "busy"),
        "vs-late": ("timeout", "answered"),  # a failure reported after the verdict
    }
    for i, (ref, (status, verdict)) in enumerate(script.items()):
        store.begin_call(
            ref, agent_id="agent-7", destination=f"44770090010{i}", dag_id=DAG, run_id=RUN, task_id="call"
        )
        store.mark_placed(ref, str(uuid.uuid4()), started + timedelta(minutes=i))
        if verdict:
            store.record_outcome(ref, verdict)
        if status:
            store.record_status(ref, status=status, conversation_uuid=f"CON-{i}", timestamp=None, payload={})
    with TestClient(app) as test_client:
        yield test_client, store
    store.dispose()


def test_json_counts_the_stored_verdicts(client: tuple[TestClient, CallStore]) -> None:
    http, _ = client
    data = http.get("/outcomes.json", params={"dag_id": DAG}).json()
    assert data["total"] == 4
    assert data["counts"] == {"answered": 2, "no_failure_reported": 1, "busy": 1}
    (run,) = data["runs"]
    assert run["counts"] == data["counts"]
    calls = {c["call_ref"]: c for c in run["calls"]}
    assert calls["vs-answered"]["outcome"] == "answered" and calls["vs-answered"]["verdict"] == "answered"
    assert calls["vs-answered"]["verdict_at"]
    assert calls["vs-silent"]["outcome"] == "no_failure_reported" and calls["vs-silent"]["verdict"] is None
    # The late callback is kept as the call's status; the view shows what the DAG reported.
    assert calls["vs-late"]["status"] == "timeout" and calls["vs-late"]["outcome"] == "answered"
    # Chart and counts agree.
    assert sum(sum(b["counts"].values()) for b in data["timeline"]["buckets"]) == 4
    assert sum(b["counts"].get("answered", 0) for b in data["timeline"]["buckets"]) == 2


def test_page_shows_answered(client: tuple[TestClient, CallStore]) -> None:
    http, _ = client
    page = http.get("/outcomes", params={"dag_id": DAG, "run_id": RUN})
    assert page.status_code == 200
    html = page.text
    row = re.search(r'<tr data-call-ref="vs-answered">.*?</tr>', html)
    assert row and 'data-outcome="answered"' in row.group(0) and "> answered<" in row.group(0)
    late = re.search(r'<tr data-call-ref="vs-late">.*?</tr>', html)
    assert late and 'data-outcome="answered"' in late.group(0)
    assert "timeout reported later" in late.group(0)
    silent = re.search(r'<tr data-call-ref="vs-silent">.*?</tr>', html)
    assert silent and "no failure reported" in silent.group(0)
    assert '<strong data-count="answered">2</strong>' in html
    # The chart's stacked bars (one per hour) count the same two calls.
    assert sum(int(n) for n in re.findall(r"UTC: (\d+) answered</title>", html)) == 2
    assert "447700900100" not in html


def test_outcome_of_prefers_the_verdict() -> None:
    from airflow_provider_vonage_studio.store import CallRecord, CallState

    now = datetime(2024, 6, 1, tzinfo=timezone.utc)
    record = CallRecord(
        call_ref="vs-1",
        agent_id="a",
        destination="447700900123",
        state=CallState.PLACED,
        dag_id=None,
        run_id=None,
        task_id=None,
        map_index=-1,
        recipient_key=None,
        session_id="s",
        session_start_time=now,
        error_status=None,
        error_message=None,
        status=None,
        status_at=None,
        conversation_uuid=None,
        callback_payload=None,
        parameters=None,
        created_at=now,
        updated_at=now,
    )
    assert record.outcome is None and view.outcome_of(record) == "no_failure_reported"
    from dataclasses import replace

    assert view.outcome_of(replace(record, outcome="answered", outcome_at=now)) == "answered"
    assert view.outcome_of(replace(record, status="busy")) == "busy"
