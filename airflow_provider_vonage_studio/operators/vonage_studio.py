"""Operators that place Vonage AI Studio calls.

Thin by design: they render and check their arguments, build the ``call_ref`` that makes a
retried task find its own earlier call, and hand everything to
:class:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook`.
This module is imported when DAG files are parsed, so it imports nothing heavy at the top.

It stays over ~500 lines on purpose: the three operator classes must be *defined* here
(serialized DAGs record each operator's module, so a class defined elsewhere would break
running deployments), and their documented signatures and parameter references are most of
its length. What is not the operators' own lives in sibling modules: shared arguments and
checks in ``_calling.py``, the batch's results in ``_batch.py``, export windows and writing in
``_export.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any, ClassVar, cast

from airflow_provider_vonage_studio._compat import AirflowFailException, BaseOperator
from airflow_provider_vonage_studio.calls import ANSWERED, OutcomeSource
from airflow_provider_vonage_studio.campaign import CallAttempts, MessageFallback

# fail_task moved to events.py, ti_identity and _LOCAL_PROTOCOLS to helper modules of this
# package; importable from here for one release.
from airflow_provider_vonage_studio.events import fail_task, resume, sources_of
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioError
from airflow_provider_vonage_studio.links import CallOutcomesLink
from airflow_provider_vonage_studio.operators._calling import (
    CallingTask,
    closed_window,
    task_identity,
    ti_identity,
    wait_options,
)
from airflow_provider_vonage_studio.operators._campaign import CampaignTask, check_campaign
from airflow_provider_vonage_studio.operators._export import LOCAL_PROTOCOLS as _LOCAL_PROTOCOLS  # noqa: F401
from airflow_provider_vonage_studio.outcome import DEFAULT_ANSWER_WINDOW, FAILURE_STATUSES, normalize_interval
from airflow_provider_vonage_studio.results import (
    DEFAULT_CONFIRM_TIMEOUT,
    normalize_confirm_answered,
    normalize_confirm_timeout,
)

if TYPE_CHECKING:
    from airflow_provider_vonage_studio._compat import Context
    from airflow_provider_vonage_studio.batch import BatchDialer, BatchReport, Recipient
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
    from airflow_provider_vonage_studio.outcome import CallOutcome
    from airflow_provider_vonage_studio.recipient_sources import RecipientSource

__all__ = [
    "ExportSessionsOperator",
    "MakeCallOperator",
    "MakeCallsOperator",
    "fail_task",
    "ti_identity",
]


class MakeCallOperator(BaseOperator, CallingTask):
    """Place one outbound call from an AI Studio agent.

    :param to: phone number (``+44 7700 900123``, ``447700900123``, ...) or ``sip:user@host[:port]``.
        Templated.
    :param agent_id: the published agent that makes the call. Templated.
    :param session_parameters: parameters for the agent, as a mapping ``{"CALLER_NAME": "{{ ... }}"}``
        or the API's list of ``{"name", "value"}``; values are sent as strings. Templated.
    :param status_url: where AI Studio posts the status when the callee does not pick up. Templated.
        Default: the connection's callback receiver (``callback_base_url`` + a signed token).
    :param hangup_on_answer_machine: AI Studio's beta answering-machine hang-up.
    :param vonage_studio_conn_id: the ``vonage_studio`` connection.
    :param default_country: ISO country (``"GB"``) for numbers typed without a country code.
    :param strict_parameter_names: refuse names that break AI Studio's ``UPPER_CASE`` rule.
    :param call_key: extra key mixed into the ``call_ref``; change it to call the same person
        again on purpose within one task instance. Templated.
    :param redial_unknown: dial again when an earlier try's outcome is unknown (it may have rung).
    :param do_not_call: extra numbers never to dial, on top of the store's do-not-call list: a
        list of numbers / SIP URIs, or one string of them separated by commas or line breaks
        (one number is one string). Read like ``to`` (``default_country`` applies); an entry
        that is not a possible number or SIP URI fails the task before anything is sent.
        Templated (a rendered JSON or Python list is read as a list).
    :param timeout: read timeout of the API request in seconds (default: the connection's, 30;
        at most 120).
    :param wait_for_status: after placing the call, wait for its final status like
        :class:`~airflow_provider_vonage_studio.sensors.vonage_studio.CallStatusSensor` (needs a
        ``status_url``: the connection's ``callback_base_url`` and ``callback_secret``, or your own).
    :param answer_window: with ``wait_for_status``: timedelta or seconds without a failure report
        after which the call counts as ``answered`` (default 90 s; see the sensor).
    :param fail_on: with ``wait_for_status``: final statuses that fail the task (default: the five
        failure statuses; ``()`` returns them). Such a failure is final, without task retries.
    :param poke_interval: with ``wait_for_status``: seconds between checks of the call store.
    :param deferrable: with ``wait_for_status``: wait in the triggerer rather than in the worker
        (the call itself is always placed here, in the worker). Default:
        ``[operators] default_deferrable``.
    :param confirm_answered: with ``wait_for_status``: ``"insights"`` reads the session through
        Insights before an inferred ``answered`` is accepted, as ``CallStatusSensor`` does
        (source ``insights``, parameters stored); ``None`` (default): no Insights read.
    :param confirm_timeout: with ``confirm_answered``: how long past the answer window to wait
        for Insights to index the session (default 10 minutes); then ``answered`` stays inferred.
    :param calling_window: ``("09:00", "20:00")`` local hours in which the callee may be phoned,
        or ``True`` for 08:00-21:00 (``None``: any time). Outside it the task defers until the
        window opens (a date-time trigger, no worker slot held) and then dials; it never fails
        because it is night. A call already placed (or refused) on an earlier try never waits.
    :param timezone: zone of the window when the number does not map to exactly one zone
        (``phonenumbers``' data; SIP URIs never do). Default ``"UTC"``.

    Returns (XCom) a JSON-safe dict: ``session_id``, ``session_start_time`` (ISO-8601 UTC),
    ``call_ref``, ``agent_id`` and the redacted ``to``. With ``wait_for_status`` the same dict
    is pushed under the XCom key ``call`` as soon as the call is placed, and the return value
    adds ``status`` (``"answered"`` or the reported failure) and ``outcome_source`` (where it
    came from: ``"end_call"``, ``"insights"``, ``"callback"`` or ``"inferred"``; see
    docs/outcomes.md). With the connection's ``end_call_webhook`` on, an answered call ends the
    wait as soon as its agent's end-call webhook arrives.
    """

    template_fields: Sequence[str] = (
        "to",
        "agent_id",
        "session_parameters",
        "status_url",
        "call_key",
        "do_not_call",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"session_parameters": "json"}
    ui_color = "#c9b8f5"
    operator_extra_links = (CallOutcomesLink(),)

    def __init__(
        self,
        *,
        to: str,
        agent_id: str,
        session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        status_url: str | None = None,
        hangup_on_answer_machine: bool | None = None,
        vonage_studio_conn_id: str = "vonage_studio_default",
        default_country: str | None = None,
        strict_parameter_names: bool = True,
        call_key: str | None = None,
        redial_unknown: bool = False,
        do_not_call: str | Sequence[str] | None = (),
        timeout: float | None = None,
        wait_for_status: bool = False,
        answer_window: timedelta | float = DEFAULT_ANSWER_WINDOW,
        fail_on: Iterable[str] | None = FAILURE_STATUSES,
        poke_interval: float = 5.0,
        deferrable: bool | None = None,
        calling_window: Sequence[str] | bool | None = None,
        timezone: str = "UTC",
        confirm_answered: str | None = None,
        confirm_timeout: timedelta | float = DEFAULT_CONFIRM_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        # Each field of the result also becomes an XCom of its own, so that
        # ``make_call.output["call_ref"]`` (an XCom *key* lookup in Airflow) resolves.
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.confirm_answered = normalize_confirm_answered(confirm_answered)
        self.confirm_timeout = normalize_confirm_timeout(confirm_timeout)
        (self.wait_for_status, self.answer_window, self.fail_on, self.poke_interval, self.deferrable) = (
            wait_options(wait_for_status, answer_window, fail_on, poke_interval, deferrable)
        )
        self.to = to
        self.status_url = status_url
        # Checked here so that a mistake fails when the DAG is parsed, not after dialing.
        self._keep_call_options(
            agent_id=agent_id,
            session_parameters=session_parameters,
            hangup_on_answer_machine=hangup_on_answer_machine,
            vonage_studio_conn_id=vonage_studio_conn_id,
            default_country=default_country,
            strict_parameter_names=strict_parameter_names,
            call_key=call_key,
            redial_unknown=redial_unknown,
            do_not_call=do_not_call,
            timeout=timeout,
            status_url=status_url,
        )
        from airflow_provider_vonage_studio.windows import parse_calling_window

        # Checked here so that a malformed window fails when the DAG is parsed, not at night.
        parse_calling_window(calling_window)
        self.calling_window = calling_window
        self.timezone = timezone

    def call_ref(self, context: Context) -> str:
        """Deterministic id of this task instance's call (the same on every retry)."""
        return task_identity(context).call_ref(self._rendered_call_key())

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        call_ref = self.call_ref(context)
        try:
            # The rendered values, before waiting for a window or touching the ledger.
            do_not_call = self._check_rendered(self.status_url or None)
            self.defer_outside_calling_window(hook, call_ref)
            status_url = self.status_url or hook.status_url_for(call_ref)
            if self.wait_for_status and not status_url:
                # Without a status_url no failure can ever be reported, and every call would
                # come out "answered": refuse before dialing rather than mislead.
                raise VonageStudioConfigError(
                    "wait_for_status=True needs a status_url: set extra 'callback_base_url' and "
                    f"'callback_secret' on connection {self.vonage_studio_conn_id!r}, or pass status_url"
                )
            result = hook.make_call(
                self.to,
                self.agent_id,
                session_parameters=self.session_parameters,
                status_url=status_url,
                hangup_on_answer_machine=self.hangup_on_answer_machine,
                call_ref=call_ref,
                default_country=self.default_country,
                strict_parameter_names=self.strict_parameter_names,
                redial_unknown=self.redial_unknown,
                extra_do_not_call=do_not_call,
                identity=task_identity(context),
            )
        except VonageStudioError as exc:
            raise fail_task(exc) from exc
        if not self.wait_for_status:
            return result.to_xcom()
        return self._wait_for_status(context, result.to_xcom(), hook)

    def _wait_for_status(
        self, context: Context, call: dict[str, Any], hook: VonageStudioHook
    ) -> dict[str, Any]:
        """Wait for the placed call's final status: defer to the trigger, or poll here."""
        from airflow_provider_vonage_studio.outcome import wait_for_call
        from airflow_provider_vonage_studio.results import settle

        # Downstream tasks (and the UI) can read call_ref while the wait is still going on.
        context["ti"].xcom_push(key="call", value=call)
        call_ref = call["call_ref"]
        if self.deferrable:
            from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger

            self.log.info("Call %s placed; deferring the wait for its status to the triggerer", call_ref)
            # The call travels in next_kwargs: execute_complete must return it without dialing.
            self.defer(
                trigger=CallStatusTrigger(
                    call_ref=call_ref,
                    answer_window=self.answer_window,
                    fail_on=self.fail_on,
                    poll_interval=self.poke_interval,
                ),
                method_name="execute_complete",
                kwargs={"call": call},
            )
        # wait_for_call returns an outcome or raises: never None here.
        outcome = cast(
            "CallOutcome",
            settle(
                hook.store,
                call_ref,
                lambda: wait_for_call(
                    hook.store,
                    call_ref,
                    answer_window=self.answer_window,
                    fail_on=self.fail_on,
                    poll_interval=self.poke_interval,
                    log=self.log.info,
                    confirm=self._confirmer(hook),
                ),
                log=self.log,
            ),
        )
        self.log.info("Call %s ended: %s [source: %s]", call_ref, outcome.describe(), outcome.source)
        return {**call, "status": outcome.status, "outcome_source": outcome.source}

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, call: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume after the trigger: the placed call plus its ``status`` and ``outcome_source``
        (never dials)."""
        from airflow_provider_vonage_studio.events import source_of
        from airflow_provider_vonage_studio.outcome import record_verdict, source_of_verdict

        carried = source_of(event)

        def on_verdict(call_ref: str, status: str) -> None:
            record_verdict(lambda: self.hook.store, call_ref, status, source=carried, log=self.log)

        def keep(call_ref: str, status: str) -> None:
            if not self._confirming(status, carried):  # else stored once confirmed or at the bound
                on_verdict(call_ref, status)

        payload = resume(event, "call_status", on_verdict=keep)
        source = carried
        if source is None:
            # A trigger whose event carries no source: the store says where the truth came from.
            try:
                source = source_of_verdict(
                    self.hook.store.get_call(payload["call_ref"]), payload["call_status"]
                )
            except Exception as exc:  # informational: the status came with the event
                self.log.warning("Could not read the source of the call's outcome: %s", type(exc).__name__)
        if self._confirming(payload["call_status"], source):
            return self._confirm_deferred(call or {}, payload["call_ref"])
        self.log.info("Call %s ended: %s [source: %s]", payload["call_ref"], payload["call_status"], source)
        return {**(call or {}), "status": payload["call_status"], "outcome_source": source}

    # -- Insights confirmation (confirm_answered) -------------------------------------------------

    def _confirmer(self, hook: VonageStudioHook) -> Callable[[CallOutcome], CallOutcome | None] | None:
        """``wait_for_call``'s ``confirm`` for ``confirm_answered`` (``None`` without it)."""
        if self.confirm_answered is None:
            return None
        from airflow_provider_vonage_studio.results import confirm_by_insights

        return lambda outcome: confirm_by_insights(
            outcome, hook=hook, store=hook.store, confirm_timeout=self.confirm_timeout
        )

    def _confirming(self, status: str, source: str | None) -> bool:
        inferred = (OutcomeSource.INFERRED.value, None)
        return self.confirm_answered is not None and status == ANSWERED and source in inferred

    def _check_confirmed(self, call_ref: str) -> CallOutcome | None:
        """One check of the call in the worker, an inferred answer read through Insights first."""
        from airflow_provider_vonage_studio.outcome import check_call
        from airflow_provider_vonage_studio.results import settle

        hook = self.hook
        confirm = self._confirmer(hook)
        assert confirm is not None  # only called with confirm_answered

        def decide() -> CallOutcome | None:
            outcome = check_call(hook.store, call_ref, answer_window=self.answer_window, fail_on=self.fail_on)
            return None if outcome is None else confirm(outcome)

        return settle(hook.store, call_ref, decide, log=self.log)

    def _confirm_deferred(self, call: dict[str, Any], call_ref: str) -> dict[str, Any]:
        """After the status trigger's inferred answer: one Insights read here, else a second
        deferral to ``CallResultTrigger`` (timed out at the bound: :meth:`resume_execution`)."""
        outcome = self._check_confirmed(call_ref)
        if outcome is not None:
            return {**call, "status": outcome.status, "outcome_source": outcome.source}
        from airflow_provider_vonage_studio.outcome import answer_deadline
        from airflow_provider_vonage_studio.triggers.vonage_studio import CallResultTrigger

        record = self.hook.store.get_call(call_ref)
        deadline = answer_deadline(record, self.answer_window) if record is not None else None
        left = self.confirm_timeout.total_seconds()
        if deadline is not None:
            left = (deadline + self.confirm_timeout - _utcnow()).total_seconds()
        self.defer(
            trigger=CallResultTrigger(
                call_ref=call_ref,
                fail_on=list(self.fail_on),
                poll_interval=self.poke_interval,
                vonage_studio_conn_id=self.vonage_studio_conn_id,
            ),
            method_name="execute_confirmed",
            kwargs={"call": call},
            timeout=timedelta(seconds=max(left, 0.1)),
        )

    def execute_confirmed(
        self, context: Context, event: dict[str, Any] | None = None, call: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume after ``CallResultTrigger``: answered (source ``insights``, parameters stored),
        or a failure status that arrived late."""
        from airflow_provider_vonage_studio.outcome import record_verdict
        from airflow_provider_vonage_studio.results import store_insights_confirmation

        callback = OutcomeSource.CALLBACK.value

        def on_verdict(call_ref: str, status: str) -> None:
            record_verdict(lambda: self.hook.store, call_ref, status, source=callback, log=self.log)

        payload = resume(event, "call_result", on_verdict=on_verdict)
        call_ref = str(payload["call_ref"])
        if payload.get("call_status"):
            on_verdict(call_ref, str(payload["call_status"]))
            return {**(call or {}), "status": payload["call_status"], "outcome_source": callback}
        outcome = store_insights_confirmation(self.hook.store, call_ref, payload["parameters"] or {})
        return {**(call or {}), "status": outcome.status, "outcome_source": outcome.source}

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """With ``confirm_answered``, a deferral that timed out at the Insights bound accepts the
        inferred ``answered`` (the placed call from its ``call`` XCom) instead of failing."""
        error = (next_kwargs or {}).get("error")
        # Airflow's markers for a trigger timeout (airflow.sdk.bases.operator, 3.1 to 3.3).
        if self.confirm_answered is not None and next_method == "__fail__" and error == "Trigger timeout":
            call_ref = self.call_ref(context)
            outcome = self._check_confirmed(call_ref)
            if outcome is not None:
                call = _pushed_call(context, self.task_id) or {"call_ref": call_ref}
                return {**call, "status": outcome.status, "outcome_source": outcome.source}
        return super().resume_execution(next_method, next_kwargs, context)

    # -- calling window (MakeCallOperator) -------------------------------------------------------

    def defer_outside_calling_window(self, hook: VonageStudioHook, call_ref: str) -> None:
        """Defer the task until the callee's calling window opens, if it is closed now.

        Returns at once when there is no window or it is open, when the number is malformed (the
        hook then refuses it without waiting), or when the ledger shows this call will not be
        dialed anyway (placed, refused or of unknown outcome on an earlier try). The zone is the
        one ``phonenumbers`` gives for the number when there is exactly one, else ``timezone``.

        :raises TaskDeferred: the window is closed (resumes in :meth:`execute_in_window`).
        :raises VonageStudioConfigError: ``timezone`` is not a known zone.
        """
        closed = closed_window(
            hook,
            self.to,
            call_ref,
            calling_window=self.calling_window,
            default_country=self.default_country,
            redial_unknown=self.redial_unknown,
            timezone=self.timezone,
            now=_utcnow(),
        )
        if closed is None:
            return
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        opening, why = closed
        self.log.info("%s", why)
        self.defer(trigger=DateTimeTrigger(moment=opening), method_name="execute_in_window")

    def execute_in_window(self, context: Context, event: Any = None) -> dict[str, Any]:
        """Resume when the calling window opens: check it again and dial, here in the worker
        (a trigger never places a call)."""
        return self.execute(context)


def _pushed_call(context: Context, task_id: str) -> dict[str, Any] | None:
    """The placed call this task instance pushed under the XCom key ``call`` (``None`` if unreadable)."""
    try:
        value = context["ti"].xcom_pull(task_ids=task_id, key="call")
    except Exception:
        return None
    return dict(value) if isinstance(value, Mapping) else None


def _utcnow() -> datetime:
    """The current time (aware UTC); tests replace it to move the calling-window clock."""
    return datetime.now(dt_timezone.utc)


# ----------------------------------------------------------------------------- MakeCallsOperator


class MakeCallsOperator(BaseOperator, CallingTask, CampaignTask):
    """Dial a list of recipients from one task: paced, exactly once per recipient, with progress.

    Each recipient is dialed through the hook, so all calls share the agent's pacing slots with
    every other task using the same call store, and each has its own ``call_ref``
    (``make_call_ref(dag_id, run_id, task_id, map_index, key=...)`` with ``"key:<key>"`` for a
    recipient with a ``key``, else ``"to:<normalised destination>"``, prefixed ``"<call_key>/"``
    when ``call_key`` is set). A retried (or cleared) task therefore resumes where the earlier
    try stopped: recipients already placed are not dialed again, calls whose outcome is unknown
    (the try died mid-request) are reported ``unknown`` and not dialed again. To call the same
    people again on purpose, start a new DAG run or set a new ``call_key``.

    :param recipients: list of numbers / SIP URIs, or of mappings with ``to`` and optional
        ``session_parameters`` (merged over the batch's by name), ``key`` (what identifies the
        recipient across retries; default the normalised number) and ``timezone`` (IANA name for
        the calling window). Typically an upstream task's output. Or, better for large batches,
        a file / object-storage URI read as a stream through ``ObjectStoragePath``
        (``file:///data/campaign.csv``, ``s3://bucket/campaign.jsonl`` with its provider
        installed): ``.jsonl`` / ``.ndjson`` (one item per line) or ``.csv`` (columns ``to``,
        optional ``key`` and ``timezone``, every other column a session parameter). Templated.
    :param recipients_sql: instead of ``recipients``, a query whose rows are the recipients
        (columns as in a CSV file), streamed with a server-side cursor. Templated.
    :param recipients_conn_id: the Airflow connection ``recipients_sql`` runs on (its DB-API
        hook's SQLAlchemy engine, or one made from its URI).
    :param agent_id: the published agent that makes the calls. Templated.
    :param session_parameters: parameters for every call (mapping or the API's list). Templated.
    :param hangup_on_answer_machine: AI Studio's beta answering-machine hang-up, for every call.
    :param vonage_studio_conn_id: the ``vonage_studio`` connection.
    :param default_country: ISO country (``"GB"``) for numbers typed without a country code.
    :param strict_parameter_names: refuse parameter names that break AI Studio's ``UPPER_CASE`` rule.
    :param call_key: mixed into every ``call_ref``; change it to dial the list again on purpose
        within one DAG run. Templated.
    :param redial_unknown: dial again calls whose earlier outcome is unknown (they may have rung).
    :param do_not_call: extra numbers never to dial, on top of the store's do-not-call list
        (``airflow vonage-studio dnc add``). Such recipients are ``skipped`` (``do-not-call``).
        A list, or one string of numbers separated by commas or line breaks; an entry that is
        not a possible number or SIP URI fails the task before anyone is dialed. Templated.
    :param calling_window: ``("09:00", "20:00")`` local hours in which a callee may be phoned, or
        ``True`` for 08:00-21:00. Recipients outside their window are deferred (a date-time
        trigger, no worker slot held) and dialed when it opens; the task never fails because it
        is night. ``None`` (default): no window.
    :param timezone: zone of the calling window for recipients without a ``timezone`` whose
        number does not map to exactly one zone (default ``"UTC"``).
    :param fail_on_rejected: fail the task at the end when any recipient was rejected or has an
        unknown outcome (default). The results are then pushed under the XCom key ``results``.
    :param timeout: read timeout of each API request in seconds (default: the connection's, 30;
        at most 120).
    :param wait_for_status: after dialing, wait until every placed call has its final status
        (one trigger, or one polling loop, for the whole batch); results then carry ``status``.
        Needs the connection's ``callback_base_url`` and ``callback_secret``.
    :param answer_window: with ``wait_for_status``: timedelta or seconds without a failure report
        after which a call counts as ``answered`` (default 90 s).
    :param fail_on: with ``wait_for_status``: final statuses that fail the task at the end
        (default ``()``: statuses are only reported).
    :param poke_interval: with ``wait_for_status``: seconds between checks of the call store.
    :param deferrable: with ``wait_for_status``: wait in the triggerer. Default:
        ``[operators] default_deferrable``.
    :param progress_interval: seconds between progress lines (done/total, rate, ETA) in the log.
    :param attempts: a :class:`~airflow_provider_vonage_studio.campaign.CallAttempts` policy: dial
        in waves, calling back (after ``spacing``, inside the calling window, the do-not-call list
        read again) whoever's last outcome is in ``retry_on``, at most ``max_attempts`` times;
        the task defers between waves. Each attempt is its own ledger entry. ``None`` (default):
        one pass, as described here. See docs/operators.md, "Attempts and fallback".
    :param then_message: with ``attempts``, a
        :class:`~airflow_provider_vonage_studio.campaign.MessageFallback`: one SMS or WhatsApp,
        exactly once, to every recipient still not reached after the last wave (and nobody else).

    Returns (XCom), for a batch of up to ``FULL_RESULTS_MAX`` (1,000) recipients, a JSON-safe
    list, one dict per recipient in the given order: ``index``, ``to`` (redacted), ``key``,
    ``call_ref``, ``result`` (``placed``, ``rejected``, ``skipped`` or ``unknown``), ``reason``
    (``duplicate``, ``do-not-call``, the API's or the validation's message), ``session_id``,
    ``session_start_time`` (ISO-8601 UTC), plus ``duplicate_of`` for duplicates and ``status``
    with ``wait_for_status``. For a larger batch, a summary dict instead (a few hundred bytes
    whatever the size): ``recipients``, ``counts`` per result, ``dialed``, ``rate_limited``,
    ``statuses`` (with ``wait_for_status``) and ``results``, the reference to the per-recipient
    results in the call store with how to fetch them (``vonage-studio calls results`` and the
    outcome JSON route). Every batch's per-recipient results are stored there, whatever its size.

    :raises AirflowFailException: bad arguments (before any call); at the end, recipients
        rejected / unknown (with ``fail_on_rejected``) or statuses in ``fail_on``; the key or the
        agent refused by AI Studio (the batch stops dialing).
    :raises VonageStudioError: retryable: 429s, 5xx or connection failures outlasted the hook's
        retries; the batch stops and a task retry resumes it.
    """

    template_fields: Sequence[str] = (
        "recipients",
        "recipients_sql",
        "agent_id",
        "session_parameters",
        "call_key",
        "do_not_call",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "recipients": "json",
        "recipients_sql": "sql",
        "session_parameters": "json",
    }
    ui_color = "#b8d8f5"
    operator_extra_links = (CallOutcomesLink(),)

    def __init__(
        self,
        *,
        recipients: Any = None,
        agent_id: str,
        recipients_sql: str | None = None,
        recipients_conn_id: str | None = None,
        session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        hangup_on_answer_machine: bool | None = None,
        vonage_studio_conn_id: str = "vonage_studio_default",
        default_country: str | None = None,
        strict_parameter_names: bool = True,
        call_key: str | None = None,
        redial_unknown: bool = False,
        do_not_call: str | Sequence[str] | None = (),
        calling_window: Sequence[str] | bool | None = None,
        timezone: str = "UTC",
        fail_on_rejected: bool = True,
        timeout: float | None = None,
        wait_for_status: bool = False,
        answer_window: timedelta | float = DEFAULT_ANSWER_WINDOW,
        fail_on: Iterable[str] | None = (),
        poke_interval: float = 5.0,
        deferrable: bool | None = None,
        progress_interval: float = 5.0,
        attempts: CallAttempts | None = None,
        then_message: MessageFallback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from airflow_provider_vonage_studio.windows import parse_calling_window

        # Checked here so that a malformed window fails when the DAG is parsed, not at night.
        parse_calling_window(calling_window)
        self.recipients = recipients
        self.recipients_sql = recipients_sql
        self.recipients_conn_id = recipients_conn_id
        self._check_source(rendered=False)
        # Checked here so that a mistake fails when the DAG is parsed, not after dialing.
        self._keep_call_options(
            agent_id=agent_id,
            session_parameters=session_parameters,
            hangup_on_answer_machine=hangup_on_answer_machine,
            vonage_studio_conn_id=vonage_studio_conn_id,
            default_country=default_country,
            strict_parameter_names=strict_parameter_names,
            call_key=call_key,
            redial_unknown=redial_unknown,
            do_not_call=do_not_call,
            timeout=timeout,
        )
        self.calling_window = calling_window
        self.timezone = timezone
        self.fail_on_rejected = bool(fail_on_rejected)
        (self.wait_for_status, self.answer_window, self.fail_on, self.poke_interval, self.deferrable) = (
            wait_options(wait_for_status, answer_window, fail_on, poke_interval, deferrable)
        )
        self.progress_interval = normalize_interval(progress_interval, "progress_interval")
        # Reminder campaign (waves of attempts, then a message): operators/_campaign.py.
        self.attempts, self.then_message = check_campaign(attempts, then_message)

    def dialer(self, hook: VonageStudioHook, context: Context) -> BatchDialer:
        """The batch dialer for this task instance (same call_refs on every try)."""
        from airflow_provider_vonage_studio.batch import BatchDialer
        from airflow_provider_vonage_studio.windows import parse_calling_window

        return BatchDialer(
            hook,
            self.agent_id,
            **ti_identity(context),
            call_key=self._rendered_call_key(),
            hangup_on_answer_machine=self.hangup_on_answer_machine,
            redial_unknown=self.redial_unknown,
            do_not_call=self.do_not_call,
            default_country=self.default_country,
            calling_window=parse_calling_window(self.calling_window),
            progress_interval=self.progress_interval,
            # Late-bound, so that tests can move the calling-window clock.
            clock=lambda: _utcnow(),
            logger=self.log,
        )

    def plan(self) -> list[Recipient]:
        """The rendered recipients, checked and normalised (no request, no store access).

        :raises VonageStudioConfigError: ``recipients`` is not a list, ``timezone`` is unknown.
        :raises InvalidSessionParameter: the batch-wide ``session_parameters`` are malformed.
        """
        return list(self.plan_stream())

    def plan_stream(self) -> Iterator[Recipient]:
        """:meth:`plan` as a stream, from whichever source the task names (list, file, query).

        The source is opened and its columns checked before this returns.

        :raises VonageStudioConfigError: as :meth:`plan`, and naming ``recipients``,
            ``recipients_sql`` or ``recipients_conn_id`` for a source that cannot be read.
        """
        from airflow_provider_vonage_studio.recipient_sources import open_items
        from airflow_provider_vonage_studio.recipients import iter_plan
        from airflow_provider_vonage_studio.windows import parse_calling_window

        items = open_items(
            self._check_source(rendered=True), strict_parameter_names=self.strict_parameter_names
        )
        return iter_plan(
            items,
            default_country=self.default_country,
            session_parameters=self.session_parameters,
            strict_parameter_names=self.strict_parameter_names,
            calling_window=parse_calling_window(self.calling_window),
            timezone_name=self.timezone,
        )

    def _check_source(self, *, rendered: bool) -> RecipientSource:
        """The recipient source the arguments name (see ``recipient_sources.resolve_source``);
        at construction only when neither argument is a template.

        :raises VonageStudioConfigError: naming the field.
        """
        from airflow_provider_vonage_studio.recipient_sources import (
            RecipientSource,
            SourceKind,
            resolve_source,
        )
        from airflow_provider_vonage_studio.validation import is_templated

        if not rendered and any(
            isinstance(v, str) and is_templated(v) for v in (self.recipients, self.recipients_sql)
        ):
            return RecipientSource(SourceKind.LIST, self.recipients)
        return resolve_source(self.recipients, self.recipients_sql, self.recipients_conn_id)

    def execute(self, context: Context) -> list[dict[str, Any]] | dict[str, Any]:
        if self.attempts is not None:
            return self._campaign(context)
        return self._dial(context)

    def execute_after_window(
        self, context: Context, event: Any = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Resume when the earliest deferred recipient's calling window opens: dial on.

        The recipients are rendered again and the ledger says who was placed, so nothing about
        them travels through the trigger (no numbers in the trigger table).
        """
        return self._dial(context)

    def _dial(self, context: Context) -> list[dict[str, Any]] | dict[str, Any]:
        from airflow_provider_vonage_studio.batch import ResultKind
        from airflow_provider_vonage_studio.operators._batch import results_xcom

        hook = self.hook
        try:
            # The rendered values, before the ledger is read or anyone is dialed.
            self._check_rendered()
            if self.wait_for_status and not (hook.config.callback_base_url and hook.config.callback_secret):
                raise VonageStudioConfigError(
                    "wait_for_status=True needs a status_url for every call: set extra 'callback_base_url' "
                    f"and 'callback_secret' on connection {self.vonage_studio_conn_id!r}"
                )
            report = self._pass(context, hook, dial=True)
        except VonageStudioError as exc:
            raise fail_task(exc) from exc
        self._log_report(report)
        if report.stopped is not None:
            self.log.error("The batch stopped dialing: %s", report.stopped)
            context["ti"].xcom_push(key="results", value=results_xcom(report, None, task_identity(context)))
            raise fail_task(report.stopped) from report.stopped
        if report.next_opening is not None:
            from airflow.providers.standard.triggers.temporal import DateTimeTrigger

            waiting = report.counts()[ResultKind.DEFERRED.value]
            self.log.info(
                "%d recipient(s) are outside their calling window; deferring until %s, when the first "
                "window opens (no worker slot is held meanwhile)",
                waiting,
                report.next_opening.isoformat(),
            )
            self.defer(
                trigger=DateTimeTrigger(moment=report.next_opening),
                method_name="execute_after_window",
            )
        return self._wait_for_statuses(context, hook, report)

    def _pass(self, context: Context, hook: VonageStudioHook, *, dial: bool) -> BatchReport:
        """One pass over the recipients, streamed in chunks; each chunk's results stored.

        :raises VonageStudioError: bad input (before any dial), a broken connection, the store
            unavailable.
        """
        from airflow_provider_vonage_studio.operators._batch import FULL_RESULTS_MAX, results_sink

        plan = self.plan_stream()
        # Known up front only for a list; a file or a query is counted as it streams.
        listed = self.recipients_sql is None and not isinstance(self.recipients, (str, bytes))
        total = len(self.recipients) if listed and isinstance(self.recipients, Sequence) else None
        if dial:
            self.log.info(
                "Dialing %s recipient(s) from agent %s at up to %d call(s)/s",
                "the" if total is None else total,
                self.agent_id,
                hook.config.calls_per_second,
            )
        task = task_identity(context)
        sink = results_sink(hook.store, task)
        report = self.dialer(hook, context).run(
            plan,
            dial=dial,
            keep=FULL_RESULTS_MAX,
            sink=sink,
            collect_placed=self.wait_for_status,
            total=total,
        )
        with hook.store.unavailable_as_error("storing the batch results"):
            hook.store.trim_batch_results(task, report.size)
        return report

    def _wait_for_statuses(
        self, context: Context, hook: VonageStudioHook, report: BatchReport
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """After a complete pass: report it, having waited (deferred or here) for the placed
        calls' statuses when ``wait_for_status`` asks for them."""
        refs = report.placed_refs()
        if not (self.wait_for_status and refs):
            return self._finish(context, report, None)
        if self.deferrable:
            from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger

            self.log.info("Deferring the wait for the status of %d call(s) to the triggerer", len(refs))
            # fail_on=() so that every status comes back; this operator's fail_on is applied at the end.
            self.defer(
                trigger=CallStatusTrigger(
                    call_refs=refs,
                    answer_window=self.answer_window,
                    fail_on=(),
                    poll_interval=self.poke_interval,
                ),
                method_name="execute_complete",
            )
        from airflow_provider_vonage_studio.outcome import wait_for_calls

        sources: dict[str, str] = {}
        statuses = wait_for_calls(
            hook.store,
            refs,
            answer_window=self.answer_window,
            poll_interval=self.poke_interval,
            logger=self.log,
            sources=sources,
        )
        return self._finish(context, report, statuses, sources)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Resume after the status trigger: report every recipient from the ledger (never dials)."""
        statuses = resume(event, "call_statuses")
        try:
            report = self._pass(context, self.hook, dial=False)
        except VonageStudioError as exc:
            raise fail_task(exc) from exc
        return self._finish(context, report, statuses, sources_of(event))

    def _log_report(self, report: BatchReport) -> None:
        self.log.info("Batch pass done: %s; %d dial(s) sent", report.summary(), report.dialed)
        # The pacing slots should keep AI Studio from ever answering 429; when it does (another
        # client on the same agent, a limit lower than the connection says) it shows here.
        self.log.info(
            "AI Studio answered 429 (rate limited) %d time(s) in this pass; each was absorbed by back-off",
            report.rate_limited,
        )

    def _finish(
        self,
        context: Context,
        report: BatchReport,
        statuses: Mapping[str, tuple[str | None, str | None]] | None,
        sources: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]] | dict[str, Any]:
        from airflow_provider_vonage_studio.operators._batch import batch_problem, batch_results, results_xcom

        task = task_identity(context)
        results = batch_results(
            report, statuses, lambda: self.hook.store, self.log, task=task, sources=sources
        )
        value = results_xcom(report, statuses, task, results)
        problem = batch_problem(
            report, results, fail_on=self.fail_on, fail_on_rejected=self.fail_on_rejected, statuses=statuses
        )
        if problem is not None:
            context["ti"].xcom_push(key="results", value=value)
            raise AirflowFailException(problem)
        return value


# ----------------------------------------------------------------------------- ExportSessionsOperator


class ExportSessionsOperator(BaseOperator):
    """Export AI Studio sessions (Insights search) of a time window as JSON Lines to object storage.

    One line per session, exactly as the API returned it (field names, numbers and phone
    numbers unchanged: **exports contain personal data** — destination numbers and what
    callers said; choose the destination, its access and retention accordingly). Sessions are
    fetched page by page and written as they arrive, so memory stays at about one page
    whatever the window holds.

    Re-running the same window overwrites the same object: on a local filesystem the file is
    written to a temporary sibling and renamed over the target (atomic); on object stores
    (``s3://``, ``gs://``, ...) the object is uploaded to its final key, which replaces the old
    object atomically when the upload completes.

    :param destination: where to write, as an Airflow ``ObjectStoragePath`` URL:
        ``file:///data/sessions/{{ ds }}.jsonl``, ``s3://bucket/sessions/{{ ds }}.jsonl``, ...
        Templated. Put the window in the name so each interval has its own object.
    :param conn_id: Airflow connection of the storage (e.g. ``aws_default`` for ``s3://``);
        ``None`` for the local filesystem or the storage's own defaults.
    :param from_date: window start (ISO string or datetime; naive means UTC). Templated.
        Default (with ``to_date``): the DAG run's data interval, as
        ``{{ data_interval_start }}``/``{{ data_interval_end }}`` would give.
    :param to_date: window end. Templated. Windows are half-open (``[from_date, to_date)``) like
        data intervals, so consecutive runs never export a session twice; set
        ``include_to_date=True`` to include sessions starting exactly at ``to_date``.
    :param lookback: for runs without a usable data interval (a manual run has none, or an
        empty one): export ``[anchor - lookback, anchor)``, where the anchor is the run's
        ``data_interval_end``, logical date or ``run_after`` (stable across re-runs of that
        run). ``None`` fails such runs instead, asking for ``from_date``/``to_date``. A
        timedelta or seconds, more than 0 and at most 366 days.
    :param filter_by: Elasticsearch-style bool query (``{"bool": {"must": [...]}}``) or its JSON.
        Templated.
    :param sort_by: ``"attribute:asc|desc"`` items. Default ``session_start_time:asc``: a stable
        order keeps paging consistent and re-runs byte-identical. Templated.
    :param project_fields: only these fields (``["id", "session_start_time", ...]``). Templated.
    :param page_size: sessions per request (default 100; at most 1000).
    :param split_range: allow windows over 60 days (searched in 60-day parts); else refused.
    :param include_to_date: include sessions starting exactly at ``to_date``.
    :param vonage_studio_conn_id: the ``vonage_studio`` connection.

    Returns (XCom) ``{"rows": N, "path": "<destination URL>", "from_date": ..., "to_date": ...}``
    (the window as ISO strings).

    :raises AirflowFailException: a malformed window or ``filter_by``, a window over 60 days
        without ``split_range``, a run without data interval and ``lookback=None``, or an API
        refusal (401: bad key or query). Retryable errors (API unreachable) are raised as is.
    """

    template_fields: Sequence[str] = (
        "destination",
        "from_date",
        "to_date",
        "filter_by",
        "sort_by",
        "project_fields",
    )
    ui_color = "#b8d8f5"

    def __init__(
        self,
        *,
        destination: str,
        conn_id: str | None = None,
        from_date: Any = None,
        to_date: Any = None,
        lookback: timedelta | None = timedelta(days=1),
        filter_by: Mapping[str, Any] | str | None = None,
        sort_by: str | Sequence[str] | None = "session_start_time:asc",
        project_fields: str | Sequence[str] | None = None,
        page_size: int = 100,
        split_range: bool = False,
        include_to_date: bool = False,
        vonage_studio_conn_id: str = "vonage_studio_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Checked here so a typo fails at DAG parse time.
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise VonageStudioConfigError(f"page_size: expected an integer 1..1000, got {page_size!r}")
        if lookback is not None:
            from airflow_provider_vonage_studio.validation import check_duration

            # A year at most: a larger value is a unit mistake, and would search years of sessions.
            lookback = check_duration(
                lookback, field="lookback", exclusive_minimum=True, maximum=timedelta(days=366)
            )
        if (from_date is None) != (to_date is None):
            raise VonageStudioConfigError("from_date and to_date: give both, or neither (the data interval)")
        self.destination = destination
        self.conn_id = conn_id
        self.from_date = from_date
        self.to_date = to_date
        self.lookback = lookback
        self.filter_by = filter_by
        self.sort_by = sort_by
        self.project_fields = project_fields
        self.page_size = page_size
        self.split_range = bool(split_range)
        self.include_to_date = bool(include_to_date)
        self.vonage_studio_conn_id = vonage_studio_conn_id

    def window(self, context: Context) -> tuple[datetime, datetime]:
        """The window to export, as aware UTC datetimes: the (rendered) arguments, the data
        interval, or the lookback (see :func:`~airflow_provider_vonage_studio.operators._export.
        export_window`).

        :raises VonageStudioConfigError: only one bound given, a bound that is not a datetime,
            date or ISO-8601 string, or no usable data interval and ``lookback=None``.
        """
        from airflow_provider_vonage_studio.operators._export import export_window

        return export_window(context, self.from_date, self.to_date, self.lookback, self.log)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.providers.common.compat.sdk import ObjectStoragePath

        from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
        from airflow_provider_vonage_studio.operators._export import parse_filter_by

        try:
            # Normalised here (not only in the hook) so the returned window says what was searched.
            start, end = self.window(context)
            filter_by = parse_filter_by(self.filter_by)
            sessions = VonageStudioHook(self.vonage_studio_conn_id).search_sessions(
                start,
                end,
                filter_by=filter_by,
                sort_by=self.sort_by or None,
                project_fields=self.project_fields or None,
                page_size=self.page_size,
                split_range=self.split_range,
                include_to_date=self.include_to_date,
            )
            if not isinstance(self.destination, str) or not self.destination.strip():
                raise VonageStudioConfigError(
                    f"destination: expected a path or URL, got {self.destination!r}"
                )
            path = ObjectStoragePath(self.destination.strip(), conn_id=self.conn_id)
            self.log.info("Exporting sessions %s .. %s to %s", start.isoformat(), end.isoformat(), str(path))
            rows = self._write(path, sessions)
        except VonageStudioError as exc:
            raise fail_task(exc) from exc
        self.log.info("Exported %d session(s) to %s", rows, str(path))
        return {"rows": rows, "path": str(path), "from_date": start.isoformat(), "to_date": end.isoformat()}

    def _write(self, path: Any, sessions: Iterable[Mapping[str, Any]]) -> int:
        """Stream ``sessions`` into ``path`` as JSON Lines, replacing it whole; the line count."""
        from airflow_provider_vonage_studio.operators._export import write_jsonl

        return write_jsonl(path, sessions, self.log)
