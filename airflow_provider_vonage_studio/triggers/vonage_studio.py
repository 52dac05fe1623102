"""Deferrable waiting for call outcomes: :class:`CallStatusTrigger` and its shared poller.

Triggers only *wait*; they never place a call (a triggerer restart re-runs a trigger, and a
dial inside one would ring the callee twice). The check is
:func:`~airflow_provider_vonage_studio.outcome.evaluate_round`, the round every waiting loop
runs; the events it yields are :mod:`~airflow_provider_vonage_studio.events`' shapes.

A triggerer may hold tens of thousands of waiting triggers. All triggers of one event loop
that use the same store share one :class:`~.poller._SharedPoller`, which follows the store's
change feed (one indexed query per round, whatever the number of waiters) and wakes a
trigger only when one of its rows changed or one of its deadlines fell due.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

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
    answer_deadline,
    evaluate_round,
    normalize_answer_window,
    normalize_fail_on,
    normalize_interval,
)
from airflow_provider_vonage_studio.results import check_call_result

# The poller moved to its own module; importable from here, where it was, for one release.
from airflow_provider_vonage_studio.triggers.poller import _SharedPoller as _SharedPoller
from airflow_provider_vonage_studio.triggers.poller import _Waiter as _Waiter

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallRecord

__all__ = ["CallStatusTrigger"]

#: A trigger gives up (error event) after this many poll rounds in a row failed to read the
#: store; a short database restart is ridden out, a lasting outage fails the task visibly.
MAX_STORE_FAILURES = 5


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
        self._scheduled: dict[str, datetime] = {}  # deadlines handed to the poller, per ref

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
        sources: dict[str, str] = {}
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
                    if outcome.source:
                        sources[ref] = outcome.source
                waiter.done([*result.errors, *result.decided])
                self._schedule_deadlines(waiter, records)
            # Leave the poll rounds before handing over the event: nothing more to read.
            waiter.close()
            event = status_event(self.call_refs, statuses, errors, single=self.single, sources=sources)
            yield TriggerEvent(dict(event))
        finally:
            waiter.close()

    def _schedule_deadlines(self, waiter: _Waiter, records: Mapping[str, CallRecord]) -> None:
        """Ask the poller to wake this trigger when time alone would decide one of its calls: a
        silent placed call's answer window ends, a ``sending`` row's ``pending_timeout`` runs out."""
        scheduled = self._scheduled
        for ref in waiter.refs:
            record = records.get(ref)
            if record is None:
                continue
            deadline = answer_deadline(record, self.answer_window)
            if deadline is None and record.state == "sending":
                # evaluate_call gives up on waited > pending_timeout: a moment past it.
                deadline = record.updated_at + self.pending_timeout + timedelta(milliseconds=1)
            if deadline is not None and scheduled.get(ref) != deadline:
                scheduled[ref] = deadline
                waiter.wake_at(deadline, (ref,))

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
