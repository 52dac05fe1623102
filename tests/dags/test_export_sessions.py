"""ExportSessionsOperator in real Airflow (`airflow dags test`) against the emulator, without
from_date/to_date: the window is what Airflow hands the task (pendulum values).

Scheduled-style runs (a logical date on a DAG with a schedule) used to fail on every run with
"can't compare offset-naive and offset-aware datetimes"; these runs check the file's content,
line by line, against the sessions the emulator holds in the run's window.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_provider_vonage_studio.testing.dagrun import airflow_env, dags_test, migrate
from airflow_provider_vonage_studio.testing.emulator import Emulator

pytestmark = pytest.mark.airflow_dags

ROOT = Path(__file__).resolve().parents[2]
KEY = "export-dag-key-2d4f6h8j"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def base_env(tmp_path_factory, export_dir):
    home = tmp_path_factory.mktemp("export-home")
    env = airflow_env(home, ROOT / "tests" / "dags" / "dag_files", {"VS_TEST_EXPORT_DIR": str(export_dir)})
    migrate(env)
    return env


@pytest.fixture
def emulator():
    emu = Emulator(api_keys=(KEY,), agents=("agent-1",)).start()
    yield emu
    emu.stop()


def _env(base_env, emulator):
    return {**base_env, "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json()}


def _run(env, dag_id):
    """The DAG's last run: its window as Airflow recorded it, task state and the task's XCom."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        run_id, logical, start, end = conn.execute(
            "select run_id, logical_date, data_interval_start, data_interval_end from dag_run "
            "where dag_id = ? order by id desc limit 1",
            (dag_id,),
        ).fetchone()
        (state,) = conn.execute(
            "select state from task_instance where dag_id = ? and run_id = ?", (dag_id, run_id)
        ).fetchone()
        (value,) = conn.execute(
            "select value from xcom where dag_id = ? and run_id = ? and key = 'return_value'",
            (dag_id, run_id),
        ).fetchone()

    def utc(text):
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)  # stored as naive UTC

    return {
        "logical_date": utc(logical),
        "start": utc(start),
        "end": utc(end),
        "state": state,
        "xcom": json.loads(value),
    }


def _seed(emulator, at):
    for i, when in enumerate(at):
        emulator.add_session(
            id=f"00000000-0000-4000-8000-{i:012d}",
            session_start_time=when,
            destination=f"4477009{i:05d}",
            parameters={"CALLER_NAME": f"Caller {i} Zoë", "CONFIRMED": "yes" if i % 2 else "no"},
        )


def _lines(result):
    path = Path(result["xcom"]["path"].removeprefix("file://"))
    content = path.read_bytes()
    assert content.endswith(b"\n") or content == b""
    return [json.loads(line) for line in content.splitlines()]


def _inside(emulator, start, end):
    """The emulator's sessions (as the API shows them) in [start, end), oldest first."""
    sessions = [
        s
        for s in emulator.sessions
        if start <= datetime.fromisoformat(s["session_start_time"]).replace(tzinfo=timezone.utc) < end
    ]
    return sorted(sessions, key=lambda s: s["session_start_time"])


def _check(proc):
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "offset-naive" not in output and "Traceback" not in output, output[-4000:]


def test_scheduled_run_exports_its_data_interval(base_env, emulator):
    # Daily intervals at midnight Paris time: for logical date 2026-03-10 Airflow hands the task
    # [2026-03-08 23:00Z, 2026-03-09 23:00Z) as pendulum datetimes in Europe/Paris.
    start = datetime(2026, 3, 8, 23, tzinfo=timezone.utc)
    end = start + timedelta(days=1)
    at = [start - timedelta(seconds=1), start, end - timedelta(milliseconds=1), end, end + timedelta(hours=1)]
    at += [start + timedelta(hours=2 * i + 1, minutes=i) for i in range(10)]
    _seed(emulator, at)
    env = _env(base_env, emulator)
    proc = dags_test("vs_export_interval", env, logical_date="2026-03-10")
    _check(proc)
    result = _run(env, "vs_export_interval")
    assert result["state"] == "success"
    # The window is the run's data interval, as Airflow recorded it.
    assert (result["start"], result["end"]) == (start, end)
    assert result["xcom"]["from_date"] == start.isoformat() and result["xcom"]["to_date"] == end.isoformat()
    expected = _inside(emulator, start, end)
    assert len(expected) == 12  # the start instant, 10 inside, 1 ms before the end
    assert result["xcom"]["rows"] == 12
    assert _lines(result) == expected  # every field as the API returned it, in order
    # Half-open: the session exactly at the end belongs to the next interval.
    assert end.replace(tzinfo=None).isoformat(timespec="microseconds") not in json.dumps(_lines(result))
    # page_size=3 over 12 sessions: five pages were asked for, with the interval's bounds.
    searches = [r for r in emulator.requests if r.path == "/insights/sessions"]
    assert len(searches) == 5
    assert all(
        "from_date=2026-03-08T23%3A00%3A00.000Z" in r.query
        and "to_date=2026-03-09T23%3A00%3A00.000Z" in r.query
        for r in searches
    ), [r.query for r in searches]


def test_cron_trigger_run_exports_the_lookback_before_its_logical_date(base_env, emulator):
    # "@daily" is a cron trigger in Airflow 3: the run's interval is empty, so the 6 h lookback
    # before the logical date (a pendulum value) is exported.
    end = datetime(2026, 3, 10, tzinfo=timezone.utc)
    start = end - timedelta(hours=6)
    at = [start - timedelta(minutes=1), start, start + timedelta(hours=3), end - timedelta(seconds=1), end]
    _seed(emulator, at)
    env = _env(base_env, emulator)
    proc = dags_test("vs_export_trigger", env, logical_date="2026-03-10")
    _check(proc)
    result = _run(env, "vs_export_trigger")
    assert result["state"] == "success"
    assert result["start"] == result["end"] == result["logical_date"] == end
    assert (result["xcom"]["from_date"], result["xcom"]["to_date"]) == (start.isoformat(), end.isoformat())
    expected = _inside(emulator, start, end)
    assert [s["id"][-1] for s in expected] == ["1", "2", "3"]
    assert _lines(result) == expected
    assert "exporting the 6 hours before 2026-03-10T00:00:00+00:00 (lookback)" in proc.stdout + proc.stderr


def test_manual_run_exports_the_day_before_the_run(base_env, emulator):
    now = datetime.now(timezone.utc)
    # Around the anchor (the run's logical date, set when the run is created after this): the
    # session 25 h back is outside the default 1-day lookback, the one an hour ahead after it.
    at = [now - timedelta(hours=25), now - timedelta(hours=23), now - timedelta(minutes=5)]
    at += [now + timedelta(hours=1)]
    _seed(emulator, at)
    env = _env(base_env, emulator)
    proc = dags_test("vs_export_manual", env)
    after = datetime.now(timezone.utc)
    _check(proc)
    result = _run(env, "vs_export_manual")
    assert result["state"] == "success"
    anchor = result["logical_date"]
    assert now < anchor < after  # the run's own time, not one given by the test
    assert result["xcom"]["from_date"] == (anchor - timedelta(days=1)).isoformat()
    assert result["xcom"]["to_date"] == anchor.isoformat()
    expected = _inside(emulator, anchor - timedelta(days=1), anchor)
    assert [s["id"][-1] for s in expected] == ["1", "2"]
    assert _lines(result) == expected
