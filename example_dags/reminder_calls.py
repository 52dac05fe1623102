"""Reminder calls after the nightly ETL: dial everyone, wait for the outcomes, list who missed it.

1. ``extract_recipients`` stands in for the ETL query: tomorrow's appointments, each with
   the appointment id as ``key`` (what identifies the recipient across task retries) and
   the session parameters the agent reads (``$CALLER_NAME``, ``$APPOINTMENT_TIME``);
2. ``call_recipients`` (``MakeCallsOperator``) dials the whole list from one task, paced
   at the connection's calls per second, each person exactly once even if the task is
   retried. With ``wait_for_status=True`` it then waits for every call's outcome in the
   triggerer (``deferrable=True``: one trigger for the whole batch, no worker slot held);
3. ``collect_unanswered`` lists the appointments whose callee did not pick up (``busy``,
   ``timeout``, ``rejected``, ...), e.g. for a second attempt tomorrow
   (see ``retry_unanswered``). Its result names no phone number: only keys and statuses
   (and no task log shows a full number).

AI Studio reports only the calls that were not picked up, to each call's ``status_url``;
give the ``vonage_studio_default`` connection ``callback_base_url`` (where the provider's
callback receiver is reachable, e.g. ``https://airflow.example.com/vonage-studio`` for the
API-server plugin) and ``callback_secret``. A call with no failure report within
``answer_window`` counts as ``answered``.

``make demo`` runs this DAG in a real Airflow (scheduler, triggerer, API server with the
plugin) against the AI Studio emulator. Settings come from the environment so the DAG runs
unchanged there: ``VONAGE_STUDIO_DEMO_AGENT_ID`` (default ``agent-1``),
``VONAGE_STUDIO_DEMO_ANSWER_WINDOW`` (seconds, default 90) and
``VONAGE_STUDIO_DEMO_POKE_INTERVAL`` (seconds between store reads, default 5).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator

log = logging.getLogger(__name__)

AGENT_ID = os.environ.get("VONAGE_STUDIO_DEMO_AGENT_ID", "agent-1")
ANSWER_WINDOW = timedelta(seconds=float(os.environ.get("VONAGE_STUDIO_DEMO_ANSWER_WINDOW", "90")))
POKE_INTERVAL = float(os.environ.get("VONAGE_STUDIO_DEMO_POKE_INTERVAL", "5"))
# "HH:MM-HH:MM" in each callee's local time; unset: 08:00-21:00 (never a 3 a.m. reminder).
CALLING_WINDOW = os.environ.get("VONAGE_STUDIO_DEMO_CALLING_WINDOW") or True


@dag(
    dag_id="reminder_calls",
    schedule="0 17 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vonage-studio", "example"],
    doc_md=__doc__,
)
def reminder_calls():
    # The return value holds phone numbers: keep it out of the task log (XCom still has it).
    @task(show_return_value_in_logs=False)
    def extract_recipients() -> list[dict[str, Any]]:
        """Stand-in for the ETL query: who has an appointment tomorrow.

        Drama-range / fictional numbers: they never reach a real phone.
        """
        return [
            {
                "key": "appt-1001",
                "to": "+44 7700 900123",
                "session_parameters": {"CALLER_NAME": "Diane Miller", "APPOINTMENT_TIME": "09:30"},
            },
            {
                "key": "appt-1002",
                "to": "+1 (212) 555-0100",
                "session_parameters": {"CALLER_NAME": "Sam Lee", "APPOINTMENT_TIME": "11:00"},
            },
            {
                "key": "appt-1003",
                "to": "+972 54 111 6037",
                "session_parameters": {"CALLER_NAME": "Noa Levi", "APPOINTMENT_TIME": "15:45"},
            },
            {
                "key": "appt-1004",
                "to": "+44 7700 900456",
                "session_parameters": {"CALLER_NAME": "Ravi Patel", "APPOINTMENT_TIME": "16:15"},
            },
        ]

    call_recipients = MakeCallsOperator(
        task_id="call_recipients",
        recipients=extract_recipients(),
        agent_id=AGENT_ID,
        # Shared by every call; each recipient's own parameters are merged over these by name.
        session_parameters={"APPOINTMENT_DAY": "{{ macros.ds_add(ds, 1) }}"},
        # Whoever is outside the window waits in the triggerer until it opens for them.
        calling_window=CALLING_WINDOW,
        wait_for_status=True,
        answer_window=ANSWER_WINDOW,
        poke_interval=POKE_INTERVAL,
        # Waiting for outcomes can take minutes: do it in the triggerer, not in a worker slot.
        deferrable=True,
        # A retry resumes the batch from the call ledger: nobody already called is called again.
        retries=2,
    )

    @task
    def collect_unanswered(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The appointments whose callee did not pick up, with what happened instead."""
        unanswered = []
        for result in results:
            if result.get("status") == "answered":
                continue
            # A recipient that was never placed (skipped, refused) has no status: say why.
            outcome = result.get("status") or f"not placed ({result.get('result')})"
            unanswered.append({"key": result.get("key"), "outcome": outcome})
        log.info("%d of %d callee(s) did not pick up: %s", len(unanswered), len(results), unanswered)
        return unanswered

    collect_unanswered(call_recipients.output)


reminder_calls()
