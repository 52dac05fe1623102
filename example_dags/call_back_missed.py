"""Call back each missed recipient as soon as the miss is recorded: an event-driven DAG.

The asset ``vonage_studio://outcomes/missed`` is watched in the triggerer by
``CallOutcomeEventTrigger(statuses=("busy", "timeout"))``: every call of ``AGENT_ID`` that AI
Studio reports busy or timed out becomes an asset event, and the DAG runs for it (events that
arrive together may share one run: the DAG calls back every one of them). No polling DAG, no
schedule: compare ``retry_unanswered.py``, which reads the store once a day (the scheduled
alternative, kept for teams that prefer a daily batch).

The events carry no phone number (the triggerer logs each event it fires): the first task
looks the numbers up in the call store by call_ref. The callbacks go out with
``MakeCallsOperator``: paced, once per number per run, each only inside its local calling
window (08:00-21:00 by default; a recipient whose window is closed waits in the triggerer
until it opens). Calls this DAG placed itself are not called back again (a number gets one
call back, not one per miss for ever).

The watcher's cursor is kept in the call store under the name ``call_back_missed``, and the
first task acknowledges the events it acts on (``claim_outcomes``): a triggerer restart neither
loses a miss nor has it called back twice (see docs/outcomes.md).

Settings come from the environment so the DAG runs unchanged against the emulator:
``VONAGE_STUDIO_DEMO_AGENT_ID`` (default ``agent-1``), ``VONAGE_STUDIO_DEMO_CALLING_WINDOW``
(``"HH:MM-HH:MM"`` in each callee's local time; default 08:00-21:00) and
``VONAGE_STUDIO_OUTCOME_POLL_SECONDS`` (how often the watcher reads the store; default 5) and
``VONAGE_STUDIO_OUTCOME_REDELIVER_SECONDS`` (default 300).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pendulum
from airflow.sdk import Asset, AssetWatcher, dag, task

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator
from airflow_provider_vonage_studio.triggers.outcome_events import CallOutcomeEventTrigger

log = logging.getLogger(__name__)

DAG_ID = "call_back_missed"
WATCHER = DAG_ID  # the watcher's name: its cursor in the call store
AGENT_ID = os.environ.get("VONAGE_STUDIO_DEMO_AGENT_ID", "agent-1")
# "HH:MM-HH:MM" in each callee's local time; unset: 08:00-21:00.
CALLING_WINDOW = os.environ.get("VONAGE_STUDIO_DEMO_CALLING_WINDOW") or True
POLL_SECONDS = float(os.environ.get("VONAGE_STUDIO_OUTCOME_POLL_SECONDS", "5"))
# An event no run acknowledged within this long is handed over again (Airflow lost it, or the
# run failed before its first task claimed it).
REDELIVER_SECONDS = float(os.environ.get("VONAGE_STUDIO_OUTCOME_REDELIVER_SECONDS", "300"))

MISSED = Asset(
    "vonage_studio://outcomes/missed",
    watchers=[
        AssetWatcher(
            name="vonage_studio_missed_calls",
            trigger=CallOutcomeEventTrigger(
                statuses=("busy", "timeout"),
                agent_id=AGENT_ID,
                name=WATCHER,
                poll_interval=POLL_SECONDS,
                redeliver_after=REDELIVER_SECONDS,
            ),
        )
    ],
)


@dag(
    dag_id=DAG_ID,
    schedule=[MISSED],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vonage-studio", "example"],
    doc_md=__doc__,
)
def call_back_missed():
    # The return value holds phone numbers: keep it out of the task log (XCom still has it).
    @task(show_return_value_in_logs=False)
    def missed_recipients(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """The numbers to call back, from this run's outcome events (numbers read from the store)."""
        # Imported here: the store (SQLAlchemy) is not needed to parse the DAG.
        from airflow_provider_vonage_studio.triggers.outcome_events import claim_outcomes, destinations_of

        try:
            events = list(triggering_asset_events[MISSED]) if triggering_asset_events else []
        except KeyError:  # a run triggered by hand: no events
            events = []
        payloads = [(event.extra or {}).get("payload") or {} for event in events]
        missed = {p["call_ref"]: p for p in payloads if p.get("call_ref") and p.get("dag_id") != DAG_ID}
        # Acknowledge the events: an event handed over twice (after a triggerer restart) is acted
        # on by one run only; one never acknowledged is handed over again, so none is lost.
        claimed = claim_outcomes(WATCHER, [p["call_ref"] for p in payloads if p.get("call_ref")])
        missed = {ref: payload for ref, payload in missed.items() if ref in claimed}
        numbers = destinations_of(missed)
        recipients = [
            {
                "to": numbers[ref],
                # One call back per missed call, even should two events of one run name it.
                "key": ref,
                "session_parameters": {"PREVIOUS_STATUS": payload["status"], "MISSED_CALL_REF": ref},
            }
            for ref, payload in missed.items()
            if ref in numbers
        ]
        log.info("%d missed call(s) in this run's events; calling back %d", len(payloads), len(recipients))
        return recipients

    MakeCallsOperator(
        task_id="call_back",
        recipients=missed_recipients(),
        agent_id=AGENT_ID,
        session_parameters={"CALL_BACK": "true"},  # merged with each recipient's own
        calling_window=CALLING_WINDOW,
    )


call_back_missed()
