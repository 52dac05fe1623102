"""Call outcomes as events for event-driven DAGs: :class:`CallOutcomeEventTrigger`.

Airflow 3 schedules a DAG on an asset whose ``AssetWatcher`` runs an event trigger in the
triggerer; each event the trigger yields is an asset event that triggers the DAG. This trigger
follows the call store's change feed (:mod:`airflow_provider_vonage_studio.store.changes`) and
yields one event per call that reached its final outcome, filtered by status, agent and DAG.

**Which outcome.** A call's final status is its failure ``status`` (AI Studio's callback:
``busy``, ``timeout``, ... — known the moment the callback is stored, whether or not a task
waits for the call), else its ``outcome`` (the verdict a waiting task recorded: ``answered``, or
a failure status). So a watcher on ``("busy", "timeout")`` sees missed calls of fire-and-forget
DAGs too, and ``answered`` arrives when a sensor, trigger or waiting operator decided it.

**Delivery.** The watcher's position (a change-feed cursor) and a mark per call_ref it handed
over live in the store under the watcher's ``name`` (given, or derived from the filters). A
call_ref is marked right after the triggerer took its event (the generator resumes only then);
the position moves past a batch only once each of its events was marked. Taken is not stored:
the triggerer holds events in memory before writing them to Airflow's database, and a triggerer
killed meanwhile loses them. So a DAG acknowledges what it acts on (:func:`claim_outcomes`,
atomic), and a restarted watcher first hands over again every marked event nobody acknowledged:
each outcome reaches a run at least once and is acted on exactly once by a DAG that claims
before it acts.

**No phone numbers in events.** The triggerer logs every event it fires; the payload carries
the call_ref, status, agent and task identity. A DAG that needs the number looks it up by
call_ref in the store (:func:`destinations_of`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_vonage_studio.calls import FAILURE_STATUSES, FINAL_STATUSES
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.outcome import normalize_interval, open_store

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallRecord, CallStore, ChangeCursor

__all__ = [
    "CallOutcomeEvent",
    "CallOutcomeEventTrigger",
    "claim_outcomes",
    "destinations_of",
    "final_status",
    "outcome_event",
]

#: Reading the store failed this many rounds in a row: the warning says so once more loudly
#: (an asset watcher never gives up: it runs for as long as the DAG is scheduled on it).
_LOUD_AFTER = 5


class CallOutcomeEvent(TypedDict):
    """The payload of one outcome event (JSON-safe; no phone number)."""

    call_ref: str
    status: str
    agent_id: str
    dag_id: str | None
    run_id: str | None
    task_id: str | None
    map_index: int
    outcome_source: str | None
    status_at: str | None


def final_status(record: CallRecord) -> str | None:
    """The call's final status as the event trigger sees it: the failure callback's status, else
    the waiting task's verdict; ``None`` while neither is known."""
    if record.status in FAILURE_STATUSES:
        return record.status
    if record.outcome in FINAL_STATUSES:
        return record.outcome
    return None


def outcome_event(record: CallRecord, status: str) -> CallOutcomeEvent:
    """The event payload for ``record`` whose final status is ``status``."""
    when = record.status_at if record.status else record.outcome_at
    return CallOutcomeEvent(
        call_ref=record.call_ref,
        status=status,
        agent_id=record.agent_id,
        dag_id=record.dag_id,
        run_id=record.run_id,
        task_id=record.task_id,
        map_index=record.map_index,
        outcome_source=getattr(record, "outcome_source", None),
        status_at=when.isoformat() if when is not None else None,
    )


def destinations_of(call_refs: Iterable[str], store_url: str | None = None) -> dict[str, str]:
    """The destination (normalised number or SIP URI) of each call_ref found in the store: how a
    DAG triggered by outcome events learns whom to call back without numbers in the events."""
    records = open_store(store_url).get_calls(list(call_refs))
    return {ref: record.destination for ref, record in records.items()}


def claim_outcomes(watcher: str, call_refs: Iterable[str], store_url: str | None = None) -> set[str]:
    """Acknowledge the outcome events of ``call_refs`` for the watcher named ``watcher`` (the
    trigger's ``name``): the call_refs this DAG run should act on. An event handed over twice
    (after a triggerer restart) is claimed by one run only; an event never acknowledged is
    handed over again when the watcher restarts, so none is lost."""
    return open_store(store_url).acknowledge(watcher, call_refs)


class CallOutcomeEventTrigger(BaseEventTrigger):
    """Yield one event per call that reached its final outcome (for an ``AssetWatcher``).

    :param statuses: final statuses to report (default: all, ``answered`` included).
    :param agent_id: only calls of this agent.
    :param dag_id: only calls placed by this DAG.
    :param name: the watcher's durable cursor in the store; default derived from the filters
        (two watchers with the same filters share it: give distinct names to get every event
        in each).
    :param start_from: where a cursor that does not exist yet starts: ``"now"`` (outcomes
        recorded from the first run on) or ``"beginning"`` (every outcome in the store).
    :param poll_interval: seconds between reads of the change feed.
    :param store_url: the call store; ``None``: the triggerer's configured one.
    :param redeliver_after: seconds after which an event handed over but not acknowledged by a
        DAG run (:func:`claim_outcomes`) is handed over again (Airflow lost it, or the run
        failed first); at every start of the trigger all of them are.

    Each event's payload is a :class:`CallOutcomeEvent`. Never ends by itself; a store that
    cannot be read is retried every round (with a warning).

    :raises VonageStudioConfigError: for an unknown status, an empty filter value, a bad
        ``start_from``, ``name`` or ``poll_interval``.
    """

    def __init__(
        self,
        *,
        statuses: Iterable[str] | None = None,
        agent_id: str | None = None,
        dag_id: str | None = None,
        name: str | None = None,
        start_from: Literal["now", "beginning"] = "now",
        poll_interval: float = 5.0,
        store_url: str | None = None,
        redeliver_after: float = 300.0,
    ) -> None:
        super().__init__()
        if isinstance(statuses, str):
            statuses = (statuses,)
        chosen = tuple(dict.fromkeys(statuses)) if statuses is not None else FINAL_STATUSES
        bad = [s for s in chosen if s not in FINAL_STATUSES]
        if bad or not chosen:
            raise VonageStudioConfigError(
                f"statuses: {bad or '()'!r} is not a list of final statuses; expected any of "
                f"{', '.join(FINAL_STATUSES)}"
            )
        for field, value in (("agent_id", agent_id), ("dag_id", dag_id), ("name", name)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise VonageStudioConfigError(f"{field}: must be a non-empty string or None")
        if start_from not in ("now", "beginning"):
            raise VonageStudioConfigError(f"start_from: expected 'now' or 'beginning', got {start_from!r}")
        self.statuses = chosen
        self.agent_id = agent_id
        self.dag_id = dag_id
        self.start_from = start_from
        self.poll_interval = normalize_interval(poll_interval)
        self.store_url = store_url
        self.redeliver_after = normalize_interval(redeliver_after, "redeliver_after")
        self.name = name or self._derived_name()
        if len(self.name) > 255:
            raise VonageStudioConfigError("name: at most 255 characters")

    def _derived_name(self) -> str:
        key = json.dumps([sorted(self.statuses), self.agent_id, self.dag_id], separators=(",", ":"))
        return "outcomes:" + hashlib.sha256(key.encode()).hexdigest()[:24]

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and JSON-safe kwargs that rebuild this trigger."""
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "statuses": list(self.statuses),
            "agent_id": self.agent_id,
            "dag_id": self.dag_id,
            "name": self.name,
            "start_from": self.start_from,
            "poll_interval": self.poll_interval,
            "store_url": self.store_url,
            "redeliver_after": self.redeliver_after,
        }

    def matches(self, record: CallRecord) -> str | None:
        """The final status of ``record`` when this trigger reports it, else ``None``."""
        status = final_status(record)
        if status is None or status not in self.statuses:
            return None
        if self.agent_id is not None and record.agent_id != self.agent_id:
            return None
        if self.dag_id is not None and record.dag_id != self.dag_id:
            return None
        return status

    async def _start(self, store: CallStore) -> ChangeCursor:
        from airflow_provider_vonage_studio.store import ChangeCursor

        cursor = await asyncio.to_thread(store.load_cursor, self.name)
        if cursor is None:
            if self.start_from == "beginning":
                cursor = ChangeCursor(0, 0)
            else:
                cursor = await asyncio.to_thread(store.change_cursor)
            await asyncio.to_thread(store.advance_cursor, self.name, cursor)
        return cursor

    async def _unacknowledged(
        self, store: CallStore, *, overdue: bool = False
    ) -> dict[str, CallOutcomeEvent]:
        """Events handed over before that no DAG run has acknowledged yet: all of them (at the
        start: an earlier triggerer may have died before Airflow stored them), or (``overdue``)
        those last handed over ``redeliver_after`` seconds ago or more (Airflow lost the event or
        its run failed before claiming it). Noted as handed over again."""
        before = datetime.now(timezone.utc) - timedelta(seconds=self.redeliver_after) if overdue else None
        refs = await asyncio.to_thread(store.unacknowledged, self.name, handed_before=before)
        if not refs:
            return {}
        await asyncio.to_thread(store.handed_again, self.name, refs)
        records = await asyncio.to_thread(store.get_calls, refs)
        events = {}
        for ref in refs:
            record = records.get(ref)
            status = final_status(record) if record is not None else None
            if record is not None and status is not None:
                events[ref] = outcome_event(record, status)
        return events

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Follow the change feed for ever, yielding one event per newly final matching call
        (and, first, again every event handed over before but not acknowledged)."""
        store = open_store(self.store_url)
        cursor: ChangeCursor | None = None
        failures = 0
        again: dict[str, CallOutcomeEvent] | None = None
        next_redelivery = 0.0
        self.log.info(
            "Watching call outcomes %s (agent %s, DAG %s) as %r, every %ss",
            ", ".join(self.statuses),
            self.agent_id or "any",
            self.dag_id or "any",
            self.name,
            self.poll_interval,
        )
        while True:
            try:
                if cursor is None:
                    cursor = await self._start(store)
                if again is None or time.monotonic() >= next_redelivery:
                    again = await self._unacknowledged(store, overdue=again is not None)
                    next_redelivery = time.monotonic() + min(self.redeliver_after, 60.0)
                    if again:
                        self.log.info(
                            "Handing over again %d outcome event(s) not acknowledged yet", len(again)
                        )
                    for event in again.values():
                        yield TriggerEvent(dict(event))
                changes, new = await asyncio.to_thread(store.changes_since, cursor)
                due = self._due(changes)
                handed = await asyncio.to_thread(store.handed_over, self.name, due) if due else set()
            except Exception as exc:  # ridden out: the watcher lives as long as the DAG
                failures += 1
                log = self.log.error if failures % _LOUD_AFTER == 0 else self.log.warning
                log(
                    "Reading the call store failed %d time(s) in a row (%s); trying again",
                    failures,
                    type(exc).__name__,
                )
                await asyncio.sleep(self.poll_interval)
                continue
            failures = 0
            for ref, event in due.items():
                if ref in handed:
                    continue
                yield TriggerEvent(dict(event))
                # Resumed: the triggerer has taken the event. Marked before anything else runs.
                await self._mark(store, cursor, ref)
            if new != cursor:
                await asyncio.to_thread(store.advance_cursor, self.name, new)
                cursor = new
            await asyncio.sleep(self.poll_interval)

    async def _mark(self, store: CallStore, cursor: ChangeCursor, ref: str) -> None:
        """Record ``ref`` as handed over, retrying until the store takes it (an unmarked event
        would be handed over again after a restart)."""
        failures = 0
        while True:
            try:
                await asyncio.to_thread(store.advance_cursor, self.name, cursor, (ref,))
                return
            except Exception as exc:
                failures += 1
                self.log.warning(
                    "Could not record outcome event %s as handed over (%s); trying again",
                    ref,
                    type(exc).__name__,
                )
                await asyncio.sleep(min(self.poll_interval * failures, 60.0))

    def _due(self, changes: Iterable[Any]) -> dict[str, CallOutcomeEvent]:
        """Events for the matching final rows among ``changes``, in change order, one per call."""
        due: dict[str, CallOutcomeEvent] = {}
        for change in changes:
            status = self.matches(change.record)
            if status is not None and change.record.call_ref not in due:
                due[change.record.call_ref] = outcome_event(change.record, status)
        return due
