"""Dialing a list of recipients from one task: the loop behind ``MakeCallsOperator``.

It lives apart from the operator so that it runs without Airflow's task machinery: the
fault-injection tests run it in a separate process and kill that process with SIGKILL at
random points, as a worker crash would, to prove that a retry never dials anyone twice.

How a batch stays exactly-once and paced:

* every recipient gets a deterministic ``call_ref``
  (:meth:`~airflow_provider_vonage_studio.calls.TaskIdentity.call_ref` over the task instance
  and the recipient's key), so a retried task finds the calls its earlier tries made;
* what an existing ledger row means is decided by
  :func:`~airflow_provider_vonage_studio.ledger.decide`, the same rule the hook applies;
* recipients are dialed one after another through
  :meth:`VonageStudioHook.make_call <airflow_provider_vonage_studio.hooks.vonage_studio.
  VonageStudioHook.make_call>`, which writes the ledger row ``queued`` before the slot wait,
  turns it ``sending`` (compare-and-set) when the send gate grants each request leave, back
  to ``queued`` after each definite "not placed", and completes it after the answer;
* at the start of each pass, rows an earlier try left ``sending`` (it died while its request
  may have been on the way) are relabelled ``unknown``
  (:meth:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook.settle_abandoned`):
  whether that phone rang is unknown, so it is reported and never dialed again unless
  ``redial_unknown`` asks for it. Rows left ``queued`` (it died before sending, e.g. while
  waiting for its slot) are simply dialed.

A pass works through the plan in chunks (:data:`CHUNK_SIZE`): one ledger read, one do-not-call
read and one results write per chunk, so the plan may be a stream of 100,000 recipients and
memory stays bounded by the chunk (:meth:`BatchDialer.run`).

Planning and results live in :mod:`~airflow_provider_vonage_studio.recipients`, calling-window
maths in :mod:`~airflow_provider_vonage_studio.windows`; their names stay importable from here.
The module is over 500 lines because the loop's three parts belong together: the dialer (one
recipient's decision), the pass across chunks and its progress lines; the re-export block, kept
for one release, adds the rest.

The dialer uses the hook it is given. Tests that dial hundreds of calls against an emulator
with a lifted limit pass ``VonageStudioHook(pace=False)``; that is a testing knob only, never
to be used against AI Studio (the agent's limit is enforced there with 429s).

Nothing heavy is imported at module level: the operator module imports this one lazily.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from datetime import time as dtime
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.calls import CallState, TaskIdentity
from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    CallPlacedNotRecorded,
    CallStoreUnavailable,
    DoNotCall,
    VonageStudioBadRequest,
    VonageStudioConfigError,
    VonageStudioError,
)
from airflow_provider_vonage_studio.ledger import Action, decide

# Kept importable for one release: planning, results and window maths lived in this module.
from airflow_provider_vonage_studio.recipients import (  # noqa: F401
    RECIPIENT_FIELDS,
    SKIPPED_DO_NOT_CALL,
    SKIPPED_DUPLICATE,
    BatchReport,
    Recipient,
    RecipientResult,
    ResultKind,
    _iso,
    _iterable,
    _split_item,
    chunked,
    iter_plan,
    plan_recipients,
)
from airflow_provider_vonage_studio.windows import (  # noqa: F401
    WINDOW_CLOSING_MARGIN,
    _window_length,
    dial_window_opening,
    recipient_timezone,
)
from airflow_provider_vonage_studio.windows import check_zone as _check_zone  # noqa: F401

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
    from airflow_provider_vonage_studio.store import CallRecord, CallStore

__all__ = [
    "CHUNK_SIZE",
    "MAX_CONSECUTIVE_UNKNOWN",
    "RECIPIENT_FIELDS",
    "SKIPPED_DO_NOT_CALL",
    "SKIPPED_DUPLICATE",
    "WINDOW_CLOSING_MARGIN",
    "BatchDialer",
    "BatchReport",
    "BatchStalled",
    "Recipient",
    "RecipientResult",
    "ResultKind",
    "dial_window_opening",
    "iter_plan",
    "plan_recipients",
    "recipient_timezone",
    "wait_for_statuses",
    "would_dial",
]

log = logging.getLogger(__name__)


#: Recipients per chunk: one ledger read, one do-not-call read and one results write each.
CHUNK_SIZE = 1000

# Rejected / unknown results a report keeps as examples when it keeps no full list.
_PROBLEMS_KEPT = 3

#: Fresh dials in a row that got no answer before the batch stops (the API hangs): each
#: one may have rung, so going on would only pile up calls of unknown outcome.
MAX_CONSECUTIVE_UNKNOWN = 5

# Seconds of dials the "current rate" in progress lines is measured over.
_RATE_WINDOW = 30.0


class BatchStalled(VonageStudioError):
    """Several dials in a row got no answer: the batch stopped so that the API's outage does
    not pile up calls of unknown outcome. Retryable: a later try continues with the
    recipients not dialed yet (the unknown ones are not dialed again)."""

    retryable = True


# --------------------------------------------------------------------------- the ledger


def would_dial(record: CallRecord, redial_unknown: bool) -> bool:
    """Whether :meth:`VonageStudioHook.make_call` would send a request for a call with this
    ledger row: :func:`~airflow_provider_vonage_studio.ledger.decide`, the rule it applies.

    ``placed`` never; ``queued`` always (nothing was sent); ``rejected`` only when the refusal
    was one that left the call definitely not placed and worth trying again (429, 502/503/504,
    connection refused); ``unknown`` or ``sending`` only with ``redial_unknown``.
    """
    return decide(record, record.destination, record.agent_id, redial_unknown=redial_unknown).sends


# ------------------------------------------------------------------------------ the loop


class BatchDialer:
    """Dial the recipients of one task instance, one after another, paced and exactly-once.

    :param hook: the hook that places calls (its store holds the ledger and pacing slots).
    :param agent_id: the agent that makes every call.
    :param dag_id, run_id, task_id, map_index: the task instance; with the recipient's key
        they make each ``call_ref``.
    :param call_key: mixed into every call_ref; change it to call the same list again on
        purpose within one task instance.
    :param hangup_on_answer_machine: passed to every call.
    :param redial_unknown: dial again calls whose outcome is unknown (they may have rung).
    :param do_not_call: numbers never to dial, on top of the store's do-not-call list: a list,
        or one string of numbers separated by commas or line breaks
        (:func:`~airflow_provider_vonage_studio.destinations.parse_number_list`).
    :param default_country: for numbers in ``do_not_call`` typed without a country code.
    :param calling_window: parsed window (``windows.parse_calling_window``) or ``None``.
    :param with_status_url: give each call the connection's callback ``status_url``.
    :param window_margin: see :func:`dial_window_opening`.
    :param progress_interval: seconds between progress lines in the log.
    :param clock: the current time (aware); injectable for calling-window tests.
    :param monotonic: the clock progress lines are timed with.
    :param logger: where progress and outcomes are logged (the task's logger).

    :raises VonageStudioConfigError: (at construction, before any store access) ``agent_id``
        is empty or holds whitespace or control characters, ``do_not_call`` is malformed or
        has an entry that is not a possible number or SIP URI, ``window_margin`` or
        ``progress_interval`` is not a finite duration within bounds.
    """

    def __init__(
        self,
        hook: VonageStudioHook,
        agent_id: str,
        *,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int = -1,
        call_key: str | None = None,
        hangup_on_answer_machine: bool | None = None,
        redial_unknown: bool = False,
        do_not_call: str | Iterable[str] | None = (),
        default_country: str | None = None,
        calling_window: tuple[dtime, dtime] | None = None,
        with_status_url: bool = True,
        window_margin: timedelta = WINDOW_CLOSING_MARGIN,
        progress_interval: float = 5.0,
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        from airflow_provider_vonage_studio.destinations import parse_number_list
        from airflow_provider_vonage_studio.validation import check_agent_id, check_duration, check_seconds

        self.hook = hook
        self.agent_id = check_agent_id(agent_id)
        self.task = TaskIdentity(dag_id, run_id, task_id, int(map_index))
        # The same four values as a tuple, as this attribute has always been.
        self.identity = (dag_id, run_id, task_id, int(map_index))
        self.call_key = None if call_key in (None, "") else str(call_key)
        self.hangup_on_answer_machine = hangup_on_answer_machine
        self.redial_unknown = redial_unknown
        # Normalised once, with default_country, like each recipient's number.
        self.do_not_call = parse_number_list(
            do_not_call, field="do_not_call", default_country=default_country
        )
        self.default_country = default_country
        self.calling_window = calling_window
        self.with_status_url = with_status_url
        self.window_margin = check_duration(window_margin, field="window_margin")
        self.progress_interval = check_seconds(
            progress_interval, field="progress_interval", exclusive_minimum=True
        )
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.monotonic = monotonic
        self.log = logger or log

    def call_ref_for(self, recipient: Recipient) -> str:
        """The recipient's deterministic call_ref (the same on every try of the task)."""
        key = recipient.ref_key if self.call_key is None else f"{self.call_key}/{recipient.ref_key}"
        return self.task.call_ref(key)

    def run(
        self,
        plan: Iterable[Recipient],
        *,
        dial: bool = True,
        keep: int | None = None,
        sink: Callable[[Sequence[RecipientResult]], None] | None = None,
        collect_placed: bool = False,
        total: int | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> BatchReport:
        """One pass over ``plan``: dial who may be dialed now, report everyone.

        The plan is worked through in chunks of ``chunk_size`` recipients: per chunk one read
        of the ledger (``get_calls``), one of the do-not-call list (``dnc_filter``), the dials,
        then ``sink`` with the chunk's results (the operator stores them). So ``plan`` may be a
        stream (:func:`~airflow_provider_vonage_studio.recipients.iter_plan`) and memory stays
        bounded by the chunk, not the batch.

        With ``dial=False`` nothing is dialed or changed: the report is read from the ledger
        (used once a batch is complete, e.g. after waiting for statuses).

        :param keep: keep at most this many results in the report (``None``: all). Past it the
            report carries counts only (``complete`` false; see :class:`BatchReport`).
        :param collect_placed: with ``keep``, collect the placed calls' refs anyway (to wait
            for their statuses).
        :param total: how many recipients there are, for progress lines (default ``len(plan)``
            when it has one).
        :raises VonageStudioError: the connection is broken (before anything is dialed).
        :raises CallStoreUnavailable: the store could not be read before dialing a chunk, or
            ``sink`` could not store a chunk's results (retryable).
        """
        if dial:
            self.hook.config  # noqa: B018 -- a broken connection fails here, before the ledger is touched
        if total is None and isinstance(plan, Sized):
            total = len(plan)
        rate_limited_before = self.hook.rate_limited_count
        run = _Pass(self, _Progress(self, total), keep, collect_placed)
        for chunk in chunked(plan, chunk_size):
            run.chunk(chunk, dial=dial)
            if sink is not None:
                sink(run.last)
        run.progress.log_now()
        complete = run.results is not None
        return BatchReport(
            results=tuple(run.results or ()),
            next_opening=run.next_opening,
            stopped=run.stopped,
            rate_limited=self.hook.rate_limited_count - rate_limited_before,
            dialed=run.progress.dials,
            tally=None if complete else dict(run.progress.counts),
            total=None if complete else run.seen,
            problems=tuple(run.problems),
            placed=None if complete or not collect_placed else tuple(run.placed),
        )

    def _read_chunk(
        self, chunk: Sequence[Recipient], *, dial: bool
    ) -> tuple[dict[int, str], dict[str, CallRecord], set[str]]:
        """The chunk's call_refs, their ledger rows (abandoned ones settled) and the listed
        destinations among them: one ``get_calls`` and one ``dnc_filter`` per chunk.

        :raises CallStoreUnavailable: the store could not be read.
        """
        store = self.hook.store
        refs = {r.index: self.call_ref_for(r) for r in chunk if r.dialable}
        with store.unavailable_as_error("before dialing the batch"):
            records = store.get_calls(list(refs.values()))
            if dial:
                records = self._settle_abandoned(store, records)
            listed = self._listed(store, [r.destination for r in chunk if r.dialable and r.destination])
        return refs, records, listed

    # -- steps --------------------------------------------------------------------------------

    def _settle_abandoned(self, store: CallStore, records: dict[str, CallRecord]) -> dict[str, CallRecord]:
        """Relabel ``sending`` rows left by an earlier try as ``unknown`` (the hook's
        :meth:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook.settle_abandoned`).

        Within a pass every dial completes its row before the next starts, so a row still
        sending when a pass begins belongs to a try that died mid-request: the request may have
        reached AI Studio. ``queued`` rows are left alone: nothing was sent, and this pass
        dials them. Returns ``records`` with the settled rows read again.
        """
        abandoned = self.hook.settle_abandoned(records.values(), doing="before dialing the batch")
        if not abandoned:
            return records
        self.log.warning(
            "%d call(s) were left 'sending' by an earlier try that ended mid-request; they are now "
            "'unknown' and are not dialed again (they may have rung). Set redial_unknown=True to call "
            "them anyway.",
            len(abandoned),
        )
        return {**records, **store.get_calls(abandoned)}

    def _listed(self, store: CallStore, destinations: list[str]) -> set[str]:
        """Destinations on the store's do-not-call list or the operator's extra list."""
        listed = store.dnc_filter(destinations)
        listed.update(self.do_not_call)
        return listed

    def _one(
        self,
        recipient: Recipient,
        ref: str | None,
        record: CallRecord | None,
        listed: set[str],
        *,
        dial: bool,
        stopped: VonageStudioError | None,
    ) -> tuple[RecipientResult, bool, VonageStudioError | None]:
        """Handle one recipient: ``(result, whether a dial was attempted, error that stops the batch)``."""
        base = RecipientResult(
            index=recipient.index,
            to=recipient.shown,
            key=recipient.key,
            call_ref=ref,
            result=ResultKind.SKIPPED,
            destination=recipient.destination,
        )
        if recipient.error is not None:
            return replace(base, result=ResultKind.REJECTED, reason=recipient.error), False, None
        if recipient.duplicate_of is not None:
            return (
                replace(base, reason=SKIPPED_DUPLICATE, duplicate_of=recipient.duplicate_of),
                False,
                None,
            )
        assert ref is not None and recipient.destination is not None
        decision = decide(record, recipient.destination, self.agent_id, redial_unknown=self.redial_unknown)
        if decision.action is Action.MISMATCH:
            reason = (
                f"call_ref {ref} was used earlier for another destination or agent; a retry must dial the "
                "same call. Give this recipient another key (or the batch a call_key) to call someone else."
            )
            return replace(base, result=ResultKind.REJECTED, reason=reason), False, None
        if record is not None and not decision.sends:
            return _from_record(base, record), False, None
        if recipient.destination in listed:
            return replace(base, reason=SKIPPED_DO_NOT_CALL), False, None
        if not dial:
            if record is not None:
                return _from_record(base, record), False, None
            return replace(base, reason="not dialed"), False, None
        if stopped is not None:
            return replace(base, reason=f"not dialed: the batch stopped ({stopped})"), False, None
        opening = dial_window_opening(
            self.clock(),
            self.calling_window,
            recipient.timezone or "UTC",
            margin=self.window_margin,
        )
        if opening is not None:
            deferred = replace(base, result=ResultKind.DEFERRED, opens_at=opening, reason="calling window")
            return deferred, False, None
        return self._dial(base, recipient, ref)

    def _dial(
        self, base: RecipientResult, recipient: Recipient, ref: str
    ) -> tuple[RecipientResult, bool, VonageStudioError | None]:
        try:
            status_url = self.hook.status_url_for(ref) if self.with_status_url else None
            call = self.hook.make_call(
                recipient.destination or recipient.to,
                self.agent_id,
                session_parameters=recipient.parameters_list() or None,
                status_url=status_url,
                hangup_on_answer_machine=self.hangup_on_answer_machine,
                call_ref=ref,
                redial_unknown=self.redial_unknown,
                identity=self.task,
                recipient_key=recipient.key,
                extra_do_not_call=self.do_not_call,
            )
        except DoNotCall:
            return replace(base, reason=SKIPPED_DO_NOT_CALL), False, None
        except CallPlacedNotRecorded as exc:
            # The call rang; only the ledger is behind. Report it placed, with the session id the
            # error carries, and stop: the store is down, so the next dial would fail alike.
            started = datetime.fromisoformat(exc.session_start_time) if exc.session_start_time else None
            placed = replace(
                base,
                result=ResultKind.PLACED,
                session_id=exc.session_id,
                session_start_time=started,
                reason=exc.message,
            )
            return placed, True, CallStoreUnavailable(exc.message)
        except CallOutcomeUnknown as exc:
            self.log.warning(
                "Recipient %d (%s): outcome unknown: %s", recipient.index, recipient.shown, exc.message
            )
            return replace(base, result=ResultKind.UNKNOWN, reason=exc.message), True, None
        except VonageStudioError as exc:
            self.log.warning("Recipient %d (%s): rejected: %s", recipient.index, recipient.shown, exc)
            rejected = replace(base, result=ResultKind.REJECTED, reason=str(exc))
            # Only a bad number or bad parameters are about this recipient. Anything else (the key,
            # the agent, 429s or 5xx after all retries, an unreachable service) would repeat for
            # every recipient: stop dialing. A retryable stop lets a later try resume the batch.
            per_recipient = isinstance(exc, (VonageStudioConfigError, VonageStudioBadRequest))
            return rejected, True, None if per_recipient else exc
        return (
            replace(
                base,
                result=ResultKind.PLACED,
                session_id=call.session_id,
                session_start_time=call.session_start_time,
            ),
            True,
            None,
        )


def _from_record(base: RecipientResult, record: CallRecord) -> RecipientResult:
    """A result from the ledger alone (no request): what an earlier try or pass recorded."""
    state = CallState(record.state)
    if state is CallState.PLACED:
        return replace(
            base,
            result=ResultKind.PLACED,
            session_id=record.session_id,
            session_start_time=record.session_start_time,
        )
    if state is CallState.REJECTED:
        status = f"{record.error_status}: " if record.error_status is not None else ""
        return replace(
            base,
            result=ResultKind.REJECTED,
            reason=f"{status}{record.error_message or 'refused'} (on an earlier try; not dialed again)",
        )
    if state is CallState.QUEUED:
        why = f" after {record.error_status}: {record.error_message}" if record.error_status else ""
        return replace(base, reason=f"not dialed yet (queued{why}); the next try dials it")
    return replace(
        base,
        result=ResultKind.UNKNOWN,
        reason=record.error_message
        or "the call was sent on an earlier try and its outcome is unknown; not dialed again",
    )


class _Pass:
    """One pass's running state across chunks: results kept, counts, the stop, the next opening."""

    def __init__(
        self, dialer: BatchDialer, progress: _Progress, keep: int | None, collect_placed: bool
    ) -> None:
        self.dialer = dialer
        self.progress = progress
        self.keep = keep
        self.collect_placed = collect_placed
        # None once more than ``keep`` results were seen: the report then carries counts only.
        self.results: list[RecipientResult] | None = []
        self.last: list[RecipientResult] = []
        self.problems: list[RecipientResult] = []
        self.placed: list[str] = []
        self.stopped: VonageStudioError | None = None
        self.next_opening: datetime | None = None
        self.seen = 0
        self.unknown_in_a_row = 0

    def chunk(self, chunk: Sequence[Recipient], *, dial: bool) -> None:
        refs, records, listed = self.dialer._read_chunk(chunk, dial=dial)
        self.last = []
        for recipient in chunk:
            ref = refs.get(recipient.index)
            record = records.get(ref) if ref else None
            result, dialed, error = self.dialer._one(
                recipient, ref, record, listed, dial=dial, stopped=self.stopped
            )
            if dialed:
                self._dialed(result)
            if error is not None and self.stopped is None:
                self.stopped = error
            self._keep(result)
            self.progress.done(result)

    def _dialed(self, result: RecipientResult) -> None:
        self.progress.dialed()
        if result.result is not ResultKind.UNKNOWN:
            self.unknown_in_a_row = 0
            return
        self.unknown_in_a_row += 1
        if self.unknown_in_a_row >= MAX_CONSECUTIVE_UNKNOWN and self.stopped is None:
            self.stopped = BatchStalled(
                f"{self.unknown_in_a_row} calls in a row got no answer from AI Studio; the batch "
                "stopped dialing so that an outage does not pile up calls of unknown outcome"
            )

    def _keep(self, result: RecipientResult) -> None:
        self.seen += 1
        self.last.append(result)
        kind = result.result
        if kind in (ResultKind.REJECTED, ResultKind.UNKNOWN) and len(self.problems) < _PROBLEMS_KEPT:
            self.problems.append(result)
        opens = result.opens_at if kind is ResultKind.DEFERRED else None
        if opens is not None and (self.next_opening is None or opens < self.next_opening):
            self.next_opening = opens
        if self.collect_placed and kind is ResultKind.PLACED and result.call_ref:
            self.placed.append(result.call_ref)
        if self.results is not None:
            if self.keep is not None and len(self.results) >= self.keep:
                self.results = None
            else:
                self.results.append(result)


@dataclass
class _Progress:
    """Progress lines every few seconds: done/total, current dial rate, ETA, 429s absorbed."""

    dialer: BatchDialer
    total: int | None
    counts: dict[str, int] = field(default_factory=lambda: {kind.value: 0 for kind in ResultKind})
    dials: int = 0
    _recent: deque[float] = field(default_factory=deque)
    _last_log: float | None = None

    def dialed(self) -> None:
        now = self.dialer.monotonic()
        self.dials += 1
        self._recent.append(now)
        while self._recent and now - self._recent[0] > _RATE_WINDOW:
            self._recent.popleft()

    def done(self, result: RecipientResult) -> None:
        self.counts[result.result.value] += 1
        now = self.dialer.monotonic()
        if self._last_log is None:
            self._last_log = now
        elif now - self._last_log >= self.dialer.progress_interval:
            self.log_now()

    def rate(self) -> float:
        if len(self._recent) < 2:
            return 0.0
        span = self._recent[-1] - self._recent[0]
        return (len(self._recent) - 1) / span if span > 0 else 0.0

    def log_now(self) -> None:
        self._last_log = self.dialer.monotonic()
        done = sum(self.counts.values())
        rate = self.rate()
        left = None if self.total is None else max(self.total - done, 0)
        try:
            allowed = float(self.dialer.hook.config.calls_per_second)
        except Exception:  # progress must never fail the batch
            allowed = 1.0
        eta = _human(left / (rate or allowed)) if left else ("0s" if left == 0 else "unknown")
        self.dialer.log.info(
            "Progress: %d/%s recipients done (%s); %.2f calls/s; ETA %s; 429s absorbed so far: %d",
            done,
            "?" if self.total is None else self.total,
            ", ".join(f"{kind} {n}" for kind, n in self.counts.items() if n) or "nothing yet",
            rate,
            eta,
            self.dialer.hook.rate_limited_count,
        )


# ------------------------------------------------------------------------------ statuses


def wait_for_statuses(
    store: CallStore,
    call_refs: Sequence[str],
    *,
    answer_window: timedelta,
    poll_interval: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] | None = None,
    logger: Any = None,
) -> dict[str, tuple[str | None, str | None]]:
    """Poll the store (one query per round for the whole batch) until every call has its
    final status; return ``{call_ref: (status, None)}`` or ``(None, why)`` for a call that
    will never have one (unknown outcome, refused, not in the store).

    The batch's name for :func:`~airflow_provider_vonage_studio.outcome.wait_for_calls`, the
    one waiting loop (the in-process twin of ``CallStatusTrigger(call_refs=...)``).
    """
    from airflow_provider_vonage_studio.outcome import wait_for_calls

    return wait_for_calls(
        store,
        call_refs,
        answer_window=answer_window,
        poll_interval=poll_interval,
        sleep=sleep,
        now=now,
        logger=logger or log,
    )


# ------------------------------------------------------------------------------ helpers


def _human(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
