"""Dialing processes for the fault-injection and pacing tests (``python -m tests.integration.dial_workers``).

Each runs exactly the code a task runs, in a process of its own, so that a test can run
several at once against one emulator and one call store, or kill one with SIGKILL mid-batch
as a worker crash would:

``batch``
    The batch dialing loop of ``MakeCallsOperator`` (``plan_recipients`` + ``BatchDialer.run``)
    for the recipients in a JSON file; the final report is written to ``--results``. Pacing is
    off (``VonageStudioHook(pace=False)``, the hook's testing knob) so that 1,000 calls against
    an emulator with a lifted limit take seconds, not minutes; ``--pace`` turns it on.
``mapped``
    ``MakeCallOperator.execute`` for several mapped task instances (``--map-indexes``), one
    after another, as a worker running mapped tasks would: paced through the shared store.
    Waits for ``--go-file`` to appear after writing ``--ready-file``, so that all processes of
    a test start dialing at the same moment.

Connection and store come from the environment (``AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT``,
``AIRFLOW__VONAGE_STUDIO__STORE_URL``), as in a worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


class FakeTI:
    """The slice of a task instance the operators use: identity and xcom_push."""

    def __init__(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = dag_id, run_id, task_id, map_index
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def run_batch(args: argparse.Namespace) -> int:
    from airflow_provider_vonage_studio.batch import BatchDialer, plan_recipients
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
    from airflow_provider_vonage_studio.store import CallStore

    recipients = json.loads(Path(args.recipients).read_text())
    store = CallStore(args.store_url)
    hook = VonageStudioHook(store=store, pace=args.pace, retry_backoff=0.01, timeout=args.timeout)
    dialer = BatchDialer(
        hook, args.agent, dag_id=args.dag_id, run_id=args.run_id, task_id="dial", progress_interval=2.0
    )
    report = dialer.run(plan_recipients(recipients))
    Path(args.results).write_text(json.dumps(report.to_list()))
    print(f"batch done: {report.summary()}", flush=True)
    return 0


def run_mapped(args: argparse.Namespace) -> int:
    from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator

    Path(args.ready_file).touch()
    deadline = time.monotonic() + 120
    while not Path(args.go_file).exists():
        if time.monotonic() > deadline:
            print("no go signal within 120 s", file=sys.stderr)
            return 2
        time.sleep(0.01)
    results = []
    for map_index, to in zip(args.map_indexes, args.to, strict=True):
        operator = MakeCallOperator(task_id="call", to=to, agent_id=args.agent)
        context = {"ti": FakeTI(args.dag_id, args.run_id, "call", map_index)}
        results.append(operator.execute(context))  # type: ignore[arg-type]
    Path(args.results).write_text(json.dumps(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.dial_workers")
    sub = parser.add_subparsers(dest="mode", required=True)
    batch = sub.add_parser("batch")
    batch.add_argument("--recipients", required=True)
    batch.add_argument("--store-url", required=True)
    batch.add_argument("--results", required=True)
    batch.add_argument("--agent", default="agent-1")
    batch.add_argument("--dag-id", default="fault_dag")
    batch.add_argument("--run-id", default="manual__fault")
    batch.add_argument("--timeout", type=float, default=30.0)
    batch.add_argument("--pace", action="store_true", help="pace through the shared store (off by default)")
    mapped = sub.add_parser("mapped")
    mapped.add_argument("--map-indexes", type=int, nargs="+", required=True)
    mapped.add_argument("--to", nargs="+", required=True)
    mapped.add_argument("--ready-file", required=True)
    mapped.add_argument("--go-file", required=True)
    mapped.add_argument("--results", required=True)
    mapped.add_argument("--agent", default="agent-1")
    mapped.add_argument("--dag-id", default="pacing_dag")
    mapped.add_argument("--run-id", default="manual__pacing")
    args = parser.parse_args(argv)
    return run_batch(args) if args.mode == "batch" else run_mapped(args)


if __name__ == "__main__":
    raise SystemExit(main())
