"""``make demo ARGS=--campaign`` end to end: ``reminder_campaign`` in a real Airflow 3 against the emulator.

The scheduler (LocalExecutor), the triggerer, the DAG processor and the API server with the
plugin run ``example_dags/reminder_campaign.py`` with the waves seconds apart. The demo exits
0 only when each scripted recipient got the calls, disposition and messages expected
(busy, busy, answered: three calls, no message; never reached: three calls, one message;
answered at once: one call), and when every time it saw the campaign task ``deferred`` (read
through the REST API) no process was running that task instance (Airflow's task runner titles
itself ``airflow worker -- <ti id>``) later than a few seconds into the wait (the process
that deferred reports it first, then exits). It must also leave no process behind and print no
secret or full phone number.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.destinations import redact
from airflow_provider_vonage_studio.testing.demo import KEY_ENV, RUN_ID_ENV, SECRET_ENV, tagged_processes
from airflow_provider_vonage_studio.testing.demo_campaign import CAMPAIGN_SCRIPT, KEYS, campaign_rows

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT = 600
KEY = "campaign-demo-key-5e4d3c2b1a"
SECRET = "campaign-demo-callback-secret-9a8b7c"


def _run(run_id: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({RUN_ID_ENV: run_id, KEY_ENV: KEY, SECRET_ENV: SECRET})
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_vonage_studio.testing.demo", "--campaign"],
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
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"the campaign demo did not finish within {DEMO_TIMEOUT}s:\n{out}")
    return proc.returncode, out


def test_campaign_demo_defers_between_waves_and_ends_as_scripted() -> None:
    run_id = uuid.uuid4().hex
    code, out = _run(run_id)
    assert code == 0, out
    assert "demo OK: every recipient's calls, disposition and messages as scripted" in out
    # The task was seen deferred between waves, never with a task process running it.
    assert "deferred -- waiting in the triggerer, no task process runs it" in out
    assert "never with a task process running it later than 15s into a wait" in out
    for number, key in KEYS.items():
        (row,) = [line for line in out.splitlines() if line.startswith(key)]
        assert redact(number) in row and row.rstrip().endswith("yes"), row
        assert number not in out  # only redacted numbers are printed
    assert KEY not in out and SECRET not in out
    assert tagged_processes(run_id) == []


def test_campaign_rows_compare_the_run_with_the_script() -> None:
    late, never, first = list(CAMPAIGN_SCRIPT)
    results = [
        {
            "key": KEYS[late],
            "attempts": [{"outcome": o} for o in ("busy", "busy", "answered")],
            "disposition": "reached",
        },
        {"key": KEYS[never], "attempts": [{"outcome": "busy"}] * 3, "disposition": "not_reached"},
        {"key": KEYS[first], "attempts": [{"outcome": "answered"}], "disposition": "reached"},
    ]
    rows = campaign_rows(results, {late: 3, never: 3, first: 1}, {never: 1})
    assert [r["ok"] for r in rows] == [True, True, True]
    # A second message (or a missing call) is a failure.
    rows = campaign_rows(results, {late: 3, never: 3, first: 1}, {never: 2})
    assert [r["ok"] for r in rows] == [True, False, True]
    rows = campaign_rows(results, {late: 2, never: 3, first: 1}, {never: 1})
    assert [r["ok"] for r in rows] == [False, True, True]


def test_a_wait_counts_as_holding_a_slot_only_past_the_exit_grace() -> None:
    from airflow_provider_vonage_studio.testing.demo_campaign import EXIT_GRACE, DeferralCheck

    assert not DeferralCheck("ti", (), EXIT_GRACE + 60).held
    assert not DeferralCheck("ti", (123,), 1.0).held  # the deferring process still exiting
    assert DeferralCheck("ti", (123,), EXIT_GRACE + 1).held
