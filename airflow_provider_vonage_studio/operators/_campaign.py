"""``MakeCallsOperator(attempts=..., then_message=...)``: the campaign's waves, run from the ledger.

One step, :meth:`CampaignTask._campaign`, runs every time the task starts or resumes. It reads
where the campaign stands from the call ledger (each attempt is its own row, see
:mod:`~airflow_provider_vonage_studio.campaign`), never from XCom (cleared on retry) or trigger
arguments (they carry only the wave number), and then:

1. dials the current wave through the batch loop (paced, exactly-once per attempt, the
   do-not-call list and the calling window checked at dial time; a closed window defers the
   task to its opening);
2. defers to ``CallStatusTrigger`` until the wave's outcomes are known;
3. defers to a ``DateTimeTrigger`` until the next wave is due (no worker slot held), and
   goes on with the next wave;
4. after the last wave, sends the fallback message once to each recipient never reached
   (its own ledger row), inside the calling window;
5. returns one result per recipient: every attempt and the final disposition.

Re-running the current wave's pass on resume is what makes a crash mid-wave harmless: the
batch loop reuses placed rows, relabels rows left ``sending`` as ``unknown`` (never dialed
again) and dials only those not dialed yet.

Loaded inside the operator's methods (never at DAG parse time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.calls import TaskIdentity
from airflow_provider_vonage_studio.campaign import (
    REFUSED,
    UNKNOWN,
    Attempt,
    AttemptIdentity,
    CallAttempts,
    Disposition,
    MessageFallback,
    current_wave,
    disposition,
    due_in_wave,
    next_wave_due,
    pending_in_wave,
)
from airflow_provider_vonage_studio.events import fail_task, resume
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioError

if TYPE_CHECKING:
    from airflow_provider_vonage_studio._compat import Context
    from airflow_provider_vonage_studio.batch import BatchDialer, Recipient
    from airflow_provider_vonage_studio.calls import CallRecord
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

__all__ = ["CampaignTask", "check_campaign"]


def check_campaign(attempts: Any, then_message: Any) -> tuple[CallAttempts | None, MessageFallback | None]:
    """``attempts`` and ``then_message`` as given to the operator, checked.

    :raises VonageStudioConfigError: naming the field: not a :class:`CallAttempts` /
        :class:`MessageFallback`, or ``then_message`` without ``attempts``.
    """
    if attempts is not None and not isinstance(attempts, CallAttempts):
        raise VonageStudioConfigError(
            f"attempts: must be a CallAttempts(...) or None, got {type(attempts).__name__}"
        )
    if then_message is not None and not isinstance(then_message, MessageFallback):
        raise VonageStudioConfigError(
            f"then_message: must be a MessageFallback(...) or None, got {type(then_message).__name__}"
        )
    if then_message is not None and attempts is None:
        raise VonageStudioConfigError(
            "then_message: needs attempts=CallAttempts(...) "
            "(the message goes to whoever the attempts never reached)"
        )
    return attempts, then_message


def _now() -> datetime:
    return datetime.now(timezone.utc)


class CampaignTask:
    """Mixin of ``MakeCallsOperator``: the attempt waves and the message fallback.

    It uses the operator's own ``plan``, ``dialer``, ``hook``, ``answer_window``,
    ``poke_interval``, ``fail_on_rejected`` and calling-window options.
    """

    attempts: CallAttempts | None
    then_message: MessageFallback | None
    # Provided by MakeCallsOperator / BaseOperator (hook, plan, dialer, defer, _check_rendered):
    # reached through ``_op()`` so that this mixin declares none of them.
    answer_window: Any
    poke_interval: float
    fail_on_rejected: bool
    calling_window: Any
    do_not_call: Any
    vonage_studio_conn_id: str
    log: Any

    def _op(self) -> Any:
        return self

    # -- entry and resume points --------------------------------------------------------------

    def execute_campaign(
        self, context: Context, event: Any = None, wave: int | None = None
    ) -> list[dict[str, Any]]:
        """Start or resume the campaign (after a spacing or a calling-window deferral).

        ``wave`` is informational: where the campaign stands is read from the ledger.
        """
        return self._campaign(context)

    def execute_campaign_outcomes(
        self, context: Context, event: Any = None, wave: int | None = None
    ) -> list[dict[str, Any]]:
        """Resume after a wave's status trigger: store the verdicts, then go on."""
        from airflow_provider_vonage_studio.outcome import record_verdicts

        statuses = resume(event, "call_statuses")
        record_verdicts(
            lambda: self._op().hook.store, {ref: s for ref, (s, _) in statuses.items() if s}, log=self.log
        )
        return self._campaign(context)

    # -- the step -----------------------------------------------------------------------------

    def _campaign(self, context: Context) -> list[dict[str, Any]]:
        assert self.attempts is not None
        policy = self.attempts
        op = self._op()
        hook = op.hook
        try:
            op._check_rendered()
            if not (hook.config.callback_base_url and hook.config.callback_secret):
                raise VonageStudioConfigError(
                    "attempts=CallAttempts(...) needs every call's status: set extra 'callback_base_url' "
                    f"and 'callback_secret' on connection {self.vonage_studio_conn_id!r}"
                )
            plan = op.plan()
        except VonageStudioError as exc:
            raise fail_task(exc) from exc
        waves = _Waves(self, hook, context, plan, policy)
        wave = current_wave(waves.histories())
        while True:
            self._dial_wave(waves, wave)
            histories = waves.histories()
            pending = pending_in_wave(histories, wave)
            if pending:
                self._defer_for_outcomes(pending, wave)
            self._log_wave(histories, wave)
            due = next_wave_due(histories, wave, policy)
            if due is None:
                break
            if _now() < due:
                self._defer_until(due, wave + 1, f"wave {wave + 1}/{policy.max_attempts} is due")
            wave += 1
        if self.then_message is not None:
            self._send_fallback(waves)
        return self._campaign_results(context, waves)

    def _dial_wave(self, waves: _Waves, wave: int) -> None:
        policy = waves.policy
        due = set(due_in_wave(waves.histories(), wave, policy))
        recipients = [r for r in waves.dialable if r.index in due]
        if not recipients:
            return
        why = "everyone" if wave == 1 else f"last outcome in {'/'.join(policy.retry_on)}"
        self.log.info(
            "Campaign wave %d/%d: %d recipient(s) due (%s)", wave, policy.max_attempts, len(recipients), why
        )
        try:
            report = waves.dialer(wave).run(recipients)
        except VonageStudioError as exc:
            raise fail_task(exc) from exc
        self.log.info(
            "Campaign wave %d/%d dial pass: %s; %d dial(s) sent",
            wave,
            policy.max_attempts,
            report.summary(),
            report.dialed,
        )
        if report.stopped is not None:
            self.log.error("The campaign's wave %d stopped dialing: %s", wave, report.stopped)
            raise fail_task(report.stopped) from report.stopped
        if report.next_opening is not None:
            self._defer_until(report.next_opening, wave, "the calling window opens")

    def _defer_for_outcomes(self, pending: list[str], wave: int) -> None:
        from airflow_provider_vonage_studio.triggers.vonage_studio import CallStatusTrigger

        self.log.info("Campaign wave %d: deferring until %d call(s) have their outcome", wave, len(pending))
        self._op().defer(
            trigger=CallStatusTrigger(
                call_refs=pending,
                answer_window=self.answer_window,
                fail_on=(),
                poll_interval=self.poke_interval,
            ),
            method_name="execute_campaign_outcomes",
            kwargs={"wave": wave},
        )

    def _defer_until(self, moment: datetime, wave: int, why: str) -> None:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        self.log.info(
            "Campaign: deferring until %s, when %s (no worker slot is held meanwhile)",
            moment.isoformat(),
            why,
        )
        self._op().defer(
            trigger=DateTimeTrigger(moment=moment), method_name="execute_campaign", kwargs={"wave": wave}
        )

    def _log_wave(self, histories: Mapping[int, Sequence[Attempt]], wave: int) -> None:
        outcomes = Counter(h[wave - 1].outcome for h in histories.values() if len(h) >= wave)
        self.log.info(
            "Campaign wave %d/%d outcomes: %s",
            wave,
            self.attempts.max_attempts if self.attempts else wave,
            ", ".join(f"{o} {n}" for o, n in sorted(outcomes.items(), key=str)) or "no calls",
        )

    # -- the fallback message -------------------------------------------------------------------

    def _send_fallback(self, waves: _Waves) -> None:
        """One message to each recipient never reached, inside their calling window."""
        from airflow_provider_vonage_studio.windows import dial_window_opening, parse_calling_window

        fallback = self.then_message
        assert fallback is not None
        targets = [r for r in waves.dialable if waves.disposition(r) is Disposition.NOT_REACHED]
        records = waves.messages()
        window = parse_calling_window(self.calling_window)
        send = getattr(waves.hook, "send_message", None)
        if targets and send is None:
            raise fail_task(
                VonageStudioConfigError("then_message: this provider's hook has no send_message (messaging)")
            )
        opening: datetime | None = None
        sent = 0
        for recipient in targets:
            ref = waves.message_ref(recipient)
            if ref in records and records[ref].state != "queued":
                continue  # sent (or refused, or of unknown outcome) on an earlier try: never again
            opens = dial_window_opening(_now(), window, recipient.timezone or "UTC")
            if opens is not None:
                opening = opens if opening is None or opens < opening else opening
                continue
            self._send_one(waves, recipient, ref)
            sent += 1
        self.log.info(
            "Campaign fallback: %d message(s) sent now to %d recipient(s) never reached", sent, len(targets)
        )
        if opening is not None:
            self._defer_until(
                opening, waves.policy.max_attempts, "the calling window opens for the fallback message"
            )

    def _send_one(self, waves: _Waves, recipient: Recipient, ref: str) -> None:
        from airflow_provider_vonage_studio.exceptions import (
            CallOutcomeUnknown,
            DoNotCall,
            VonageStudioBadRequest,
        )
        from airflow_provider_vonage_studio.params import normalize_session_parameters

        fallback = self.then_message
        assert fallback is not None
        parameters = {
            p["name"]: p["value"] for p in normalize_session_parameters(fallback.session_parameters)
        }
        parameters.update(dict(recipient.session_parameters))
        try:
            waves.hook.send_message(
                recipient.destination or recipient.to,
                fallback.agent_id,
                session_parameters=[{"name": k, "value": v} for k, v in parameters.items()] or None,
                status_url=waves.hook.status_url_for(ref),
                call_ref=ref,
                identity=waves.task_identity(),
                recipient_key=recipient.key,
                extra_do_not_call=waves.dialer(1).do_not_call,
                **fallback.message_options(),
            )
        except DoNotCall:
            self.log.info(
                "Recipient %d (%s): on the do-not-call list; no message", recipient.index, recipient.shown
            )
        except CallOutcomeUnknown as exc:
            self.log.warning(
                "Recipient %d (%s): message outcome unknown: %s", recipient.index, recipient.shown, exc
            )
        except (VonageStudioConfigError, VonageStudioBadRequest) as exc:
            self.log.warning("Recipient %d (%s): message refused: %s", recipient.index, recipient.shown, exc)
        except VonageStudioError as exc:
            raise fail_task(exc) from exc

    # -- results ------------------------------------------------------------------------------------

    def _campaign_results(self, context: Context, waves: _Waves) -> list[dict[str, Any]]:
        from airflow_provider_vonage_studio._compat import AirflowFailException

        histories = waves.histories()
        messages = waves.messages() if self.then_message is not None else {}
        data = []
        for recipient in waves.plan:
            item: dict[str, Any] = {"index": recipient.index, "to": recipient.shown, "key": recipient.key}
            if recipient.error is not None:
                item.update(attempts=[], disposition=Disposition.REJECTED.value, reason=recipient.error)
            elif recipient.duplicate_of is not None:
                item.update(
                    attempts=[], disposition=Disposition.DUPLICATE.value, duplicate_of=recipient.duplicate_of
                )
            else:
                item["attempts"] = [a.to_dict() for a in histories.get(recipient.index, ())]
                item["disposition"] = waves.disposition(recipient).value
                if self.then_message is not None:
                    item["message"] = _message_result(messages.get(waves.message_ref(recipient)))
            data.append(item)
        tally = Counter(item["disposition"] for item in data)
        self.log.info("Campaign done: %s", ", ".join(f"{d} {n}" for d, n in sorted(tally.items())))
        bad = tally[Disposition.REJECTED.value] + tally[Disposition.UNKNOWN.value]
        if self.fail_on_rejected and bad:
            context["ti"].xcom_push(key="results", value=data)
            raise AirflowFailException(
                f"MakeCallsOperator: {bad} recipient(s) rejected or of unknown outcome; per-recipient "
                "results are in the XCom 'results'; pass fail_on_rejected=False to succeed anyway"
            )
        return data


def _message_result(record: CallRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    shown = {"placed": "sent"}.get(str(getattr(record.state, "value", record.state)))
    state = shown or str(getattr(record.state, "value", record.state))
    return {"call_ref": record.call_ref, "result": state, "reason": record.error_message}


class _Waves:
    """The campaign as the ledger tells it, for one run of the step (rows re-read on demand)."""

    def __init__(
        self,
        task: CampaignTask,
        hook: VonageStudioHook,
        context: Context,
        plan: list[Recipient],
        policy: CallAttempts,
    ) -> None:
        self.task, self.hook, self.context, self.plan, self.policy = task, hook, context, plan, policy
        self.dialable = [r for r in plan if r.dialable]
        self._dialers: dict[Any, BatchDialer] = {}
        self._listed: set[str] | None = None
        self._cache: dict[int, list[Attempt]] | None = None

    def task_identity(self) -> TaskIdentity:
        """The task instance itself (the message's ledger row names it; its call_ref is given)."""
        base = self.dialer_for(1, False).task
        return TaskIdentity(base.dag_id, base.run_id, base.task_id, base.map_index)

    def dialer_for(self, attempt: int, message: bool) -> BatchDialer:
        key = (attempt, message)
        if key not in self._dialers:
            dialer = self.task._op().dialer(self.hook, self.context)
            task = dialer.task
            dialer.task = AttemptIdentity(
                task.dag_id, task.run_id, task.task_id, task.map_index, attempt=attempt, message=message
            )
            self._dialers[key] = dialer
        return self._dialers[key]

    def dialer(self, attempt: int) -> BatchDialer:
        """The batch loop for wave ``attempt`` (its call_refs are that attempt's)."""
        return self.dialer_for(attempt, False)

    def message_ref(self, recipient: Recipient) -> str:
        return self.dialer_for(1, True).call_ref_for(recipient)

    def histories(self) -> dict[int, list[Attempt]]:
        """Each dialable recipient's attempts so far, in order, from one ledger read."""
        from airflow_provider_vonage_studio.outcome import evaluate_call

        refs = {
            (r.index, n): self.dialer(n).call_ref_for(r)
            for r in self.dialable
            for n in range(1, self.policy.max_attempts + 1)
        }
        store = self.hook.store
        with store.unavailable_as_error("reading the campaign's calls"):
            records = store.get_calls(list(refs.values()))
        now = _now()
        histories: dict[int, list[Attempt]] = {}
        for recipient in self.dialable:
            history: list[Attempt] = []
            for n in range(1, self.policy.max_attempts + 1):
                record = records.get(refs[(recipient.index, n)])
                if record is None or record.state == "queued":
                    break
                history.append(_attempt(record, n, now, self.task.answer_window, evaluate_call))
            histories[recipient.index] = history
        return histories

    def messages(self) -> dict[str, CallRecord]:
        refs = [self.message_ref(r) for r in self.dialable]
        store = self.hook.store
        with store.unavailable_as_error("reading the campaign's messages"):
            return store.get_calls(refs)

    def listed(self) -> set[str]:
        if self._listed is None:
            store = self.hook.store
            with store.unavailable_as_error("reading the do-not-call list"):
                listed = store.dnc_filter([r.destination for r in self.dialable if r.destination])
            self._listed = listed | set(self.dialer(1).do_not_call)
        return self._listed

    def disposition(self, recipient: Recipient) -> Disposition:
        history = self.histories_cache().get(recipient.index, [])
        return disposition(history, self.policy, listed=recipient.destination in self.listed())

    def histories_cache(self) -> dict[int, list[Attempt]]:
        if self._cache is None:
            self._cache = self.histories()
        return self._cache


def _attempt(record: CallRecord, number: int, now: datetime, answer_window: Any, evaluate: Any) -> Attempt:
    """One attempt from its ledger row (:func:`~airflow_provider_vonage_studio.outcome.evaluate_call`
    decides the outcome: the same rule as the sensor and the trigger)."""
    from airflow_provider_vonage_studio.exceptions import CallOutcomeUnknown, CallRejectedEarlier

    at = record.session_start_time or record.created_at
    try:
        outcome = evaluate(record, now=now, answer_window=answer_window, fail_on=())
    except CallRejectedEarlier:
        return Attempt(number, record.call_ref, at, REFUSED)
    except CallOutcomeUnknown:
        return Attempt(number, record.call_ref, at, UNKNOWN)
    if outcome is None:
        return Attempt(number, record.call_ref, at, None)
    source = record.outcome_source or getattr(getattr(outcome, "source", None), "value", None)
    if source is None:
        source = "inferred" if outcome.inferred else "callback"
    return Attempt(number, record.call_ref, at, outcome.status, source)
