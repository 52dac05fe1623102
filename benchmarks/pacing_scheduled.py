"""Pacing under real schedulers: LocalExecutor and CeleryExecutor, strict emulator, store on PostgreSQL.

For each executor, Airflow is started once and, for each allowed rate, ``--repeat`` consecutive
runs of a DAG of mapped ``MakeCallOperator``s and ``MakeCallsOperator``s dialing one agent (a new
agent per run) are run by a real ``airflow scheduler`` (LocalExecutor,
parallelism 8; or CeleryExecutor with 2 ``airflow celery worker``s of concurrency 4, Redis at
127.0.0.1:6379 as broker, a queue of the run's own, the result backend on PostgreSQL). Airflow's
metadata database is a fresh PostgreSQL database per executor; the call store a schema in it. The
emulator is strict (at most N accepted calls in any trailing second, no tolerance) and is the
judge. Printed per run: 429s, achieved/allowed = (accepted - 1) / (last accepted arrival -
first) / allowed, the shortest gap between accepted calls, the shortest span of N+1 accepted
calls, the largest number of task instances running at once, and the same figures for a naive
baseline (8 processes POSTing back to back, 1 s sleep after a 429) in the same run.

    .venv/bin/python benchmarks/pacing_scheduled.py            # both executors, 1 and 3 calls/s, 3 runs each
    .venv/bin/python benchmarks/pacing_scheduled.py --executors local --rates 1 --repeat 1

PostgreSQL from ``$VONAGE_STUDIO_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``; its server must allow CREATE DATABASE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from airflow_provider_vonage_studio.testing.scheduled import (  # noqa: E402
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
    RunResult,
    ScheduledPacing,
)


def _row(result: RunResult, run: int) -> list[str]:
    rows = []
    for fig in (result.ours, result.naive):
        if fig is None:
            continue
        rows.append(
            f"| {run} | {result.executor} | {result.allowed} | {fig.client} | {fig.calls} | {fig.refused} | "
            f"{fig.ratio:.3f} | {fig.min_gap:.3f} | {fig.min_window:.3f} | "
            + (f"{result.max_overlap}" if fig.client == "ours" else "-")
            + " |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executors", nargs="+", default=["local", "celery"], choices=["local", "celery"])
    parser.add_argument("--rates", type=int, nargs="+", default=[1, 3], choices=[1, 3, 5])
    parser.add_argument("--repeat", type=int, default=3, help="consecutive runs of every rate (default 3)")
    parser.add_argument("--mapped", type=int, default=30, help="mapped MakeCallOperator instances")
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument(
        "--postgres", default=os.environ.get("VONAGE_STUDIO_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS_URL)
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)

    table = [
        "| run | executor | allowed/s | client | calls | 429s | achieved/allowed | min gap (s) | "
        "shortest span of N+1 calls (s) | max tasks at once |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    dumped = []
    for executor in args.executors:
        with ScheduledPacing(
            executor=executor,
            rates=tuple(args.rates),
            mapped=args.mapped,
            parallelism=args.parallelism,
            postgres_url=args.postgres,
            redis_url=args.redis,
            log=lambda line: print(line, flush=True),
        ) as airflow:
            for run in range(1, args.repeat + 1):
                for rate in args.rates:
                    result = airflow.run(rate)
                    for line in result.lines():
                        print(line, flush=True)
                    missing = [n for n in result.numbers if result.called[n] != 1]
                    if missing:
                        print(f"  numbers not called exactly once: {len(missing)}", flush=True)
                    table += _row(result, run)
                    print("\n".join(table[-2:]), flush=True)
                    dumped.append(
                        {
                            "run": run,
                            "executor": executor,
                            "allowed": rate,
                            "max_overlap": result.max_overlap,
                            "hosts": sorted(set(result.hosts)),
                            "figures": [
                                f.__dict__ | {"ratio": f.ratio} for f in (result.ours, result.naive) if f
                            ],
                        }
                    )
    print()
    print("\n".join(table))
    if args.json:
        Path(args.json).write_text(json.dumps(dumped, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
