"""A reminder campaign that finishes the job: three calls an hour apart, then WhatsApp.

1. ``extract_appointments`` stands in for the ETL query: tomorrow's appointments, each with
   the appointment id as ``key`` and the session parameters the agents read;
2. ``call_customers`` (``MakeCallsOperator`` with ``attempts=CallAttempts(...)``) calls
   everyone, waits for the outcomes in the triggerer, then **defers until the next wave is
   due** (no worker slot held) and calls again only those who were busy, did not pick up or
   whose call failed: at most three calls each, an hour apart, only inside the calling
   window in each callee's local time. Whoever was reached or declined is never called
   again. The do-not-call list is read again before every wave. Each attempt is its own
   ledger entry, so a crashed or retried task never calls anyone twice in one wave;
3. ``then_message=MessageFallback(...)`` sends one WhatsApp template message, once, to each
   customer never reached after the last attempt (and to no one else), inside the window;
4. ``summary`` prints one line per appointment (attempts, disposition, message) and returns
   the count per disposition. Nothing it logs or returns names a full phone number.

AI Studio reports calls nobody picked up to each call's ``status_url``: the connection needs
``callback_base_url`` and ``callback_secret`` (the campaign refuses to start without them).

``make demo ARGS=--campaign`` (or ``make demo-campaign``) runs this DAG in a real Airflow
against the emulator, with the spacing shortened to seconds. Settings from the environment:
``VONAGE_STUDIO_DEMO_AGENT_ID`` (voice agent, default ``agent-1``),
``VONAGE_STUDIO_CAMPAIGN_MESSAGE_AGENT_ID`` (messaging agent, default ``agent-messages``),
``VONAGE_STUDIO_CAMPAIGN_SPACING`` (seconds between waves, default 3600),
``VONAGE_STUDIO_CAMPAIGN_CALLING_WINDOW`` (``HH:MM-HH:MM``, default ``09:00-20:00``),
``VONAGE_STUDIO_DEMO_ANSWER_WINDOW`` and ``VONAGE_STUDIO_DEMO_POKE_INTERVAL`` (seconds),
``VONAGE_STUDIO_CAMPAIGN_RETRIES`` (default 2) and ``VONAGE_STUDIO_CAMPAIGN_RETRY_DELAY``
(seconds, default 60).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task

from airflow_provider_vonage_studio.campaign import CallAttempts, MessageFallback
from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator

log = logging.getLogger(__name__)

AGENT_ID = os.environ.get("VONAGE_STUDIO_DEMO_AGENT_ID", "agent-1")
MESSAGE_AGENT_ID = os.environ.get("VONAGE_STUDIO_CAMPAIGN_MESSAGE_AGENT_ID", "agent-messages")
SPACING = timedelta(seconds=float(os.environ.get("VONAGE_STUDIO_CAMPAIGN_SPACING", "3600")))
CALLING_WINDOW = tuple(os.environ.get("VONAGE_STUDIO_CAMPAIGN_CALLING_WINDOW", "09:00-20:00").split("-", 1))
ANSWER_WINDOW = timedelta(seconds=float(os.environ.get("VONAGE_STUDIO_DEMO_ANSWER_WINDOW", "90")))
POKE_INTERVAL = float(os.environ.get("VONAGE_STUDIO_DEMO_POKE_INTERVAL", "5"))
RETRIES = int(os.environ.get("VONAGE_STUDIO_CAMPAIGN_RETRIES", "2"))
RETRY_DELAY = timedelta(seconds=float(os.environ.get("VONAGE_STUDIO_CAMPAIGN_RETRY_DELAY", "60")))


@dag(
    dag_id="reminder_campaign",
    schedule="0 8 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vonage-studio", "example"],
    doc_md=__doc__,
    # A retry resumes the campaign from the call ledger: nobody is called twice in one wave.
    default_args={"retries": RETRIES, "retry_delay": RETRY_DELAY},
)
def reminder_campaign():
    # The return value holds phone numbers: keep it out of the task log (XCom still has it).
    @task(show_return_value_in_logs=False)
    def extract_appointments() -> list[dict[str, Any]]:
        """Tomorrow's appointments (a stand-in for the ETL output)."""
        return [
            {
                "to": "+44 7700 900123",
                "key": "appt-1001",
                "session_parameters": {"CALLER_NAME": "Diane Miller"},
            },
            {"to": "+1 212 555 0100", "key": "appt-1002", "session_parameters": {"CALLER_NAME": "Ray Chen"}},
            {"to": "+44 7700 900456", "key": "appt-1003", "session_parameters": {"CALLER_NAME": "Ana Silva"}},
        ]

    call_customers = MakeCallsOperator(
        task_id="call_customers",
        recipients=extract_appointments(),
        agent_id=AGENT_ID,
        session_parameters={"APPOINTMENT_DATE": "{{ macros.ds_add(ds, 1) }}"},
        calling_window=CALLING_WINDOW,
        attempts=CallAttempts(max_attempts=3, retry_on=("busy", "timeout", "failed"), spacing=SPACING),
        then_message=MessageFallback(
            agent_id=MESSAGE_AGENT_ID,
            channel="whatsapp",
            namespace="appointments",
            template="appointment_reminder",
            locale="en_GB",
            components=[{"type": "body", "parameters": [{"type": "text", "text": "tomorrow"}]}],
        ),
        answer_window=ANSWER_WINDOW,
        poke_interval=POKE_INTERVAL,
        fail_on_rejected=False,
    )

    @task
    def summary(results: list[dict[str, Any]]) -> dict[str, int]:
        """One line per appointment and the count per disposition (keys only, no numbers)."""
        counts: dict[str, int] = {}
        for result in results:
            attempts = ", ".join(f"#{a['attempt']} {a['outcome']}" for a in result["attempts"]) or "none"
            message = (result.get("message") or {}).get("result", "-")
            log.info(
                "%s: %s; attempts %s; message %s", result["key"], result["disposition"], attempts, message
            )
            counts[result["disposition"]] = counts.get(result["disposition"], 0) + 1
        return counts

    summary(call_customers.output)


reminder_campaign()
