"""Exactly once, over real HTTP: crashes, retries and injected faults never dial anyone twice.

The emulator is a real HTTP server and records every request it receives, so "dialed twice"
is observed where it would hurt: at the API. The batch is dialed by the same loop
``MakeCallsOperator`` runs; in the crash test it runs in a separate process that is killed
with SIGKILL, as a worker crash or an OOM kill would, and started again, as Airflow retries.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_vonage_studio._compat import AirflowFailException
from airflow_provider_vonage_studio.batch import BatchDialer, plan_recipients
from airflow_provider_vonage_studio.exceptions import VonageStudioError
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.operators import vonage_studio as operators
from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator, MakeCallsOperator
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import MAKE_CALL_PATH, Emulator
from tests.integration.dial_workers import FakeTI

ROOT = Path(__file__).resolve().parents[2]
KEY = "exactly-once-key-0b9a8c7d"
AGENT = "agent-1"
# The UK's drama range 07700 900000-900999: exactly 1,000 numbers that never reach a phone.
NUMBERS = [f"447700900{n:03d}" for n in range(1000)]
KILLS = 5


def _made(emulator: Emulator) -> list[Any]:
    return [r for r in emulator.requests if r.path == MAKE_CALL_PATH]


def _requests_by_to(emulator: Emulator) -> Counter[str]:
    return Counter(r.body["to"] for r in _made(emulator) if isinstance(r.body, dict))


def _calls_by_to(emulator: Emulator) -> dict[str, list[Any]]:
    calls: dict[str, list[Any]] = defaultdict(list)
    for call in emulator.calls:
        calls[call.to].append(call)
    return calls


# -- 1,000 recipients, SIGKILL five times -----------------------------------------------------------


class _Worker:
    """One try of the batch: a process running the batch dialing loop."""

    def __init__(self, tmp_path: Path, env: dict[str, str], store_url: str, number: int) -> None:
        self.results = tmp_path / f"results-{number}.json"
        self.log = (tmp_path / f"worker-{number}.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.dial_workers",
                "batch",
                "--recipients",
                str(tmp_path / "recipients.json"),
                "--store-url",
                store_url,
                "--results",
                str(self.results),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self.log.close()
        return code


def _wait_until(predicate: Any, worker: _Worker, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert worker.proc.poll() is None, f"the worker ended before {what} (exit {worker.proc.returncode})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def test_sigkill_five_times_never_dials_anyone_twice(tmp_path: Path) -> None:
    seed = int(os.environ.get("VS_FAULT_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    note = f"(seed {seed}; rerun with VS_FAULT_SEED={seed})"
    store_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    (tmp_path / "recipients.json").write_text(json.dumps(NUMBERS))
    # The limit is lifted and the workers do not pace (a testing knob): 1,000 calls in seconds.
    emulator = Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=100_000).start()
    env = {
        **os.environ,
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT": emulator.connection_json(calls_per_second=5),
        "AIRFLOW__VONAGE_STUDIO__STORE_URL": store_url,
    }
    in_flight: list[str] = []  # destinations whose request was held by the emulator at a kill
    kill_log: list[str] = []
    try:
        for kill in range(KILLS):
            worker = _Worker(tmp_path, env, store_url, kill)
            sent = len(_made(emulator))
            if kill % 2 == 1:
                # Land the kill inside a request: the emulator places the call, then holds the
                # answer back; the kill comes once the request is seen, before the answer.
                victim = NUMBERS[min(sent + rng.randint(20, 60), len(NUMBERS) - 1)]
                emulator.inject("timeout", to=victim, delay=5.0)
                _wait_until(lambda v=victim: _requests_by_to(emulator)[v] == 1, worker, "the slow request")
                time.sleep(rng.uniform(0.0, 0.2))
                in_flight.append(victim)
            else:
                # Anywhere in the cycle: between calls, in a store write, in a request.
                target = sent + rng.randint(30, 150)
                _wait_until(lambda t=target: len(_made(emulator)) >= t, worker, f"{target} requests")
            worker.kill()
            kill_log.append(f"kill {kill + 1} after {len(_made(emulator))} requests")
        final = _Worker(tmp_path, env, store_url, KILLS)
        assert final.wait(120) == 0, (tmp_path / f"worker-{KILLS}.log").read_text()[-3000:]
    finally:
        emulator.stop()

    results = json.loads(final.results.read_text())
    requests_by_to = _requests_by_to(emulator)
    calls_by_to = _calls_by_to(emulator)
    store = CallStore(store_url)
    rows = {row.destination: row for row in store.recent_calls(limit=5000)}
    store.dispose()
    context = f"{note}; {', '.join(kill_log)}"

    # No destination ever reached the emulator twice, and nothing outside the list did.
    assert max(requests_by_to.values()) == 1, context
    assert set(requests_by_to) <= set(NUMBERS), context
    # Every recipient is reported once, in order; only calls in flight at a kill are unknown.
    assert [r["index"] for r in results] == list(range(len(NUMBERS))), context
    by_result = Counter(r["result"] for r in results)
    assert set(by_result) <= {"placed", "unknown"}, (by_result, context)
    unknown = {NUMBERS[r["index"]] for r in results if r["result"] == "unknown"}
    assert len(unknown) <= KILLS, (sorted(unknown), context)
    assert set(in_flight) <= unknown, context  # the kills that certainly hit a request
    # Everyone else was dialed exactly once, and the result is the emulator's session.
    for result in results:
        to = NUMBERS[result["index"]]
        if to in unknown:
            assert requests_by_to[to] <= 1, (to, context)
            continue
        (call,) = calls_by_to[to]
        assert result["session_id"] == call.session_id, context
    # The ledger agrees with the emulator, row for row.
    assert set(rows) == set(NUMBERS), context
    assert {row.state.value for row in rows.values()} <= {"placed", "unknown"}, context  # none left sending
    for to, row in rows.items():
        if row.state.value == "placed":
            assert [c.session_id for c in calls_by_to[to]] == [row.session_id], (to, context)
        else:
            assert to in unknown and requests_by_to[to] <= 1, (to, context)
    assert {to for to, row in rows.items() if row.state.value == "unknown"} == unknown, context
    # Calls the emulator placed but the ledger could not confirm are exactly the in-flight ones.
    unconfirmed = {to for to, calls in calls_by_to.items() if rows[to].state.value != "placed"}
    assert unconfirmed <= unknown and set(in_flight) <= unconfirmed, context


# -- injected faults: 429, 503, dropped connections, read timeouts ------------------------------------


@pytest.fixture
def unpaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Emulator, CallStore]]:
    """An emulator with its limit lifted and a ledger; dialers here pace nothing."""
    store = CallStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=100_000) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json(calls_per_second=5))
        yield emulator, store
    store.dispose()


def _dialer(store: CallStore, **hook_kwargs: Any) -> BatchDialer:
    hook = VonageStudioHook(store=store, pace=False, retry_backoff=0.01, **hook_kwargs)
    hook.waits = []  # type: ignore[attr-defined]
    hook._sleep = hook.waits.append  # type: ignore[attr-defined]
    return BatchDialer(hook, AGENT, dag_id="fault_dag", run_id="manual__faults", task_id="dial")


def test_429_503_and_dropped_connections_still_place_every_call_once(unpaced) -> None:
    emulator, store = unpaced
    numbers = NUMBERS[:40]
    emulator.inject("429", count=3)  # the first requests, whoever they are for
    emulator.inject("429", count=2, to=numbers[3], retry_after=1)
    emulator.inject("503", count=2, to=numbers[7])
    emulator.inject("drop", count=1, to=numbers[11])
    emulator.inject("drop", count=3, to=numbers[12])
    dialer = _dialer(store)
    report = dialer.run(plan_recipients(numbers))

    assert report.counts()["placed"] == len(numbers), report.summary()
    calls = _calls_by_to(emulator)
    assert all(len(calls[to]) == 1 for to in numbers)
    statuses: dict[str, list[int | None]] = defaultdict(list)
    for request in _made(emulator):
        statuses[request.body["to"]].append(request.status)
    assert statuses[numbers[0]] == [429, 429, 429, 200]
    assert statuses[numbers[3]] == [429, 429, 200]
    assert statuses[numbers[7]] == [503, 503, 200]
    assert statuses[numbers[11]] == [None, 200]  # None: the connection was dropped, no answer
    assert statuses[numbers[12]] == [None, None, None, 200]
    # Every 429 was absorbed and counted; Retry-After was honoured.
    assert report.rate_limited == 5 == dialer.hook.rate_limited_count
    assert dialer.hook.waits.count(1.0) == 2  # type: ignore[attr-defined]
    for result in report.results:
        assert result.session_id == calls[NUMBERS[result.index]][0].session_id


def test_read_timeouts_end_unknown_and_are_never_sent_again(unpaced) -> None:
    emulator, store = unpaced
    numbers = NUMBERS[:30]
    slow = [numbers[2], numbers[5], numbers[9]]
    for to in slow:
        # The emulator places the call, then answers after 1 s; the client gives up at 0.3 s.
        emulator.inject("timeout", to=to, delay=1.0)
    plan = plan_recipients(numbers)
    first = _dialer(store, timeout=0.3).run(plan)

    unknown = [numbers[r.index] for r in first.results if r.result.value == "unknown"]
    assert unknown == slow
    assert all(
        "no answer came within 0.3s" in (r.reason or "") for r in first.results if r.result.value == "unknown"
    )
    requests_by_to = _requests_by_to(emulator)
    assert all(requests_by_to[to] == 1 for to in numbers)
    # The emulator did place those calls: sending them again would ring those phones twice.
    assert all(len(_calls_by_to(emulator)[to]) == 1 for to in slow)
    assert {
        store.get_call(r.call_ref).state.value
        for r in first.results
        if r.call_ref and numbers[r.index] in slow
    } == {"unknown"}

    # The next try of the task sends nothing at all: placed calls come from the ledger, the
    # unknown ones are reported again and not dialed.
    sent = len(emulator.requests)
    again = _dialer(store).run(plan)
    assert len(emulator.requests) == sent
    assert [(r.result, r.session_id) for r in again.results] == [
        (r.result, r.session_id) for r in first.results
    ]


def test_a_try_killed_mid_dial_leaves_unknown_not_a_redial(unpaced) -> None:
    """The relabel of a stale 'sending' row, without a process kill: the row the killed try
    marked just before its request (which did reach the API) is reported unknown, never re-sent."""
    emulator, store = unpaced
    dialer = _dialer(store)
    plan = plan_recipients(NUMBERS[:3])
    ref = dialer.call_ref_for(plan[1])
    store.begin_call(ref, agent_id=AGENT, destination=NUMBERS[1], dag_id="fault_dag", run_id="manual__faults")
    store.mark_sending(ref)
    report = dialer.run(plan)
    assert [r.result.value for r in report.results] == ["placed", "unknown", "placed"]
    assert "ended while this call was being dialed" in (report.results[1].reason or "")
    assert store.get_call(ref).state.value == "unknown"
    assert NUMBERS[1] not in _requests_by_to(emulator)
    # redial_unknown is the explicit way to call it anyway.
    dialer.redial_unknown = True
    assert dialer.run(plan).results[1].result.value == "placed"
    assert _requests_by_to(emulator)[NUMBERS[1]] == 1


# -- MakeCallsOperator: retries, clears, do-not-call, systemic refusals -----------------------------------


class Live:
    def __init__(self, emulator: Emulator, store: CallStore) -> None:
        self.emulator, self.store = emulator, store


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """A strict emulator at 5 calls/s, the connection at 5 calls/s (paced), and the configured store."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", url)
    store = CallStore(url)
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=5) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json())
        yield Live(emulator, store)
    store.dispose()
    CallStore._clear_default_cache(url)


def _ctx(run_id: str = "manual__1", task_id: str = "calls") -> Any:
    return {"ti": FakeTI("it_batch", run_id, task_id, -1)}


MIXED = [
    "+44 7700 900001",
    {"to": "447700900002", "key": "cust-2", "session_parameters": {"CALLER_NAME": "Ann"}},
    "call me maybe",
    "0044 7700 900001",  # the first one again
    "447700900003",  # on the store's do-not-call list
    "447700900004",  # on the operator's do_not_call list
    {"to": "sip:desk@pbx.example.com"},
]


def test_batch_reports_every_recipient_and_fails_at_the_end(live: Live) -> None:
    live.store.dnc_add("447700900003", reason="asked not to be called")
    op = MakeCallsOperator(
        task_id="calls",
        recipients=MIXED,
        agent_id=AGENT,
        session_parameters={"CAMPAIGN": "Q3"},
        do_not_call=["+44 7700 900004"],
    )
    context = _ctx()
    with pytest.raises(
        AirflowFailException, match=r"1 recipient\(s\) rejected or of unknown outcome"
    ) as info:
        op.execute(context)
    assert "placed 3, rejected 1, skipped 3 of 7" in str(info.value)
    results = context["ti"].xcoms["results"]
    assert [r["result"] for r in results] == [
        "placed",
        "placed",
        "rejected",
        "skipped",
        "skipped",
        "skipped",
        "placed",
    ]
    assert [r["reason"] for r in results[3:6]] == ["duplicate", "do-not-call", "do-not-call"]
    assert results[3]["duplicate_of"] == 0
    assert "recipients[2]" in results[2]["reason"] and results[2]["call_ref"] is None
    assert results[1]["key"] == "cust-2"
    assert [c.to for c in live.emulator.calls] == ["447700900001", "447700900002", "sip:desk@pbx.example.com"]
    params = {p["name"]: p["value"] for p in live.emulator.calls[1].session_parameters}
    assert params == {"CAMPAIGN": "Q3", "CALLER_NAME": "Ann"}
    assert 429 not in [r.status for r in live.emulator.requests]  # paced at the agent's limit
    dumped = json.dumps(results)
    assert not any(f"4477009000{n}" in dumped for n in range(1, 5))  # numbers are redacted in results

    # A manual clear of the task re-runs it with the same identity: the same call_refs, so
    # the placed calls come back from the ledger and nobody is dialed again.
    sent = len(live.emulator.requests)
    rerun = MakeCallsOperator(
        task_id="calls",
        recipients=MIXED,
        agent_id=AGENT,
        do_not_call=["+44 7700 900004"],
        fail_on_rejected=False,
    ).execute(_ctx())
    assert len(live.emulator.requests) == sent
    assert [(r["result"], r["session_id"]) for r in rerun] == [
        (r["result"], r["session_id"]) for r in results
    ]

    # Calling the same people again is deliberate: a new run, or a new call_key.
    MakeCallsOperator(
        task_id="calls", recipients=MIXED[:2], agent_id=AGENT, call_key="second-attempt"
    ).execute(_ctx())
    MakeCallsOperator(task_id="calls", recipients=MIXED[:1], agent_id=AGENT).execute(_ctx(run_id="manual__2"))
    assert [c.to for c in live.emulator.calls][3:] == ["447700900001", "447700900002", "447700900001"]


def test_a_refused_key_stops_the_batch_and_a_fixed_key_resumes_it(live: Live, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", live.emulator.connection_json(key="wrong-key"))
    numbers = NUMBERS[:20]
    context = _ctx()
    with pytest.raises(AirflowFailException, match="Not Authorised"):
        MakeCallsOperator(task_id="calls", recipients=numbers, agent_id=AGENT).execute(context)
    # One request, not twenty: a refused key would be refused for everyone.
    assert len(live.emulator.requests) == 1
    results = context["ti"].xcoms["results"]
    assert results[0]["result"] == "rejected" and "401" in results[0]["reason"]
    assert {r["result"] for r in results[1:]} == {"skipped"}
    assert all(r["reason"].startswith("not dialed: the batch stopped") for r in results[1:])

    # The key fixed and the task cleared: the first refusal is history (not re-sent, not a stop).
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", live.emulator.connection_json())
    rerun = MakeCallsOperator(task_id="calls", recipients=numbers[:4], agent_id=AGENT, fail_on_rejected=False)
    results = rerun.execute(_ctx())
    assert [r["result"] for r in results] == ["rejected", "placed", "placed", "placed"]
    assert [c.to for c in live.emulator.calls] == numbers[1:4]


def test_an_outage_stops_the_batch_retryably_and_the_retry_resumes(live: Live, monkeypatch) -> None:
    # Short back-off so that the hook's retries are spent quickly.
    monkeypatch.setattr(
        MakeCallsOperator,
        "hook",
        property(lambda self: VonageStudioHook(retry_backoff=0.01, max_attempts=2)),
    )
    numbers = NUMBERS[:5]
    live.emulator.inject("503", count=2, to=numbers[2])
    op = MakeCallsOperator(task_id="calls", recipients=numbers, agent_id=AGENT)
    context = _ctx()
    with pytest.raises(VonageStudioError) as info:
        op.execute(context)
    assert not isinstance(info.value, AirflowFailException) and info.value.retryable
    assert [r["result"] for r in context["ti"].xcoms["results"]] == [
        "placed",
        "placed",
        "rejected",
        "skipped",
        "skipped",
    ]
    # Airflow retries the task: the refused call (definitely not placed) and the rest are dialed.
    results = op.execute(_ctx())
    assert [r["result"] for r in results] == ["placed"] * 5
    calls = _calls_by_to(live.emulator)
    assert [len(calls[to]) for to in numbers] == [1] * 5


# -- calling windows ---------------------------------------------------------------------------------


def _set_clock(monkeypatch: pytest.MonkeyPatch, when: datetime) -> None:
    monkeypatch.setattr(operators, "_utcnow", lambda: when)


def test_batch_dials_who_is_inside_and_defers_the_rest(live: Live, monkeypatch) -> None:
    from airflow.providers.common.compat.sdk import TaskDeferred

    recipients = [
        "+44 20 7946 0001",  # London: 13:00 local
        "+1 212 555 0101",  # New York: 08:00 local, opens at 13:00 UTC
        {"to": "sip:tokyo@pbx.example.com", "timezone": "Asia/Tokyo"},  # 21:00, opens 00:00 UTC
    ]
    op = MakeCallsOperator(
        task_id="calls", recipients=recipients, agent_id=AGENT, calling_window=("09:00", "20:00")
    )
    _set_clock(monkeypatch, datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_ctx())
    assert deferred.value.method_name == "execute_after_window"
    assert deferred.value.trigger.moment == datetime(2026, 6, 1, 13, 0, tzinfo=timezone.utc)
    assert not deferred.value.kwargs  # nothing about the recipients travels through the trigger
    assert [c.to for c in live.emulator.calls] == ["442079460001"]

    _set_clock(monkeypatch, datetime(2026, 6, 1, 13, 0, tzinfo=timezone.utc))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_after_window(_ctx(), event=None)
    assert deferred.value.trigger.moment == datetime(2026, 6, 2, 0, 0, tzinfo=timezone.utc)

    _set_clock(monkeypatch, datetime(2026, 6, 2, 0, 0, tzinfo=timezone.utc))
    results = op.execute_after_window(_ctx(), event=None)
    assert [r["result"] for r in results] == ["placed"] * 3
    # Each callee once, each inside their own window.
    assert [c.to for c in live.emulator.calls] == ["442079460001", "12125550101", "sip:tokyo@pbx.example.com"]


def test_single_call_defers_at_night_and_dials_when_the_window_opens(live: Live, monkeypatch) -> None:
    from airflow.providers.common.compat.sdk import TaskDeferred

    op = MakeCallOperator(task_id="call", to="+1 212 555 0102", agent_id=AGENT, calling_window=True)
    _set_clock(monkeypatch, datetime(2026, 6, 1, 3, 0, tzinfo=timezone.utc))  # 23:00 in New York
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_ctx(task_id="call"))
    assert deferred.value.method_name == "execute_in_window"
    assert deferred.value.trigger.moment == datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)  # 08:00 EDT
    assert live.emulator.requests == []

    _set_clock(monkeypatch, datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc))
    placed = op.execute_in_window(_ctx(task_id="call"))
    assert placed["session_id"] == live.emulator.calls[0].session_id

    # Cleared at night: the call was placed, so the task returns it at once (no waiting, no dial).
    _set_clock(monkeypatch, datetime(2026, 6, 2, 3, 0, tzinfo=timezone.utc))
    assert op.execute(_ctx(task_id="call")) == placed
    assert len(live.emulator.requests) == 1

    # A malformed number fails at once, even at night: waiting would not make it valid.
    bad = MakeCallOperator(task_id="bad", to="not a number", agent_id=AGENT, calling_window=True)
    with pytest.raises(AirflowFailException, match="not a phone number"):
        bad.execute(_ctx(task_id="bad"))


# -- waiting for the statuses of a whole batch ---------------------------------------------------------

SECRET = "exactly-once-callback-secret-61e0"


@pytest.fixture
def with_receiver(live: Live, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """The real callback receiver in front of the ledger, and the connection pointing at it."""
    from airflow_provider_vonage_studio.callbacks.app import create_app
    from airflow_provider_vonage_studio.testing.servers import ThreadedServer

    app = create_app(store=live.store, secret_provider=lambda: [SECRET], outcome_view="off")
    receiver = ThreadedServer(app).start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT",
        live.emulator.connection_json(callback_base_url=receiver.url, callback_secret=SECRET),
    )
    live.emulator.script("447700900011", "busy")
    live.emulator.script("447700900013", "timeout")
    yield live
    receiver.stop()


STATUS_RECIPIENTS = ["447700900011", "447700900012", "447700900013", "not a number"]


def test_batch_waits_for_every_status_with_one_trigger(with_receiver: Live) -> None:
    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger

    op = MakeCallsOperator(
        task_id="calls",
        recipients=STATUS_RECIPIENTS,
        agent_id=AGENT,
        wait_for_status=True,
        answer_window=1.0,
        poke_interval=0.2,
        deferrable=True,
        fail_on_rejected=False,
        fail_on=("timeout",),
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_ctx())
    trigger = deferred.value.trigger
    assert isinstance(trigger, CallStatusTrigger) and deferred.value.method_name == "execute_complete"
    assert len(trigger.call_refs) == 3  # one trigger for the whole batch
    assert "4477009000" not in json.dumps(trigger.serialize()[1])

    async def first() -> dict[str, Any]:
        return (await anext(trigger.run())).payload

    event = asyncio.run(asyncio.wait_for(first(), 20))
    context = _ctx()
    with pytest.raises(
        AirflowFailException, match=r"1 call\(s\) ended with a status in fail_on=\['timeout'\]"
    ):
        op.execute_complete(context, event)
    results = context["ti"].xcoms["results"]
    assert [(r["result"], r["status"]) for r in results] == [
        ("placed", "busy"),
        ("placed", "answered"),
        ("placed", "timeout"),
        ("rejected", None),
    ]
    assert len(with_receiver.emulator.calls) == 3  # resuming never dials
    # Where each status came from rides in the trigger's event into every result.
    assert [r["outcome_source"] for r in results] == ["callback", "inferred", "callback", None]
    # Every verdict is stored for the outcome view, although fail_on failed the task.
    records = with_receiver.store.get_calls([r["call_ref"] for r in results if r["call_ref"]])
    assert [records[r["call_ref"]].outcome for r in results[:3]] == ["busy", "answered", "timeout"]


def test_batch_waits_for_statuses_in_process(with_receiver: Live) -> None:
    op = MakeCallsOperator(
        task_id="calls",
        recipients=STATUS_RECIPIENTS[:3],
        agent_id=AGENT,
        wait_for_status=True,
        answer_window=1.0,
        poke_interval=0.2,
        deferrable=False,
    )
    results = op.execute(_ctx())
    assert [r["status"] for r in results] == ["busy", "answered", "timeout"]
    assert [r["outcome_source"] for r in results] == ["callback", "inferred", "callback"]
    records = with_receiver.store.get_calls([r["call_ref"] for r in results])
    assert [records[r["call_ref"]].outcome for r in results] == ["busy", "answered", "timeout"]
    assert [records[r["call_ref"]].outcome_source for r in results] == ["callback", "inferred", "callback"]
