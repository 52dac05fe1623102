"""The checks a trigger runs in its worker thread, and the verdicts a resumed task stores.

Above the hooks (a check calls the API through a hook it is given) and below the triggers,
the sensors and the operators, which all use it: :func:`check_call_result` is one round of
``CallResultSensor`` (poke) and ``CallResultTrigger`` (in a thread) alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.calls import ANSWERED, OutcomeSource
from airflow_provider_vonage_studio.events import fail_task, source_of, verdict_of
from airflow_provider_vonage_studio.exceptions import (
    CallFailed,
    SessionNotFound,
    VonageStudioConfigError,
    VonageStudioError,
)
from airflow_provider_vonage_studio.outcome import (
    FAILURE_STATUSES,
    CallOutcome,
    evaluate_call,
    normalize_answer_window,
    open_store,
    record_verdict,
)

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallStore

__all__ = [
    "CONFIRM_INSIGHTS",
    "DEFAULT_CONFIRM_TIMEOUT",
    "check_call_result",
    "confirm_by_insights",
    "confirm_deadline",
    "normalize_confirm_answered",
    "normalize_confirm_timeout",
    "parameter_names",
    "record_event_verdict",
    "settle",
    "store_insights_confirmation",
]

#: ``confirm_answered``'s one value: read the session through Insights before an inferred
#: ``answered`` is accepted.
CONFIRM_INSIGHTS = "insights"

#: How long after the answer window an inferred ``answered`` waits for Insights to index its
#: session (404 until then) before it is accepted as inferred. Indexing usually takes seconds to
#: a few minutes; past this bound the session is unlikely to appear soon.
DEFAULT_CONFIRM_TIMEOUT = timedelta(minutes=10)


def settle(
    store: CallStore | str | Callable[[], CallStore] | None,
    call_ref: str,
    decide: Callable[[], CallOutcome | None],
    *,
    log: Any = None,
) -> CallOutcome | None:
    """Run ``decide`` (one check of ``call_ref``, or a whole wait) in the worker; store the final
    status it returns, or raises as :class:`~airflow_provider_vonage_studio.exceptions.CallFailed`,
    as the call's verdict (``store`` as for :func:`~airflow_provider_vonage_studio.outcome.
    record_verdict`; never fails the task).

    :raises AirflowFailException: for what ``decide`` raises that a task retry cannot change
        (:func:`~airflow_provider_vonage_studio.events.fail_task`); retryable errors as they are.
    """
    try:
        outcome = decide()
    except VonageStudioError as exc:
        if isinstance(exc, CallFailed):
            # fail_on holds failure statuses only: AI Studio's callback reported it.
            record_verdict(store, call_ref, exc.call_status, source=OutcomeSource.CALLBACK.value, log=log)
        raise fail_task(exc) from exc
    if outcome is not None:
        # Stored so the outcome view shows what the task reported and where its truth came from
        # ("inferred" for an answer nobody reported).
        record_verdict(store, call_ref, outcome.status, source=outcome.source, log=log)
    return outcome


def record_event_verdict(
    event: Mapping[str, Any] | None,
    store: CallStore | str | Callable[[], CallStore] | None,
    log: Any = None,
) -> None:
    """Store the verdict a status trigger's event carries (a ``success`` event's ``call_status``,
    or an ``error`` event's for a status in ``fail_on``), in the worker that resumed. Never raises.

    ``store`` as for :func:`~airflow_provider_vonage_studio.outcome.record_verdict`.
    """
    verdict = verdict_of(event)
    if verdict is not None:
        record_verdict(store, *verdict, source=source_of(event), log=log)


# evaluate_call() is asked for failures only: with this window an unreported call is never
# taken as "answered" (whether parameters exist decides that here), yet the sum with a start
# time stays far from datetime's limits.
_NO_ANSWER_INFERENCE = timedelta(days=36500)


def parameter_names(value: Any) -> tuple[str, ...]:
    """``required_parameters`` (rendered) as a tuple of names; one string is one name.

    :raises VonageStudioConfigError: naming ``required_parameters`` for anything but names.
    """
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    bad = [item for item in items if not isinstance(item, str) or not item.strip()]
    if bad:
        raise VonageStudioConfigError(f"required_parameters: expected parameter names, got {bad!r}")
    return tuple(dict.fromkeys(item.strip() for item in items))


def check_call_result(
    *,
    hook: Any,
    call_ref: str | None = None,
    session_id: str | None = None,
    session_start_time: Any = None,
    required_parameters: Sequence[str] = (),
    fail_on: Iterable[str] = FAILURE_STATUSES,
    store_url: str | None = None,
) -> dict[str, Any] | None:
    """One check of a call's Insights parameters; ``None`` means "keep waiting".

    Shared by :class:`~airflow_provider_vonage_studio.sensors.vonage_studio.CallResultSensor` (poke) and
    :class:`~airflow_provider_vonage_studio.triggers.vonage_studio.CallResultTrigger` (in a
    thread). Blocking: it reads the call store and calls the API through ``hook`` (a
    :class:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook`).

    With ``call_ref`` the call's row comes first: a failure status recorded by the callback
    receiver (``busy``, ``timeout``, ...) ends the wait at once, since such a call never
    produces parameters; the session id and start time are the row's. Otherwise
    ``session_id`` and ``session_start_time`` name the session directly.

    Returns a JSON-safe dict with ``call_ref``, ``session_id``, ``parameters`` (the dict read,
    or ``None``) and ``call_status`` (``None``, or a failure status not in ``fail_on``).
    Keeps waiting (``None``) while the dial is still being recorded, while Insights answers
    404 (not indexed yet), and while a name in ``required_parameters`` is missing or empty.

    :raises UnknownCall: ``call_ref`` names no call in the store.
    :raises CallFailed: the call's status is in ``fail_on``.
    :raises CallRejectedEarlier: AI Studio refused the call when it was placed.
    :raises CallOutcomeUnknown: whether the call was placed is unknown.
    :raises VonageStudioAuthError: 401 from Insights (bad key, or a parameter it refused).
    :raises VonageStudioError: anything else the hook raises (connection errors after its retries,
        an unknown body shape).
    """
    required = parameter_names(required_parameters)
    if call_ref is not None:
        record = open_store(store_url).get_call(call_ref)
        outcome = evaluate_call(
            record,
            now=datetime.now(timezone.utc),
            answer_window=_NO_ANSWER_INFERENCE,
            fail_on=fail_on,
            call_ref=call_ref,
        )
        if outcome is not None:  # a failure status the caller wants returned, not raised
            return {
                "call_ref": call_ref,
                "session_id": record.session_id if record else None,
                "parameters": None,
                "call_status": outcome.status,
            }
        if record is None or record.state != "placed" or not record.session_id:
            return None  # the placing task has not recorded AI Studio's answer yet
        session_id, session_start_time = record.session_id, record.session_start_time
    if not session_id or session_start_time is None:
        raise VonageStudioConfigError("session_id and session_start_time are both needed to read parameters")
    try:
        parameters = hook.get_session_parameters(session_id, session_start_time)
    except SessionNotFound:
        return None  # not indexed yet: normal for a while after the call
    missing = [name for name in required if not parameters.get(name)]
    if missing:
        # Names only: values are what the callee said (personal data).
        hook.log.info(
            "Session %s: waiting for parameter(s) %s (present: %s)",
            session_id,
            ", ".join(missing),
            ", ".join(sorted(parameters)) or "none",
        )
        return None
    return {"call_ref": call_ref, "session_id": session_id, "parameters": parameters, "call_status": None}


# ----------------------------------------------------------------------- Insights confirmation


def normalize_confirm_answered(value: Any) -> str | None:
    """``confirm_answered`` checked: ``None`` (accept an inferred ``answered``) or
    ``"insights"`` (:data:`CONFIRM_INSIGHTS`).

    :raises VonageStudioConfigError: naming ``confirm_answered`` for anything else.
    """
    if value is None or value == CONFIRM_INSIGHTS:
        return value
    raise VonageStudioConfigError(
        f"confirm_answered: expected None or {CONFIRM_INSIGHTS!r} (read the session through Insights "
        f"before accepting an inferred 'answered'), got {value!r}"
    )


def normalize_confirm_timeout(value: timedelta | float) -> timedelta:
    """``confirm_timeout`` as a ``timedelta`` (numbers are seconds; zero up to a day).

    :raises VonageStudioConfigError: naming ``confirm_timeout`` for anything else.
    """
    return normalize_answer_window(value, "confirm_timeout")


def confirm_deadline(outcome: CallOutcome, confirm_timeout: timedelta) -> datetime | None:
    """Until when an inferred ``outcome`` waits for Insights: ``confirm_timeout`` past the end of
    its answer window (``status_at``); ``None`` for an outcome that needs no confirmation."""
    if not (outcome.answered and outcome.source == OutcomeSource.INFERRED.value):
        return None
    return (outcome.status_at or datetime.now(timezone.utc)) + confirm_timeout


def confirm_by_insights(
    outcome: CallOutcome | None,
    *,
    hook: Any,
    store: CallStore,
    confirm_timeout: timedelta,
    now: datetime | None = None,
) -> CallOutcome | None:
    """Confirm an inferred ``answered`` by reading the call's session through Insights.

    Returns ``outcome`` itself when it needs no confirmation (``None``, a failure status, an
    answer already confirmed by the end-call webhook or Insights). For an inferred ``answered``
    it reads ``hook.get_session_parameters`` (paced and retried by the hook like every Insights
    read): found, the parameters and the verdict ``answered`` with source ``insights`` are
    stored and that outcome returned; 404 (not indexed yet) → ``None`` (keep waiting) until
    ``confirm_timeout`` past the answer window, then the inferred ``outcome`` as it was.

    :raises VonageStudioError: what the hook raises besides a 404 (401, an unknown body shape,
        the API unreachable after its retries); the store's errors.
    """
    deadline = confirm_deadline(outcome, confirm_timeout) if outcome is not None else None
    if outcome is None or deadline is None:
        return outcome
    record = store.get_call(outcome.call_ref)
    if record is None or not record.session_id or record.session_start_time is None:
        return outcome  # nothing to read the session by: the inference stands
    try:
        parameters = hook.get_session_parameters(record.session_id, record.session_start_time)
    except SessionNotFound:
        if (now or datetime.now(timezone.utc)) >= deadline:
            hook.log.info(
                "Call %s: Insights has not indexed session %s within %s of the answer window; "
                "'answered' stays inferred",
                outcome.call_ref,
                record.session_id,
                confirm_timeout,
            )
            return outcome
        hook.log.info(
            "Call %s: waiting for Insights to index session %s (until %s) to confirm 'answered'",
            outcome.call_ref,
            record.session_id,
            deadline.isoformat(),
        )
        return None
    return store_insights_confirmation(store, outcome.call_ref, parameters)


def store_insights_confirmation(
    store: CallStore, call_ref: str, parameters: Mapping[str, Any]
) -> CallOutcome:
    """Keep the session's ``parameters`` with the call and its verdict ``answered`` (source
    ``insights``; a verdict stored earlier wins, as always); the confirmed outcome."""
    store.set_parameters(call_ref, {str(k): str(v) for k, v in dict(parameters).items()})
    store.record_outcome(call_ref, ANSWERED, source=OutcomeSource.INSIGHTS.value)
    return CallOutcome(
        call_ref,
        ANSWERED,
        inferred=False,
        status_at=datetime.now(timezone.utc),
        source=OutcomeSource.INSIGHTS,
    )
