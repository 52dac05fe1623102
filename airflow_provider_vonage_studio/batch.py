"""Dialing a list of recipients from one task: the loop behind ``MakeCallsOperator``.

It lives apart from the operator so that it runs without Airflow's task machinery: the
fault-injection tests run it in a separate process and kill that process with SIGKILL at
random points, as a worker crash would, to prove that a retry never dials anyone twice.

How a batch stays exactly-once and paced:

* every recipient gets a deterministic ``call_ref`` (:func:`~airflow_provider_vonage_studio.
  callbacks.tokens.make_call_ref` over the task instance and the recipient's key), so a
  retried task finds the calls its earlier tries made;
* recipients are dialed one after another through
  :meth:`VonageStudioHook.make_call <airflow_provider_vonage_studio.hooks.vonage_studio.
  VonageStudioHook.make_call>`, which writes the ledger row ``queued`` before the slot wait,
  turns it ``sending`` (compare-and-set) when the send gate grants each request leave, back
  to ``queued`` after each definite "not placed", and completes it after the answer;
* at the start of each pass, rows an earlier try left ``sending`` (it died while its request
  may have been on the way) are relabelled ``unknown``: whether that phone rang is unknown, so
  it is reported and never dialed again unless ``redial_unknown`` asks for it. Rows left
  ``queued`` (it died before sending, e.g. while waiting for its slot) are simply dialed.

The dialer uses the hook it is given. Tests that dial hundreds of calls against an emulator
with a lifted limit pass ``VonageStudioHook(pace=False)``; that is a testing knob only, never
to be used against AI Studio (the agent's limit is enforced there with 429s).

Nothing heavy is imported at module level: the operator module imports this one lazily.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from datetime import time as dtime
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    CallPlacedNotRecorded,
    CallStoreUnavailable,
    DoNotCall,
    VonageStudioBadRequest,
    VonageStudioConfigError,
    VonageStudioError,
)

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
    from airflow_provider_vonage_studio.store import CallRecord, CallStore

__all__ = [
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
    "plan_recipients",
    "recipient_timezone",
    "wait_for_statuses",
    "would_dial",
]

log = logging.getLogger(__name__)

#: Keys a recipient given as a mapping may have.
RECIPIENT_FIELDS = ("to", "session_parameters", "key", "timezone")

#: ``reason`` of a recipient skipped because an earlier recipient has the same destination.
SKIPPED_DUPLICATE = "duplicate"
#: ``reason`` of a recipient skipped because its number is on a do-not-call list.
SKIPPED_DO_NOT_CALL = "do-not-call"

#: A dial starts only when the calling window is still open this much later: pacing waits
#: and the hook's retries happen after the check and must not carry the call past the end.
WINDOW_CLOSING_MARGIN = timedelta(seconds=60)

#: Fresh dials in a row that got no answer before the batch stops (the API hangs): each
#: one may have rung, so going on would only pile up calls of unknown outcome.
MAX_CONSECUTIVE_UNKNOWN = 5

# Seconds of dials the "current rate" in progress lines is measured over.
_RATE_WINDOW = 30.0


class ResultKind(str, Enum):
    """What became of one recipient of a batch."""

    PLACED = "placed"  # AI Studio accepted the call (now, or on an earlier try)
    REJECTED = "rejected"  # refused (invalid input, or by AI Studio): nothing rang
    SKIPPED = "skipped"  # deliberately not dialed (duplicate, do-not-call, batch stopped)
    UNKNOWN = "unknown"  # sent, no answer: it may have rung; never dialed again on its own
    DEFERRED = "deferred"  # outside its calling window; dialed when the window opens


class BatchStalled(VonageStudioError):
    """Several dials in a row got no answer: the batch stopped so that the API's outage does
    not pile up calls of unknown outcome. Retryable: a later try continues with the
    recipients not dialed yet (the unknown ones are not dialed again)."""

    retryable = True


@dataclass(frozen=True)
class Recipient:
    """One entry of a batch, checked and normalised (see :func:`plan_recipients`).

    ``to`` is the value as given and must never be logged; ``destination`` is the normalised
    number or SIP URI (``None`` when invalid); ``error`` says why it cannot be dialed at all;
    ``duplicate_of`` is the index of an earlier recipient with the same destination;
    ``timezone`` is the zone its calling window is read in (``None`` without a window).
    """

    index: int
    to: str
    destination: str | None
    key: str | None = None
    session_parameters: tuple[tuple[str, str], ...] = ()
    timezone: str | None = None
    error: str | None = None
    duplicate_of: int | None = None

    @property
    def dialable(self) -> bool:
        """Valid and not a duplicate: it gets a call_ref and (maybe) a call."""
        return self.error is None and self.duplicate_of is None and self.destination is not None

    @property
    def ref_key(self) -> str:
        """The recipient's part of its ``call_ref``: its own key, else its destination.

        Namespaced (``key:`` / ``to:``) so that a key that happens to look like another
        recipient's number can never collide with it.
        """
        if self.key is not None:
            return f"key:{self.key}"
        return f"to:{self.destination}"

    @property
    def shown(self) -> str:
        """The destination as it may appear in logs and results (redacted)."""
        from airflow_provider_vonage_studio.destinations import redact

        return redact(self.destination or self.to)

    def parameters_list(self) -> list[dict[str, str]]:
        """Session parameters in the API's shape."""
        return [{"name": name, "value": value} for name, value in self.session_parameters]


@dataclass(frozen=True)
class RecipientResult:
    """The outcome of one recipient; :meth:`to_dict` is what the operator returns (XCom)."""

    index: int
    to: str  # redacted
    key: str | None
    call_ref: str | None
    result: ResultKind
    reason: str | None = None
    session_id: str | None = None
    session_start_time: datetime | None = None
    duplicate_of: int | None = None
    opens_at: datetime | None = None
    status: str | None = None
    with_status: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: number redacted, times ISO-8601 UTC, no token or secret."""
        data: dict[str, Any] = {
            "index": self.index,
            "to": self.to,
            "key": self.key,
            "call_ref": self.call_ref,
            "result": self.result.value,
            "reason": self.reason,
            "session_id": self.session_id,
            "session_start_time": _iso(self.session_start_time),
        }
        if self.duplicate_of is not None:
            data["duplicate_of"] = self.duplicate_of
        if self.opens_at is not None:
            data["opens_at"] = _iso(self.opens_at)
        if self.with_status:
            data["status"] = self.status
        return data


@dataclass(frozen=True)
class BatchReport:
    """The results of one pass over a batch, in the recipients' order.

    ``next_opening`` is the earliest calling-window opening among ``deferred`` recipients
    (``None`` when none is deferred). ``stopped`` is the error that made the pass stop dialing
    (a refused key, an unknown agent, an outage); recipients after it are ``skipped``.
    ``rate_limited`` is how many 429s the hook absorbed during the pass.
    """

    results: tuple[RecipientResult, ...]
    next_opening: datetime | None = None
    stopped: VonageStudioError | None = None
    rate_limited: int = 0
    dialed: int = 0

    def counts(self) -> dict[str, int]:
        """How many recipients ended in each :class:`ResultKind` (all kinds, zeros included)."""
        counts = {kind.value: 0 for kind in ResultKind}
        for result in self.results:
            counts[result.result.value] += 1
        return counts

    def placed_refs(self) -> list[str]:
        """call_refs of the placed calls, in order."""
        return [r.call_ref for r in self.results if r.result is ResultKind.PLACED and r.call_ref]

    def summary(self) -> str:
        """One line for logs and errors: ``placed 997, rejected 2, unknown 1 of 1000``."""
        counts = self.counts()
        parts = [f"{kind} {n}" for kind, n in counts.items() if n]
        return f"{', '.join(parts) or 'nothing'} of {len(self.results)} recipient(s)"

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-safe results (see :meth:`RecipientResult.to_dict`)."""
        return [r.to_dict() for r in self.results]


# ------------------------------------------------------------------------------ planning


def plan_recipients(
    recipients: Iterable[Any] | None,
    *,
    default_country: str | None = None,
    session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    strict_parameter_names: bool = True,
    calling_window: tuple[dtime, dtime] | None = None,
    timezone_name: str = "UTC",
) -> list[Recipient]:
    """Check and normalise ``recipients`` without any request or store access.

    Each item is a number / SIP URI (``str``, or an ``int`` of digits with the country
    code), or a mapping with ``to`` and optional ``session_parameters`` (merged over the
    batch's, by name), ``key`` (what makes its call_ref; default: the normalised destination)
    and ``timezone`` (IANA name of the callee's zone for the calling window). A bad item does
    not fail the batch: it comes back with ``error`` set and is reported ``rejected``. An item
    whose destination (after normalisation) repeats an earlier one gets ``duplicate_of``.
    With ``calling_window`` each valid recipient gets the zone its window is read in:
    its own ``timezone``, else the one ``phonenumbers`` gives for the number when there is
    exactly one, else ``timezone_name``.

    :raises VonageStudioConfigError: naming ``recipients`` when it is not a list (a string,
        a mapping, ``None``), naming ``timezone`` when ``timezone_name`` is not a known zone.
    :raises InvalidSessionParameter: the batch-wide ``session_parameters`` break AI Studio's rules.
    """
    from airflow_provider_vonage_studio.destinations import normalize_destination
    from airflow_provider_vonage_studio.params import normalize_session_parameters

    if recipients is None or isinstance(recipients, (str, bytes, Mapping)) or not _iterable(recipients):
        hint = (
            " (a template rendered to text: pass an upstream task's output, or set the DAG's "
            "render_template_as_native_obj=True)"
            if isinstance(recipients, str)
            else ""
        )
        raise VonageStudioConfigError(
            "recipients: expected a list of numbers or of mappings with 'to', "
            f"got {type(recipients).__name__}{hint}"
        )
    defaults = {
        p["name"]: p["value"]
        for p in normalize_session_parameters(session_parameters, strict_names=strict_parameter_names)
    }
    if calling_window is not None:
        _check_zone(timezone_name, "timezone")

    plan: list[Recipient] = []
    first_by_destination: dict[str, int] = {}
    first_by_key: dict[str, int] = {}
    for index, item in enumerate(recipients):
        raw, fields, error = _split_item(index, item)
        recipient = Recipient(index=index, to=raw, destination=None, error=error)
        if error is None:
            try:
                destination = normalize_destination(raw, default_country=default_country)
                params = dict(defaults)
                for p in normalize_session_parameters(
                    fields.get("session_parameters"), strict_names=strict_parameter_names
                ):
                    params[p["name"]] = p["value"]
                zone = None
                if calling_window is not None:
                    if fields.get("timezone") is not None:
                        _check_zone(fields["timezone"], f"recipients[{index}].timezone")
                    zone = recipient_timezone(destination, fields.get("timezone"), timezone_name)
                recipient = replace(
                    recipient,
                    destination=destination,
                    key=fields.get("key"),
                    session_parameters=tuple(params.items()),
                    timezone=zone,
                )
            except VonageStudioError as exc:
                recipient = replace(recipient, error=f"recipients[{index}]: {exc.message}")
        dest, key = recipient.destination, recipient.key
        if recipient.error is None and dest is not None:
            earlier = first_by_destination.get(dest)
            if earlier is not None:
                recipient = replace(recipient, duplicate_of=earlier)
            elif key is not None and key in first_by_key:
                recipient = replace(
                    recipient,
                    error=f"recipients[{index}]: key {key!r} is already the key of "
                    f"recipients[{first_by_key[key]}]; keys must be unique within a batch",
                )
            else:
                first_by_destination[dest] = index
                if key is not None:
                    first_by_key[key] = index
        plan.append(recipient)
    return plan


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _split_item(index: int, item: Any) -> tuple[str, dict[str, Any], str | None]:
    """``(to as given, other fields, error)`` of one recipient item; never raises."""
    where = f"recipients[{index}]"
    if isinstance(item, bool):
        return str(item), {}, f"{where}: expected a number or a mapping with 'to', got bool"
    if isinstance(item, (str, int)):
        return str(item), {}, None
    if not isinstance(item, Mapping):
        return "", {}, f"{where}: expected a number or a mapping with 'to', got {type(item).__name__}"
    to = item.get("to")
    raw = str(to) if isinstance(to, (str, int)) and not isinstance(to, bool) else ""
    unknown = sorted(str(k) for k in item if k not in RECIPIENT_FIELDS)
    if unknown:
        # A typo such as "session_parameter" must not silently drop what the agent should say.
        allowed = ", ".join(RECIPIENT_FIELDS)
        return raw, {}, f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {allowed}"
    if not raw:
        return raw, {}, f"{where}: 'to' is missing or not a string (a number or sip:user@host)"
    fields: dict[str, Any] = {"session_parameters": item.get("session_parameters")}
    key = item.get("key")
    if key is not None:
        if isinstance(key, bool) or not isinstance(key, (str, int)) or str(key) == "":
            return raw, {}, f"{where}: 'key' must be a non-empty string, got {type(key).__name__}"
        fields["key"] = str(key)
    zone = item.get("timezone")
    if zone is not None:
        if not isinstance(zone, str) or not zone.strip():
            return raw, {}, f"{where}: 'timezone' must be an IANA zone name such as 'Europe/London'"
        fields["timezone"] = zone.strip()
    return raw, fields, None


def _check_zone(name: Any, field_name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if isinstance(name, str) and name.strip():
        try:
            ZoneInfo(name.strip())
            return
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise VonageStudioConfigError(
        f"{field_name}: {name!r} is not a known IANA time zone name "
        "(e.g. 'Europe/London', 'America/New_York')"
    )


# ------------------------------------------------------------------------- calling windows


def recipient_timezone(destination: str | None, explicit: str | None, fallback: str) -> str:
    """The zone a callee's calling window is read in: ``explicit`` when given, else the one
    zone ``phonenumbers`` knows for the number, else ``fallback``."""
    if explicit:
        return explicit
    if destination:
        from airflow_provider_vonage_studio.destinations import timezone_for_number

        zone = timezone_for_number(destination)
        if zone:
            return zone
    return fallback


def dial_window_opening(
    now: datetime,
    window: tuple[dtime, dtime] | None,
    tz: str,
    *,
    margin: timedelta = WINDOW_CLOSING_MARGIN,
) -> datetime | None:
    """``None`` when a dial may start at ``now``, else when it may (aware UTC).

    A dial may start when ``now`` is inside the window in zone ``tz`` and the window is
    still open ``margin`` later (so that a pacing wait or a retry cannot carry the call past
    the end); otherwise the answer is the window's next opening. The margin is capped at a
    quarter of the window's length, so a short window still gets calls.

    :raises VonageStudioConfigError: ``now`` is naive, ``tz`` is not a known zone.
    """
    from airflow_provider_vonage_studio.windows import next_window_open

    if window is None:
        return None
    opening = next_window_open(now, window, tz)
    if opening is not None:
        return opening
    margin = min(margin, _window_length(window) / 4)
    if margin > timedelta(0):
        later = next_window_open(now + margin, window, tz)
        if later is not None:  # closes within the margin: wait for the next opening
            return later
    return None


def _window_length(window: tuple[dtime, dtime]) -> timedelta:
    start, end = window

    def seconds(t: dtime) -> int:
        return t.hour * 3600 + t.minute * 60 + t.second

    return timedelta(seconds=(seconds(end) - seconds(start)) % 86400)


# --------------------------------------------------------------------------- the ledger


def would_dial(record: CallRecord, redial_unknown: bool) -> bool:
    """Whether :meth:`VonageStudioHook.make_call` would send a request for a call with this
    ledger row (mirrors its rules; a unit test keeps the two in step).

    ``placed`` never; ``queued`` always (nothing was sent); ``rejected`` only when the refusal
    was one that left the call definitely not placed and worth trying again (429, 502/503/504,
    connection refused); ``unknown`` or ``sending`` only with ``redial_unknown``.
    """
    from airflow_provider_vonage_studio.hooks.vonage_studio import error_for

    state = record.state.value
    if state == "placed":
        return False
    if state == "queued":
        return True
    if state == "rejected":
        return error_for(record.error_status, record.error_message or "rejected earlier").retryable
    return redial_unknown


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
        from airflow_provider_vonage_studio.callbacks.tokens import make_call_ref

        key = recipient.ref_key if self.call_key is None else f"{self.call_key}/{recipient.ref_key}"
        dag_id, run_id, task_id, map_index = self.identity
        return make_call_ref(dag_id, run_id, task_id, map_index, key=key)

    def run(self, plan: Sequence[Recipient], *, dial: bool = True) -> BatchReport:
        """One pass over ``plan``: dial who may be dialed now, report everyone.

        With ``dial=False`` nothing is dialed or changed: the report is read from the ledger
        (used once a batch is complete, e.g. after waiting for statuses).

        :raises VonageStudioError: the connection is broken (before anything is dialed).
        :raises CallStoreUnavailable: the store could not be read before dialing (retryable).
        """
        store = self.hook.store
        if dial:
            self.hook.config  # noqa: B018 -- a broken connection fails here, before the ledger is touched
        refs = {r.index: self.call_ref_for(r) for r in plan if r.dialable}
        with store.unavailable_as_error("before dialing the batch"):
            records = store.get_calls(list(refs.values()))
            if dial:
                records = self._settle_abandoned(store, records)
            listed = self._listed(store, [r.destination for r in plan if r.dialable and r.destination])

        rate_limited_before = self.hook.rate_limited_count
        progress = _Progress(self, len(plan))
        results: list[RecipientResult] = []
        stopped: VonageStudioError | None = None
        unknown_in_a_row = 0
        for recipient in plan:
            ref = refs.get(recipient.index)
            record = records.get(ref) if ref else None
            result, dialed, error = self._one(recipient, ref, record, listed, dial=dial, stopped=stopped)
            results.append(result)
            if dialed:
                progress.dialed()
                if result.result is ResultKind.UNKNOWN:
                    unknown_in_a_row += 1
                    if unknown_in_a_row >= MAX_CONSECUTIVE_UNKNOWN and stopped is None:
                        stopped = BatchStalled(
                            f"{unknown_in_a_row} calls in a row got no answer from AI Studio; the batch "
                            "stopped dialing so that an outage does not pile up calls of unknown outcome"
                        )
                else:
                    unknown_in_a_row = 0
            if error is not None and stopped is None:
                stopped = error
            progress.done(result)
        progress.log_now()
        deferred = [r.opens_at for r in results if r.result is ResultKind.DEFERRED and r.opens_at]
        return BatchReport(
            results=tuple(results),
            next_opening=min(deferred) if deferred else None,
            stopped=stopped,
            rate_limited=self.hook.rate_limited_count - rate_limited_before,
            dialed=progress.dials,
        )

    # -- steps --------------------------------------------------------------------------------

    def _settle_abandoned(self, store: CallStore, records: dict[str, CallRecord]) -> dict[str, CallRecord]:
        """Relabel ``sending`` rows left by an earlier try as ``unknown``.

        Within a pass every dial completes its row before the next starts, so a row still
        sending when a pass begins belongs to a try that died mid-request: the request may have
        reached AI Studio. The change is a compare-and-set on the row as read, so an outcome
        recorded meanwhile (a try that was not dead after all) is never overwritten. ``queued``
        rows are left alone: nothing was sent, and this pass dials them.
        """
        from airflow_provider_vonage_studio.store import CallStateConflict

        abandoned = [rec for rec in records.values() if rec.state.value == "sending"]
        if not abandoned:
            return records
        for rec in abandoned:
            # A conflict means the row was completed by its own try meanwhile: the re-read shows it.
            with contextlib.suppress(CallStateConflict):
                store.mark_unknown(
                    rec.call_ref,
                    "an earlier try of the task ended while this call was being dialed (worker killed?): "
                    "the request may have reached AI Studio, so whether the phone rang is unknown",
                    expected=rec,
                )
        self.log.warning(
            "%d call(s) were left 'sending' by an earlier try that ended mid-request; they are now "
            "'unknown' and are not dialed again (they may have rung). Set redial_unknown=True to call "
            "them anyway.",
            len(abandoned),
        )
        return {**records, **store.get_calls([rec.call_ref for rec in abandoned])}

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
        if record is not None and (
            record.destination != recipient.destination or record.agent_id != self.agent_id
        ):
            reason = (
                f"call_ref {ref} was used earlier for another destination or agent; a retry must dial the "
                "same call. Give this recipient another key (or the batch a call_key) to call someone else."
            )
            return replace(base, result=ResultKind.REJECTED, reason=reason), False, None
        if record is not None and not would_dial(record, self.redial_unknown):
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
        dag_id, run_id, task_id, map_index = self.identity
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
                dag_id=dag_id,
                run_id=run_id,
                task_id=task_id,
                map_index=map_index,
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
    state = record.state.value
    if state == "placed":
        return replace(
            base,
            result=ResultKind.PLACED,
            session_id=record.session_id,
            session_start_time=record.session_start_time,
        )
    if state == "rejected":
        status = f"{record.error_status}: " if record.error_status is not None else ""
        return replace(
            base,
            result=ResultKind.REJECTED,
            reason=f"{status}{record.error_message or 'refused'} (on an earlier try; not dialed again)",
        )
    if state == "queued":
        why = f" after {record.error_status}: {record.error_message}" if record.error_status else ""
        return replace(base, reason=f"not dialed yet (queued{why}); the next try dials it")
    return replace(
        base,
        result=ResultKind.UNKNOWN,
        reason=record.error_message
        or "the call was sent on an earlier try and its outcome is unknown; not dialed again",
    )


@dataclass
class _Progress:
    """Progress lines every few seconds: done/total, current dial rate, ETA, 429s absorbed."""

    dialer: BatchDialer
    total: int
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
        left = self.total - done
        try:
            allowed = float(self.dialer.hook.config.calls_per_second)
        except Exception:  # progress must never fail the batch
            allowed = 1.0
        eta = left / (rate or allowed) if left else 0.0
        self.dialer.log.info(
            "Progress: %d/%d recipients done (%s); %.2f calls/s; ETA %s; 429s absorbed so far: %d",
            done,
            self.total,
            ", ".join(f"{kind} {n}" for kind, n in self.counts.items() if n) or "nothing yet",
            rate,
            _human(eta),
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

    The in-process twin of ``CallStatusTrigger(call_refs=...)``; both decide with
    :func:`~airflow_provider_vonage_studio.outcome.evaluate_call`.
    """
    from airflow_provider_vonage_studio.outcome import answer_deadline, evaluate_call

    clock = now or (lambda: datetime.now(timezone.utc))
    logger = logger or log
    waiting = list(dict.fromkeys(call_refs))
    decided: dict[str, tuple[str | None, str | None]] = {}
    while waiting:
        records = store.get_calls(waiting)
        current = clock()
        deadlines = []
        for ref in waiting:
            record = records.get(ref)
            try:
                outcome = evaluate_call(
                    record, now=current, answer_window=answer_window, fail_on=(), call_ref=ref
                )
            except VonageStudioError as exc:
                decided[ref] = (None, exc.message)
                continue
            if outcome is not None:
                decided[ref] = (outcome.status, None)
            elif record is not None:
                deadline = answer_deadline(record, answer_window)
                if deadline is not None:
                    deadlines.append(deadline)
        waiting = [ref for ref in waiting if ref not in decided]
        if not waiting:
            break
        delay = poll_interval
        if deadlines:
            # Wake when the first silent call becomes "answered" rather than up to a poll later.
            delay = min(delay, max((min(deadlines) - current).total_seconds(), 0.0) + 0.01)
        logger.info(
            "Waiting for the status of %d of %d call(s); next check in %.1fs",
            len(waiting),
            len(call_refs),
            delay,
        )
        sleep(delay)
    return decided


# ------------------------------------------------------------------------------ helpers


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _human(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
