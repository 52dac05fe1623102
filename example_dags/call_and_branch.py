"""Place a call, wait for what happened, and act on it.

The AI Studio agent calls a customer about an appointment. The call's outcome then picks
the next step:

* ``answered`` → ``mark_reminded`` (e.g. flag the appointment as confirmed in your CRM);
* ``busy`` or ``timeout`` → ``retry_later`` (e.g. queue another attempt in an hour);
* anything else (``rejected``, ``cancelled``, ``failed``) → ``give_up``.

AI Studio reports only calls that were not picked up, to the ``status_url`` of each call.
The connection's ``callback_base_url`` and ``callback_secret`` make the provider give every
call a signed ``status_url`` pointing at its callback receiver (``airflow vonage-studio
callbacks serve``, or the API-server plugin); a call without a failure report within
``answer_window`` counts as answered.

``fail_on=()`` makes the sensor return failure statuses instead of failing, so the branch
can see them. Whether it waits in a worker (poke) or in the triggerer (deferrable) follows
``[operators] default_deferrable``.

Settings come from the environment so the DAG runs unchanged against the emulator:
``VONAGE_STUDIO_DEMO_AGENT_ID`` (default ``agent-1``), ``VONAGE_STUDIO_DEMO_TO`` (default a
UK drama-range number that never reaches a real phone), ``VONAGE_STUDIO_DEMO_ANSWER_WINDOW``
and ``VONAGE_STUDIO_DEMO_POKE_INTERVAL`` (seconds).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator
from airflow_provider_vonage_studio.sensors.vonage_studio import CallStatusSensor

log = logging.getLogger(__name__)

AGENT_ID = os.environ.get("VONAGE_STUDIO_DEMO_AGENT_ID", "agent-1")
# "HH:MM-HH:MM" in the callee's local time; unset: 08:00-21:00.
CALLING_WINDOW = os.environ.get("VONAGE_STUDIO_DEMO_CALLING_WINDOW") or True
TO = os.environ.get("VONAGE_STUDIO_DEMO_TO", "+44 7700 900123")
ANSWER_WINDOW = timedelta(seconds=float(os.environ.get("VONAGE_STUDIO_DEMO_ANSWER_WINDOW", "90")))
POKE_INTERVAL = float(os.environ.get("VONAGE_STUDIO_DEMO_POKE_INTERVAL", "5"))

RETRY_STATUSES = ("busy", "timeout")


@dag(
    dag_id="call_and_branch",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vonage-studio", "example"],
    doc_md=__doc__,
)
def call_and_branch():
    make_call = MakeCallOperator(
        task_id="make_call",
        to=TO,
        agent_id=AGENT_ID,
        session_parameters={"CALLER_NAME": "Diane Miller", "APPOINTMENT_DAY": "{{ macros.ds_add(ds, 1) }}"},
        calling_window=CALLING_WINDOW,
    )

    wait_for_outcome = CallStatusSensor(
        task_id="wait_for_outcome",
        call_ref=make_call.output["call_ref"],
        answer_window=ANSWER_WINDOW,
        fail_on=(),  # return busy/timeout/... for the branch instead of failing
        poke_interval=POKE_INTERVAL,
        timeout=timedelta(minutes=15),
    )

    @task.branch
    def route(status: str) -> str:
        """Pick the next step from the call's final status."""
        if status == "answered":
            return "mark_reminded"
        if status in RETRY_STATUSES:
            return "retry_later"
        return "give_up"

    @task
    def mark_reminded(call: dict) -> None:
        """Stand-in for recording the reminder (the call was answered)."""
        log.info("Reminder delivered: call %s was answered", call["call_ref"])

    @task
    def retry_later(call: dict) -> None:
        """Stand-in for scheduling another attempt (the callee was busy or did not pick up)."""
        log.info("Call %s was not picked up; calling again later", call["call_ref"])

    @task
    def give_up(call: dict) -> None:
        """Stand-in for handing over to a human (the call failed for good)."""
        log.info("Call %s failed; handing over to the front desk", call["call_ref"])

    branch = route(wait_for_outcome.output)
    branch >> [mark_reminded(make_call.output), retry_later(make_call.output), give_up(make_call.output)]


call_and_branch()
