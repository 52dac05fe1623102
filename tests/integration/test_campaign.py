"""Reminder campaigns over real HTTP: waves of attempts, then one message to whoever was never reached.

The emulator places the calls (scripted per attempt: busy, busy, answered ...) and posts the
status callbacks to the real receiver, which writes them to the call store (SQLite and
PostgreSQL); the operator reads where the campaign stands from that ledger only. What is
counted is what the emulator received: calls and messages per number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import Emulator
from airflow_provider_vonage_studio.testing.servers import ThreadedServer
from tests.integration.campaign_worker import AGENT, MESSAGE_AGENT, campaign_operator, context, drive

ROOT = Path(__file__).resolve().parents[2]
KEY = "campaign-key-6a5b4c3d"
SECRET = "campaign-callback-secret-91e2"
LATE, NEVER, FIRST, LISTED = "447700900101", "447700900102", "447700900103", "447700900104"


@dataclass
class Stack:
    emulator: Emulator
    store: CallStore
    env: dict[str, str]


@pytest.fixture
def stack(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    from airflow_provider_vonage_studio.callbacks.app import create_app

    store = CallStore(store_url)
    app = create_app(store=store, secret_provider=lambda: [SECRET], outcome_view="off")
    with (
        Emulator(
            api_keys=(KEY,), agents=(AGENT, MESSAGE_AGENT), calls_per_second=5, callback_delay=0.1
        ) as emulator,
        ThreadedServer(app) as receiver,
    ):
        conn = emulator.connection_json(
            callback_base_url=receiver.url, callback_secret=SECRET, calls_per_second=5
        )
        monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", conn)
        monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", store_url)
        env = {
            **os.environ,
            "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": conn,
            "AIRFLOW__VONAGE_STUDIO__STORE_URL": store_url,
        }
        yield Stack(emulator, store, env)
    store.dispose()


def _calls(emulator: Emulator) -> Counter[str]:
    return Counter(call.to for call in emulator.calls)


def _messages(emulator: Emulator) -> Counter[str]:
    return Counter(message.to for message in emulator.messages)


def _by_to(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    numbers = [LATE, NEVER, FIRST, LISTED]
    return {numbers[r["index"]]: r for r in results}


def test_waves_retry_only_the_unreached_and_message_whoever_was_never_reached(stack: Stack) -> None:
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    stack.emulator.script(LATE, ["busy", "busy", "answered"])
    stack.emulator.script(NEVER, ["busy", "timeout", "busy"])
    stack.emulator.script(FIRST, "answered")
    stack.emulator.script(LISTED, "busy")
    op = campaign_operator([LATE, NEVER, FIRST, LISTED], fail_on_rejected=False)
    spacing_waits: list[Any] = []

    def on_defer(deferral: Any) -> None:
        if isinstance(deferral.trigger, DateTimeTrigger):
            spacing_waits.append(deferral.kwargs)
            if len(spacing_waits) == 1:  # between wave 1 and wave 2
                stack.store.dnc_add(LISTED, reason="asked not to be called")

    results = drive(op, context(), on_defer=on_defer)

    assert _calls(stack.emulator) == {LATE: 3, NEVER: 3, FIRST: 1, LISTED: 1}
    assert _messages(stack.emulator) == {NEVER: 1}
    assert spacing_waits == [{"wave": 2}, {"wave": 3}]
    by_to = _by_to(results)
    assert {to: r["disposition"] for to, r in by_to.items()} == {
        LATE: "reached",
        NEVER: "not_reached",
        FIRST: "reached",
        LISTED: "do_not_call",
    }
    assert [a["outcome"] for a in by_to[LATE]["attempts"]] == ["busy", "busy", "answered"]
    assert [a["outcome"] for a in by_to[NEVER]["attempts"]] == ["busy", "timeout", "busy"]
    assert [a["attempt"] for a in by_to[NEVER]["attempts"]] == [1, 2, 3]
    assert all(a["at"] and a["source"] for a in by_to[NEVER]["attempts"])
    assert by_to[NEVER]["message"]["result"] == "sent"
    assert by_to[LATE]["message"] is None and by_to[FIRST]["message"] is None
    # Each attempt is its own ledger row; attempt 1 keeps a plain batch's call_ref.
    refs = {a["call_ref"] for a in by_to[NEVER]["attempts"]}
    assert len(refs) == 3
    plain = op.dialer(op.hook, context()).call_ref_for(op.plan()[1])
    assert by_to[NEVER]["attempts"][0]["call_ref"] == plain

    # Running the finished task again (a cleared task) dials and sends nothing more.
    again = drive(campaign_operator([LATE, NEVER, FIRST, LISTED], fail_on_rejected=False), context())
    assert _calls(stack.emulator) == {LATE: 3, NEVER: 3, FIRST: 1, LISTED: 1}
    assert _messages(stack.emulator) == {NEVER: 1}
    assert [r["disposition"] for r in again] == [r["disposition"] for r in results]


def test_answered_first_gets_one_call_and_no_message(stack: Stack) -> None:
    stack.emulator.script(FIRST, "answered")
    results = drive(campaign_operator([FIRST]), context())
    assert _calls(stack.emulator) == {FIRST: 1}
    assert _messages(stack.emulator) == Counter()
    assert results[0]["disposition"] == "reached"
    assert [a["outcome"] for a in results[0]["attempts"]] == ["answered"]


def test_sigkill_mid_wave_two_then_a_retry_never_calls_or_messages_anyone_twice(stack: Stack) -> None:
    numbers = [f"4477009002{n:02d}" for n in range(6)]
    for number in numbers:
        stack.emulator.script(number, "busy")
    recipients = json.dumps(numbers)
    # Wave 1 in this process, up to the deferral that waits for wave 2.
    op = campaign_operator(numbers, max_attempts=2, spacing=1.0)
    deferral = drive(op, context(), stop_at_datetime=True)
    assert deferral.kwargs == {"wave": 2}
    assert _calls(stack.emulator) == dict.fromkeys(numbers, 1)
    time.sleep(1.2)
    # Wave 2 in a worker process, killed after its first wave-2 calls (5 calls/s: a second per 5).
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.campaign_worker",
            "--recipients",
            recipients,
            "--max-attempts",
            "2",
        ],
        cwd=ROOT,
        env=stack.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(stack.emulator.calls) < len(numbers) + 2:
        assert worker.poll() is None, "the worker finished wave 2 before it could be killed"
        assert time.monotonic() < deadline, "wave 2 never started"
        time.sleep(0.005)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    killed_at = sum(_calls(stack.emulator).values())
    assert killed_at < 2 * len(numbers), "the kill came after wave 2 was complete"

    # The task retry: a fresh operator, the same ledger.
    results = drive(
        campaign_operator(numbers, max_attempts=2, spacing=1.0, fail_on_rejected=False), context()
    )

    calls, messages = _calls(stack.emulator), _messages(stack.emulator)
    assert all(calls[n] <= 2 for n in numbers), calls  # nobody twice in one wave
    assert all(messages[n] <= 1 for n in numbers), messages  # nobody a second message
    dispositions = {numbers[r["index"]]: r["disposition"] for r in results}
    assert set(dispositions.values()) <= {"not_reached", "unknown"}
    # Exactly the never-reached get their one message; a call of unknown outcome may have rung.
    assert {n for n, d in dispositions.items() if d == "not_reached"} == set(messages)
    assert sum(1 for d in dispositions.values() if d == "unknown") <= 1


def test_a_closed_calling_window_defers_the_wave_to_its_opening(stack: Stack) -> None:
    from datetime import datetime, timedelta, timezone

    from airflow.providers.common.compat.sdk import TaskDeferred
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    now = datetime.now(timezone.utc)
    start, end = now + timedelta(hours=2), now + timedelta(hours=3)
    window = (f"{start:%H}:00", f"{end:%H}:00")
    op = campaign_operator([{"to": FIRST, "timezone": "UTC"}], calling_window=window)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context())
    trigger = deferred.value.trigger
    assert isinstance(trigger, DateTimeTrigger) and deferred.value.method_name == "execute_campaign"
    assert deferred.value.kwargs == {"wave": 1}
    assert trigger.moment.hour == start.hour and trigger.moment > now
    assert stack.emulator.calls == []  # nobody is dialed outside the window


def test_a_campaign_needs_the_callback_receiver(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_vonage_studio._compat import AirflowFailException

    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", stack.emulator.connection_json())
    with pytest.raises(AirflowFailException, match="callback_base_url"):
        campaign_operator([FIRST]).execute(context())
    assert stack.emulator.calls == []
