"""Import cost of our DAG-parse modules versus the HTTP provider's, in fresh interpreters.

DAG files import operator modules at every parse, so this is paid by the DAG processor
over and over. Every module pulls in the Task SDK; the figure that matters is the ratio.
``--tree DIR`` also times the same modules from another checkout of this project (put first
on ``sys.path``), interleaved in the same run: the before/after figure of a refactor.

    .venv/bin/python benchmarks/import_cost.py [--runs 15] [--tree ../other-checkout]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

OURS = (
    "airflow_provider_vonage_studio.operators.vonage_studio",
    "airflow_provider_vonage_studio.sensors.vonage_studio",
    "airflow_provider_vonage_studio.notifications.vonage_studio",
)
BASELINE = "airflow.providers.http.operators.http"
HEAVY = ("fastapi", "phonenumbers", "tenacity", "sqlalchemy", "requests")

PROBE = """
import time, importlib, sys
t = time.perf_counter()
for name in sys.argv[1:]:
    importlib.import_module(name)
print(time.perf_counter() - t)
print(*(int(m in sys.modules) for m in sys.argv[0].split(",")))
"""


def measure(modules: tuple[str, ...], tree: str | None = None) -> tuple[float, list[str]]:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.abspath(tree), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.replace("sys.argv[0]", repr(",".join(HEAVY))), *modules],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        # Not the checkout: `python -c` puts the current directory first on sys.path, which
        # would make every row import the tree the benchmark was started from.
        cwd=tempfile.gettempdir(),
    ).stdout.split()
    return float(out[0]), out[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tree", help="another checkout of this project to time beside this one")
    args = parser.parse_args()
    rows: list[tuple[str, tuple[str, ...], str | None]] = [
        ("ours (this tree)", OURS, None),
        ("http operator", (BASELINE,), None),
    ]
    if args.tree:
        rows.insert(1, (f"ours ({args.tree})", OURS, args.tree))
    for _, modules, tree in rows:
        measure(modules, tree)  # warm the filesystem cache before timing
    times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    flags: dict[str, list[str]] = {}
    for _ in range(args.runs):  # interleaved so drift in machine load hits every row alike
        for label, modules, tree in rows:
            t, flags[label] = measure(modules, tree)
            times[label].append(t)
    base = statistics.median(times["http operator"])
    print(f"fresh interpreters: {args.runs} each, interleaved; ours = {', '.join(OURS)}")
    print(f"{'import':<40} {'median ms':>10} {'/ http':>8}   loaded: {' '.join(HEAVY)}")
    for label, _, _ in rows:
        median = statistics.median(times[label])
        print(f"{label:<40} {median * 1000:>10.1f} {median / base:>7.2f}x   {' '.join(flags[label])}")
    print("goal: ours <= 1.00x the http operator; fastapi, phonenumbers, sqlalchemy not loaded")


if __name__ == "__main__":
    main()
