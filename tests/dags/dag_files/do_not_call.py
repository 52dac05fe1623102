"""Test DAGs for do_not_call from XCom and from a template (used by tests/dags/test_do_not_call_dags.py)."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator, MakeCallsOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")

with DAG("vs_dnc_from_xcom", schedule=None, start_date=START):

    @task
    def opted_out() -> list[str]:
        """What an upstream lookup of the people who asked not to be called returns."""
        return ["+44 7700 900313"]

    MakeCallOperator(
        task_id="call",
        to="+44 7700 900313",
        agent_id="agent-1",
        do_not_call=opted_out(),
        retries=0,
    )

with DAG("vs_dnc_from_template", schedule=None, start_date=START, params={"dnc": "+447700900313"}):
    MakeCallsOperator(
        task_id="calls",
        recipients=["+447700900313", "+447700900314"],
        agent_id="agent-1",
        do_not_call="{{ params.dnc }}",
        retries=0,
    )
