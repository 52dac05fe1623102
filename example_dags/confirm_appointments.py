"""Call a customer about an appointment, read whether they confirmed, and save the answer.

The AI Studio agent calls the customer and asks them to confirm their appointment; the
conversation stores the answer in the session parameter ``CONFIRMED``. Then:

1. ``call_customer`` places the call (``MakeCallOperator``);
2. ``wait_for_status`` waits for its final status (``CallStatusSensor``): ``answered``,
   or the failure AI Studio reported (``busy``, ``timeout``, ...). ``fail_on=()`` returns
   failures instead of failing, so they are saved too;
3. ``read_confirmation`` reads what the conversation collected from AI Studio Insights
   (``CallResultSensor(required_parameters=["CONFIRMED"])``), waiting while the session
   is not indexed yet. For a call that failed it returns ``{"status": "<failure>"}`` at
   once instead of waiting for an answer that cannot come;
4. ``save_answer`` writes one row per call to the table ``appointment_confirmations``
   through a SQL hook. The row is keyed by ``call_ref``, so a re-run replaces it.

**Where the answers go.** Locally the table lives in SQLite, through Airflow's
``sqlite_default`` connection (``airflow connections create-default-connections`` points
it at a SQLite file in the temporary directory; or set e.g.
``AIRFLOW_CONN_SQLITE_DEFAULT='{"conn_type": "sqlite", "host": "/data/appointments.db"}'``).
``apache-airflow-providers-sqlite`` is needed for this example only, not by the provider.
To write to the warehouse instead, use that database's hook in ``save_answer``, e.g.
``PostgresHook(postgres_conn_id="warehouse")`` from ``apache-airflow-providers-postgres``
(or ``BaseHook.get_connection(conn_id).get_hook()`` for whatever the connection is):
``insert_rows(..., replace=True, replace_index="call_ref")`` becomes an upsert there too.
The answers are personal data: keep the table's access and retention accordingly.

**Failure reports.** AI Studio reports calls that were not picked up to each call's
``status_url``; give the connection ``callback_base_url`` and ``callback_secret`` and run the
provider's callback receiver so they arrive. Without them every call ends as ``answered``
after ``answer_window``, and an unanswered call waits in ``read_confirmation`` until its
``timeout``.

The sensors wait in a worker slot (poke) or in the triggerer (deferrable) according to
``[operators] default_deferrable``.

Settings come from the environment so the DAG runs unchanged against the emulator:
``VONAGE_STUDIO_DEMO_AGENT_ID`` (default ``agent-1``), ``VONAGE_STUDIO_DEMO_TO`` (default a
UK drama-range number that never reaches a real phone), ``VONAGE_STUDIO_DEMO_ANSWER_WINDOW``,
``VONAGE_STUDIO_DEMO_POKE_INTERVAL`` (seconds) and ``CONFIRM_APPOINTMENTS_SQL_CONN_ID``
(default ``sqlite_default``).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator
from airflow_provider_vonage_studio.sensors.vonage_studio import CallResultSensor, CallStatusSensor

AGENT_ID = os.environ.get("VONAGE_STUDIO_DEMO_AGENT_ID", "agent-1")
# "HH:MM-HH:MM" in the callee's local time; unset: 08:00-21:00.
CALLING_WINDOW = os.environ.get("VONAGE_STUDIO_DEMO_CALLING_WINDOW") or True
TO = os.environ.get("VONAGE_STUDIO_DEMO_TO", "+44 7700 900123")
ANSWER_WINDOW = timedelta(seconds=float(os.environ.get("VONAGE_STUDIO_DEMO_ANSWER_WINDOW", "90")))
POKE_INTERVAL = float(os.environ.get("VONAGE_STUDIO_DEMO_POKE_INTERVAL", "10"))
SQL_CONN_ID = os.environ.get("CONFIRM_APPOINTMENTS_SQL_CONN_ID", "sqlite_default")
TABLE = "appointment_confirmations"


@dag(
    dag_id="confirm_appointments",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vonage-studio", "example"],
    doc_md=__doc__,
)
def confirm_appointments():
    call_customer = MakeCallOperator(
        task_id="call_customer",
        to=TO,
        agent_id=AGENT_ID,
        session_parameters={"CALLER_NAME": "Diane Miller", "APPOINTMENT_TIME": "09:30"},
        calling_window=CALLING_WINDOW,
    )

    wait_for_status = CallStatusSensor(
        task_id="wait_for_status",
        call_ref=call_customer.output["call_ref"],
        answer_window=ANSWER_WINDOW,
        fail_on=(),  # save busy/timeout/... as answers too, rather than failing
        poke_interval=POKE_INTERVAL,
        timeout=timedelta(minutes=15),
    )

    read_confirmation = CallResultSensor(
        task_id="read_confirmation",
        call_ref=call_customer.output["call_ref"],
        required_parameters=["CONFIRMED"],
        fail_on=(),  # a failed call returns {"status": ...} at once
        poke_interval=POKE_INTERVAL,
        # An answered call whose conversation never set CONFIRMED (the callee hung up early)
        # fails here after this long.
        timeout=timedelta(minutes=30),
    )

    @task
    def save_answer(call: dict, status: str, result: dict) -> dict:
        """Upsert the call's answer into ``appointment_confirmations`` (one row per call)."""
        from airflow.providers.sqlite.hooks.sqlite import SqliteHook

        row = {
            "call_ref": call["call_ref"],
            "session_id": call["session_id"],
            # A failed call's status comes from the result sensor, which saw it first-hand.
            "call_status": result.get("status", status),
            "confirmed": result.get("CONFIRMED"),
            "recorded_at": pendulum.now("UTC").isoformat(),
        }
        hook = SqliteHook(sqlite_conn_id=SQL_CONN_ID)
        # Portable DDL (TEXT columns), so the same statement works on the warehouse.
        hook.run(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (call_ref TEXT PRIMARY KEY, session_id TEXT, "
            "call_status TEXT, confirmed TEXT, recorded_at TEXT)"
        )
        hook.insert_rows(
            TABLE, [tuple(row.values())], target_fields=list(row), replace=True, replace_index="call_ref"
        )
        return {"call_ref": row["call_ref"], "call_status": row["call_status"], "confirmed": row["confirmed"]}

    wait_for_status >> read_confirmation
    save_answer(call_customer.output, wait_for_status.output, read_confirmation.output)


confirm_appointments()
