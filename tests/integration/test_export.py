"""ExportSessionsOperator over real HTTP: 1,000 sessions to a local JSON Lines file, streamed.

The emulator runs in a subprocess here, so that tracemalloc (which sees every thread of the
test process) measures the export alone and not the emulator building its answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_provider_vonage_studio._compat import AirflowFailException
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioServerError
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.operators.vonage_studio import ExportSessionsOperator
from tests.conftest import conn_json

KEY = "export-key-7a6b5c"
START = datetime(2026, 3, 1, tzinfo=timezone.utc)
END = START + timedelta(days=1)
COUNT = 1000
CONTEXT = {"data_interval_start": START, "data_interval_end": END}


def _control(url: str, path: str, payload=None):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url + path,
        data=data,
        headers={"Content-Type": "application/json"},
        method="GET" if data is None else "POST",
    )
    with opener.open(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def emulator_url():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_vonage_studio.testing.emulator",
            "--port",
            "0",
            "--key",
            KEY,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line
        url = line.rsplit(" ", 1)[1].strip()
        sessions = [
            {
                "id": f"00000000-0000-4000-8000-{i:012d}",
                "session_start_time": (START + timedelta(seconds=80 * i + 1)).isoformat(),
                "destination": f"4477009{i:05d}",
                "duration": i % 300,
                "parameters": {
                    "CALLER_NAME": f"Caller {i} Zoë",
                    "CONFIRMED": "yes" if i % 3 else "no",
                    "SLOT": "09:30",
                },
                "notes": "rappel confirmé ✓ " * 10,
            }
            for i in range(COUNT)
        ]
        # On both edges of the half-open window: the first is in, the second is the next interval's.
        sessions.append({"id": "edge-start", "session_start_time": START.isoformat()})
        sessions.append({"id": "edge-end", "session_start_time": END.isoformat()})
        sessions.append({"id": "outside", "session_start_time": (END + timedelta(hours=1)).isoformat()})
        _control(url, "/_emulator/sessions", sessions)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def connection(emulator_url, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", conn_json(host=emulator_url, key=KEY))
    return emulator_url


def _expected(emulator_url: str) -> list[dict]:
    inside = [
        s
        for s in _control(emulator_url, "/_emulator/sessions")
        if START <= datetime.fromisoformat(s["session_start_time"]).replace(tzinfo=timezone.utc) < END
    ]
    return sorted(inside, key=lambda s: s["session_start_time"])


def _export(destination: str, **kwargs) -> dict:
    operator = ExportSessionsOperator(task_id="export", destination=destination, **kwargs)
    return operator.execute(CONTEXT)


def test_export_of_1000_sessions_is_streamed_and_exact(connection, tmp_path):
    target = tmp_path / "exports" / "sessions-2026-03-01.jsonl"
    destination = f"file://{target}"
    _export(destination)  # warm-up: imports, connection and HTTP session set up outside the measurement

    tracemalloc.start()
    try:
        result = _export(destination)
        export_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        held = list(
            VonageStudioHook().search_sessions(
                START, END, sort_by="session_start_time:asc", include_to_date=False
            )
        )
        all_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    expected = _expected(connection)
    assert len(expected) == COUNT + 1 == len(held)
    assert result["rows"] == COUNT + 1
    assert result["path"] == destination
    assert result["from_date"] == START.isoformat() and result["to_date"] == END.isoformat()
    # Memory: one page of 100 at a time, against all 1,001 held at once.
    print(f"export peak {export_peak / 1e6:.2f} MB, all sessions held {all_peak / 1e6:.2f} MB")
    assert export_peak < all_peak / 2.5, (export_peak, all_peak)

    lines = target.read_bytes().split(b"\n")
    assert lines[-1] == b""  # newline-terminated
    assert len(lines) - 1 == COUNT + 1
    for line, session in zip(lines, expected, strict=False):
        # Each line is the API's session, byte for byte as compact UTF-8 JSON, in order.
        assert json.loads(line) == session
        assert line == json.dumps(session, ensure_ascii=False, separators=(",", ":")).encode()
    assert "edge-end" not in target.read_text() and "outside" not in target.read_text()
    # The numbers are what the API returned: the export is personal data and not redacted.
    assert json.loads(lines[1])["destination"] == "447700900000"
    assert "confirmé ✓" in target.read_text(encoding="utf-8")


def test_rerun_overwrites_the_same_file(connection, tmp_path):
    target = tmp_path / "sessions.jsonl"
    target.write_text("stale content from an earlier, different export\n" * 5000)
    first = _export(str(target), page_size=250, project_fields=["id", "session_start_time"])
    content = target.read_bytes()
    second = _export(str(target), page_size=250, project_fields=["id", "session_start_time"])
    assert first == second and first["rows"] == COUNT + 1
    assert target.read_bytes() == content
    assert content.count(b"\n") == COUNT + 1 and b"stale" not in content
    assert json.loads(content.split(b"\n")[0]) == {
        "id": "edge-start",
        "session_start_time": "2026-03-01T00:00:00.000000",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sessions.jsonl"]  # no temporary left behind


@pytest.fixture
def memory_store(monkeypatch):
    """fsspec's in-memory filesystem attached as ``memory://``: a stand-in for s3:// or gs://."""
    import fsspec
    from airflow.sdk.io import store as stores

    fs = fsspec.filesystem("memory")
    stores.attach("memory", fs=fs)
    yield fs
    fs.rm("/exports", recursive=True)
    monkeypatch.delitem(stores._STORE_CACHE, "memory")


def test_object_store_is_written_directly(connection, memory_store):
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    # No rename on object stores: the object is uploaded under its final key.
    destination = "memory://exports/2026-03-01.jsonl"
    result = _export(destination, filter_by='{"bool": {"must": [{"match": {"parameters.CONFIRMED": "no"}}]}}')
    lines = ObjectStoragePath(destination).read_text().splitlines()
    assert result["rows"] == len(lines) == 334  # i % 3 == 0 for i < 1000
    assert all(json.loads(line)["parameters"][1] == {"name": "CONFIRMED", "value": "no"} for line in lines)
    assert [p.name for p in ObjectStoragePath("memory://exports/").iterdir()] == ["2026-03-01.jsonl"]


def _failing_after(count):
    for i in range(count):
        yield {"id": i}
    raise VonageStudioServerError("Service Unavailable", 503)


def test_a_failed_export_leaves_the_earlier_one_whole(tmp_path, memory_store):
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    operator = ExportSessionsOperator(task_id="export", destination="unused")
    for url in (f"file://{tmp_path}/sessions.jsonl", "memory://exports/sessions.jsonl"):
        path = ObjectStoragePath(url)
        path.write_text("earlier export\n")
        with pytest.raises(VonageStudioServerError):
            operator._write(path, _failing_after(250))
        assert path.read_text() == "earlier export\n", url
        assert operator._write(path, iter([{"id": 1}])) == 1
        assert path.read_text() == '{"id":1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["sessions.jsonl"]


def test_window_from_arguments_and_fallbacks(connection, tmp_path, caplog, capsys):
    operator = ExportSessionsOperator(
        task_id="export",
        destination=str(tmp_path / "x.jsonl"),
        from_date="2026-03-01T00:00:00+00:00",
        to_date="2026-03-01T00:00:00.500+00:00",
    )
    assert operator.execute({})["rows"] == 1  # edge-start only
    # A manual run: no data interval, so the lookback before the run's anchor.
    manual = ExportSessionsOperator(task_id="export", destination=str(tmp_path / "y.jsonl"))
    result = manual.execute({"logical_date": END + timedelta(hours=12), "data_interval_start": None})
    assert result["from_date"] == (END - timedelta(hours=12)).isoformat()
    assert result["rows"] == 2 + sum(
        1 for i in range(COUNT) if 80 * i + 1 >= 12 * 3600
    )  # + edge-end, outside
    assert "no data interval" in caplog.text + capsys.readouterr().out
    strict = ExportSessionsOperator(task_id="export", destination=str(tmp_path / "z.jsonl"), lookback=None)
    with pytest.raises(AirflowFailException, match="pass from_date and to_date"):
        strict.execute({"data_interval_start": END, "data_interval_end": END})
    assert not (tmp_path / "z.jsonl").exists()


def test_bad_arguments(connection, tmp_path):
    with pytest.raises(VonageStudioConfigError, match="give both"):
        ExportSessionsOperator(task_id="e", destination="x", from_date="2026-03-01")
    with pytest.raises(VonageStudioConfigError, match="page_size"):
        ExportSessionsOperator(task_id="e", destination="x", page_size=5000)
    too_long = ExportSessionsOperator(
        task_id="e", destination=str(tmp_path / "x.jsonl"), from_date="2026-01-01", to_date="2026-03-05"
    )
    with pytest.raises(AirflowFailException, match="60 days"):
        too_long.execute({})
    bad_filter = ExportSessionsOperator(task_id="e", destination=str(tmp_path / "x.jsonl"), filter_by="{nope")
    with pytest.raises(AirflowFailException, match="filter_by"):
        bad_filter.execute(CONTEXT)
    assert list(Path(tmp_path).iterdir()) == []


# --------------------------------------------------------------------------- what Airflow hands the task


def test_pendulum_data_interval_exports_the_same_window(connection, tmp_path):
    """Airflow gives tasks pendulum datetimes: a scheduled run's default window used to raise
    "can't compare offset-naive and offset-aware datetimes"."""
    import pendulum

    reference = _export(str(tmp_path / "stdlib.jsonl"))
    paris = pendulum.instance(START).in_timezone("Europe/Paris")
    context = {"data_interval_start": paris, "data_interval_end": paris.add(days=1)}
    operator = ExportSessionsOperator(task_id="export", destination=str(tmp_path / "pendulum.jsonl"))
    result = operator.execute(context)
    assert result["rows"] == reference["rows"] == COUNT + 1
    assert (result["from_date"], result["to_date"]) == (START.isoformat(), END.isoformat())
    assert (tmp_path / "pendulum.jsonl").read_bytes() == (tmp_path / "stdlib.jsonl").read_bytes()


def test_lookback_anchored_on_pendulum_run_after(connection, tmp_path):
    """A manual run in Airflow 3: empty interval, maybe no logical date; the anchor is run_after."""
    from types import SimpleNamespace

    import pendulum

    anchor = pendulum.instance(END).in_timezone("America/New_York")
    for context in (
        {"data_interval_start": anchor, "data_interval_end": anchor},
        {"logical_date": None, "dag_run": SimpleNamespace(run_after=anchor)},
    ):
        operator = ExportSessionsOperator(
            task_id="export", destination=str(tmp_path / "x.jsonl"), lookback=pendulum.duration(hours=3)
        )
        result = operator.execute(context)
        assert result["from_date"] == (END - timedelta(hours=3)).isoformat()
        assert result["to_date"] == END.isoformat()
        assert result["rows"] == sum(1 for i in range(COUNT) if 80 * i + 1 >= 21 * 3600) == 55


@pytest.mark.parametrize(
    ("kwargs", "context", "match"),
    [
        pytest.param({"from_date": True, "to_date": "2026-03-02"}, {}, "from_date must be", id="bool-bound"),
        pytest.param({"from_date": "2026-03-01", "to_date": 1772409600}, {}, "to_date must be", id="epoch"),
        pytest.param({"from_date": "yesterday", "to_date": "today"}, {}, "from_date 'yesterday'", id="words"),
        pytest.param(
            {}, {"data_interval_start": "soon", "data_interval_end": END}, "data_interval_start", id="ctx"
        ),
    ],
)
def test_bad_bounds_fail_the_task_naming_the_field(connection, tmp_path, kwargs, context, match):
    operator = ExportSessionsOperator(task_id="export", destination=str(tmp_path / "x.jsonl"), **kwargs)
    with pytest.raises(AirflowFailException, match=match):
        operator.execute(context)
    assert list(tmp_path.iterdir()) == []
