"""The "Call outcomes" task link: its URL per task instance, where it is attached, and the
outcome view's task filter it points at (served over real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_vonage_studio.calls import make_call_ref
from airflow_provider_vonage_studio.links import CallOutcomesLink, outcomes_url
from airflow_provider_vonage_studio.store import CallStore

RUN = "manual__2026-03-01T08:00:00+00:00"


def _ti_key(task_id: str = "call", map_index: int = -1):
    try:
        from airflow.sdk.types import TaskInstanceKey
    except ImportError:  # Airflow 3.1: the key is not in the SDK yet
        from airflow.models.taskinstancekey import TaskInstanceKey  # type: ignore[no-redef]

    return TaskInstanceKey(dag_id="reminders", task_id=task_id, run_id=RUN, try_number=1, map_index=map_index)


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_link_of_an_unmapped_task_instance_uses_the_api_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/base/")
    url = CallOutcomesLink().get_link(None, ti_key=_ti_key())
    assert url.startswith("https://airflow.example.com/base/vonage-studio/outcomes?")
    # An unmapped task has no map_index to filter on: every call of the task is shown.
    assert _query(url) == {"dag_id": ["reminders"], "run_id": [RUN], "task_id": ["call"]}


def test_link_of_a_mapped_task_instance_names_its_map_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://localhost:8080")
    url = CallOutcomesLink().get_link(None, ti_key=_ti_key(map_index=3))
    assert url.startswith("http://localhost:8080/vonage-studio/outcomes?")
    # The run id's "+" and ":" are encoded, so the view reads the run id back unchanged.
    assert "%2B00%3A00" in url
    assert _query(url) == {"dag_id": ["reminders"], "run_id": [RUN], "task_id": ["call"], "map_index": ["3"]}


def test_without_a_base_url_the_link_is_relative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    assert (
        CallOutcomesLink().get_link(None, ti_key=_ti_key(map_index=0)).startswith("/vonage-studio/outcomes?")
    )
    assert outcomes_url(None, dag_id="d", run_id="r") == "/vonage-studio/outcomes?dag_id=d&run_id=r"


def test_every_calling_and_waiting_operator_carries_the_link() -> None:
    from airflow_provider_vonage_studio.operators.messaging import SendMessageOperator, SendMessagesOperator
    from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator, MakeCallsOperator
    from airflow_provider_vonage_studio.sensors.vonage_studio import CallResultSensor, CallStatusSensor

    for cls in (
        MakeCallOperator,
        MakeCallsOperator,
        CallStatusSensor,
        CallResultSensor,
        SendMessageOperator,
        SendMessagesOperator,
    ):
        names = [link.name for link in cls.operator_extra_links]
        assert names == ["Call outcomes"], cls.__name__
    task = MakeCallOperator(task_id="call", to="447700900123", agent_id="agent-1")
    (link,) = task.operator_extra_links
    assert link.get_link(task, ti_key=_ti_key()).endswith("task_id=call")


# --------------------------------------------------------------------------- the view's task filter


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, requests.Session]]:
    from airflow_provider_vonage_studio.callbacks.app import create_app
    from airflow_provider_vonage_studio.testing.servers import ThreadedServer

    store = CallStore(f"sqlite:///{tmp_path / 'vonage_studio.db'}")
    # Two tasks of one run (one mapped over three numbers), and the same task in another run.
    rows = [("call", -1, RUN), ("dial", 0, RUN), ("dial", 1, RUN), ("dial", 2, RUN), ("call", -1, "other")]
    for task_id, map_index, run_id in rows:
        store.begin_call(
            make_call_ref("reminders", run_id, task_id, map_index),
            agent_id="agent-1",
            destination="447700900123",
            dag_id="reminders",
            run_id=run_id,
            task_id=task_id,
            map_index=map_index,
        )
    server = ThreadedServer(
        create_app(store=store, secret_provider=lambda: ["s" * 32], outcome_view="public")
    )
    server.start(timeout=30)
    try:
        with requests.Session() as http:
            http.trust_env = False
            yield server.url, http
    finally:
        server.stop()
        store.dispose()


def _shown(base: str, http: requests.Session, url: str) -> list[tuple[str, int]]:
    response = http.get(
        f"{base}{url.replace('/vonage-studio', '', 1).replace('/outcomes?', '/outcomes.json?')}"
    )
    assert response.status_code == 200, response.text
    return sorted(
        (call["task_id"], call["map_index"]) for run in response.json()["runs"] for call in run["calls"]
    )


def test_the_view_shows_only_the_linked_task_instance(served: tuple[str, requests.Session]) -> None:
    base, http = served
    link = CallOutcomesLink()
    assert _shown(base, http, link.get_link(None, ti_key=_ti_key("dial", 1))) == [("dial", 1)]
    # Unmapped (or no map index): all of the task's calls in that run, not the other run's.
    assert _shown(base, http, link.get_link(None, ti_key=_ti_key("call"))) == [("call", -1)]
    assert _shown(base, http, outcomes_url("", dag_id="reminders", run_id=RUN, task_id="dial")) == [
        ("dial", 0),
        ("dial", 1),
        ("dial", 2),
    ]
    page = http.get(f"{base}/outcomes", params={"dag_id": "reminders", "run_id": RUN, "task_id": "dial"})
    assert page.status_code == 200 and "task <strong>dial</strong>" in page.text


@pytest.mark.parametrize("bad", ["x", "-2", "1.5", "9999999999"])
def test_a_malformed_map_index_is_refused_naming_it(served: tuple[str, requests.Session], bad: str) -> None:
    base, http = served
    response = http.get(f"{base}/outcomes.json", params={"map_index": bad})
    assert response.status_code == 422 and "map_index" in response.text
