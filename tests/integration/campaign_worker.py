"""A reminder campaign's task, run the way Airflow runs it (``python -m tests.integration.campaign_worker``).

:func:`campaign_operator` builds the one operator the campaign tests use, so the test process
and a worker process (killed with SIGKILL mid-wave, as a crashed worker would be) name the
same ledger rows. :func:`drive` plays Airflow's part in-process: it runs ``execute``, and for
each deferral runs the trigger (a status trigger) or waits for its moment (a date-time
trigger), then calls the resume method with the event and the deferral's kwargs, as the
triggerer and a worker would.

As a script it runs one ``execute`` of the task (connection and store from the environment)
and stops at the first deferral: that is one worker's share of the campaign.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

DAG_ID, RUN_ID, TASK_ID = "campaign_dag", "manual__campaign", "remind"
AGENT, MESSAGE_AGENT = "agent-1", "agent-messages"


class FakeTI:
    """The slice of a task instance the operator uses: identity and xcom_push."""

    def __init__(self) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = DAG_ID, RUN_ID, TASK_ID, -1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def campaign_operator(
    recipients: list[Any], *, max_attempts: int = 3, spacing: float = 1.0, **extra: Any
) -> Any:
    from airflow_provider_vonage_studio.campaign import CallAttempts, MessageFallback
    from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator

    return MakeCallsOperator(
        task_id=TASK_ID,
        recipients=recipients,
        agent_id=AGENT,
        attempts=CallAttempts(max_attempts=max_attempts, spacing=timedelta(seconds=spacing)),
        then_message=MessageFallback(
            agent_id=MESSAGE_AGENT,
            channel="whatsapp",
            namespace="reminders",
            template="appointment",
            locale="en",
        ),
        answer_window=1.0,
        poke_interval=0.2,
        **extra,
    )


def context() -> Any:
    return {"ti": FakeTI()}


def drive(
    op: Any,
    ctx: Any,
    *,
    on_defer: Callable[[Any], None] | None = None,
    stop_at_datetime: bool = False,
    limit: int = 60,
) -> Any:
    """Run the task to its end as Airflow would; ``on_defer(deferral)`` sees each deferral."""
    from airflow.providers.common.compat.sdk import TaskDeferred
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    step: Callable[[], Any] = lambda: op.execute(ctx)  # noqa: E731
    for _ in range(limit):
        try:
            return step()
        except TaskDeferred as deferral:
            if on_defer is not None:
                on_defer(deferral)
            trigger = deferral.trigger
            if isinstance(trigger, DateTimeTrigger):
                if stop_at_datetime:
                    return deferral
                time.sleep(max(0.0, (trigger.moment - datetime.now(timezone.utc)).total_seconds()))
                event: Any = None
            else:
                event = asyncio.run(asyncio.wait_for(_first(trigger), 30))
            method = getattr(op, deferral.method_name)
            kwargs = dict(deferral.kwargs or {})
            step = lambda m=method, e=event, k=kwargs: m(ctx, event=e, **k)  # noqa: E731
    raise AssertionError(f"the task deferred more than {limit} times")


async def _first(trigger: Any) -> Any:
    return (await anext(trigger.run())).payload


def main(argv: list[str] | None = None) -> int:
    from airflow.providers.common.compat.sdk import TaskDeferred

    parser = argparse.ArgumentParser(prog="python -m tests.integration.campaign_worker")
    parser.add_argument("--recipients", required=True, help="JSON list")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=1.0)
    args = parser.parse_args(argv)
    op = campaign_operator(json.loads(args.recipients), max_attempts=args.max_attempts, spacing=args.spacing)
    try:
        op.execute(context())
    except TaskDeferred as deferral:
        print(f"deferred: {type(deferral.trigger).__name__} {deferral.method_name}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
