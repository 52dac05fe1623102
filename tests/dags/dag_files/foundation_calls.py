"""Test DAGs for the operator over real HTTP (used by tests/dags/test_foundation_dags.py)."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator

NUMBERS = os.environ.get("VS_TEST_NUMBERS", "447700900123,12125550100,972541116037").split(",")

with DAG("vs_mapped_calls", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    MakeCallOperator.partial(
        task_id="call",
        agent_id="agent-1",
        session_parameters={"CALLER_NAME": "{{ dag.dag_id }}", "RUN_DAY": "{{ ds }}"},
    ).expand(to=NUMBERS)

with DAG("vs_single_call", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    MakeCallOperator(
        task_id="call",
        to=os.environ.get("VS_TEST_TO", "+44 7700 900123"),
        agent_id=os.environ.get("VS_TEST_AGENT", "agent-1"),
        session_parameters=[{"name": "CALLER_NAME", "value": "Diane Miller"}],
        retries=0,
    )

# Two connections that pace separately (one per agent, one per key) dial the same agent back to
# back: the second call meets the emulator's strict limit and must be absorbed by a retry.
with DAG("vs_unpaced_pair", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    first = MakeCallOperator(task_id="first", to="447700900123", agent_id="agent-1")
    second = MakeCallOperator(
        task_id="second", to="12125550100", agent_id="agent-1", vonage_studio_conn_id="vs_other"
    )
    first >> second
