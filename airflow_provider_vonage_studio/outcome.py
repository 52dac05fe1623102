"""What became of a call: the one check shared by sensors, triggers and waiting operators.

AI Studio never reports "answered": it posts to ``status_url`` only when the callee did not
pick up (``cancelled``, ``rejected``, ``busy``, ``timeout``, ``failed``). So a call's outcome
is decided from its row in the call store:

* the agent's end-call webhook confirmed it (``outcome_source='end_call'`` or ``ended_at``) →
  ``answered`` at once, source ``end_call`` (no answer window to sit out);
* answered confirmed through Insights (a stored ``answered`` verdict with source ``insights``)
  → ``answered``, source ``insights``;
* a failure status was recorded → that status (the first one wins, see the store), source
  ``callback``;
* no status, and ``answer_window`` has passed since ``session_start_time`` → ``answered``,
  source ``inferred``;
* otherwise → not decided yet, keep waiting.

:func:`evaluate_call` is a pure function over a
:class:`~airflow_provider_vonage_studio.store.CallRecord`, so the poke-mode sensor, the
deferrable trigger and ``MakeCallOperator(wait_for_status=True)`` cannot drift apart. This
module imports neither Airflow nor SQLAlchemy at top level: operator and sensor modules
import it while DAG files are parsed.

Why one module of about 600 lines: the rule (:func:`evaluate_call`, where each source comes
from), the round every waiter runs (:func:`evaluate_round`, :func:`next_delay`), the waiting
loops and the verdict they store must change together; split, a change to one reading of a
row could miss the others, which is the drift this module exists to prevent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.calls import ANSWERED, FAILURE_STATUSES, FINAL_STATUSES, OutcomeSource
from airflow_provider_vonage_studio.exceptions import (
    CallFailed,
    CallOutcomeUnknown,
    CallRejectedEarlier,
    UnknownCall,
    VonageStudioConfigError,
    VonageStudioError,
)

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallRecord, CallStore

__all__ = [
    "ANSWERED",
    "DEFAULT_ANSWER_WINDOW",
    "FAILURE_STATUSES",
    "FINAL_STATUSES",
    "PENDING_TIMEOUT",
    "CallOutcome",
    "RoundResult",
    "answer_deadline",
    "check_call",
    "evaluate_call",
    "evaluate_round",
    "next_delay",
    "normalize_answer_window",
    "normalize_fail_on",
    "normalize_interval",
    "open_store",
    "record_verdict",
    "record_verdicts",
    "source_of_verdict",
    "wait_for_call",
    "wait_for_calls",
]


#: Default ``answer_window``. Carriers and AI Studio give up ringing after about 60 s and
#: post ``timeout`` shortly after; 90 s leaves room for that callback to arrive before a
#: silent call is taken as answered.
DEFAULT_ANSWER_WINDOW = timedelta(seconds=90)

#: How long a call may stay ``sending`` (request started, answer not recorded) before waiting
#: for it is pointless. A request takes at most the read timeout (30 s by default), so a row
#: still sending after 10 min belongs to a placing task that was killed mid-request: nobody
#: will ever complete it. (The name predates the state's rename from ``pending``.)
PENDING_TIMEOUT = timedelta(minutes=10)

_log = logging.getLogger(__name__)

# open_store's cache of explicitly named stores (CallStore.default() caches the configured one).
_STORES: dict[str, CallStore] = {}
_STORES_LOCK = threading.Lock()

_MEANING = {
    "cancelled": "cancelled by the caller before it was answered",
    "rejected": "rejected by the destination",
    "busy": "the callee was busy",
    "timeout": "nobody answered before the ring timeout",
    "failed": "the call failed before reaching the destination",
    ANSWERED: "no failure reported within the answer window",
}

_CONFIRMED = {
    OutcomeSource.END_CALL.value: "confirmed by the agent's end-call webhook",
    OutcomeSource.INSIGHTS.value: "confirmed by the session read through Insights",
}


@dataclass(frozen=True)
class CallOutcome:
    """The final status of one call.

    ``status`` is ``"answered"`` or one of :data:`FAILURE_STATUSES`; ``inferred`` is true
    when ``answered`` was inferred from the absence of a failure callback; ``status_at`` is the
    callback's timestamp, the call's end (end-call webhook), or the end of the answer window for
    an inferred ``answered``. ``source`` says where the truth came from, an
    :class:`~airflow_provider_vonage_studio.calls.OutcomeSource` value (``callback``,
    ``end_call``, ``insights``, ``inferred``); left out, it follows from ``inferred`` and
    ``status`` (``inferred``, or ``callback`` for a failure status).
    """

    call_ref: str
    status: str
    inferred: bool
    status_at: datetime | None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.source is None:
            default = OutcomeSource.INFERRED if self.inferred else OutcomeSource.CALLBACK
            object.__setattr__(self, "source", default.value)
        elif isinstance(self.source, OutcomeSource):
            object.__setattr__(self, "source", self.source.value)

    @property
    def confirmed(self) -> bool:
        """Whether the outcome was reported (a callback, the end-call webhook, Insights), not inferred."""
        return self.source != OutcomeSource.INFERRED.value

    @property
    def answered(self) -> bool:
        """Whether the callee (probably) picked up."""
        return self.status == ANSWERED

    def describe(self) -> str:
        """One line for logs: ``busy (the callee was busy)``."""
        meaning = _CONFIRMED.get(self.source or "") if self.answered else None
        return f"{self.status} ({meaning or _MEANING.get(self.status, 'status reported by AI Studio')})"


def normalize_fail_on(fail_on: str | Iterable[str] | None) -> tuple[str, ...]:
    """``fail_on`` as a tuple of failure statuses, in the order given, duplicates dropped.

    A single string is one status (``"busy"``), ``None`` or an empty iterable means "fail on
    nothing" (the status is returned for branching).

    :raises VonageStudioConfigError: naming ``fail_on`` for a value that is not one of
        :data:`FAILURE_STATUSES`.
    """
    if fail_on is None:
        return ()
    items = (fail_on,) if isinstance(fail_on, str) else tuple(fail_on)
    bad = [item for item in items if not isinstance(item, str) or item not in FAILURE_STATUSES]
    if bad:
        raise VonageStudioConfigError(
            f"fail_on: {bad!r} is not a call failure status; expected any of {', '.join(FAILURE_STATUSES)} "
            "(or () to return every status instead of failing)"
        )
    return tuple(dict.fromkeys(items))


def normalize_answer_window(
    answer_window: timedelta | float | int, field: str = "answer_window"
) -> timedelta:
    """``answer_window`` (or another wait such as ``pending_timeout``) as a ``timedelta``;
    numbers are seconds. Zero is allowed; at most a day (:data:`~airflow_provider_vonage_studio.
    validation.MAX_DURATION`).

    :raises VonageStudioConfigError: naming ``field`` for a value that is not a timedelta or
        number (a bool or a string included), NaN, infinite, negative or over a day.
    """
    from airflow_provider_vonage_studio.validation import check_duration

    return check_duration(answer_window, field=field)


def normalize_interval(value: float, field: str = "poll_interval") -> float:
    """A polling interval in seconds, as a float.

    :raises VonageStudioConfigError: naming ``field`` for a value that is not a number
        (a bool included), NaN, infinite, not > 0 or over a day.
    """
    from airflow_provider_vonage_studio.validation import check_seconds

    if isinstance(value, timedelta):
        # Only numbers were ever accepted here; a timedelta is refused rather than guessed.
        raise VonageStudioConfigError(f"{field}: must be a number of seconds > 0, got a timedelta")
    return check_seconds(value, field=field, exclusive_minimum=True)


def answer_deadline(record: CallRecord, answer_window: timedelta) -> datetime | None:
    """When a silent placed call counts as answered; ``None`` unless the call is placed."""
    if record.state != "placed":
        return None
    # mark_placed always sets session_start_time; updated_at (the moment it was marked
    # placed) is a safe stand-in should a row ever lack it.
    start = record.session_start_time or record.updated_at
    return start + answer_window


def evaluate_call(
    record: CallRecord | None,
    *,
    now: datetime,
    answer_window: timedelta,
    fail_on: Iterable[str] = FAILURE_STATUSES,
    call_ref: str | None = None,
    pending_timeout: timedelta = PENDING_TIMEOUT,
) -> CallOutcome | None:
    """Decide a call's outcome from its ledger row; ``None`` means "not decided yet".

    :param record: the row (``None`` when the store has no such call).
    :param now: the current time, timezone-aware.
    :param answer_window: how long after ``session_start_time`` a call without a failure
        callback counts as ``answered``.
    :param fail_on: final statuses that raise :class:`CallFailed` instead of being returned.
    :param call_ref: names the call in errors when ``record`` is ``None``.
    :param pending_timeout: how long a ``pending`` row may wait for its dial to complete.

    :raises UnknownCall: no such call in the store (waiting would never end).
    :raises CallRejectedEarlier: AI Studio refused the call when it was placed: nothing rang.
    :raises CallOutcomeUnknown: the dial's answer never came back (state ``unknown``), or the
        row stayed ``pending`` longer than ``pending_timeout``: whether it rang is unknown.
    :raises CallFailed: the final status is in ``fail_on`` (``.call_status`` holds it).
    """
    fail_on = normalize_fail_on(fail_on)
    if record is None:
        raise UnknownCall(
            f"call_ref {call_ref or '(empty)'!r}: no such call in the call store. It must be placed by "
            "MakeCallOperator/MakeCallsOperator (pass e.g. make_call.output['call_ref']), and the task "
            "that waits must use the same [vonage_studio] store_url as the one that dialed."
        )
    ref = record.call_ref
    state = record.state
    if state == "queued":
        return None  # not sent yet: the placing task (or its next try) is waiting for its slot
    if state == "sending":
        waited = now - record.updated_at
        if waited > pending_timeout:
            raise CallOutcomeUnknown(
                f"call {ref} has been 'sending' for {_human(waited)}: the placing task sent the request "
                "but never recorded AI Studio's answer (it was probably killed mid-request), so whether "
                "the phone rang is unknown and no status will come"
            )
        return None
    if state == "rejected":
        raise CallRejectedEarlier(
            f"call {ref} was refused by AI Studio when it was placed "
            f"({record.error_status or 'no status'}: {record.error_message or 'no message'}); "
            "nothing rang, so there is no status to wait for",
            record.error_status,
        )
    if state == "unknown":
        raise CallOutcomeUnknown(
            f"call {ref}: the dial request was sent but no answer came back "
            f"({record.error_message or 'no details'}); whether the phone rang is unknown, so there is "
            "no status to wait for"
        )
    if state != "placed":  # pragma: no cover - CallState has no other members
        raise VonageStudioError(f"call {ref}: unexpected ledger state {state!r}")

    outcome = _reported_outcome(record)
    if outcome is None:
        deadline = answer_deadline(record, answer_window)
        if deadline is not None and now >= deadline:
            outcome = CallOutcome(
                ref, ANSWERED, inferred=True, status_at=deadline, source=OutcomeSource.INFERRED
            )
    if outcome is not None and outcome.status in fail_on:
        raise CallFailed(
            f"call {ref} ended with status {outcome.describe()}; it is listed in fail_on="
            f"{fail_on!r}. Pass fail_on=() to receive the status (e.g. to branch on it) instead.",
            outcome.status,
        )
    return outcome


def _reported_outcome(record: CallRecord) -> CallOutcome | None:
    """The outcome a placed call's row was told (no inference), or ``None``.

    The store keeps one truth per call: an end-call record and a failure status exclude each
    other (whichever came first), so the order of the checks below never decides anything.
    """
    ref = record.call_ref
    if record.outcome_source == OutcomeSource.END_CALL.value or record.ended_at is not None:
        return CallOutcome(
            ref, ANSWERED, inferred=False, status_at=record.ended_at, source=OutcomeSource.END_CALL
        )
    if record.status:
        # The store keeps the first status as the call's status; later ones are history.
        return CallOutcome(
            ref, record.status, inferred=False, status_at=record.status_at, source=OutcomeSource.CALLBACK
        )
    if record.outcome == ANSWERED and record.outcome_source == OutcomeSource.INSIGHTS.value:
        return CallOutcome(
            ref, ANSWERED, inferred=False, status_at=record.outcome_at, source=OutcomeSource.INSIGHTS
        )
    return None


def source_of_verdict(record: CallRecord | None, status: str) -> str:
    """Where a final ``status`` decided elsewhere (a trigger's event without a source) came from,
    as the call's row tells it: a failure status is AI Studio's ``callback``; ``answered`` is
    ``end_call`` / ``insights`` when the row was told so, else ``inferred`` (nothing else can
    have decided it)."""
    if status != ANSWERED:
        return OutcomeSource.CALLBACK.value
    reported = _reported_outcome(record) if record is not None and record.state == "placed" else None
    if reported is not None and reported.answered and reported.source:
        return str(reported.source)
    return OutcomeSource.INFERRED.value


def open_store(store_url: str | None = None) -> CallStore:
    """The call store at ``store_url`` (``None``: the configured one), shared per process."""
    from airflow_provider_vonage_studio.store import CallStore

    if store_url is None:
        return CallStore.default()
    with _STORES_LOCK:
        store = _STORES.get(store_url)
        if store is None:
            store = _STORES[store_url] = CallStore(store_url)
        return store


def record_verdict(
    store: CallStore | str | Callable[[], CallStore] | None,
    call_ref: str | None,
    status: str | None,
    *,
    source: str | None = None,
    log: Any = None,
) -> None:
    """Store the final status a waiting task decided for ``call_ref``, so the outcome view
    shows what the DAG reported, with ``source`` (an
    :class:`~airflow_provider_vonage_studio.calls.OutcomeSource` value, e.g. ``inferred`` for an
    ``answered`` nobody reported; ``None`` keeps the row's own).

    ``store`` is a :class:`~airflow_provider_vonage_studio.store.CallStore`, a store URL
    (``None``: the configured store) or a function returning the store. Anything but a final
    status (``answered`` or a failure status) is ignored. The verdict is informational: a
    failure to write it is logged as a warning (no numbers in it) and never raised, so it
    cannot fail the task.
    """
    if not call_ref or status not in FINAL_STATUSES:
        return
    record_verdicts(
        store, {call_ref: status}, sources=None if source is None else {call_ref: source}, log=log
    )


def record_verdicts(
    store: CallStore | str | Callable[[], CallStore] | None,
    verdicts: Mapping[str, str | None],
    *,
    sources: Mapping[str, str | None] | None = None,
    log: Any = None,
) -> None:
    """:func:`record_verdict` for many calls at once (one write transaction); never raises.

    ``store`` may also be a function returning the store (opened only when there is a verdict);
    ``sources`` maps call_refs to where each verdict came from (a missing one keeps the row's).
    """
    final = {ref: status for ref, status in verdicts.items() if ref and status in FINAL_STATUSES}
    if not final:
        return
    try:
        if store is None or isinstance(store, str):
            opened = open_store(store)
        elif callable(store):
            opened = store()
        else:
            opened = store
        origins = {ref: origin for ref, origin in (sources or {}).items() if ref in final and origin}
        if len(final) == 1:
            ((ref, status),) = final.items()
            opened.record_outcome(ref, status, source=origins.get(ref))
        else:
            opened.record_outcomes(final, source=origins)
    except Exception as exc:
        # The type only: a database error's text could quote a row (and with it a number).
        (log or _log).warning(
            "Could not store the verdict of %d call(s) (e.g. %s) for the outcome view: %s; the task's "
            "result is not affected",
            len(final),
            next(iter(final)),
            type(exc).__name__,
        )


def check_call(
    store: CallStore,
    call_ref: str,
    *,
    answer_window: timedelta,
    fail_on: Iterable[str] = FAILURE_STATUSES,
    now: datetime | None = None,
) -> CallOutcome | None:
    """Read ``call_ref``'s row and :func:`evaluate_call` it (same errors)."""
    record = store.get_call(call_ref)
    return evaluate_call(
        record,
        now=now or datetime.now(timezone.utc),
        answer_window=answer_window,
        fail_on=fail_on,
        call_ref=call_ref,
    )


@dataclass(frozen=True)
class RoundResult:
    """What one poll round decided about the calls it looked at.

    ``decided`` maps each call_ref with a final status to its :class:`CallOutcome`;
    ``errors`` each call_ref that will never have one (the error :func:`evaluate_call`
    raised); ``next_deadline`` is the earliest answer deadline among the calls still
    undecided (``None`` when none is placed and silent), so a waiter can wake exactly then.
    Both mappings keep the order of the refs given.
    """

    decided: dict[str, CallOutcome]
    errors: dict[str, VonageStudioError]
    next_deadline: datetime | None


def evaluate_round(
    records: Mapping[str, CallRecord | None],
    call_refs: Iterable[str],
    *,
    now: datetime,
    answer_window: timedelta,
    fail_on: Iterable[str] = FAILURE_STATUSES,
    pending_timeout: timedelta = PENDING_TIMEOUT,
) -> RoundResult:
    """Evaluate every call of ``call_refs`` against its row in ``records`` (a missing row is
    ``None``); pure. The one round of every waiting loop: :func:`wait_for_call`,
    :func:`wait_for_calls` and the deferrable ``CallStatusTrigger``.
    """
    fail_on = normalize_fail_on(fail_on)
    decided: dict[str, CallOutcome] = {}
    errors: dict[str, VonageStudioError] = {}
    deadlines: list[datetime] = []
    for ref in call_refs:
        record = records.get(ref)
        try:
            outcome = evaluate_call(
                record,
                now=now,
                answer_window=answer_window,
                fail_on=fail_on,
                call_ref=ref,
                pending_timeout=pending_timeout,
            )
        except VonageStudioError as exc:
            errors[ref] = exc
            continue
        if outcome is not None:
            decided[ref] = outcome
        elif record is not None:
            deadline = answer_deadline(record, answer_window)
            if deadline is not None:
                deadlines.append(deadline)
    return RoundResult(decided, errors, min(deadlines) if deadlines else None)


def next_delay(
    poll_interval: float, now: datetime, deadline: datetime | None, *, left: float | None = None
) -> float:
    """Seconds until the next round: ``poll_interval``, but no later than just past
    ``deadline`` (the first silent call then becomes ``answered``, so the wait ends exactly
    there rather than up to one interval later) and no later than ``left`` seconds.
    """
    delay = poll_interval
    if deadline is not None:
        delay = min(delay, max((deadline - now).total_seconds(), 0.0) + 0.01)
    if left is not None:
        delay = min(delay, left)
    return delay


def wait_for_call(
    store: CallStore,
    call_ref: str,
    *,
    answer_window: timedelta,
    fail_on: Iterable[str] = FAILURE_STATUSES,
    poll_interval: float = 5.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[..., Any] | None = None,
    confirm: Callable[[CallOutcome], CallOutcome | None] | None = None,
) -> CallOutcome:
    """Block until ``call_ref`` has an outcome, polling the store every ``poll_interval`` s.

    A failure callback can end the wait at any poll; when only the answer window is left to
    run out, the wait wakes exactly at its end rather than up to one interval later.
    ``confirm``, when given, sees each decided outcome first and returns the one to accept, or
    ``None`` to keep polling (e.g. ``results.confirm_by_insights`` while Insights answers 404).

    :raises TimeoutError: ``timeout`` seconds passed without an outcome.
    :raises: everything :func:`evaluate_call` raises.
    """
    started = time.monotonic()
    while True:
        now = datetime.now(timezone.utc)
        records = {call_ref: store.get_call(call_ref)}
        result = evaluate_round(records, (call_ref,), now=now, answer_window=answer_window, fail_on=fail_on)
        if call_ref in result.errors:
            raise result.errors[call_ref]
        if call_ref in result.decided:
            confirmed = result.decided[call_ref] if confirm is None else confirm(result.decided[call_ref])
            if confirmed is not None:
                return confirmed
        left = None
        if timeout is not None:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise TimeoutError(f"call {call_ref}: no outcome within {timeout:g}s")
        delay = next_delay(poll_interval, now, result.next_deadline, left=left)
        if log is not None:
            log("Call %s: no outcome yet; checking again in %.1fs", call_ref, delay)
        sleep(delay)


def wait_for_calls(
    store: CallStore,
    call_refs: Sequence[str],
    *,
    answer_window: timedelta,
    poll_interval: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] | None = None,
    logger: Any = None,
    sources: dict[str, str] | None = None,
) -> dict[str, tuple[str | None, str | None]]:
    """Poll the store (one ``get_calls`` per round for all of them) until every call has its
    final status; return ``{call_ref: (status, None)}``, or ``(None, why)`` for a call that
    will never have one (unknown outcome, refused, not in the store). Never raises for a
    call's outcome: no status fails here (``fail_on=()``).

    ``sources``, when given, is filled with each decided call's
    :class:`~airflow_provider_vonage_studio.calls.OutcomeSource` value (the return value keeps
    its shape for existing callers).

    The in-process twin of ``CallStatusTrigger(call_refs=...)``; both decide with
    :func:`evaluate_round`.
    """
    clock = now or (lambda: datetime.now(timezone.utc))
    logger = logger or _log
    waiting = list(dict.fromkeys(call_refs))
    decided: dict[str, tuple[str | None, str | None]] = {}
    while waiting:
        records = store.get_calls(waiting)
        current = clock()
        result = evaluate_round(records, waiting, now=current, answer_window=answer_window, fail_on=())
        for ref in waiting:
            if ref in result.errors:
                decided[ref] = (None, result.errors[ref].message)
            elif ref in result.decided:
                decided[ref] = (result.decided[ref].status, None)
                if sources is not None and result.decided[ref].source:
                    sources[ref] = str(result.decided[ref].source)
        waiting = [ref for ref in waiting if ref not in decided]
        if not waiting:
            break
        delay = next_delay(poll_interval, current, result.next_deadline)
        logger.info(
            "Waiting for the status of %d of %d call(s); next check in %.1fs",
            len(waiting),
            len(call_refs),
            delay,
        )
        sleep(delay)
    return decided


def __getattr__(name: str) -> Any:
    # error_event / error_from_event moved to events.py (the trigger-event format), which sits
    # above this module: importable from here for one release, loaded only when asked for.
    if name in ("error_event", "error_from_event"):
        from airflow_provider_vonage_studio import events

        return getattr(events, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
