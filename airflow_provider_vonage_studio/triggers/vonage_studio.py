"""Deferrable waiting for call outcomes: :class:`CallStatusTrigger` and its shared poller.

Triggers only *wait*; they never place a call (a triggerer restart re-runs a trigger, and a
dial inside one would ring the callee twice). The check is
:func:`~airflow_provider_vonage_studio.outcome.evaluate_round`, the round every waiting loop
runs; the events it yields are :mod:`~airflow_provider_vonage_studio.events`' shapes.

A triggerer may hold thousands of waiting triggers. Polling the store once per trigger
would put thousands of queries on the database every few seconds, so all triggers of one
event loop that use the same store share one :class:`_SharedPoller`: it wakes on a fixed
grid of poll instants, asks the store for *every* waiting ``call_ref`` in one
``get_calls`` (one ``SELECT ... IN`` per 500 refs), and hands each trigger its rows. The
blocking SQL runs in a worker thread (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_vonage_studio.events import (
    result_error_event,
    result_success_event,
    status_event,
    store_outage_event,
)
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioError
from airflow_provider_vonage_studio.outcome import (
    DEFAULT_ANSWER_WINDOW,
    FAILURE_STATUSES,
    PENDING_TIMEOUT,
    evaluate_round,
    normalize_answer_window,
    normalize_fail_on,
    normalize_interval,
    open_store,
)
from airflow_provider_vonage_studio.results import check_call_result

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallRecord

__all__ = ["CallStatusTrigger"]

#: A trigger gives up (error event) after this many poll rounds in a row failed to read the
#: store; a short database restart is ridden out, a lasting outage fails the task visibly.
MAX_STORE_FAILURES = 5


class _Waiter:
    """One trigger's registration with a :class:`_SharedPoller`.

    ``refs`` are the call_refs the trigger still waits for (it removes decided ones);
    ``due`` is the poller-clock instant of its next round.
    """

    def __init__(self, poller: _SharedPoller, refs: Iterable[str], interval: float, due: float) -> None:
        self.poller = poller
        self.refs: set[str] = set(refs)
        self.interval = interval
        self.due = due
        self._ready = asyncio.Event()
        self._result: dict[str, CallRecord] | BaseException | None = None

    def deliver(self, result: dict[str, CallRecord] | BaseException) -> None:
        """Hand over a round's rows (or the error that round hit); only the latest is kept."""
        self._result = result
        self._ready.set()

    async def next_round(self) -> dict[str, CallRecord]:
        """Rows of ``refs`` from the next poll round (refs without a row are absent).

        :raises Exception: whatever reading the store raised in that round.
        """
        await self._ready.wait()
        self._ready.clear()
        result, self._result = self._result, None
        if isinstance(result, BaseException):
            raise result
        return result or {}

    def close(self) -> None:
        """Stop taking part in poll rounds (idempotent)."""
        self.poller.unregister(self)


class _SharedPoller:
    """Polls the store for all registered waiters of one event loop and one store URL.

    Rounds fall on a grid (multiples of each waiter's interval on the loop's clock), so
    waiters with the same interval are served by the same round however staggered their
    registrations were. Each round issues one ``store.get_calls`` over the union of the due
    waiters' refs. The poller task ends when its last waiter leaves.
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
        self.refs_polled = 0
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
        """Join the poll rounds; the first round for the new waiter is the next grid instant."""
        waiter = _Waiter(self, refs, interval, self._next_due(self.loop.time(), interval))
        self.waiters.add(waiter)
        if self._task is None or self._task.done():
            # A poller that stopped has left the registry; take the slot again if it is free.
            self._registry.setdefault(self.loop, {}).setdefault(self.store_url, self)
            self._task = self.loop.create_task(self._run(), name=f"vonage-studio-poller:{id(self):x}")
        self._wakeup.set()  # the new waiter may be due before the poller's current sleep ends
        return waiter

    def unregister(self, waiter: _Waiter) -> None:
        """Leave the poll rounds (idempotent); the poller stops by itself when nobody is left."""
        self.waiters.discard(waiter)
        if not self.waiters:
            self._wakeup.set()

    @staticmethod
    def _next_due(now: float, interval: float) -> float:
        return (math.floor(now / interval) + 1) * interval

    def _fetch(self, refs: list[str]) -> dict[str, CallRecord]:
        # Runs in a worker thread: opening the store may create tables, get_calls blocks.
        return open_store(self.store_url).get_calls(refs)

    async def _run(self) -> None:
        try:
            while self.waiters:
                now = self.loop.time()
                next_due = min(w.due for w in self.waiters)
                if next_due > now:
                    self._wakeup.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), next_due - now)
                    continue  # re-plan: waiters may have come or gone meanwhile
                # Serve every waiter due now or within a quarter of its interval, so that
                # waiters on different grids still share rounds when they can.
                due = [w for w in self.waiters if w.due - now <= min(0.5, 0.25 * w.interval)]
                refs = sorted(set().union(*(w.refs for w in due)))
                result: dict[str, CallRecord] | BaseException
                try:
                    result = await asyncio.to_thread(self._fetch, refs) if refs else {}
                except Exception as exc:  # delivered to the waiters, who decide how long to tolerate it
                    result = exc
                self.rounds += 1
                self.refs_polled += len(refs)
                done = self.loop.time()
                for waiter in due:
                    # From its own due instant too: a waiter served a little early must not
                    # land on the grid point it was just served for.
                    waiter.due = self._next_due(max(done, waiter.due), waiter.interval)
                    if waiter not in self.waiters:
                        continue
                    if isinstance(result, BaseException):
                        waiter.deliver(result)
                    else:
                        waiter.deliver({ref: result[ref] for ref in waiter.refs if ref in result})
        finally:
            # No await between the emptiness check above and here: a register() cannot slip
            # in unseen. On cancellation (loop shutdown) the poller is forgotten as well.
            pollers = self._registry.get(self.loop)
            if pollers is not None and pollers.get(self.store_url) is self:
                del pollers[self.store_url]


class CallStatusTrigger(BaseTrigger):
    """Wait, asynchronously, until one call or every call of a list has its final status.

    The async twin of :class:`~airflow_provider_vonage_studio.sensors.vonage_studio.CallStatusSensor`:
    the final status is a failure callback's (``busy``, ``timeout``, ...) or ``answered``
    when none arrived within ``answer_window`` after the call started.

    :param call_ref: the one call to wait for (give ``call_ref`` or ``call_refs``).
    :param call_refs: several calls (e.g. a whole batch); one event when all are final.
    :param answer_window: timedelta or seconds (see the sensor).
    :param fail_on: final statuses that end in an ``error`` event instead of ``success``.
    :param poll_interval: seconds between store reads (shared with other triggers).
    :param store_url: the call store; ``None`` (default): the triggerer's configured
        ``[vonage_studio] store_url``. It is stored with the trigger's kwargs, so leave it
        ``None`` unless it differs from the configured one.
    :param pending_timeout: timedelta or seconds a ``sending`` row may wait for its dial to complete.

    Yields exactly one ``TriggerEvent``:

    * ``{"status": "success", "call_statuses": {ref: status}}``, plus ``call_ref`` and
      ``call_status`` for a single call;
    * ``{"status": "error", "message", "error_type", "error_status", "call_statuses",
      "errors": {ref: {"error_type", "message", ...}}}``, plus ``call_ref`` (and
      ``call_status`` when it failed on ``fail_on``) for a single call. With several calls
      an error for one does not cut the wait short for the others. When the store stayed
      unreadable, ``errors`` is empty and ``"retryable": True``.

    :raises VonageStudioConfigError: for no or both of ``call_ref``/``call_refs``, an empty
        list, a bad ``fail_on``, ``answer_window`` or ``poll_interval``.
    """

    def __init__(
        self,
        call_ref: str | None = None,
        *,
        call_refs: Sequence[str] | None = None,
        answer_window: timedelta | float = DEFAULT_ANSWER_WINDOW,
        fail_on: Iterable[str] | None = FAILURE_STATUSES,
        poll_interval: float = 5.0,
        store_url: str | None = None,
        pending_timeout: timedelta | float = PENDING_TIMEOUT,
    ) -> None:
        super().__init__()
        if (call_ref is None) == (call_refs is None):
            raise VonageStudioConfigError("CallStatusTrigger: give exactly one of call_ref or call_refs")
        if call_refs is not None:
            if isinstance(call_refs, str):
                raise VonageStudioConfigError("call_refs: expected a list of call_refs, got one string")
            refs = list(dict.fromkeys(str(ref) for ref in call_refs))
            if not refs:
                raise VonageStudioConfigError("call_refs: must name at least one call")
        else:
            if not isinstance(call_ref, str) or not call_ref:
                raise VonageStudioConfigError(f"call_ref: expected a non-empty string, got {call_ref!r}")
            refs = [call_ref]
        self.call_ref = call_ref
        self.call_refs = refs
        self.single = call_refs is None
        self.answer_window = normalize_answer_window(answer_window)
        self.fail_on = normalize_fail_on(fail_on)
        self.poll_interval = normalize_interval(poll_interval)
        self.store_url = store_url
        self.pending_timeout = normalize_answer_window(pending_timeout, "pending_timeout")
        self._waiter: _Waiter | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and JSON-safe kwargs (durations as seconds) that rebuild this trigger."""
        kwargs: dict[str, Any] = {
            "answer_window": self.answer_window.total_seconds(),
            "fail_on": list(self.fail_on),
            "poll_interval": self.poll_interval,
            "store_url": self.store_url,
            "pending_timeout": self.pending_timeout.total_seconds(),
        }
        if self.single:
            kwargs["call_ref"] = self.call_ref
        else:
            kwargs["call_refs"] = list(self.call_refs)
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll (through the shared poller) until every call is decided; yield one event."""
        waiter = _SharedPoller.for_store(self.store_url).register(self.call_refs, self.poll_interval)
        self._waiter = waiter
        statuses: dict[str, str] = {}
        errors: dict[str, VonageStudioError] = {}
        failures = 0
        self.log.info(
            "Waiting for the outcome of %d call(s) (%s); answer window %ss, polling every %ss",
            len(self.call_refs),
            ", ".join(self.call_refs[:3]) + (" ..." if len(self.call_refs) > 3 else ""),
            self.answer_window.total_seconds(),
            self.poll_interval,
        )
        try:
            while waiter.refs:
                try:
                    records = await waiter.next_round()
                except Exception as exc:
                    failures += 1
                    if failures >= MAX_STORE_FAILURES:
                        yield TriggerEvent(dict(store_outage_event(failures, exc, statuses)))
                        return
                    self.log.warning("Reading the call store failed (%s); trying again next round", exc)
                    continue
                failures = 0
                result = evaluate_round(
                    records,
                    sorted(waiter.refs),
                    now=datetime.now(timezone.utc),
                    answer_window=self.answer_window,
                    fail_on=self.fail_on,
                    pending_timeout=self.pending_timeout,
                )
                errors.update(result.errors)
                for ref, outcome in result.decided.items():
                    self.log.info("Call %s: %s", ref, outcome.describe())
                    statuses[ref] = outcome.status
                waiter.refs.difference_update(result.errors, result.decided)
            # Leave the poll rounds before handing over the event: nothing more to read.
            waiter.close()
            yield TriggerEvent(dict(status_event(self.call_refs, statuses, errors, single=self.single)))
        finally:
            waiter.close()

    async def cleanup(self) -> None:
        """Leave the shared poller when the triggerer drops this trigger (cancel, reassignment)."""
        if self._waiter is not None:
            self._waiter.close()


class CallResultTrigger(BaseTrigger):
    """Wait, asynchronously, until a call's session parameters can be read from Insights.

    The async twin of :class:`~airflow_provider_vonage_studio.sensors.vonage_studio.CallResultSensor`:
    each round runs the sensor's own check
    (:func:`~airflow_provider_vonage_studio.results.check_call_result`) in a worker
    thread (``asyncio.to_thread``), since the hook's HTTP and the store's SQL are blocking;
    the event loop is never blocked. Only reads: nothing is dialed and nothing is written.

    :param call_ref: the call (its session is read from the call store), or
    :param session_id: the session, with
    :param session_start_time: its start, as an ISO string.
    :param required_parameters: names that must be present and non-empty.
    :param fail_on: failure statuses that end in an ``error`` event; others in a ``success``
        event with ``call_status``.
    :param poll_interval: seconds between rounds.
    :param vonage_studio_conn_id: the ``vonage_studio`` connection.
    :param store_url: the call store; ``None``: the triggerer's configured one.
    :param max_failures: retryable failures in a row (API or store unreachable) before giving up.

    Yields exactly one ``TriggerEvent``: ``{"status": "success", "call_ref", "session_id",
    "parameters", "call_status"}`` (``parameters`` a dict, or ``None`` with a ``call_status``);
    or ``{"status": "error", "message", "error_type", "error_status", "retryable", ...}``.

    :raises VonageStudioConfigError: for neither or both of ``call_ref`` and ``session_id``,
        a bad ``fail_on`` or ``poll_interval``.
    """

    def __init__(
        self,
        *,
        call_ref: str | None = None,
        session_id: str | None = None,
        session_start_time: str | None = None,
        required_parameters: Sequence[str] = (),
        fail_on: Iterable[str] | None = FAILURE_STATUSES,
        poll_interval: float = 10.0,
        vonage_studio_conn_id: str = "vonage_studio_default",
        store_url: str | None = None,
        max_failures: int = MAX_STORE_FAILURES,
    ) -> None:
        super().__init__()
        if (call_ref is None) == (session_id is None):
            raise VonageStudioConfigError("CallResultTrigger: give exactly one of call_ref or session_id")
        if session_id is not None and not session_start_time:
            raise VonageStudioConfigError("CallResultTrigger: session_id needs session_start_time")
        self.call_ref = call_ref
        self.session_id = session_id
        self.session_start_time = session_start_time
        self.required_parameters = [str(name) for name in required_parameters]
        self.fail_on = normalize_fail_on(fail_on)
        self.poll_interval = normalize_interval(poll_interval)
        self.vonage_studio_conn_id = vonage_studio_conn_id
        self.store_url = store_url
        self.max_failures = max(1, int(max_failures))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and JSON-safe kwargs that rebuild this trigger."""
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "call_ref": self.call_ref,
            "session_id": self.session_id,
            "session_start_time": self.session_start_time,
            "required_parameters": list(self.required_parameters),
            "fail_on": list(self.fail_on),
            "poll_interval": self.poll_interval,
            "vonage_studio_conn_id": self.vonage_studio_conn_id,
            "store_url": self.store_url,
            "max_failures": self.max_failures,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check every ``poll_interval`` seconds (in a thread) until there is a result; one event."""
        from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

        # One hook for the whole wait: its HTTP session keeps the connection alive between rounds.
        hook = VonageStudioHook(self.vonage_studio_conn_id)
        target = self.call_ref or self.session_id
        failures = 0
        self.log.info(
            "Waiting for the session parameters of %s, checking every %ss", target, self.poll_interval
        )
        try:
            while True:
                try:
                    result = await asyncio.to_thread(
                        check_call_result,
                        hook=hook,
                        call_ref=self.call_ref,
                        session_id=self.session_id,
                        session_start_time=self.session_start_time,
                        required_parameters=self.required_parameters,
                        fail_on=self.fail_on,
                        store_url=self.store_url,
                    )
                except Exception as exc:
                    # Errors of the call or the query end the wait; an unreachable API or store
                    # is ridden out for a few rounds first.
                    error = exc if isinstance(exc, VonageStudioError) else None
                    retryable = error.retryable if error is not None else True
                    failures += 1
                    if retryable and failures < self.max_failures:
                        self.log.warning("Check failed (%s); trying again in %ss", exc, self.poll_interval)
                        await asyncio.sleep(self.poll_interval)
                        continue
                    if error is None:
                        error = VonageStudioError(f"{type(exc).__name__}: {exc}")
                    yield TriggerEvent(dict(result_error_event(error, self.call_ref, retryable=retryable)))
                    return
                if result is not None:
                    yield TriggerEvent(dict(result_success_event(result)))
                    return
                failures = 0
                await asyncio.sleep(self.poll_interval)
        finally:
            if "session" in hook.__dict__:  # opened (cached_property): release its connections
                hook.session.close()


__all__ += ["CallResultTrigger"]
