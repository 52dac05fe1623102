"""Sensors that wait for what happened to a Vonage AI Studio call.

This module is imported when DAG files are parsed: it imports neither SQLAlchemy nor the
trigger machinery at top level (both load inside ``execute``/``poke``).

It is over ~500 lines because the two sensor classes must be *defined* here (serialized DAGs
record each operator's module), and the resume steps of ``CallStatusSensor``'s Insights
confirmation (a second deferral, its timeout) are methods of the sensor Airflow resumes; the
checks themselves live in ``outcome.py`` and ``results.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio._compat import BaseSensorOperator, default_deferrable
from airflow_provider_vonage_studio.calls import ANSWERED, OutcomeSource
from airflow_provider_vonage_studio.events import fail_task, resume, source_of
from airflow_provider_vonage_studio.exceptions import CallFailed, VonageStudioConfigError, VonageStudioError
from airflow_provider_vonage_studio.links import CallOutcomesLink
from airflow_provider_vonage_studio.outcome import (
    DEFAULT_ANSWER_WINDOW,
    FAILURE_STATUSES,
    CallOutcome,
    answer_deadline,
    check_call,
    normalize_answer_window,
    normalize_fail_on,
    open_store,
    record_verdict,
    source_of_verdict,
)

# Kept importable from here for one release (they moved to results.py, beside the triggers).
from airflow_provider_vonage_studio.results import (
    DEFAULT_CONFIRM_TIMEOUT,
    check_call_result,
    confirm_by_insights,
    normalize_confirm_answered,
    normalize_confirm_timeout,
    record_event_verdict,
    settle,
    store_insights_confirmation,
)
from airflow_provider_vonage_studio.results import parameter_names as _parameter_names

if TYPE_CHECKING:
    from airflow.sdk import PokeReturnValue

    from airflow_provider_vonage_studio._compat import Context

_CALLBACK = OutcomeSource.CALLBACK.value
_INFERRED = OutcomeSource.INFERRED.value

#: The XCom key under which :class:`CallStatusSensor` pushes where its status came from.
OUTCOME_SOURCE_KEY = "outcome_source"

__all__ = [
    "OUTCOME_SOURCE_KEY",
    "CallStatusSensor",
    "check_call_result",
    "check_call_status",
    "raise_for_trigger_event",
    "record_event_verdict",
    "resolve_call_ref",
]


def resolve_call_ref(value: Any) -> str:
    """The call_ref a (rendered) ``call_ref`` argument names.

    Accepts the string itself or the whole dict ``MakeCallOperator`` returns (so both
    ``make_call.output["call_ref"]`` and ``make_call.output`` work).

    :raises AirflowFailException: for anything else (an empty value, a dict without ``call_ref``).
    """
    if isinstance(value, Mapping):
        value = value.get("call_ref")
    if not isinstance(value, str) or not value.strip():
        raise fail_task(
            VonageStudioConfigError(
                "call_ref: expected the call_ref of a placed call (e.g. make_call.output['call_ref']), "
                f"got {value!r}"
            )
        )
    return value.strip()


def check_call_status(
    call_ref: str | Mapping[str, Any],
    *,
    answer_window: timedelta,
    fail_on: Iterable[str],
    store_url: str | None = None,
    log: Any = None,
) -> CallOutcome | None:
    """One check of ``call_ref`` against the store, errors turned into task failures.

    Shared by the sensors of this module (in the worker). Returns the outcome, or ``None`` to
    keep waiting. A final status, returned or raised, is stored with the call as its verdict
    (:func:`~airflow_provider_vonage_studio.outcome.record_verdict`; never fails the check).

    :raises AirflowFailException: for an unknown call, a call refused or of unknown outcome
        at placement, or a final status in ``fail_on`` (re-running cannot change any of them).
    """
    ref = resolve_call_ref(call_ref)
    return settle(
        store_url,
        ref,
        lambda: check_call(open_store(store_url), ref, answer_window=answer_window, fail_on=fail_on),
        log=log,
    )


def raise_for_trigger_event(event: dict[str, Any] | None) -> dict[str, Any]:
    """Return a ``success`` event from :class:`CallStatusTrigger`; raise for anything else.

    Kept for one release: :func:`~airflow_provider_vonage_studio.events.resume` with
    ``expect="call_status"`` is the reader now.

    :raises AirflowFailException: for an ``error`` event about the call (unknown, refused,
        outcome unknown, a status in ``fail_on``): re-checking cannot change it.
    :raises AirflowException: for a ``retryable`` one (the store could not be read: a task
        retry waits again), or when no event arrived.
    """
    return dict(resume(event, "call_status"))


class CallStatusSensor(BaseSensorOperator):
    """Wait until a placed call has its final status, and return it.

    AI Studio reports only calls that were *not* picked up (``cancelled``, ``rejected``,
    ``busy``, ``timeout``, ``failed``, posted to the call's ``status_url`` and recorded by
    the provider's callback receiver). A call with no such report ``answer_window`` after
    it started is taken as ``answered``.

    :param call_ref: the call to watch. Templated; typically ``make_call.output["call_ref"]``
        (``MakeCallOperator`` pushes each field of its result as an XCom of its own), or
        ``make_call.output`` (the whole result dict), or
        ``"{{ ti.xcom_pull(task_ids='make_call')['call_ref'] }}"``.
    :param answer_window: timedelta or seconds after ``session_start_time`` without a failure
        report after which the call counts as ``answered``. Default 90 s: a little over the
        usual ~60 s ring timeout, so a ``timeout`` callback has time to arrive. Too short
        turns late failure reports into false ``answered``; longer only delays the verdict.
    :param fail_on: final statuses that fail the task (default: all five failure statuses).
        ``()`` returns every status instead, for branching. A failure is final: the task is
        failed without retries, since re-checking a finished call cannot change it (call
        again with a new ``call_key`` on the placing task instead).
    :param store_url: the call store; default ``[vonage_studio] store_url`` (which workers,
        triggerer and callback receiver must share).
    :param deferrable: wait in the triggerer (:class:`CallStatusTrigger`) instead of a worker
        slot. Default: ``[operators] default_deferrable``.
    :param poke_interval: seconds between checks (default 5), in every mode.
    :param require_confirmed: fail (without retries) rather than accept an ``answered`` that was
        only *inferred* from silence; pass with ``answered`` confirmed by the agent's end-call
        webhook (connection extra ``end_call_webhook``) or by Insights, and with any failure
        status AI Studio reported. The webhook posts when the call *ends*, so ``answer_window``
        must then cover the longest conversation (e.g. 15 minutes), or a long call fails as
        unconfirmed. Default ``False``.
    :param confirm_answered: ``"insights"``: before accepting an inferred ``answered``, read the
        call's session through AI Studio Insights (``VonageStudioHook.get_session_parameters``,
        paced and retried like every Insights read). Found, the outcome is ``answered`` with
        source ``insights`` and the session's parameters are stored with the call; while Insights
        answers 404 (not indexed yet) the sensor keeps waiting, up to ``confirm_timeout`` past the
        answer window, then accepts ``inferred`` (or fails, with ``require_confirmed``). Works in
        poke, reschedule and deferrable modes (deferrable: a second deferral, to
        ``CallResultTrigger``). Default ``None``: no Insights read.
    :param confirm_timeout: with ``confirm_answered``: timedelta or seconds (default 10 minutes).
    :param vonage_studio_conn_id: with ``confirm_answered``: the connection whose key reads Insights.

    Returns (and pushes to XCom) the final status: ``"answered"`` or the reported failure.
    Where it came from is pushed as the XCom key ``outcome_source`` (:data:`OUTCOME_SOURCE_KEY`):
    ``"end_call"``, ``"insights"``, ``"callback"`` or ``"inferred"``. The return value stays
    the status string, so existing ``xcom_pull(task_ids=...)`` and branching keep working.

    :raises AirflowFailException: ``call_ref`` names no call in the store (never an endless
        wait), the call was refused or its outcome is unknown since placement, the status
        is in ``fail_on``, or (``require_confirmed``) ``answered`` was only inferred.
    """

    template_fields: Sequence[str] = ("call_ref",)
    ui_color = "#dcd0f7"
    operator_extra_links = (CallOutcomesLink(),)

    def __init__(
        self,
        *,
        call_ref: str | Mapping[str, Any],
        answer_window: timedelta | float = DEFAULT_ANSWER_WINDOW,
        fail_on: Iterable[str] | None = FAILURE_STATUSES,
        store_url: str | None = None,
        deferrable: bool | None = None,
        poke_interval: timedelta | float = 5,
        require_confirmed: bool = False,
        confirm_answered: str | None = None,
        confirm_timeout: timedelta | float = DEFAULT_CONFIRM_TIMEOUT,
        vonage_studio_conn_id: str = "vonage_studio_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.confirm_answered = normalize_confirm_answered(confirm_answered)
        self.confirm_timeout = normalize_confirm_timeout(confirm_timeout)
        self.vonage_studio_conn_id = vonage_studio_conn_id
        self._hook: Any = None
        self.call_ref = call_ref
        # Checked here so a typo fails at DAG parse time, not after a call was placed.
        self.answer_window = normalize_answer_window(answer_window)
        self.fail_on = normalize_fail_on(fail_on)
        self.store_url = store_url
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        if not isinstance(require_confirmed, bool):
            raise VonageStudioConfigError(
                f"require_confirmed: must be True or False, got {require_confirmed!r}"
            )
        self.require_confirmed = require_confirmed

    def check(self) -> CallOutcome | None:
        """One check of :attr:`call_ref` (see :func:`check_call_status`); with
        ``confirm_answered``, an inferred ``answered`` is first read through Insights
        (:func:`~airflow_provider_vonage_studio.results.confirm_by_insights`; ``None`` while
        it waits for the session to be indexed, and no verdict stored meanwhile)."""
        if self.confirm_answered is None:
            return check_call_status(
                self.call_ref,
                answer_window=self.answer_window,
                fail_on=self.fail_on,
                store_url=self.store_url,
                log=self.log,
            )
        ref = resolve_call_ref(self.call_ref)
        store = open_store(self.store_url)

        def decide() -> CallOutcome | None:
            outcome = check_call(store, ref, answer_window=self.answer_window, fail_on=self.fail_on)
            return confirm_by_insights(
                outcome, hook=self.hook, store=store, confirm_timeout=self.confirm_timeout
            )

        return settle(self.store_url, ref, decide, log=self.log)

    @property
    def hook(self) -> Any:
        """The :class:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook` that
        reads Insights (``confirm_answered``), one per task."""
        if self._hook is None:
            from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

            self._hook = VonageStudioHook(self.vonage_studio_conn_id)
        return self._hook

    def poke(self, context: Context) -> bool | PokeReturnValue:
        from airflow.sdk import PokeReturnValue

        outcome = self.check()
        if outcome is None:
            self.log.info("Call %s: no final status yet", resolve_call_ref(self.call_ref))
            return False
        return PokeReturnValue(
            is_done=True, xcom_value=self._finish(context, outcome.call_ref, outcome.status, outcome.source)
        )

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        # A first check in the worker: a call that already ended needs no trip to the triggerer.
        outcome = self.check()
        if outcome is not None:
            return self._finish(context, outcome.call_ref, outcome.status, outcome.source)
        from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger

        call_ref = resolve_call_ref(self.call_ref)
        self.log.info("Call %s: no final status yet; deferring to the triggerer", call_ref)
        self.defer(
            trigger=CallStatusTrigger(
                call_ref=call_ref,
                answer_window=self.answer_window,
                fail_on=self.fail_on,
                # The trigger needs a positive interval; poke_interval=0 means "as often as sensible".
                poll_interval=max(float(self.poke_interval), 0.1),
                store_url=self.store_url,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        """Resume after :class:`CallStatusTrigger`: return its status or fail like :meth:`poke`."""
        carried = source_of(event)

        def on_verdict(call_ref: str, status: str) -> None:
            if self._confirming(status, carried):
                return  # stored once Insights confirmed it, or once the bound passed
            record_verdict(self.store_url, call_ref, status, source=carried, log=self.log)

        payload = resume(event, "call_status", on_verdict=on_verdict)
        status = payload["call_status"]
        source = carried or self._stored_source(payload["call_ref"], status)
        self.log.info("Call %s: reported by the trigger", payload["call_ref"])
        if self._confirming(status, source):
            return self._confirm_deferred(context, payload["call_ref"])
        return self._finish(context, payload["call_ref"], status, source)

    def _confirming(self, status: str, source: str | None) -> bool:
        """Whether ``status`` from ``source`` still waits for Insights (``confirm_answered``)."""
        return self.confirm_answered is not None and status == ANSWERED and source in (_INFERRED, None)

    def _confirm_deferred(self, context: Context, call_ref: str) -> str:
        """Deferrable ``confirm_answered``: one read in the worker, else a second deferral to
        ``CallResultTrigger`` (timed out at the bound: :meth:`resume_execution`)."""
        from datetime import datetime, timezone

        outcome = self.check()
        if outcome is not None:
            return self._finish(context, outcome.call_ref, outcome.status, outcome.source)
        from airflow_provider_vonage_studio.triggers.vonage_studio import CallResultTrigger

        record = open_store(self.store_url).get_call(call_ref)
        deadline = answer_deadline(record, self.answer_window) if record is not None else None
        left = (
            (deadline + self.confirm_timeout - datetime.now(timezone.utc)).total_seconds()
            if deadline is not None
            else self.confirm_timeout.total_seconds()
        )
        self.log.info("Call %s: deferring until Insights indexes its session (at most %.0fs)", call_ref, left)
        self.defer(
            trigger=CallResultTrigger(
                call_ref=call_ref,
                fail_on=list(self.fail_on),
                poll_interval=max(float(self.poke_interval), 0.1),
                vonage_studio_conn_id=self.vonage_studio_conn_id,
                store_url=self.store_url,
            ),
            method_name="execute_confirmed",
            timeout=timedelta(seconds=max(left, 0.1)),
        )

    def execute_confirmed(self, context: Context, event: dict[str, Any] | None = None) -> str:
        """Resume after ``CallResultTrigger`` (``confirm_answered``): the session was read, so the
        call was answered (source ``insights``), or a failure status arrived late.

        :raises AirflowFailException: as :meth:`execute_complete` (a status in ``fail_on``, ...).
        """

        def on_verdict(call_ref: str, status: str) -> None:
            record_verdict(self.store_url, call_ref, status, source=_CALLBACK, log=self.log)

        payload = resume(event, "call_result", on_verdict=on_verdict)
        call_ref = str(payload["call_ref"])
        if payload.get("call_status"):
            status = str(payload["call_status"])
            record_verdict(self.store_url, call_ref, status, source=_CALLBACK, log=self.log)
            return self._finish(context, call_ref, status, _CALLBACK)
        outcome = store_insights_confirmation(
            open_store(self.store_url), call_ref, payload["parameters"] or {}
        )
        return self._finish(context, call_ref, outcome.status, outcome.source)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Airflow's resume entry point; with ``confirm_answered``, a deferral that timed out (the
        Insights bound passed) is checked once more: an inferred ``answered`` is then accepted
        (or refused with ``require_confirmed``) instead of failing as a timeout."""
        error = (next_kwargs or {}).get("error")
        # Airflow's markers for a trigger timeout (airflow.sdk.bases.operator, 3.1 to 3.3).
        if self.confirm_answered is not None and next_method == "__fail__" and error == "Trigger timeout":
            outcome = self.check()
            if outcome is not None:
                return self._finish(context, outcome.call_ref, outcome.status, outcome.source)
        return super().resume_execution(next_method, next_kwargs, context)

    def _finish(self, context: Context, call_ref: str, status: str, source: str | None) -> str:
        """Log the verdict, push its source (XCom key ``outcome_source``), apply
        ``require_confirmed``; the status to return.

        :raises AirflowFailException: ``require_confirmed`` and ``answered`` was only inferred.
        """
        # The verdict in words (what "answered" rests on, what a failure status means).
        described = CallOutcome(
            call_ref, status, inferred=source == OutcomeSource.INFERRED.value, status_at=None, source=source
        ).describe()
        self.log.info("Call %s ended: %s [source: %s]", call_ref, described, source or "unknown")
        if self.require_confirmed and status == ANSWERED and source in (OutcomeSource.INFERRED.value, None):
            raise fail_task(
                VonageStudioError(
                    f"call {call_ref}: 'answered' was only inferred (no failure report within the answer "
                    f"window of {self.answer_window}), not confirmed by the agent's end-call webhook or "
                    "Insights, and require_confirmed=True. Turn on the connection's extra "
                    "'end_call_webhook' and configure the agent's End Call Event webhook "
                    "(docs/outcomes.md), or make answer_window cover the longest call."
                )
            )
        push = getattr(context.get("ti"), "xcom_push", None) if hasattr(context, "get") else None
        if source is not None and callable(push):
            push(key=OUTCOME_SOURCE_KEY, value=source)
        return status

    def _stored_source(self, call_ref: str, status: str) -> str | None:
        """The source of ``call_ref``'s ``status`` as the store tells it (for an event from a
        trigger that carries none); ``None`` when the store cannot be read."""
        try:
            record = open_store(self.store_url).get_call(call_ref)
        except Exception as exc:  # informational: the status itself came with the event
            self.log.warning(
                "Could not read the source of call %s's outcome: %s", call_ref, type(exc).__name__
            )
            return None
        return source_of_verdict(record, status)

    def _record_verdict(self, call_ref: str, status: str) -> None:
        record_verdict(self.store_url, call_ref, status, log=self.log)


# ----------------------------------------------------------------------------- CallResultSensor
# What the conversation collected (AI Studio Insights), as opposed to the call's status above.


class CallResultSensor(BaseSensorOperator):
    """Wait until what a call's conversation collected can be read, and return it.

    After an answered call, AI Studio's Insights service holds the session's parameters
    (what the agent learned: ``CONFIRMED``, a chosen slot, ...). It answers 404 until the
    session is indexed, which is normal for a while after the call: the sensor keeps
    waiting through it.

    :param call_ref: the call, as placed by ``MakeCallOperator`` (typically
        ``make_call.output["call_ref"]``, or the whole ``make_call.output``); its session id
        and start time are read from the call store. Templated.
    :param session_id: instead of ``call_ref``: the session to read. Templated.
    :param session_start_time: with ``session_id``: its start (ISO string or datetime; the
        day is enough). Templated.
    :param required_parameters: names that must be present and non-empty before the sensor
        succeeds (e.g. ``["CONFIRMED"]``). Templated. Without them the sensor succeeds as
        soon as any parameters can be read, which may be before the conversation filled them
        in; name what the agent collects.
    :param fail_on: with ``call_ref``: failure statuses (recorded by the callback receiver)
        that fail the task at once, without retries (default: all five). With ``()`` such a
        call ends the sensor successfully with ``{"status": "<status>"}`` instead, like
        ``CallStatusSensor(fail_on=())``, so downstream tasks can record or branch on it.
    :param vonage_studio_conn_id: the ``vonage_studio`` connection (same key as make-call).
    :param store_url: the call store; default ``[vonage_studio] store_url``.
    :param deferrable: wait in the triggerer (:class:`~airflow_provider_vonage_studio.triggers.
        vonage_studio.CallResultTrigger`). Default: ``[operators] default_deferrable``.
    :param poke_interval: seconds between checks (default 10), in every mode.
    :param mode: ``"poke"`` (default) or ``"reschedule"`` (frees the worker slot between checks),
        when not deferrable.

    Returns (and pushes to XCom) the parameters as a dict of strings, or
    ``{"status": "<failure status>"}`` for a failed call with ``fail_on=()``. With
    ``call_ref`` the parameters are also stored with the call's row in the call store.
    Parameter values are personal data: they are never logged (names are).

    :raises AirflowFailException: ``call_ref`` names no call in the store, the call was
        refused or its outcome is unknown since placement, its status is in ``fail_on``,
        Insights refused the key or the query (401), or answered in an unknown shape.
    :raises VonageStudioConfigError: at DAG parse time, for neither or both of ``call_ref``
        and ``session_id`` + ``session_start_time``, or a bad ``fail_on``.
    """

    template_fields: Sequence[str] = ("call_ref", "session_id", "session_start_time", "required_parameters")
    ui_color = "#d0e4f7"
    operator_extra_links = (CallOutcomesLink(),)

    def __init__(
        self,
        *,
        call_ref: str | Mapping[str, Any] | None = None,
        session_id: str | None = None,
        session_start_time: Any = None,
        required_parameters: str | Sequence[str] | None = (),
        fail_on: Iterable[str] | None = FAILURE_STATUSES,
        vonage_studio_conn_id: str = "vonage_studio_default",
        store_url: str | None = None,
        deferrable: bool | None = None,
        poke_interval: timedelta | float = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        # Checked here so a mistake fails at DAG parse time, not after a call was placed.
        if call_ref is None and (session_id is None or session_start_time is None):
            raise VonageStudioConfigError(
                "CallResultSensor: give call_ref (e.g. make_call.output['call_ref']), or both session_id "
                "and session_start_time"
            )
        if call_ref is not None and session_id is not None:
            raise VonageStudioConfigError("CallResultSensor: give call_ref or session_id, not both")
        if isinstance(required_parameters, (str, list, tuple)):
            _parameter_names(required_parameters)
        self.call_ref = call_ref
        self.session_id = session_id
        self.session_start_time = session_start_time
        self.required_parameters = required_parameters
        self.fail_on = normalize_fail_on(fail_on)
        self.vonage_studio_conn_id = vonage_studio_conn_id
        self.store_url = store_url
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self._hook: Any = None

    @property
    def hook(self) -> Any:
        """The :class:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook`, one per task."""
        if self._hook is None:
            from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

            self._hook = VonageStudioHook(self.vonage_studio_conn_id)
        return self._hook

    def _target(self) -> dict[str, Any]:
        """The rendered arguments naming the session, checked."""
        if self.call_ref is not None:
            return {"call_ref": resolve_call_ref(self.call_ref)}
        if not self.session_id or not str(self.session_id).strip() or self.session_start_time in (None, ""):
            raise fail_task(
                VonageStudioConfigError(
                    f"session_id {self.session_id!r} / session_start_time {self.session_start_time!r}: both "
                    "must be non-empty"
                )
            )
        start = self.session_start_time
        return {
            "session_id": str(self.session_id).strip(),
            # The trigger's kwargs must be JSON-safe.
            "session_start_time": start.isoformat() if hasattr(start, "isoformat") else str(start),
        }

    def check(self) -> dict[str, Any] | None:
        """One check (see :func:`check_call_result`); errors become task failures.

        :raises AirflowFailException: for non-retryable errors (see the class).
        :raises VonageStudioError: for retryable ones (the API unreachable after the hook's retries).
        """
        target = self._target()
        try:
            return check_call_result(
                hook=self.hook,
                required_parameters=_parameter_names(self.required_parameters),
                fail_on=self.fail_on,
                store_url=self.store_url,
                **target,
            )
        except VonageStudioError as exc:
            if isinstance(exc, CallFailed):
                record_verdict(
                    self.store_url, target.get("call_ref"), exc.call_status, source=_CALLBACK, log=self.log
                )
            raise fail_task(exc) from exc

    def _finish(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """The XCom value for a finished check; stores the parameters with the call."""
        call_ref = result.get("call_ref")
        if result.get("call_status"):
            self.log.info(
                "Call %s ended with status %s: no parameters to wait for", call_ref, result["call_status"]
            )
            record_verdict(self.store_url, call_ref, result["call_status"], source=_CALLBACK, log=self.log)
            return {"status": result["call_status"]}
        parameters = {str(k): str(v) for k, v in dict(result.get("parameters") or {}).items()}
        if call_ref:
            open_store(self.store_url).set_parameters(call_ref, parameters)
        self.log.info(
            "Session %s: read %d parameter(s): %s",
            result.get("session_id"),
            len(parameters),
            ", ".join(sorted(parameters)) or "none",
        )
        return parameters

    def poke(self, context: Context) -> bool | PokeReturnValue:
        from airflow.sdk import PokeReturnValue

        result = self.check()
        if result is None:
            self.log.info("No session parameters to return yet")
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._finish(result))

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        # One check in the worker first: a result already there needs no trip to the triggerer.
        result = self.check()
        if result is not None:
            return self._finish(result)
        from airflow_provider_vonage_studio.triggers.vonage_studio import CallResultTrigger

        self.log.info("No session parameters yet; deferring to the triggerer")
        self.defer(
            trigger=CallResultTrigger(
                **self._target(),
                required_parameters=list(_parameter_names(self.required_parameters)),
                fail_on=list(self.fail_on),
                poll_interval=max(float(self.poke_interval), 0.1),
                vonage_studio_conn_id=self.vonage_studio_conn_id,
                store_url=self.store_url,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after :class:`CallResultTrigger`: return what :meth:`poke` would have.

        :raises AirflowFailException: for an ``error`` event of a non-retryable error.
        :raises AirflowException: for a retryable one (task retries may ride out an outage),
            or when no event arrived.
        """
        # A status in fail_on: its error event names the call and the status (stored first).
        payload = resume(event, "call_result", on_verdict=self._record_verdict)
        self.log.info("Result reported by the trigger")
        return self._finish(payload)

    def _record_verdict(self, call_ref: str, status: str) -> None:
        # Only a failure status ends this sensor as a verdict: AI Studio's callback reported it.
        record_verdict(self.store_url, call_ref, status, source=_CALLBACK, log=self.log)


__all__ += ["CallResultSensor"]
