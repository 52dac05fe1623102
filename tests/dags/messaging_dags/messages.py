"""A DAG sending an SMS (mapped over two numbers) and a WhatsApp template to a list
(used by tests/dags/test_messaging_dags.py)."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_vonage_studio.operators.messaging import SendMessageOperator, SendMessagesOperator

with DAG(
    "vs_messages",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"template": "appointment_reminder"},
):

    @task
    def reminders() -> list[dict[str, object]]:
        """What an upstream ETL step returns: who to remind, and their name."""
        return [
            {"to": "+44 7700 900201", "key": "cust-201", "session_parameters": {"CALLER_NAME": "Ann"}},
            {"to": "+44 7700 900202", "key": "cust-202", "session_parameters": {"CALLER_NAME": "Bob"}},
        ]

    sms = SendMessageOperator.partial(
        task_id="sms",
        agent_id="msg-agent",
        channel="sms",
        session_parameters={"RUN": "{{ run_id }}"},
        retries=0,
    ).expand(to=["+44 7700 900101", "+44 7700 900102"])

    whatsapp = SendMessagesOperator(
        task_id="whatsapp",
        recipients=reminders(),
        agent_id="msg-agent",
        channel="whatsapp",
        namespace="clinic",
        template="{{ params.template }}",
        locale="en_GB",
        components=[{"type": "body", "parameters": [{"type": "text", "text": "{{ ds }}"}]}],
        retries=0,
    )

    sms >> whatsapp
