"""Operators that place Vonage AI Studio calls.

Thin by design: they render and check their arguments, build the ``call_ref`` that makes a
retried task find its own earlier call, and hand everything to
:class:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook`.
This module is imported when DAG files are parsed, so it imports nothing heavy at the top.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio._compat import AirflowFailException, BaseOperator, default_deferrable
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioError
from airflow_provider_vonage_studio.outcome import (
    DEFAULT_ANSWER_WINDOW,
    FAILURE_STATUSES,
    normalize_answer_window,
    normalize_fail_on,
    normalize_interval,
)

if TYPE_CHECKING:
    from airflow_provider_vonage_studio._compat import Context
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook


def fail_task(exc: VonageStudioError) -> Exception:
    """The exception a task should raise for ``exc``: non-retryable errors end the task
    without Airflow task retries (a retry could only repeat the same refusal)."""
    if exc.retryable:
        return exc
    return AirflowFailException(str(exc))


def ti_identity(context: Context) -> dict[str, Any]:
    """dag_id, run_id, task_id and map_index of the running task instance."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": -1 if map_index is None else int(map_index),
    }


class MakeCallOperator(BaseOperator):
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
    :param do_not_call: extra numbers never to dial, on top of the store's do-not-call list.
    :param timeout: read timeout of the API request in seconds (default: the connection's, 30).
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

    Returns (XCom) a JSON-safe dict: ``session_id``, ``session_start_time`` (ISO-8601 UTC),
    ``call_ref``, ``agent_id`` and the redacted ``to``. With ``wait_for_status`` the same dict
    is pushed under the XCom key ``call`` as soon as the call is placed, and the return value
    adds ``status`` (``"answered"`` or the reported failure).
    """

    template_fields: Sequence[str] = ("to", "agent_id", "session_parameters", "status_url", "call_key")
    template_fields_renderers = {"session_parameters": "json"}
    ui_color = "#c9b8f5"

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
        do_not_call: Sequence[str] = (),
        timeout: float | None = None,
        wait_for_status: bool = False,
        answer_window: timedelta | float = DEFAULT_ANSWER_WINDOW,
        fail_on: Iterable[str] | None = FAILURE_STATUSES,
        poke_interval: float = 5.0,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        # Each field of the result also becomes an XCom of its own, so that
        # ``make_call.output["call_ref"]`` (an XCom *key* lookup in Airflow) resolves.
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.wait_for_status = bool(wait_for_status)
        self.answer_window = normalize_answer_window(answer_window)
        self.fail_on = normalize_fail_on(fail_on)
        self.poke_interval = normalize_interval(poke_interval, "poke_interval")
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.to = to
        self.agent_id = agent_id
        self.session_parameters = session_parameters
        self.status_url = status_url
        self.hangup_on_answer_machine = hangup_on_answer_machine
        self.vonage_studio_conn_id = vonage_studio_conn_id
        self.default_country = default_country
        self.strict_parameter_names = strict_parameter_names
        self.call_key = call_key
        self.redial_unknown = redial_unknown
        self.do_not_call = tuple(do_not_call)
        self.timeout = timeout

    @property
    def hook(self) -> VonageStudioHook:
        from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

        return VonageStudioHook(self.vonage_studio_conn_id, timeout=self.timeout)

    def call_ref(self, context: Context) -> str:
        """Deterministic id of this task instance's call (the same on every retry)."""
        from airflow_provider_vonage_studio.callbacks.tokens import make_call_ref

        ident = ti_identity(context)
        return make_call_ref(
            ident["dag_id"],
            ident["run_id"],
            ident["task_id"],
            ident["map_index"],
            key=None if self.call_key in (None, "") else str(self.call_key),
        )

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        call_ref = self.call_ref(context)
        try:
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
                extra_do_not_call=self.do_not_call,
                **ti_identity(context),
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
        try:
            outcome = wait_for_call(
                hook.store,
                call_ref,
                answer_window=self.answer_window,
                fail_on=self.fail_on,
                poll_interval=self.poke_interval,
                log=self.log.info,
            )
        except VonageStudioError as exc:
            raise fail_task(exc) from exc
        self.log.info("Call %s ended: %s", call_ref, outcome.describe())
        return {**call, "status": outcome.status}

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, call: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume after the trigger: the placed call plus its ``status`` (never dials)."""
        from airflow_provider_vonage_studio.sensors.vonage_studio import raise_for_trigger_event

        event = raise_for_trigger_event(event)
        self.log.info("Call %s ended: %s", event.get("call_ref"), event["call_status"])
        return {**(call or {}), "status": event["call_status"]}
