"""Reminder calls after the nightly ETL, one mapped task per recipient.

The mapped variant of ``reminder_calls``: a stand-in ETL step extracts tomorrow's
appointments; each recipient then gets a call from the AI Studio agent, which greets them
by name and reads the appointment time. Each call is its own mapped ``MakeCallOperator``
task instance, so a failure or retry touches one person only, and the call ledger makes
sure a retried task never rings anyone twice.

Prefer ``reminder_calls`` (one ``MakeCallsOperator`` for the whole list) for long lists:
one task paces the batch and one trigger waits for every outcome. Mapping suits short
lists where each call should show as its own task in the UI.

Run it against the emulator with ``airflow dags test reminder_calls_mapped``; point the
``vonage_studio_default`` connection at AI Studio to place real calls.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator

AGENT_ID = os.environ.get("VONAGE_STUDIO_DEMO_AGENT_ID", "agent-1")
# "HH:MM-HH:MM" in each callee's local time; unset: 08:00-21:00 (never a 3 a.m. reminder).
CALLING_WINDOW = os.environ.get("VONAGE_STUDIO_DEMO_CALLING_WINDOW") or True


@dag(
    dag_id="reminder_calls_mapped",
    schedule="0 17 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vonage-studio", "example"],
    doc_md=__doc__,
)
def reminder_calls_mapped():
    # The return value holds phone numbers: keep it out of the task log (XCom still has it).
    @task(show_return_value_in_logs=False)
    def extract_recipients() -> list[dict[str, str]]:
        """Stand-in for the ETL query: who has an appointment tomorrow."""
        return [
            {"to": "+44 7700 900123", "name": "Diane Miller", "time": "09:30"},
            {"to": "+1 (212) 555-0100", "name": "Sam Lee", "time": "11:00"},
            {"to": "+972 54 111 6037", "name": "Noa Levi", "time": "15:45"},
        ]

    recipients = extract_recipients()
    # One mapped task per recipient; the session parameters are Jinja, rendered per map index.
    MakeCallOperator.partial(
        task_id="call_recipient",
        agent_id=AGENT_ID,
        session_parameters={
            "CALLER_NAME": "{{ ti.xcom_pull(task_ids='extract_recipients')[ti.map_index]['name'] }}",
            "APPOINTMENT_TIME": "{{ ti.xcom_pull(task_ids='extract_recipients')[ti.map_index]['time'] }}",
            "APPOINTMENT_DAY": "{{ macros.ds_add(ds, 1) }}",
        },
        # Outside the window a mapped task defers (no worker slot held) and dials when it opens.
        calling_window=CALLING_WINDOW,
        retries=2,
    ).expand(to=recipients.map(lambda r: r["to"]))


reminder_calls_mapped()
