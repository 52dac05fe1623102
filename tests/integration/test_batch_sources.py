"""Big batches over real HTTP: recipients streamed from files and SQL (PostgreSQL), per-recipient
results in the store (and through the JSON route and the CLI), the XCom summary past the full-list
threshold, bad sources refused before any dial, and a SIGKILLed stream resumed without a second dial.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from airflow_provider_vonage_studio import cli
from airflow_provider_vonage_studio.callbacks.app import create_app
from airflow_provider_vonage_studio.calls import TaskIdentity
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.operators import _batch
from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import MAKE_CALL_PATH, Emulator
from airflow_provider_vonage_studio.testing.servers import ThreadedServer
from tests.integration.batch_worker import unpaced_operator_class
from tests.integration.dial_workers import FakeTI
from tests.store_fixtures import postgres_schema_url, require_postgres

ROOT = Path(__file__).resolve().parents[2]
KEY = "batch-sources-key-4d3c2b1a"
AGENT = "agent-1"
NUMBERS = [f"447700900{n:03d}" for n in range(6)]


class Live:
    def __init__(self, emulator: Emulator, store: CallStore, url: str) -> None:
        self.emulator, self.store, self.url = emulator, store, url

    def dials(self) -> Counter[str]:
        return Counter(r.body["to"] for r in self.emulator.requests if r.path == MAKE_CALL_PATH)


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """The strict emulator with its limit lifted and the configured store; operators here do not pace."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", url)
    store = CallStore(url)
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=100_000) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json(calls_per_second=5))
        yield Live(emulator, store, url)
    store.dispose()
    CallStore._clear_default_cache(url)


def _ctx(run_id: str = "manual__1") -> Any:
    return {"ti": FakeTI("it_stream", run_id, "calls", -1)}


def _operator(**kwargs: Any) -> Any:
    kwargs.setdefault("fail_on_rejected", False)
    return unpaced_operator_class()(task_id="calls", agent_id=AGENT, **kwargs)


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> str:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path.as_uri()


# -- streaming sources ---------------------------------------------------------------------------


def test_csv_file_columns_become_fields_and_session_parameters(live: Live, tmp_path: Path) -> None:
    uri = _csv(
        tmp_path / "campaign.csv",
        ["to", "key", "CALLER_NAME"],
        [
            [NUMBERS[0], "c-0", "Ann"],
            [NUMBERS[1], "", ""],
            ["+44 7700 900000", "c-2", "Bob"],
            ["junk", "", ""],
        ],
    )
    results = _operator(recipients=uri, session_parameters={"CAMPAIGN": "Q3"}).execute(_ctx())
    assert [(r["index"], r["result"], r["reason"]) for r in results] == [
        (0, "placed", None),
        (1, "placed", None),
        (2, "skipped", "duplicate"),
        (3, "rejected", results[3]["reason"]),
    ]
    assert results[0]["key"] == "c-0" and results[1]["key"] is None
    first, second = live.emulator.calls
    assert {p["name"]: p["value"] for p in first.session_parameters} == {
        "CAMPAIGN": "Q3",
        "CALLER_NAME": "Ann",
    }
    assert {p["name"]: p["value"] for p in second.session_parameters} == {"CAMPAIGN": "Q3"}


def test_jsonl_file_items_are_list_items_and_a_bad_line_is_one_rejection(live: Live, tmp_path: Path) -> None:
    path = tmp_path / "campaign.ndjson"
    path.write_text(
        "\n".join(
            [
                json.dumps({"to": NUMBERS[0], "session_parameters": {"CALLER_NAME": "Ann"}}),
                json.dumps(NUMBERS[1]),
                "",
                "{not json",
                json.dumps({"to": NUMBERS[2], "key": "k-2"}),
            ]
        )
    )
    results = _operator(recipients=path.as_uri()).execute(_ctx())
    assert [r["result"] for r in results] == ["placed", "placed", "rejected", "placed"]
    assert "not a JSON value" in results[2]["reason"]
    assert live.dials() == Counter(NUMBERS[:3])


@pytest.fixture
def postgres_recipients() -> Iterator[tuple[str, str]]:
    """A recipients table in a schema of its own on the real PostgreSQL; (connection URI, table)."""
    base = require_postgres()
    with postgres_schema_url(base) as url:
        engine = sa.create_engine(url)
        schema = f"vs_rcpt_{uuid.uuid4().hex[:8]}"
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            conn.execute(sa.text(f"CREATE TABLE {schema}.customers (id int, phone text, name text)"))
            conn.execute(
                sa.text(f"INSERT INTO {schema}.customers VALUES (:id, :phone, :name)"),
                [{"id": i, "phone": f"+44 7700 9{i:05d}", "name": f"N{i}"} for i in range(2500)],
            )
        try:
            uri = sa.engine.make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
            yield uri, f"{schema}.customers"
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            engine.dispose()


def test_sql_query_on_postgres_streams_every_row_into_a_summary(
    live: Live, postgres_recipients: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, table = postgres_recipients
    monkeypatch.setenv("AIRFLOW_CONN_RECIPIENTS_DB", uri)
    operator = _operator(
        recipients_sql=f'SELECT phone AS "to", name AS "CALLER_NAME" FROM {table} ORDER BY id',
        recipients_conn_id="recipients_db",
    )
    value = operator.execute(_ctx())
    # 2,500 recipients > FULL_RESULTS_MAX: a summary with a reference, not 2,500 dicts.
    assert isinstance(value, dict)
    assert value["recipients"] == 2500 and value["counts"]["placed"] == 2500
    assert value["results"]["task_id"] == "calls" and value["results"]["map_index"] == -1
    assert len(json.dumps(value)) < 64 * 1024
    assert live.dials() == Counter(f"4477009{i:05d}" for i in range(2500))
    rows = live.store.batch_results("it_stream", "manual__1", "calls", limit=None)
    assert [r["position"] for r in rows] == list(range(2500))
    assert rows[7]["destination"] == "447700900007" and rows[7]["result"] == "placed"
    by_to = {c.to: c for c in live.emulator.calls}
    assert rows[7]["session_id"] == by_to["447700900007"].session_id
    assert {p["name"]: p["value"] for p in by_to["447700900007"].session_parameters} == {"CALLER_NAME": "N7"}


def test_sql_query_through_a_db_api_hook(live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "crm.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE people (phone TEXT, key TEXT)"))
        conn.execute(
            sa.text("INSERT INTO people VALUES (:p, :k)"), [{"p": n, "k": f"p{n}"} for n in NUMBERS[:3]]
        )
    engine.dispose()
    monkeypatch.setenv("AIRFLOW_CONN_CRM", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    results = _operator(
        recipients_sql='SELECT phone AS "to", key FROM people', recipients_conn_id="crm"
    ).execute(_ctx())
    assert [(r["result"], r["key"]) for r in results] == [("placed", f"p{n}") for n in NUMBERS[:3]]


# -- bad input: refused before any dial -------------------------------------------------------------


def _refused(live: Live, match: str, **kwargs: Any) -> None:
    with pytest.raises(Exception, match=match):
        _operator(**kwargs).execute(_ctx())
    assert live.emulator.requests == [] or all(r.path != MAKE_CALL_PATH for r in live.emulator.requests)


def test_bad_sources_are_refused_naming_the_field_before_any_dial(live: Live, tmp_path: Path) -> None:
    no_to = _csv(tmp_path / "no_to.csv", ["phone", "CALLER_NAME"], [[NUMBERS[0], "Ann"]])
    _refused(live, r"recipients: .* has no column 'to'", recipients=no_to)
    bad_name = _csv(tmp_path / "bad_name.csv", ["to", "caller name"], [[NUMBERS[0], "Ann"]])
    _refused(live, r"naming rule", recipients=bad_name)
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"phone": NUMBERS[0]}) + "\n")
    _refused(live, r"recipients: the first line of .* has no field 'to'", recipients=first.as_uri())
    _refused(
        live, r"recipients: file URI .* has no supported suffix", recipients=(tmp_path / "x.txt").as_uri()
    )
    _refused(live, r"recipients: cannot open", recipients=(tmp_path / "missing.csv").as_uri())
    _refused(
        live, r"recipients_sql: expected a non-empty SQL query", recipients_sql=5, recipients_conn_id="x"
    )
    _refused(live, r"recipients_conn_id: recipients_sql needs", recipients_sql="select 1")
    _refused(
        live,
        r"recipients: give either",
        recipients=NUMBERS,
        recipients_sql="select 1",
        recipients_conn_id="x",
    )


def test_bad_sources_fail_at_construction_when_not_templated(tmp_path: Path) -> None:
    with pytest.raises(VonageStudioConfigError, match="recipients: file URI"):
        MakeCallsOperator(task_id="c", agent_id=AGENT, recipients="s3://bucket/campaign.xlsx")
    with pytest.raises(VonageStudioConfigError, match="recipients_conn_id"):
        MakeCallsOperator(task_id="c", agent_id=AGENT, recipients_sql="select 1")
    # A template is checked once rendered.
    MakeCallsOperator(task_id="c", agent_id=AGENT, recipients="s3://bucket/{{ params.file }}")


def test_sql_without_a_to_column_is_refused(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CRM", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "e.db")})
    )
    _refused(
        live,
        r"recipients_sql: the query's result has no column 'to'",
        recipients_sql="SELECT 1 AS phone",
        recipients_conn_id="crm",
    )
    _refused(
        live,
        r"recipients_sql: the query failed",
        recipients_sql="SELECT * FROM nowhere",
        recipients_conn_id="crm",
    )


# -- results: store, XCom threshold, JSON route, CLI ---------------------------------------------------


def test_xcom_is_the_full_list_up_to_the_threshold_then_a_summary(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipients = [*NUMBERS[:4], NUMBERS[0]]
    monkeypatch.setattr(_batch, "FULL_RESULTS_MAX", 5)
    full = _operator(recipients=recipients).execute(_ctx("manual__full"))
    assert isinstance(full, list) and len(full) == 5
    monkeypatch.setattr(_batch, "FULL_RESULTS_MAX", 4)
    summary = _operator(recipients=recipients).execute(_ctx("manual__summary"))
    assert summary == {
        "recipients": 5,
        "counts": {"placed": 4, "rejected": 0, "skipped": 1, "unknown": 0, "deferred": 0},
        "dialed": 4,
        "rate_limited": 0,
        "results": _batch.results_reference(TaskIdentity("it_stream", "manual__summary", "calls", -1)),
    }
    # Both runs stored every recipient.
    for run_id in ("manual__full", "manual__summary"):
        assert len(live.store.batch_results("it_stream", run_id)) == 5


def test_a_failing_big_batch_pushes_the_summary_and_names_examples(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batch, "FULL_RESULTS_MAX", 2)
    context = _ctx()
    with pytest.raises(Exception, match=r"1 recipient\(s\) rejected .*#1 .*rejected.*the call store") as info:
        _operator(recipients=[NUMBERS[0], "junk", NUMBERS[1]], fail_on_rejected=True).execute(context)
    assert "placed 2, rejected 1 of 3" in str(info.value)
    assert context["ti"].xcoms["results"]["counts"]["rejected"] == 1


def test_results_through_the_json_route_and_the_cli(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _operator(recipients=[NUMBERS[0], "junk", NUMBERS[1], NUMBERS[0]]).execute(_ctx())
    app = create_app(store=live.store, secret_provider=lambda: ["s"], outcome_view="public")
    with ThreadedServer(app) as server:
        answer = requests.get(
            f"{server.url}/outcomes/batches/it_stream/manual__1",
            params={"task_id": "calls", "limit": 2},
            timeout=10,
        )
        assert answer.status_code == 200
        body = answer.json()
        assert body["counts"] == [
            {"task_id": "calls", "map_index": -1, "counts": {"placed": 2, "rejected": 1, "skipped": 1}}
        ]
        assert [r["result"] for r in body["results"]] == ["placed", "rejected"] and body["next_offset"] == 2
        assert body["results"][0]["to"] != NUMBERS[0] and body["results"][0]["to"].endswith(NUMBERS[0][-4:])
        rest = requests.get(
            f"{server.url}/outcomes/batches/it_stream/manual__1", params={"offset": 2}, timeout=10
        ).json()
        assert [r["reason"] for r in rest["results"]] == [None, "duplicate"] and rest["next_offset"] is None
        assert (
            requests.get(f"{server.url}/outcomes/batches/it_stream/manual__1?limit=x", timeout=10).status_code
            == 422
        )
    off = create_app(store=live.store, secret_provider=lambda: ["s"], outcome_view="off")
    with ThreadedServer(off) as server:
        assert (
            requests.get(f"{server.url}/outcomes/batches/it_stream/manual__1", timeout=10).status_code == 404
        )

    cli.main(["calls", "results", "--dag-id", "it_stream", "--run-id", "manual__1"])
    out = capsys.readouterr().out
    assert "calls [map_index -1]: placed 2, rejected 1, skipped 1 of 4 recipient(s)" in out
    assert NUMBERS[0] not in out and "#3" in out and "duplicate" in out
    cli.main(
        ["calls", "results", "--dag-id", "it_stream", "--run-id", "manual__1", "-o", "json", "--show-numbers"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["counts"][0]["counts"]["placed"] == 2
    assert [json.loads(line)["to"] for line in lines[1:]] == [NUMBERS[0], None, NUMBERS[1], NUMBERS[0]]
    with pytest.raises(SystemExit, match="no stored batch results"):
        cli.main(["calls", "results", "--dag-id", "it_stream", "--run-id", "nope"])


# -- a SIGKILL mid-stream, then the retry ------------------------------------------------------------


def test_sigkill_mid_stream_then_rerun_dials_nobody_twice(tmp_path: Path) -> None:
    total = 3000
    numbers = [f"4477009{n:05d}" for n in range(total)]
    path = tmp_path / "campaign.jsonl"
    path.write_text("\n".join(json.dumps(n) for n in numbers) + "\n")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    emulator = Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=100_000).start()
    env = {
        **os.environ,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(calls_per_second=5),
        "AIRFLOW__VONAGE_STUDIO__STORE_URL": url,
    }

    def worker(n: int) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{n}.log").open("w")
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.batch_worker",
                "--recipients",
                path.as_uri(),
                "--xcom",
                str(tmp_path / f"xcom-{n}.json"),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def made() -> int:
        return sum(1 for r in emulator.requests if r.path == MAKE_CALL_PATH)

    try:
        first = worker(0)
        deadline = time.monotonic() + 120
        while made() < total // 2:  # past the first chunk boundaries: a kill in the middle
            assert first.poll() is None, (tmp_path / "worker-0.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first try never reached half the batch"
            time.sleep(0.005)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        at_kill = made()
        second = worker(1)
        assert second.wait(180) == 0, (tmp_path / "worker-1.log").read_text()[-3000:]
    finally:
        emulator.stop()

    dialed = Counter(r.body["to"] for r in emulator.requests if r.path == MAKE_CALL_PATH)
    assert max(dialed.values()) == 1  # nobody twice, per the emulator's record
    assert set(dialed) == set(numbers)
    assert at_kill < total
    xcom = json.loads((tmp_path / "xcom-1.json").read_text())
    assert xcom["recipients"] == total
    assert xcom["counts"]["placed"] + xcom["counts"]["unknown"] == total and xcom["counts"]["unknown"] <= 1
    assert xcom["dialed"] == total - at_kill  # the retry dialed only who the first try had not
    store = CallStore(url)
    rows = store.batch_results("stream_dag", "manual__stream", "dial", limit=None)
    store.dispose()
    assert [r["position"] for r in rows] == list(range(total))
    assert Counter(r["result"] for r in rows) == Counter({k: v for k, v in xcom["counts"].items() if v})
