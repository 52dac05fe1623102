"""Test DAGs for ExportSessionsOperator in real Airflow (used by tests/dags/test_export_sessions.py).

None of them passes from_date/to_date: the window comes from what Airflow hands the task
(pendulum values), which is the path scheduled runs take.
"""

from __future__ import annotations

import os
import tempfile

import pendulum
from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable

from airflow_provider_vonage_studio.operators.vonage_studio import ExportSessionsOperator

EXPORT_DIR = os.environ.get("VS_TEST_EXPORT_DIR") or os.path.join(tempfile.gettempdir(), "vs-exports")
DESTINATION = "file://" + EXPORT_DIR + "/{{ dag.dag_id }}/{{ run_id | replace(':', '_') }}.jsonl"
START = pendulum.datetime(2026, 1, 1, tz="UTC")

# Daily data intervals at midnight in Paris (23:00 or 22:00 UTC): pendulum values in a
# non-UTC zone, as a scheduled run receives them.
with DAG(
    "vs_export_interval",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="Europe/Paris"),
    start_date=START,
    catchup=False,
):
    ExportSessionsOperator(task_id="export", destination=DESTINATION, page_size=3, retries=0)

# A cron trigger (Airflow 3's meaning of "@daily"): the run's data interval is empty
# (start == end == logical date), so the lookback before it is exported.
with DAG("vs_export_trigger", schedule="@daily", start_date=START, catchup=False):
    ExportSessionsOperator(
        task_id="export", destination=DESTINATION, lookback=pendulum.duration(hours=6), retries=0
    )

# Unscheduled: a manual run, exported over the lookback before the run's anchor.
with DAG("vs_export_manual", schedule=None, start_date=START, catchup=False):
    ExportSessionsOperator(task_id="export", destination=DESTINATION, retries=0)
