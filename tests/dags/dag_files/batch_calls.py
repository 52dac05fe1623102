"""Test DAGs for MakeCallsOperator and calling windows (used by tests/dags/test_batch_dags.py)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator, MakeCallsOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")

with DAG("vs_batch_calls", schedule=None, start_date=START):

    @task
    def recipients() -> list[object]:
        # What an upstream query typically hands over: numbers, and rows with keys and parameters.
        return [
            "+44 7700 900201",
            {"to": "447700900202", "key": "cust-202", "session_parameters": {"CALLER_NAME": "Ann"}},
            "call me maybe",
            "0044 7700 900201",
            "447700900203",
            {"to": "+1 212 555 0104", "session_parameters": {"CALLER_NAME": "Bo"}},
        ]

    MakeCallsOperator(
        task_id="call_all",
        recipients=recipients(),
        agent_id="agent-1",
        session_parameters={"CAMPAIGN": "{{ dag.dag_id }}"},
        fail_on_rejected=False,
        progress_interval=1.0,
    )


def _window(opens_at: float, tz: str, hours: int = 2) -> tuple[str, str]:
    """A window of ``hours`` that opens at epoch ``opens_at``, in ``tz``'s wall-clock time."""
    start = datetime.fromtimestamp(opens_at, ZoneInfo(tz))
    return start.strftime("%H:%M:%S"), (start + timedelta(hours=hours)).strftime("%H:%M:%S")


def _opening_times() -> dict[str, float]:
    """When the test's windows open: a few seconds after the first task of the run asks.

    The first call writes the times to ``VS_WINDOW_STATE`` and every later one (a resumed task,
    the next task) reads them back, so the windows never move during the run. Fixed at run time
    rather than parse time because ``airflow dags test`` takes a while between the two.
    """
    path = os.environ.get("VS_WINDOW_STATE")
    if not path:  # other tests parse this folder too: any window will do
        return {"batch": 0.0, "single": 0.0}
    now = time.time()
    # The single call runs after the batch task: 40 s between the two leave it closed when it
    # first asks, even where `airflow dags test` starts tasks slowly (before Airflow 3.3, or on
    # a busy machine).
    wanted = {"batch": now + 8, "single": now + 48}
    try:
        with open(path, "x") as handle:
            json.dump(wanted, handle)
        return wanted
    except FileExistsError:
        with open(path) as handle:
            return dict(json.load(handle))


class BatchInTestWindow(MakeCallsOperator):
    """MakeCallsOperator whose calling window is fixed when the task first runs."""

    def execute(self, context):
        self.calling_window = _window(_opening_times()["batch"], "UTC")
        return super().execute(context)

    def execute_after_window(self, context, event=None):
        self.calling_window = _window(_opening_times()["batch"], "UTC")
        return super().execute_after_window(context, event)


class CallInTestWindow(MakeCallOperator):
    """MakeCallOperator whose calling window (in London time) is fixed when the run first asks."""

    def execute(self, context):
        self.calling_window = _window(_opening_times()["single"], "Europe/London")
        return super().execute(context)


with DAG("vs_window_calls", schedule=None, start_date=START):
    batch = BatchInTestWindow(
        task_id="call_in_window",
        recipients=[
            # UTC+1 all year: its wall clock is an hour ahead, so its window is already open.
            {"to": "447700900221", "timezone": "Etc/GMT-1"},
            # Read in UTC: its window opens a few seconds into the run.
            {"to": "447700900222", "timezone": "UTC"},
        ],
        agent_id="agent-1",
        calling_window=True,
    )
    single = CallInTestWindow(
        task_id="call_one_in_window",
        to="+44 20 7946 0222",  # a London number: its zone comes from phonenumbers
        agent_id="agent-1",
        calling_window=True,
    )
    batch >> single
