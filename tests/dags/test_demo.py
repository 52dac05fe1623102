"""``make demo`` end to end: the very command it runs, in a subprocess, time-bounded.

A real Airflow 3 (API server with the plugin, scheduler, triggerer, DAG processor) runs
``reminder_calls`` against the emulator; the demo must exit 0 with one matching row per
scripted recipient, print the outcome view's URL, leave no process and no temporary home
behind, and never print the API key, the callback secret or a full phone number.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.destinations import redact
from airflow_provider_vonage_studio.testing.demo import (
    KEY_ENV,
    RUN_ID_ENV,
    SCRIPT,
    SECRET_ENV,
    tagged_processes,
)

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
#: The bound on the whole demo (Airflow start-up ~30 s and the run ~20 s on a quiet machine).
DEMO_TIMEOUT = 480
KEY = "demo-test-key-6a5b4c3d2e1f"
SECRET = "demo-test-callback-secret-0f9e8d7c"


def _run_demo(run_id: str) -> tuple[int, str]:
    """Run the demo as ``make demo`` does; on timeout, SIGTERM it (it cleans up) and fail."""
    # A user's shell: no Airflow settings of the test session leak into the demo.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({RUN_ID_ENV: run_id, KEY_ENV: KEY, SECRET_ENV: SECRET})
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_vonage_studio.testing.demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"the demo did not finish within {DEMO_TIMEOUT}s:\n{out[-8000:]}")
    return proc.returncode, out


@pytest.mark.timeout(DEMO_TIMEOUT + 120)
def test_make_demo_runs_reminder_calls_on_a_running_airflow() -> None:
    run_id = uuid.uuid4().hex
    try:
        status, out = _run_demo(run_id)
    finally:
        leftovers = tagged_processes(run_id)
        for pid in leftovers:  # never leave an Airflow running behind a failed test
            os.kill(pid, signal.SIGKILL)
    print(out)  # the demo's own progress, for the record
    assert status == 0, out[-8000:]

    # One row per scripted recipient: redacted number, scripted outcome, the same observed, its
    # source, ok.
    for to, outcome in SCRIPT.items():
        number = re.escape(redact(to))
        # Where the truth came from: AI Studio's callback for a failure, silence for the answer.
        source = "inferred" if outcome == "answered" else "callback"
        row = re.search(
            rf"^appt-\d+\s+{number}\s+{outcome}\s+{outcome}\s+{source}\s+[0-9a-f-]{{36}}\s+yes$", out, re.M
        )
        assert row, f"no matching row for {redact(to)} ({outcome}):\n{out}"
    # And what reached the emulator: each number once, with its agent and session parameters.
    assert f"calls received by the emulator: {len(SCRIPT)}" in out
    for to in SCRIPT:
        received = re.findall(
            rf"^  {re.escape(redact(to))}\s+agent-1\s+[0-9a-f-]{{36}}\s+.*CALLER_NAME=", out, re.M
        )
        assert len(received) == 1, f"{redact(to)} received {len(received)} times:\n{out}"
    assert "status callbacks posted by the emulator to the plugin: 3, accepted (HTTP 200): 3" in out
    assert re.search(
        r"outcome view .*http://127\.0\.0\.1:\d+/auth/token/login\?next=%2Fvonage-studio%2Foutcomes", out
    )
    # The outcome view (the plugin, behind Airflow's login) counts the run's calls, with the
    # verdict the waiting task stored ("answered" is never reported by AI Studio itself).
    counts = re.search(r"the outcome view shows for this run: (\{.*\})$", out, re.M)
    assert counts, out
    assert {k: v for k, v in json.loads(counts.group(1)).items() if k in SCRIPT.values()} == {
        "answered": 1,
        "busy": 1,
        "timeout": 1,
        "rejected": 1,
    }
    assert "demo OK" in out

    # Nothing secret or personal in the output.
    assert KEY not in out and SECRET not in out
    assert not any(to in out for to in SCRIPT)

    # Everything stopped, everything removed.
    assert leftovers == [], f"processes left running: {leftovers}"
    home = re.search(r"temporary AIRFLOW_HOME: (\S+)", out)
    assert home and not Path(home.group(1)).exists()
