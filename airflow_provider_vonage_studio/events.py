"""The trigger-event format: what a trigger yields, how it is built, and the one reader.

Every event :class:`~airflow_provider_vonage_studio.triggers.vonage_studio.CallStatusTrigger`
and :class:`~airflow_provider_vonage_studio.triggers.vonage_studio.CallResultTrigger` can
yield is one of the ``TypedDict`` shapes below, built by the builder next to it (the
triggers build no dict of their own). Every ``execute_complete`` reads its event with
:func:`resume`, which checks the shape, turns an ``error`` event back into the task failure
the worker would have raised (:func:`fail_task`), and returns the typed payload.

Events travel through Airflow's database as JSON: only strings, numbers, ``None``, lists
and dicts. This module imports only the standard library, ``_compat``, ``exceptions`` and
``calls``, so hooks, triggers, operators and sensors can all import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NotRequired, TypedDict, overload

from airflow_provider_vonage_studio._compat import AirflowException, AirflowFailException
from airflow_provider_vonage_studio.exceptions import (
    CallFailed,
    CallOutcomeUnknown,
    CallRejectedEarlier,
    UnknownCall,
    VonageStudioError,
)

__all__ = [
    "CallErrorEvent",
    "CallResultErrorEvent",
    "CallResultSuccessEvent",
    "CallStatusErrorEvent",
    "CallStatusSuccessEvent",
    "CallStatusesSuccessEvent",
    "StoreOutageEvent",
    "error_event",
    "error_from_event",
    "fail_task",
    "result_error_event",
    "result_success_event",
    "resume",
    "source_of",
    "sources_of",
    "status_event",
    "store_outage_event",
    "verdict_of",
]


class CallErrorEvent(TypedDict):
    """One error, JSON-safe: what :func:`error_event` makes of a :class:`VonageStudioError`.

    ``error_type`` names the exception class (rebuilt by :func:`error_from_event`);
    ``call_status`` is set for a :class:`CallFailed` (a status in ``fail_on``).
    """

    status: Literal["error"]
    message: str
    error_type: str
    error_status: int | None
    call_ref: NotRequired[str]
    call_status: NotRequired[str]


class CallStatusSuccessEvent(TypedDict):
    """``CallStatusTrigger(call_ref=...)``: the one call has its final status.

    ``call_source`` / ``call_sources`` (optional: events of older triggers lack them) say where
    each status came from, an ``OutcomeSource`` value (``callback``, ``end_call``, ``insights``,
    ``inferred``): ``CallOutcome.source`` of the decided call.
    """

    status: Literal["success"]
    call_ref: str
    call_status: str
    call_statuses: dict[str, str]
    call_source: NotRequired[str]
    call_sources: NotRequired[dict[str, str]]


class CallStatusesSuccessEvent(TypedDict):
    """``CallStatusTrigger(call_refs=[...])``: every call has its final status (``call_sources``:
    where each came from, optional as in :class:`CallStatusSuccessEvent`)."""

    status: Literal["success"]
    call_statuses: dict[str, str]
    call_sources: NotRequired[dict[str, str]]


class CallStatusErrorEvent(CallErrorEvent):
    """``CallStatusTrigger``: a call will never have a final status, or one is in ``fail_on``.

    ``call_statuses`` holds the calls that did end; ``errors`` one :class:`CallErrorEvent` per
    call that did not. For a single call the event also carries ``call_ref`` (and
    ``call_status`` for a status in ``fail_on``).
    """

    call_statuses: dict[str, str]
    errors: dict[str, CallErrorEvent]


class StoreOutageEvent(CallErrorEvent):
    """``CallStatusTrigger``: the call store stayed unreadable; no verdict on any call
    (``errors`` is empty), so a task retry may wait again (``retryable``)."""

    retryable: Literal[True]
    call_statuses: dict[str, str]
    errors: dict[str, CallErrorEvent]


class CallResultSuccessEvent(TypedDict):
    """``CallResultTrigger``: the session's parameters (or the failure status of a call that
    will never have any, when that status is not in ``fail_on``)."""

    status: Literal["success"]
    call_ref: str | None
    session_id: str | None
    parameters: dict[str, Any] | None
    call_status: str | None


class CallResultErrorEvent(CallErrorEvent):
    """``CallResultTrigger``: the wait ended in an error; ``retryable`` says whether a task
    retry may do better (an API or store outage) or not (a refused key, a failed call)."""

    retryable: bool


# --------------------------------------------------------------------------------- builders

# Errors an event may name; anything else comes back as the base class.
_EVENT_ERRORS: dict[str, type[VonageStudioError]] = {
    cls.__name__: cls
    for cls in (UnknownCall, CallFailed, CallRejectedEarlier, CallOutcomeUnknown, VonageStudioError)
}


def error_event(exc: VonageStudioError, call_ref: str | None = None) -> CallErrorEvent:
    """The JSON-safe description of ``exc`` that travels in a ``TriggerEvent``."""
    event: CallErrorEvent = {
        "status": "error",
        "message": exc.message,
        "error_type": type(exc).__name__,
        "error_status": exc.status,
    }
    if call_ref is not None:
        event["call_ref"] = call_ref
    if isinstance(exc, CallFailed):
        event["call_status"] = exc.call_status
    return event


def error_from_event(event: Mapping[str, Any]) -> VonageStudioError:
    """Rebuild the error an ``error`` event describes (the inverse of :func:`error_event`)."""
    message = str(event.get("message") or "the call status trigger reported an error")
    cls = _EVENT_ERRORS.get(str(event.get("error_type")), VonageStudioError)
    if cls is CallFailed:
        return CallFailed(message, str(event.get("call_status") or ""))
    status = event.get("error_status")
    return cls(message, status if isinstance(status, int) else None)


def status_event(
    call_refs: Iterable[str],
    statuses: Mapping[str, str],
    errors: Mapping[str, VonageStudioError],
    *,
    single: bool,
    sources: Mapping[str, str] | None = None,
) -> CallStatusSuccessEvent | CallStatusesSuccessEvent | CallStatusErrorEvent:
    """The event ``CallStatusTrigger`` yields once every call of ``call_refs`` is decided:
    ``statuses`` (ref → final status) and ``errors`` (ref → why it has none) cover them all.
    ``single``: the trigger was given one ``call_ref`` (not a list). ``sources`` (ref →
    ``CallOutcome.source``), when given, rides in a success event as ``call_sources`` (and
    ``call_source`` for one call)."""
    refs = list(call_refs)
    ended = dict(statuses)
    if single:
        ref = refs[0]
        if ref in errors:
            event = _status_error(error_event(errors[ref], ref), ended, {ref: error_event(errors[ref])})
            return event
        one: CallStatusSuccessEvent = {
            "status": "success",
            "call_ref": ref,
            "call_status": ended[ref],
            "call_statuses": ended,
        }
        if sources:
            one["call_sources"] = dict(sources)
            if ref in sources:
                one["call_source"] = sources[ref]
        return one
    if not errors:
        many: CallStatusesSuccessEvent = {"status": "success", "call_statuses": ended}
        if sources:
            many["call_sources"] = dict(sources)
        return many
    shown = "; ".join(f"{ref}: {exc.message}" for ref, exc in list(errors.items())[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    first = next(iter(errors.values()))
    summary: CallErrorEvent = {
        "status": "error",
        "message": f"{len(errors)} of {len(refs)} calls did not end as expected: {shown}{more}",
        # One type for the whole event when all errors agree (e.g. all CallFailed).
        "error_type": type(first).__name__
        if all(type(e) is type(first) for e in errors.values())
        else "VonageStudioError",
        "error_status": None,
    }
    return _status_error(summary, ended, {ref: error_event(exc) for ref, exc in errors.items()})


def _status_error(
    head: CallErrorEvent, statuses: dict[str, str], errors: dict[str, CallErrorEvent]
) -> CallStatusErrorEvent:
    event: CallStatusErrorEvent = {**head, "call_statuses": statuses, "errors": errors}
    return event


def store_outage_event(failures: int, exc: BaseException, statuses: Mapping[str, str]) -> StoreOutageEvent:
    """``CallStatusTrigger`` gave up reading the store after ``failures`` rounds in a row
    (the last one raised ``exc``); ``statuses`` are the calls decided before."""
    return {
        "status": "error",
        "message": f"could not read the call store {failures} times in a row: {type(exc).__name__}: {exc}",
        "error_type": "VonageStudioError",
        "error_status": None,
        # An outage, not a verdict on any call: a task retry waits again.
        "retryable": True,
        "call_statuses": dict(statuses),
        "errors": {},
    }


def result_success_event(result: Mapping[str, Any]) -> CallResultSuccessEvent:
    """``CallResultTrigger``'s event for what a check returned (see ``results.check_call_result``)."""
    parameters = result.get("parameters")
    return {
        "status": "success",
        "call_ref": result.get("call_ref"),
        "session_id": result.get("session_id"),
        "parameters": None if parameters is None else dict(parameters),
        "call_status": result.get("call_status"),
    }


def result_error_event(
    exc: VonageStudioError, call_ref: str | None, *, retryable: bool
) -> CallResultErrorEvent:
    """``CallResultTrigger``'s event when its wait ends in ``exc``."""
    event: CallResultErrorEvent = {**error_event(exc, call_ref), "retryable": retryable}
    return event


# ---------------------------------------------------------------------------------- reading


def fail_task(exc: VonageStudioError) -> Exception:
    """The exception a task should raise for ``exc``: non-retryable errors end the task
    without Airflow task retries (a retry could only repeat the same refusal)."""
    if exc.retryable:
        return exc
    return AirflowFailException(str(exc))


def source_of(event: Any) -> str | None:
    """The ``call_source`` a one-call status event carries (``None``: an older trigger's event)."""
    if not isinstance(event, Mapping):
        return None
    source = event.get("call_source")
    return source if isinstance(source, str) and source else None


def sources_of(event: Any) -> dict[str, str]:
    """The ``call_sources`` (call_ref → outcome source) a status event carries; ``{}`` for an
    older trigger's event or anything malformed (the source is then not reported)."""
    sources = event.get("call_sources") if isinstance(event, Mapping) else None
    if not isinstance(sources, Mapping):
        return {}
    return {ref: src for ref, src in sources.items() if isinstance(ref, str) and isinstance(src, str) and src}


def verdict_of(event: Any) -> tuple[str, str] | None:
    """``(call_ref, final status)`` an event carries for one call (a ``success`` event's
    ``call_status``, or an ``error`` event's for a status in ``fail_on``), else ``None``."""
    if not isinstance(event, Mapping):
        return None
    call_ref, status = event.get("call_ref"), event.get("call_status")
    if isinstance(call_ref, str) and isinstance(status, str):
        return call_ref, status
    return None


Expect = Literal["call_status", "call_statuses", "call_result"]

_TRIGGER_NAME = {
    "call_status": "the call status trigger",
    "call_statuses": "the call status trigger",
    "call_result": "the call result trigger",
}


@overload
def resume(
    event: Any, expect: Literal["call_status"], *, on_verdict: Callable[[str, str], None] | None = None
) -> CallStatusSuccessEvent: ...
@overload
def resume(
    event: Any, expect: Literal["call_statuses"], *, on_verdict: Callable[[str, str], None] | None = None
) -> dict[str, tuple[str | None, str | None]]: ...
@overload
def resume(
    event: Any, expect: Literal["call_result"], *, on_verdict: Callable[[str, str], None] | None = None
) -> CallResultSuccessEvent: ...
def resume(
    event: Any, expect: Expect, *, on_verdict: Callable[[str, str], None] | None = None
) -> CallStatusSuccessEvent | dict[str, tuple[str | None, str | None]] | CallResultSuccessEvent:
    """Read the event a task resumed with; the one reader of every ``execute_complete``.

    :param expect: what the task deferred for: ``"call_status"`` (one call,
        ``CallStatusTrigger(call_ref=...)``), ``"call_statuses"`` (a batch,
        ``CallStatusTrigger(call_refs=..., fail_on=())``) or ``"call_result"``
        (``CallResultTrigger``).
    :param on_verdict: called with ``(call_ref, status)`` for a final status the event carries
        about one call, before returning or raising (``"call_result"``: only for an ``error``
        event; a success's status is the payload), so the verdict can be stored.

    Returns the success event (``"call_status"``, ``"call_result"``), or for
    ``"call_statuses"`` ``{call_ref: (status, None)}`` / ``(status or None, why)`` for each
    call of the batch, errors included (the batch applies its own ``fail_on``).

    :raises AirflowFailException: an ``error`` event about the call (unknown, refused, outcome
        unknown, a status in ``fail_on``, a refused key): re-checking cannot change it; or an
        event of the wrong shape (``"call_statuses"``, ``"call_status"``).
    :raises AirflowException: a ``retryable`` error event (the store or the API stayed
        unreachable: a task retry waits again), or no event at all.
    """
    name = _TRIGGER_NAME[expect]
    if expect == "call_statuses":
        if not isinstance(event, dict) or "call_statuses" not in event:
            raise AirflowFailException(f"{name} ended without a usable event: {event!r}")
        if event.get("status") == "error" and not event.get("errors"):
            # The trigger gave up on the store itself (not on a call): a task retry waits again,
            # and dials nobody again (the ledger says who was placed).
            raise AirflowException(f"waiting for the batch's statuses failed: {event.get('message')}")
        statuses: dict[str, tuple[str | None, str | None]] = {
            ref: (status, None) for ref, status in (event.get("call_statuses") or {}).items()
        }
        for ref, error in (event.get("errors") or {}).items():
            statuses[ref] = ((error or {}).get("call_status"), (error or {}).get("message"))
        return statuses
    if not event:
        raise AirflowException(f"{name} ended without an event")
    if not isinstance(event, Mapping):
        raise AirflowFailException(f"{name} ended without a usable event (a {type(event).__name__})")
    success = event.get("status") == "success"
    if not success and event.get("retryable"):
        raise AirflowException(str(event.get("message") or f"{name} failed"))
    verdict = verdict_of(event)
    if on_verdict is not None and verdict is not None and (expect == "call_status" or not success):
        on_verdict(*verdict)
    if not success:
        raise fail_task(error_from_event(event))
    if expect == "call_status":
        if not isinstance(event.get("call_status"), str):
            # Keys only: a malformed event is not echoed into the log.
            raise AirflowFailException(f"{name} ended without a call_status (keys: {sorted(event)})")
        return event  # type: ignore[return-value]
    return event  # type: ignore[return-value]
