"""Phone the on-call engineer when the billing check fails.

``check_billing`` stands in for a data-quality gate: here it always finds that the invoice
totals do not add up, and raises. Two notifiers then call the on-call number through an AI
Studio agent, which reads out what broke:

* the task's ``on_failure_callback`` rings as soon as the task has failed, with the task,
  the try and the error in the session parameters;
* the DAG's ``on_failure_callback`` rings when the run as a whole has failed, with the
  ``reason`` Airflow gives and the task that caused it.

Each failure event rings once: the call goes through the provider's call ledger under a
key made of the event (DAG run, task, try), so a callback that Airflow runs twice for the
same failure does not ring twice, while the next failure (another try, another run) rings
again. ``to`` may also be a list of numbers: each is rung once.

Settings come from the environment so the DAG runs unchanged against the emulator:
``VONAGE_STUDIO_DEMO_AGENT_ID`` (default ``agent-1``) and ``VONAGE_STUDIO_DEMO_ON_CALL``
(default a UK drama-range number that never reaches a real phone).
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_provider_vonage_studio.notifications.vonage_studio import VonageStudioCallNotifier

AGENT_ID = os.environ.get("VONAGE_STUDIO_DEMO_AGENT_ID", "agent-1")
ON_CALL = os.environ.get("VONAGE_STUDIO_DEMO_ON_CALL", "+44 7700 900999")

# Values are Jinja, rendered with the callback's context when the notifier fires.
task_failed_call = VonageStudioCallNotifier(
    to=ON_CALL,
    agent_id=AGENT_ID,
    session_parameters={
        "ALERT": "task failed",
        "DAG_ID": "{{ dag.dag_id }}",
        "TASK_ID": "{{ ti.task_id }}",
        "TRY_NUMBER": "{{ ti.try_number }}",
        # The exception's text; keep personal data out of the messages you raise. Empty where the
        # context has none (`airflow dags test` before Airflow 3.3 runs callbacks without it).
        "ERROR": "{{ exception | string | truncate(200) if exception is defined else '' }}",
    },
)

run_failed_call = VonageStudioCallNotifier(
    to=ON_CALL,
    agent_id=AGENT_ID,
    session_parameters={
        "ALERT": "run failed",
        "DAG_ID": "{{ dag.dag_id }}",
        "REASON": "{{ reason }}",
        # The task Airflow names as the cause; empty when the context has none.
        "TASK_ID": "{{ ti.task_id if ti is defined else '' }}",
    },
)


@dag(
    dag_id="failure_alert_call",
    schedule="0 6 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vonage-studio", "example"],
    doc_md=__doc__,
    on_failure_callback=run_failed_call,
)
def failure_alert_call():
    @task(on_failure_callback=task_failed_call, retries=0)
    def check_billing() -> None:
        """Stand-in for a data-quality gate over last night's invoices."""
        invoiced, paid_plus_open = 10_250, 10_140
        if invoiced != paid_plus_open:
            raise ValueError(
                f"billing check: invoiced total {invoiced} != paid + open {paid_plus_open} "
                f"(difference {invoiced - paid_plus_open})"
            )

    @task
    def publish_invoices() -> None:
        """Runs only when the check passed."""

    check_billing() >> publish_invoices()


failure_alert_call()
