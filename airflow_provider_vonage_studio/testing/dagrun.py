"""Run DAGs in a real, throw-away Airflow: ``airflow dags test`` in a temporary ``AIRFLOW_HOME``.

Used by ``make demo`` and by the tests; handy for users who test their own DAGs against the
emulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def airflow_bin() -> str:
    """The ``airflow`` command of the running interpreter's environment."""
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else "airflow"


def window_open_now() -> str:
    """A calling window (``"HH:MM-HH:MM"``) open right now for callees within 11 hours of UTC.

    All day but one minute twelve hours away, so example DAGs that honour
    ``VONAGE_STUDIO_DEMO_CALLING_WINDOW`` dial at once in demos and tests, whatever the hour.
    """
    from datetime import datetime, timedelta, timezone

    closed = datetime.now(timezone.utc) + timedelta(hours=12)
    return f"{closed + timedelta(minutes=1):%H:%M}-{closed:%H:%M}"


def airflow_env(home: Path, dags_folder: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an isolated Airflow: its own home, DAG folder and SQLite metadata DB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__VONAGE_STUDIO__STORE_URL": f"sqlite:///{home}/vonage_studio.db",
            # The example DAGs only call inside a calling window; a demo must not wait for morning.
            "VONAGE_STUDIO_DEMO_CALLING_WINDOW": window_open_now(),
        }
    )
    if extra:
        env.update(extra)
    return env


def migrate(env: Mapping[str, str], *, timeout: float = 300) -> None:
    """Create the metadata database (``airflow db migrate``).

    :raises RuntimeError: with the command's output when it fails.
    """
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [airflow_bin(), "db", "migrate"], env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def dags_test(
    dag_id: str,
    env: Mapping[str, str],
    *,
    conf: str | None = None,
    logical_date: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``airflow dags test DAG_ID [LOGICAL_DATE]`` and return the finished process (output captured)."""
    cmd = [airflow_bin(), "dags", "test", dag_id]
    if logical_date:
        cmd.append(logical_date)
    if conf:
        cmd += ["--conf", conf]
    return subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=timeout)
