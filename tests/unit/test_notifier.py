"""VonageStudioCallNotifier over real HTTP (the emulator) and a real call store.

Also the store's ``calls_between`` read used by the retry_unanswered example.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_vonage_studio.exceptions import (
    VonageStudioAuthError,
    VonageStudioConfigError,
    VonageStudioError,
)
from airflow_provider_vonage_studio.notifications.vonage_studio import (
    DAG_SCOPE,
    VonageStudioCallNotifier,
    alert_call_ref,
    alert_event,
    send_vonage_studio_call_notification,
)
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import Emulator

KEY = "notifier-test-key-7c1e9a2b4d"
ON_CALL, ON_CALL_DIGITS = "+44 7700 900999", "447700900999"
SECOND, SECOND_DIGITS = "+1 212 555 0142", "12125550142"
PARAMS = {"DAG_ID": "{{ dag.dag_id }}", "TASK_ID": "{{ ti.task_id }}", "TRY": "{{ ti.try_number }}"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    # 5 calls/s (and the same in the connection) keeps the pacing waits short.
    emu = Emulator(api_keys=(KEY,), agents=("agent-1",), calls_per_second=5).start()
    yield emu
    emu.stop()


@pytest.fixture
def env(emulator: Emulator, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[CallStore]:
    """The default connection on the emulator, the configured store a fresh SQLite file.

    (The store itself is tested on both backends; the notifier only goes through the hook.)
    """
    emulator.reset()
    url = f"sqlite:///{tmp_path / 'vonage_studio.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json())
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", url)
    yield CallStore.default()
    CallStore._clear_default_cache(url)


@pytest.fixture(scope="module")
def dag() -> Any:
    from airflow.sdk import DAG

    return DAG("billing", schedule=None)


def _ti(
    task_id: str = "check_billing", try_number: int = 1, run_id: str = "run-1", map_index: int = -1
) -> Any:
    return SimpleNamespace(
        dag_id="billing", run_id=run_id, task_id=task_id, map_index=map_index, try_number=try_number
    )


def _task_context(dag: Any, **ti: Any) -> dict[str, Any]:
    task_instance = _ti(**ti)
    return {"dag": dag, "ti": task_instance, "task_instance": task_instance, "run_id": task_instance.run_id}


def _params(call: Any) -> dict[str, str]:
    return {p["name"]: p["value"] for p in call.session_parameters}


def test_task_failure_rings_once_per_try_with_rendered_parameters(env, emulator, dag):
    notifier = VonageStudioCallNotifier(to=ON_CALL, agent_id="agent-1", session_parameters=PARAMS)

    notifier(_task_context(dag))
    assert [c.to for c in emulator.calls] == [ON_CALL_DIGITS]
    assert _params(emulator.calls[0]) == {"DAG_ID": "billing", "TASK_ID": "check_billing", "TRY": "1"}
    # The instance keeps its templates: the next event renders them afresh.
    assert notifier.session_parameters == PARAMS

    # Airflow runs the same failure's callback again (worker, then DAG processor): no second ring.
    notifier(_task_context(dag))
    assert len(emulator.calls) == 1
    assert len(emulator.requests) == 1

    # A new failure: the next try, another task, another run, each ring again.
    notifier(_task_context(dag, try_number=2))
    notifier(_task_context(dag, task_id="load"))
    notifier(_task_context(dag, run_id="run-2"))
    assert len(emulator.calls) == 4
    assert [_params(c)["TRY"] for c in emulator.calls] == ["1", "2", "1", "1"]
    assert _params(emulator.calls[2])["TASK_ID"] == "load"

    record = env.get_call(emulator_ref(notifier, _task_context(dag)))
    assert record is not None and record.state.value == "placed"
    assert (record.dag_id, record.run_id, record.task_id) == ("billing", "run-1", "check_billing")


def emulator_ref(notifier: VonageStudioCallNotifier, context: dict[str, Any]) -> str:
    return alert_call_ref(alert_event(context), ON_CALL_DIGITS, notifier.agent_id)


def test_dag_level_callbacks_with_and_without_a_task_instance(env, emulator, dag):
    notifier = send_vonage_studio_call_notification(
        to=ON_CALL,
        agent_id="agent-1",
        session_parameters={
            "REASON": "{{ reason }}",
            "TASK_ID": "{{ ti.task_id if ti is defined else '' }}",
            "DAG_ID": "{{ dag.dag_id }}",
        },
    )
    bare = {"dag": dag, "run_id": "run-1", "reason": "task_failure"}
    notifier(dict(bare))
    notifier(dict(bare))
    assert len(emulator.calls) == 1
    assert _params(emulator.calls[0]) == {"REASON": "task_failure", "TASK_ID": "", "DAG_ID": "billing"}

    # With the cause's task instance (what Airflow usually passes): a different event than the
    # bare one above, and than the task-level failure of that same task instance.
    with_ti = {**_task_context(dag), "reason": "task_failure"}
    notifier(dict(with_ti))
    notifier(dict(with_ti))
    VonageStudioCallNotifier(to=ON_CALL, agent_id="agent-1")(_task_context(dag))
    assert len(emulator.calls) == 3
    assert _params(emulator.calls[1])["TASK_ID"] == "check_billing"

    event = alert_event(with_ti)
    assert (event.task_id, event.map_index) == (DAG_SCOPE, -1)
    # The run is cleared and fails again: the cause has a new try, so it rings again.
    notifier({**_task_context(dag, try_number=2), "reason": "task_failure"})
    assert len(emulator.calls) == 4

    # `airflow dags test` passes the scheduler's SerializedDAG, which has no template environment.
    serialized = SimpleNamespace(dag_id="billing", render_template_as_native_obj=False)
    notifier({"dag": serialized, "run_id": "run-3", "reason": "task_failure"})
    assert _params(emulator.calls[4]) == {"REASON": "task_failure", "TASK_ID": "", "DAG_ID": "billing"}


def test_list_of_numbers_rings_each_person_once(env, emulator, dag):
    notifier = VonageStudioCallNotifier(to=[ON_CALL, SECOND, ON_CALL_DIGITS], agent_id="agent-1")
    results = notifier.place_calls(_task_context(dag))
    assert sorted(c.to for c in emulator.calls) == [SECOND_DIGITS, ON_CALL_DIGITS]
    # The third entry is the first one written differently: its earlier result, no request.
    assert results[2].session_id == results[0].session_id
    assert len(emulator.requests) == 2


def test_concurrent_invocations_of_one_failure_dial_once(env, emulator, dag):
    notifier = VonageStudioCallNotifier(to=ON_CALL, agent_id="agent-1")
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            notifier(_task_context(dag))
        except VonageStudioError as exc:  # the loser may find the call still in flight
            errors.append(exc)

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(emulator.calls) == 1
    assert all("outcome is unknown" in str(e) for e in errors), errors


def test_status_url_defaults_to_the_connections_receiver(env, emulator, dag, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT",
        emulator.connection_json(
            callback_base_url="http://127.0.0.1:9/hooks", callback_secret="s3cret-cb-0123456789"
        ),
    )
    VonageStudioCallNotifier(to=ON_CALL, agent_id="agent-1")(_task_context(dag))
    (call,) = emulator.calls
    ref = alert_call_ref(alert_event(_task_context(dag)), ON_CALL_DIGITS, "agent-1")
    assert call.status_url is not None
    assert call.status_url.startswith(f"http://127.0.0.1:9/hooks/calls/{ref}.")


def test_async_notify_for_a_deadline_alert_in_the_callback_trigger(env, emulator):
    from airflow_provider_vonage_studio._compat import deadline_callback_trigger

    # CallbackTrigger from Airflow 3.2, DeadlineCallbackTrigger in 3.1: same arguments.
    CallbackTrigger = deadline_callback_trigger()

    context: Any = {
        "dag_run": {"dag_id": "billing", "dag_run_id": "scheduled__2026-01-02", "state": "running"},
        "deadline": {"id": "0198-deadline-1", "deadline_time": "2026-01-02T07:00:00+00:00"},
    }

    async def run_trigger() -> list[Any]:
        # What the triggerer does for DeadlineAlert(callback=AsyncCallback(VonageStudioCallNotifier, ...)).
        trigger = CallbackTrigger(
            callback_path="airflow_provider_vonage_studio.notifications.vonage_studio.VonageStudioCallNotifier",
            callback_kwargs={
                "to": ON_CALL,
                "agent_id": "agent-1",
                "session_parameters": {"DAG_ID": "{{ dag_run.dag_id }}", "ALERT": "deadline missed"},
                "context": dict(context),
            },
        )
        return [event.payload async for event in trigger.run()]

    events = asyncio.run(run_trigger())
    assert [e["state"] for e in events] == ["running", "success"], events
    assert _params(emulator.calls[0]) == {"DAG_ID": "billing", "ALERT": "deadline missed"}
    record = env.get_call(alert_call_ref(alert_event(context), ON_CALL_DIGITS, "agent-1"))
    assert record is not None and record.task_id == "__deadline__"

    # async_notify directly, for the same deadline: no second ring.
    notifier = VonageStudioCallNotifier(to=ON_CALL, agent_id="agent-1")
    asyncio.run(notifier.async_notify(context))
    assert len(emulator.calls) == 1


def _logs(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    """Everything logged so far: Airflow's structlog writes to stdout, stdlib logging to caplog."""
    out = capsys.readouterr()
    return caplog.text + out.out + out.err


def test_api_401_is_logged_redacted_and_raised_once_per_event(
    env, emulator, dag, monkeypatch, caplog, capsys
):
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json(key="wrong-key-0000"))
    caplog.set_level(logging.INFO)
    notifier = VonageStudioCallNotifier(to=ON_CALL, agent_id="agent-1", session_parameters=PARAMS)

    with pytest.raises(VonageStudioAuthError, match="Not Authorised"):
        notifier(_task_context(dag))
    assert len(emulator.requests) == 1 and emulator.calls == []
    text = _logs(caplog, capsys)
    assert "Alert call to +44•••••0999 from agent agent-1 for task:1 failed: 401: Not Authorised" in text
    assert "Failed to send notification" in text  # BaseNotifier's own line: Airflow sees the error
    assert ON_CALL_DIGITS not in text and "7700 900999" not in text
    assert "wrong-key-0000" not in text

    # The refusal is in the ledger: the same failure raises again without another request.
    with pytest.raises(VonageStudioAuthError):
        notifier(_task_context(dag))
    assert len(emulator.requests) == 1


def test_success_path_logs_neither_key_nor_number(env, emulator, dag, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    VonageStudioCallNotifier(to=ON_CALL, agent_id="agent-1", session_parameters=PARAMS)(_task_context(dag))
    assert len(emulator.calls) == 1
    text = _logs(caplog, capsys)
    assert "Alert call to +44•••••0999 from agent agent-1 for task:1 of billing/run-1" in text
    assert "Placed call vs-" in text
    assert KEY not in text
    assert ON_CALL_DIGITS not in text and "7700 900999" not in text


def test_bad_inputs_fail_before_any_request(env, emulator, dag):
    with pytest.raises(VonageStudioConfigError, match="to: expected"):
        VonageStudioCallNotifier(to=447700900999, agent_id="agent-1")  # type: ignore[arg-type]
    with pytest.raises(VonageStudioConfigError, match="agent_id"):
        VonageStudioCallNotifier(to=ON_CALL, agent_id=None)  # type: ignore[arg-type]
    with pytest.raises(VonageStudioConfigError, match="'•••••' is not a possible phone number"):
        VonageStudioCallNotifier(to="+44 12", agent_id="agent-1")(_task_context(dag))
    with pytest.raises(VonageStudioConfigError, match="'caller' breaks AI Studio's naming rule"):
        VonageStudioCallNotifier(to=ON_CALL, agent_id="agent-1", session_parameters={"caller": "x"})(
            _task_context(dag)
        )
    with pytest.raises(VonageStudioConfigError, match=r"names no DAG run .*keys: agent_id, dag, "):
        VonageStudioCallNotifier(to=ON_CALL, agent_id="agent-1")({"dag": dag})
    assert emulator.requests == []


def test_keying_is_stable_and_separates_events():
    ti = _ti()
    task_event = alert_event({"ti": ti})
    assert task_event.name == "task:1" and task_event.task_id == "check_billing"
    ref = alert_call_ref(task_event, ON_CALL_DIGITS, "agent-1")
    assert ref == alert_call_ref(alert_event({"ti": _ti()}), ON_CALL_DIGITS, " agent-1 ")
    assert ref.startswith("vs-") and ON_CALL_DIGITS not in ref
    others = {
        alert_call_ref(task_event, SECOND_DIGITS, "agent-1"),
        alert_call_ref(task_event, ON_CALL_DIGITS, "agent-2"),
        alert_call_ref(task_event, ON_CALL_DIGITS, "agent-1", call_key="on-execute"),
        alert_call_ref(alert_event({"ti": _ti(map_index=0)}), ON_CALL_DIGITS, "agent-1"),
        alert_call_ref(
            alert_event({"ti": ti, "reason": "task_failure", "run_id": "run-1"}), ON_CALL_DIGITS, "agent-1"
        ),
    }
    assert ref not in others and len(others) == 5


def test_module_is_light_to_import():
    # Airflow itself loads SQLAlchemy; what matters is what this module adds to it.
    code = (
        "import sys\n"
        "import airflow_provider_vonage_studio._compat\n"
        "before = set(sys.modules)\n"
        "import airflow_provider_vonage_studio.notifications.vonage_studio\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    added = out.stdout.strip().splitlines()[-1]
    assert added == (
        "['airflow_provider_vonage_studio.exceptions', 'airflow_provider_vonage_studio.notifications', "
        "'airflow_provider_vonage_studio.notifications.vonage_studio']"
    ), out.stdout + out.stderr


# ------------------------------------------------------------------ CallStore.calls_between


def _seed(store: CallStore, ref: str, to: str, *, agent: str = "agent-1", status: str | None = None) -> None:
    store.begin_call(ref, agent_id=agent, destination=to, dag_id="reminder_calls", run_id="r", task_id="t")
    store.mark_placed(ref, f"session-{ref}", datetime.now(timezone.utc))
    if status:
        store.record_status(ref, status=status, conversation_uuid=f"CON-{ref}", timestamp=None, payload={})


def test_calls_between_filters_by_period_status_and_agent(store: CallStore):
    import sqlalchemy as sa

    from airflow_provider_vonage_studio.store import calls_table

    _seed(store, "vs-busy", "447700900111", status="busy")
    _seed(store, "vs-timeout", "12125550122", status="timeout")
    _seed(store, "vs-answered", "447700900133")
    _seed(store, "vs-rejected", "447700900144", status="rejected")
    _seed(store, "vs-other-agent", "447700900155", agent="agent-2", status="busy")
    _seed(store, "vs-old", "447700900166", status="busy")
    now = datetime.now(timezone.utc)
    # Backdate one row directly: the store has (rightly) no method to rewrite history.
    engine = sa.create_engine(store.url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            calls_table.update()
            .where(calls_table.c.call_ref == "vs-old")
            .values(created_at=now - timedelta(days=2))
        )
    engine.dispose()

    since, until = now - timedelta(days=1), now + timedelta(seconds=1)
    everything = store.calls_between(since, until)
    assert [c.call_ref for c in everything] == [
        "vs-busy",
        "vs-timeout",
        "vs-answered",
        "vs-rejected",
        "vs-other-agent",
    ]
    assert all(c.created_at.tzinfo is not None for c in everything)
    retry = store.calls_between(since, until, statuses=("busy", "timeout"), agent_id="agent-1")
    assert [(c.call_ref, c.status) for c in retry] == [("vs-busy", "busy"), ("vs-timeout", "timeout")]
    # Half-open: a row created exactly at `until` belongs to the next period. Naive means UTC.
    first = everything[0].created_at
    assert store.calls_between(first - timedelta(hours=1), first)[:1] == []
    naive = store.calls_between((now - timedelta(days=3)).replace(tzinfo=None), until.replace(tzinfo=None))
    assert len(naive) == 6
    assert store.calls_between(since, until, statuses=()) == []
    with pytest.raises(VonageStudioConfigError, match="until"):
        store.calls_between(until, since)
