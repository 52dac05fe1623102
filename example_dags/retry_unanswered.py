"""Call back yesterday's busy and timed-out recipients, inside their calling window.

Every morning this DAG reads the provider's call store for the calls of the previous day
(the run's data interval, or the 24 hours before the run when it has none, as with a cron
schedule), finds the numbers whose last call was reported ``busy`` or ``timeout``, and
dials them again with ``MakeCallsOperator``: paced, once per number, each only inside its
local calling window (08:00-21:00 by default; a recipient whose window is closed waits in
the triggerer until it opens).

Which calls count:

* only calls of ``AGENT_ID``, and not those made by this DAG itself: a number gets one
  call back, not one every day for ever;
* per number, the *last* call of the period decides: someone who was busy at 09:00 but
  answered at 11:00 is not called again;
* ``rejected`` (the callee declined), ``cancelled`` and ``failed`` are not called back, nor
  calls AI Studio refused, nor numbers on the do-not-call list (``airflow vonage-studio dnc``).

Statuses reach the store through the provider's callback receiver: the connection needs
``callback_base_url`` and ``callback_secret`` on the DAGs that place the first calls.

Settings come from the environment so the DAG runs unchanged against the emulator:
``VONAGE_STUDIO_DEMO_AGENT_ID`` (default ``agent-1``), ``VONAGE_STUDIO_DEMO_CALLING_WINDOW``
(``"HH:MM-HH:MM"`` in each callee's local time; default 08:00-21:00) and
``VONAGE_STUDIO_DEMO_LOOKBACK_HOURS`` (default 24).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator

log = logging.getLogger(__name__)

DAG_ID = "retry_unanswered"
AGENT_ID = os.environ.get("VONAGE_STUDIO_DEMO_AGENT_ID", "agent-1")
LOOKBACK = timedelta(hours=float(os.environ.get("VONAGE_STUDIO_DEMO_LOOKBACK_HOURS", "24")))
# "HH:MM-HH:MM" in each callee's local time; unset: 08:00-21:00.
CALLING_WINDOW = os.environ.get("VONAGE_STUDIO_DEMO_CALLING_WINDOW") or True
RETRY_STATUSES = ("busy", "timeout")


@dag(
    dag_id=DAG_ID,
    schedule="0 10 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vonage-studio", "example"],
    doc_md=__doc__,
)
def retry_unanswered():
    # The return value holds phone numbers: keep it out of the task log (XCom still has it).
    @task(show_return_value_in_logs=False)
    def yesterdays_unanswered(
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
        logical_date: datetime | None = None,
        dag_run: Any = None,
    ) -> list[dict[str, Any]]:
        """The numbers to call back, with the status of their last call as a session parameter."""
        # Imported here: the store (SQLAlchemy) is not needed to parse the DAG.
        from airflow_provider_vonage_studio.store import CallStore

        if (
            data_interval_start is not None
            and data_interval_end is not None
            and (data_interval_end > data_interval_start)
        ):
            since, until = data_interval_start, data_interval_end
        else:
            # Cron schedules give an empty interval in Airflow 3: look back from the run's
            # own time (not the clock), so consecutive runs cover consecutive periods.
            anchor = data_interval_end or logical_date or dag_run.run_after
            since, until = anchor - LOOKBACK, anchor

        last_call = {}
        for call in CallStore.default().calls_between(since, until, agent_id=AGENT_ID):  # oldest first
            if call.dag_id != DAG_ID:
                last_call[call.destination] = call
        recipients = [
            {"to": call.destination, "session_parameters": {"PREVIOUS_STATUS": call.status}}
            for call in last_call.values()
            if call.status in RETRY_STATUSES
        ]
        log.info(
            "%d of %d number(s) called between %s and %s get a call back",
            len(recipients),
            len(last_call),
            since.isoformat(),
            until.isoformat(),
        )
        return recipients

    MakeCallsOperator(
        task_id="call_back",
        recipients=yesterdays_unanswered(),
        agent_id=AGENT_ID,
        session_parameters={"CALL_BACK": "true"},  # merged with each recipient's own
        calling_window=CALLING_WINDOW,
    )


retry_unanswered()
