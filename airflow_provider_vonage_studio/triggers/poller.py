"""The shared poller of :class:`~.vonage_studio.CallStatusTrigger`: waiting costs what changes.

A triggerer may hold tens of thousands of waiting triggers, and in any second almost none of
their calls changes. All triggers of one event loop that use the same store share one
:class:`_SharedPoller`. It starts with one full read of its waiters' rows (correct after any
restart: nothing is assumed about what happened before), then each round asks the store's
change feed only for the rows written since its cursor
(:meth:`~airflow_provider_vonage_studio.store.changes.Changes.changes_since`: one indexed
query, whatever the number of waiters) and wakes only the waiters whose rows changed.

Time alone decides some outcomes (a silent call is ``answered`` once its answer window has
passed; a ``sending`` row gives up after ``pending_timeout``). Those deadlines live in an
in-memory heap: a waiter names the instant and its refs, and when it falls due the poller
re-reads those rows (in the same query as the round's changes) before the waiter decides, so
a failure status that arrived at the last moment still wins. Rows of refs joining a running
poller are read the same way. The blocking SQL runs in a worker thread
(``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import weakref
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, ClassVar

from airflow_provider_vonage_studio.outcome import open_store

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallRecord, Change, ChangeCursor


class _Waiter:
    """One trigger's registration with a :class:`_SharedPoller`.

    ``refs`` are the call_refs the trigger still waits for (it calls :meth:`done` for decided
    ones); ``records`` the latest row seen of each (absent: no row in the store).
    """

    def __init__(self, poller: _SharedPoller, refs: Iterable[str], interval: float) -> None:
        self.poller = poller
        self.refs: set[str] = set(refs)
        self.interval = interval
        self.records: dict[str, CallRecord] = {}
        self.seqs: dict[str, int] = {}
        self._ready = asyncio.Event()
        self._error: BaseException | None = None

    def _update(self, change: Change) -> bool:
        """Take ``change`` unless an older row than the one held; whether it is a newer row
        (PostgreSQL's change feed may return a row seen already)."""
        ref = change.record.call_ref
        known = self.seqs.get(ref, -1)
        if change.seq < known:
            return False
        self.seqs[ref] = change.seq
        self.records[ref] = change.record
        return change.seq > known

    def deliver(self, error: BaseException | None = None) -> None:
        """Wake the trigger: its rows changed, a deadline fell due, or (``error``) the round failed."""
        self._error = error
        self._ready.set()

    async def next_round(self) -> dict[str, CallRecord]:
        """The latest rows of ``refs`` once something about them changed (refs without a row
        are absent).

        :raises Exception: whatever reading the store raised in that round.
        """
        await self._ready.wait()
        self._ready.clear()
        error, self._error = self._error, None
        if error is not None:
            raise error
        return {ref: self.records[ref] for ref in self.refs if ref in self.records}

    def wake_at(self, deadline: datetime, refs: Iterable[str]) -> None:
        """Re-read ``refs`` and wake this waiter in the first round at or after ``deadline``."""
        self.poller.schedule(self, deadline, refs)

    def done(self, refs: Iterable[str]) -> None:
        """Stop waiting for ``refs`` (decided)."""
        for ref in list(refs):
            self.refs.discard(ref)
            self.records.pop(ref, None)
            self.seqs.pop(ref, None)
            self.poller._forget(self, ref)

    def close(self) -> None:
        """Stop taking part in poll rounds (idempotent)."""
        self.poller.unregister(self)


class _SharedPoller:
    """Follows the store's change feed for all registered waiters of one event loop and one
    store URL.

    Rounds fall on a grid of the shortest interval among the waiters (on the loop's clock);
    each issues one ``changes_since`` (plus the rows of refs to re-read, in the same query).
    A round that fails to read the store is delivered to every waiter as the exception (each
    decides how long to tolerate it); the cursor stays where it was. The poller task ends
    when its last waiter leaves.
    """

    # loop -> store URL (None: the configured store) -> poller. Keyed by loop because
    # asyncio primitives belong to one loop; weak so a closed loop's pollers vanish with it.
    _registry: ClassVar[
        weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, _SharedPoller]]
    ] = weakref.WeakKeyDictionary()

    def __init__(self, store_url: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.store_url = store_url
        self.loop = loop
        self.waiters: set[_Waiter] = set()
        self.rounds = 0  # poll rounds run (benchmarks and tests read it)
        self.refs_polled = 0  # rows read, changed or re-read (benchmarks and tests read it)
        self.cursor: ChangeCursor | None = None
        self._by_ref: dict[str, set[_Waiter]] = {}
        self._unread: dict[_Waiter, set[str]] = {}  # waiters (and refs) not read yet
        self._deadlines: list[tuple[datetime, int, _Waiter, str]] = []
        self._counter = itertools.count()
        self._shortest: float | None = None  # see _interval
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_store(cls, store_url: str | None) -> _SharedPoller:
        """The running loop's poller for ``store_url``, created on first use."""
        loop = asyncio.get_running_loop()
        pollers = cls._registry.setdefault(loop, {})
        poller = pollers.get(store_url)
        if poller is None:
            poller = pollers[store_url] = cls(store_url, loop)
        return poller

    @classmethod
    def active(cls, store_url: str | None = None) -> _SharedPoller | None:
        """The running loop's poller for ``store_url`` if one exists (for tests and benchmarks)."""
        return cls._registry.get(asyncio.get_running_loop(), {}).get(store_url)

    def register(self, refs: Iterable[str], interval: float) -> _Waiter:
        """Join the poll rounds; the new waiter's rows are read in full in the next round."""
        waiter = _Waiter(self, refs, interval)
        self.waiters.add(waiter)
        if self._shortest is not None:
            self._shortest = min(self._shortest, interval)
        self._unread[waiter] = set(waiter.refs)
        for ref in waiter.refs:
            self._by_ref.setdefault(ref, set()).add(waiter)
        if self._task is None or self._task.done():
            # A poller that stopped has left the registry; take the slot again if it is free.
            self._registry.setdefault(self.loop, {}).setdefault(self.store_url, self)
            self._task = self.loop.create_task(self._run(), name=f"vonage-studio-poller:{id(self):x}")
        self._wakeup.set()  # the new waiter may want a shorter interval than the current sleep
        return waiter

    def unregister(self, waiter: _Waiter) -> None:
        """Leave the poll rounds (idempotent); the poller stops by itself when nobody is left."""
        if waiter not in self.waiters:
            return
        self.waiters.discard(waiter)
        if waiter.interval == self._shortest:
            self._shortest = None
        self._unread.pop(waiter, None)
        for ref in list(waiter.refs):
            self._forget(waiter, ref)
        if not self.waiters:
            self._wakeup.set()

    def schedule(self, waiter: _Waiter, deadline: datetime, refs: Iterable[str]) -> None:
        """Put ``refs`` of ``waiter`` on the deadline heap (see :meth:`_Waiter.wake_at`)."""
        earliest = self._deadlines[0][0] if self._deadlines else None
        for ref in refs:
            heapq.heappush(self._deadlines, (deadline, next(self._counter), waiter, ref))
        if earliest is None or deadline < earliest:
            self._wakeup.set()  # the poller may be asleep until a later instant: re-plan

    def _forget(self, waiter: _Waiter, ref: str) -> None:
        waiters = self._by_ref.get(ref)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._by_ref[ref]

    def _interval(self) -> float:
        """The shortest interval among the waiters (cached: tens of thousands of them)."""
        if self._shortest is None:
            self._shortest = min((w.interval for w in self.waiters), default=math.inf)
        return self._shortest

    @staticmethod
    def _next_due(now: float, interval: float) -> float:
        return (math.floor(now / interval) + 1) * interval

    def _fetch(self, cursor: ChangeCursor | None, refs: list[str]) -> tuple[list[Change], ChangeCursor]:
        # Runs in a worker thread: opening the store may create tables, the read blocks.
        return open_store(self.store_url).changes_since(cursor, also=refs)

    def _deadline_round(self, now: float, last: float) -> float:
        """When (loop clock) the earliest deadline asks for a round of its own: at the deadline,
        but rounds stay at least a quarter of the shortest interval (at most 1 s) apart, so
        deadlines spread over time cost a bounded number of extra queries."""
        if not self._deadlines or not self.waiters:
            return math.inf
        left = (self._deadlines[0][0] - datetime.now(timezone.utc)).total_seconds()
        spacing = min(0.25 * self._interval(), 1.0)
        return max(now + left, last + spacing)

    def _pop_due(self, now: datetime) -> list[tuple[datetime, int, _Waiter, str]]:
        """Take the deadline entries due at ``now`` off the heap (of waiters still waiting)."""
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            entry = heapq.heappop(self._deadlines)
            if entry[2] in self.waiters and entry[3] in entry[2].refs:
                due.append(entry)
        return due

    async def _run(self) -> None:
        try:
            due_at = last = self.loop.time()  # the first round at once: the full read
            while self.waiters:
                now = self.loop.time()
                wake = min(due_at, self._deadline_round(now, last))
                if wake > now:
                    self._wakeup.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), wake - now)
                    if self.waiters and self.loop.time() < due_at:
                        # Re-plan: a waiter with a shorter interval (or a deadline) may have come.
                        interval = self._interval()
                        due_at = min(due_at, self._next_due(self.loop.time(), interval))
                    continue
                await self._round()
                last = self.loop.time()
                if self.waiters:
                    interval = self._interval()
                    due_at = self._next_due(max(last, due_at), interval)
        finally:
            # No await between the emptiness check above and here: a register() cannot slip
            # in unseen. On cancellation (loop shutdown) the poller is forgotten as well.
            pollers = self._registry.get(self.loop)
            if pollers is not None and pollers.get(self.store_url) is self:
                del pollers[self.store_url]

    async def _round(self) -> None:
        """One poll round: read what changed (and what is due or unread), wake who it concerns."""
        due = self._pop_due(datetime.now(timezone.utc))
        unread = {waiter: set(refs) for waiter, refs in self._unread.items()}
        wanted = {ref for _, _, _, ref in due}
        wanted.update(*unread.values())
        try:
            changes, cursor = await asyncio.to_thread(self._fetch, self.cursor, sorted(wanted))
        except Exception as exc:  # delivered to the waiters, who decide how long to tolerate it
            self.rounds += 1
            for entry in due:  # still due next round
                heapq.heappush(self._deadlines, entry)
            for waiter in list(self.waiters):
                waiter.deliver(exc)
            return
        self.rounds += 1
        self.refs_polled += len(changes)
        self.cursor = cursor
        touched: set[_Waiter] = set()
        for change in changes:
            ref = change.record.call_ref
            for waiter in self._by_ref.get(ref, ()):
                if waiter._update(change):
                    touched.add(waiter)
        touched.update(waiter for _, _, waiter, _ in due)
        for waiter, refs in unread.items():
            if self._unread.get(waiter) == refs:
                del self._unread[waiter]
            touched.add(waiter)
        for waiter in touched:
            if waiter in self.waiters:
                waiter.deliver()
