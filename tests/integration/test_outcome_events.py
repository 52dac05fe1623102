"""CallOutcomeEventTrigger driven for real on SQLite and PostgreSQL: which outcomes become events,
and its durable cursor across restarts (nothing lost, nothing repeated)."""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest
from airflow.triggers.base import BaseEventTrigger

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.triggers.outcome_events import (
    CallOutcomeEventTrigger,
    claim_outcomes,
    destinations_of,
)

# The autouse fixture closes the stores open_store() cached for each test.
from tests.unit.call_rows import AGENT, NUMBER, dispose_named_stores  # noqa: F401
from tests.unit.call_rows import placed as _placed
from tests.unit.call_rows import reported as _reported

UTC = timezone.utc


def _trigger(store_url: str, **kwargs: Any) -> CallOutcomeEventTrigger:
    kwargs.setdefault("poll_interval", 0.05)
    return CallOutcomeEventTrigger(store_url=store_url, **kwargs)


async def _take(events: AsyncIterator[Any], count: int, timeout: float = 15) -> list[dict[str, Any]]:
    """The next ``count`` payloads; each is taken (the generator resumed past it) but the last."""
    taken = []
    for _ in range(count):
        event = await asyncio.wait_for(events.__anext__(), timeout)
        taken.append(dict(event.payload))
    return taken


async def _nothing_more(events: AsyncIterator[Any], wait: float = 0.5) -> bool:
    """Whether no event comes within ``wait`` s (ends the generator: call it last)."""
    try:
        await asyncio.wait_for(events.__anext__(), wait)
    except asyncio.TimeoutError:
        return True
    return False


def test_it_is_an_event_trigger_and_round_trips() -> None:
    trigger = CallOutcomeEventTrigger(statuses=("busy", "timeout"), agent_id="agent-1")
    assert isinstance(trigger, BaseEventTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_vonage_studio.triggers.outcome_events.CallOutcomeEventTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    # The derived name depends on the filters only (not their order).
    assert CallOutcomeEventTrigger(statuses=("timeout", "busy"), agent_id="agent-1").name == trigger.name
    assert CallOutcomeEventTrigger(statuses=("busy",)).name != trigger.name


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"statuses": ("busy", "ringing")}, "statuses"),
        ({"statuses": ()}, "statuses"),
        ({"agent_id": ""}, "agent_id"),
        ({"dag_id": "  "}, "dag_id"),
        ({"start_from": "yesterday"}, "start_from"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"name": "x" * 300}, "name"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(VonageStudioConfigError, match=field):
        CallOutcomeEventTrigger(**kwargs)


def test_one_event_per_final_outcome_filtered_and_without_numbers(store: CallStore, store_url: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        events = _trigger(store_url, statuses=("busy", "timeout"), agent_id=AGENT, name="w").run()
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.3)  # the cursor starts "now": what follows counts

        def record() -> None:
            for ref in ("vs-busy", "vs-timeout", "vs-rejected", "vs-answered", "vs-other-agent"):
                if ref == "vs-other-agent":
                    store.begin_call(ref, agent_id="agent-2", destination=NUMBER)
                    store.mark_placed(ref, "s", datetime.now(UTC))
                else:
                    _placed(store, ref)
            _reported(store, "vs-busy", "busy")
            _reported(store, "vs-timeout", "timeout")
            _reported(store, "vs-rejected", "rejected")
            _reported(store, "vs-other-agent", "busy")
            store.record_outcome("vs-answered", "answered")
            # A verdict recorded after the callback: still the same one outcome.
            store.record_outcome("vs-busy", "busy")

        await asyncio.to_thread(record)
        payloads = [dict((await asyncio.wait_for(first, 15)).payload)]
        payloads += await _take(events, 1)
        assert await _nothing_more(events)
        await events.aclose()
        return payloads

    payloads = asyncio.run(scenario())
    assert sorted(p["call_ref"] for p in payloads) == ["vs-busy", "vs-timeout"]
    assert {p["call_ref"]: p["status"] for p in payloads} == {"vs-busy": "busy", "vs-timeout": "timeout"}
    for payload in payloads:
        assert json.loads(json.dumps(payload)) == payload
        assert NUMBER not in json.dumps(payload) and "destination" not in payload
        assert payload["agent_id"] == AGENT
    # The DAG learns the number from the store, by call_ref.
    assert destinations_of(["vs-busy", "vs-nope"], store_url) == {"vs-busy": NUMBER}


def test_a_restart_neither_loses_nor_repeats(store: CallStore, store_url: str) -> None:
    refs = [f"vs-r{i}" for i in range(6)]
    for ref in refs:
        _placed(store, ref)

    async def scenario() -> tuple[list[str], list[str]]:
        before: list[str] = []
        events = _trigger(store_url, statuses=("busy",), name="restart", start_from="beginning").run()
        await asyncio.to_thread(lambda: [_reported(store, ref) for ref in refs[:4]])
        # Three events: the first two taken and acknowledged by their DAG run; the second's run
        # never came (Airflow lost it with the triggerer); the third yielded, never taken.
        before += [p["call_ref"] for p in await _take(events, 3)]
        assert claim_outcomes("restart", before[:1], store_url) == {before[0]}
        await events.aclose()  # the triggerer dies here
        # Meanwhile more outcomes arrive.
        await asyncio.to_thread(lambda: [_reported(store, ref) for ref in refs[4:]])
        events = _trigger(store_url, statuses=("busy",), name="restart").run()
        after = [p["call_ref"] for p in await _take(events, 5)]
        assert await _nothing_more(events)
        await events.aclose()
        return before, after

    before, after = asyncio.run(scenario())
    # Nothing lost: the unacknowledged one and the one never taken come again, then the rest.
    assert sorted(set(before) | set(after)) == refs
    assert before[0] not in after  # acknowledged: never again
    assert set(after[:2]) == set(before[1:3])  # first, before anything new
    # Acting on them: each call_ref is claimed once, however often it was handed over.
    claimed = [claim_outcomes("restart", [ref], store_url) for ref in after]
    assert set().union(*claimed) == set(after) and claim_outcomes("restart", refs, store_url) == set()


def test_claims_are_atomic_and_only_for_handed_over_events(store: CallStore, store_url: str) -> None:
    store.advance_cursor("w", store.change_cursor(), handed=["vs-1", "vs-2"])
    assert set(store.unacknowledged("w")) == {"vs-1", "vs-2"}
    assert claim_outcomes("w", ["vs-1", "vs-9"], store_url) == {"vs-1"}  # vs-9 was never handed over
    assert claim_outcomes("w", ["vs-1", "vs-2"], store_url) == {"vs-2"}
    assert store.unacknowledged("w") == []


def test_start_from_now_skips_history(store: CallStore, store_url: str) -> None:
    _placed(store, "vs-history")
    _reported(store, "vs-history")

    async def scenario() -> tuple[bool, list[dict[str, Any]]]:
        old = _trigger(store_url, statuses=("busy",), name="fresh").run()
        pending = asyncio.ensure_future(old.__anext__())
        await asyncio.sleep(0.5)
        quiet = not pending.done()
        await asyncio.to_thread(lambda: (_placed(store, "vs-new"), _reported(store, "vs-new")))
        new = [dict((await asyncio.wait_for(pending, 15)).payload)]
        await old.aclose()
        return quiet, new

    quiet, new = asyncio.run(scenario())
    assert quiet and [p["call_ref"] for p in new] == ["vs-new"]


def test_store_outage_is_ridden_out(
    store: CallStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _placed(store, "vs-1")
    failures = iter([True, True])
    real = CallStore.changes_since

    def flaky(self: CallStore, *args: Any, **kwargs: Any) -> Any:
        if next(failures, False):
            raise ConnectionError("database restarting")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CallStore, "changes_since", flaky)

    async def scenario() -> list[dict[str, Any]]:
        events = _trigger(store_url, statuses=("busy",), name="outage", start_from="beginning").run()
        _reported(store, "vs-1")
        taken = await _take(events, 1)
        await events.aclose()
        return taken

    assert [p["call_ref"] for p in asyncio.run(scenario())] == ["vs-1"]


def test_an_event_nobody_acknowledges_is_handed_over_again(store: CallStore, store_url: str) -> None:
    _placed(store, "vs-lost")

    async def scenario() -> list[str]:
        events = _trigger(store_url, statuses=("busy",), name="redeliver", redeliver_after=0.3).run()
        pending = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_reported, store, "vs-lost")
        first = dict((await asyncio.wait_for(pending, 15)).payload)
        again = await _take(events, 1)  # taken, never claimed: comes back
        claim_outcomes("redeliver", ["vs-lost"], store_url)
        quiet = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(1.0)
        assert not quiet.done()  # claimed: never again
        quiet.cancel()
        await asyncio.gather(quiet, return_exceptions=True)
        return [first["call_ref"], again[0]["call_ref"]]

    assert asyncio.run(scenario()) == ["vs-lost", "vs-lost"]
