"""Import cost of our operator module versus the HTTP provider's, in fresh interpreters.

DAG files import operator modules at every parse, so this is paid by the DAG processor
over and over. Both modules pull in the Task SDK; the figure that matters is the ratio.

    .venv/bin/python benchmarks/import_cost.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

OURS = "airflow_provider_vonage_studio.operators.vonage_studio"
BASELINE = "airflow.providers.http.operators.http"

PROBE = """
import time, importlib, sys
t = time.perf_counter()
importlib.import_module(sys.argv[1])
print(time.perf_counter() - t)
print(*(int(m in sys.modules) for m in ("fastapi", "phonenumbers", "tenacity")))
"""


def measure(module: str) -> tuple[float, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), out[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    measure(OURS)  # warm the filesystem cache for both before timing
    measure(BASELINE)
    ours: list[float] = []
    base: list[float] = []
    flags: list[str] = []
    for _ in range(args.runs):  # interleaved so drift in machine load hits both alike
        t, flags = measure(OURS)
        ours.append(t)
        base.append(measure(BASELINE)[0])
    m_ours, m_base = statistics.median(ours), statistics.median(base)
    print(f"fresh interpreters: {args.runs} each, interleaved")
    print(f"{'module':<58} {'median ms':>10}")
    print(f"{OURS:<58} {m_ours * 1000:>10.1f}")
    print(f"{BASELINE:<58} {m_base * 1000:>10.1f}")
    print(f"ratio ours / http operator: {m_ours / m_base:.2f}x (goal <= 1.00x)")
    print(f"loaded by ours at import: fastapi={flags[0]} phonenumbers={flags[1]} tenacity={flags[2]}")


if __name__ == "__main__":
    main()
