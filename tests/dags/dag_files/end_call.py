"""A call confirmed answered by its agent's end-call webhook (used by tests/dags/test_end_call_dag.py)."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator
from airflow_provider_vonage_studio.sensors.vonage_studio import CallStatusSensor

with DAG("vs_end_call", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    call = MakeCallOperator(
        task_id="call",
        to=os.environ.get("VS_TEST_TO", "+44 7700 900456"),
        agent_id="agent-1",
        session_parameters={"CALLER_NAME": "Ada"},
        retries=0,
    )
    CallStatusSensor(
        task_id="wait",
        call_ref=call.output["call_ref"],
        # Far longer than the test may take: only the end-call record can end the wait in time.
        answer_window=float(os.environ.get("VS_TEST_ANSWER_WINDOW", "600")),
        poke_interval=0.2,
        timeout=120,
        require_confirmed=True,
        retries=0,
    )
