"""A MakeCallsOperator reading its recipients from a file URI (used by tests/dags/test_batch_file_dag.py)."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator

with DAG("vs_batch_file_calls", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    MakeCallsOperator(
        task_id="call_file",
        # The test passes file:///.../campaign.jsonl; s3:// and friends work alike with their provider.
        recipients="{{ dag_run.conf['recipients_uri'] }}",
        agent_id="agent-1",
        session_parameters={"CAMPAIGN": "{{ dag.dag_id }}"},
        fail_on_rejected=False,
        progress_interval=1.0,
    )
