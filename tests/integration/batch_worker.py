"""``MakeCallsOperator.execute`` in a process of its own (``python -m tests.integration.batch_worker``),
so a test can kill it with SIGKILL mid-batch, as a worker crash would, and run it again as
Airflow's retry does.

The recipients come from ``--recipients`` (a file URI, streamed as in a real task). Pacing is off
(``VonageStudioHook(pace=False)``, the hook's testing knob) against an emulator whose limit the
test lifted, so thousands of calls take seconds. The task's return value is written to
``--xcom`` as JSON. Connection and store come from the environment, as in a worker.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tests.integration.dial_workers import FakeTI


def unpaced_operator_class() -> type:
    """``MakeCallsOperator`` whose hook does not pace (for an emulator with a lifted limit)."""
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
    from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator

    class UnpacedMakeCallsOperator(MakeCallsOperator):
        @property
        def hook(self) -> VonageStudioHook:
            return VonageStudioHook(self.vonage_studio_conn_id, pace=False, retry_backoff=0.01)

    return UnpacedMakeCallsOperator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.batch_worker")
    parser.add_argument("--recipients", required=True)
    parser.add_argument("--xcom", required=True)
    parser.add_argument("--agent", default="agent-1")
    parser.add_argument("--dag-id", default="stream_dag")
    parser.add_argument("--run-id", default="manual__stream")
    args = parser.parse_args(argv)
    operator = unpaced_operator_class()(
        task_id="dial",
        recipients=args.recipients,
        agent_id=args.agent,
        fail_on_rejected=False,
        progress_interval=1.0,
    )
    context: Any = {"ti": FakeTI(args.dag_id, args.run_id, "dial", -1)}
    value = operator.execute(context)
    Path(args.xcom).write_text(json.dumps(value))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
