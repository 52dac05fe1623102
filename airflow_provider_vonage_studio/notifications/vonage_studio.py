"""Phone someone when a task or a DAG run fails (or succeeds, retries, misses a deadline).

:class:`VonageStudioCallNotifier` is an Airflow notifier: pass an instance wherever Airflow
takes a callback::

    alert = VonageStudioCallNotifier(
        to="+44 7700 900123",
        agent_id="on-call-agent",
        session_parameters={"DAG_ID": "{{ dag.dag_id }}", "TASK_ID": "{{ ti.task_id }}"},
    )
    BashOperator(..., on_failure_callback=alert)       # task level
    DAG(..., on_failure_callback=alert)                # DAG level

and for deadline alerts (run in the triggerer)::

    DeadlineAlert(..., callback=AsyncCallback(VonageStudioCallNotifier,
                                              kwargs={"to": "...", "agent_id": "..."}))

**One failure rings once.** Every alert call goes through
:class:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook` and its
exactly-once ledger, under a ``call_ref`` built from the event (see :func:`alert_call_ref`):

* task callbacks (``on_failure_callback``, ``on_retry_callback``, ``on_success_callback``):
  ``make_call_ref(dag_id, run_id, task_id, map_index, key="notify:task:<try_number>:...")``.
  A try ends once, in one state, so whichever of these callbacks fires for a try rings once,
  however many times Airflow invokes it for that try (the worker runs it, and the DAG
  processor may run it again for a task it found without heartbeat). The next try, or a
  cleared task, has a new ``try_number`` and rings again;
* DAG-run callbacks: task id ``"__dag__"`` and
  ``key="notify:dag:<reason>:<task_id>:<map_index>:<try_number>:..."`` with the task
  instance Airflow names as the cause (the failed one, or the last one to succeed). A run
  that is cleared and fails again fails through a new try, and rings again. Without a task
  instance in the context the run rings once per ``reason``;
* deadline alerts: task id ``"__deadline__"`` and ``key="notify:deadline:<deadline id>:..."``.

Each key ends with the agent id and the normalised number, so two notifiers (or a list of
numbers) ring each person once. ``call_key`` adds a key of your own, e.g. to use one
notifier both as ``on_execute_callback`` and ``on_failure_callback`` of the same task.

**Errors.** A notifier runs after Airflow has decided the task's (or run's) state, and
Airflow catches what a callback raises and logs it, so a failed alert never hides or changes
the original failure. This notifier behaves like Airflow's own (Slack, SMTP, HTTP): it logs
the error (numbers redacted, no key) and raises it again, so that it also appears in
Airflow's callback log (and a deadline alert's callback is marked failed). With several
numbers, every number is tried before the first error is raised. An alert refused by AI
Studio (e.g. 401, a bad key) is recorded in the ledger and not sent again for the same
event; a call whose outcome is unknown (request sent, no answer) is not dialed again either.

This module is imported when DAG files are parsed: it imports nothing heavy at the top.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio._compat import BaseNotifier
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioError

if TYPE_CHECKING:
    from collections.abc import Generator

    from airflow_provider_vonage_studio._compat import Context
    from airflow_provider_vonage_studio.calls import TaskIdentity
    from airflow_provider_vonage_studio.hooks.vonage_studio import CallResult, VonageStudioHook

__all__ = [
    "DAG_SCOPE",
    "DEADLINE_SCOPE",
    "AlertEvent",
    "VonageStudioCallNotifier",
    "alert_call_ref",
    "alert_event",
    "send_vonage_studio_call_notification",
]

#: Task id recorded for calls made by DAG-run callbacks (no task owns them).
DAG_SCOPE = "__dag__"
#: Task id recorded for calls made by deadline alerts.
DEADLINE_SCOPE = "__deadline__"


@dataclass(frozen=True)
class AlertEvent:
    """The Airflow event a notifier was called for, as far as the callback context tells.

    ``dag_id``/``run_id``/``task_id``/``map_index`` identify what the call is recorded
    under in the call store (``task_id`` is :data:`DAG_SCOPE` or :data:`DEADLINE_SCOPE` for
    run-level events); ``name`` says which event of it this is (e.g. ``"task:2"``,
    ``"dag:task_failure:load:-1:1"``, ``"deadline:<id>"``).
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    name: str

    @property
    def identity(self) -> TaskIdentity:
        """What the alert call is recorded under, as the hook's ledger takes it."""
        # Imported here: the module's import cost is pinned (exceptions only) by a test.
        from airflow_provider_vonage_studio.calls import TaskIdentity

        return TaskIdentity(self.dag_id, self.run_id, self.task_id, self.map_index)


def alert_event(context: Mapping[str, Any]) -> AlertEvent:
    """Tell from a callback ``context`` which event the notifier is running for.

    * a deadline alert's context has ``deadline`` and ``dag_run`` (a JSON dict);
    * a DAG-run callback's context has ``reason`` (Airflow adds it on every DAG callback
      path), and usually ``ti``: the task instance that caused the outcome;
    * a task callback's context has ``ti``.

    :raises VonageStudioConfigError: the context names no DAG run, so there is nothing to
        key the call on (the message lists the context's keys, never its values).
    """
    deadline = context.get("deadline")
    dag_run = context.get("dag_run")
    if isinstance(deadline, Mapping) and dag_run is not None:
        dag_id = _field(dag_run, "dag_id")
        run_id = _field(dag_run, "dag_run_id") or _field(dag_run, "run_id")
        if dag_id and run_id:
            return AlertEvent(str(dag_id), str(run_id), DEADLINE_SCOPE, -1, f"deadline:{deadline.get('id')}")

    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    if "reason" in context:
        dag_id = getattr(dag, "dag_id", None) or getattr(ti, "dag_id", None) or _field(dag_run, "dag_id")
        run_id = context.get("run_id") or _field(dag_run, "run_id") or getattr(ti, "run_id", None)
        if dag_id and run_id:
            name = f"dag:{context.get('reason')}"
            if ti is not None:
                # The cause's try tells apart a run that is cleared and fails again.
                name += f":{ti.task_id}:{_map_index(ti)}:{getattr(ti, 'try_number', None)}"
            return AlertEvent(str(dag_id), str(run_id), DAG_SCOPE, -1, name)

    if ti is not None:
        return AlertEvent(
            str(ti.dag_id),
            str(ti.run_id),
            str(ti.task_id),
            _map_index(ti),
            f"task:{getattr(ti, 'try_number', None)}",
        )
    raise VonageStudioConfigError(
        "the callback context names no DAG run (no 'ti', 'run_id' or deadline 'dag_run'; keys: "
        f"{', '.join(sorted(map(str, context))) or 'none'}), so the alert call cannot be keyed"
    )


def alert_call_ref(event: AlertEvent, destination: str, agent_id: str, call_key: str | None = None) -> str:
    """The ledger key of the alert call to ``destination`` for ``event`` (see the module doc).

    ``destination`` must be normalised (``normalize_destination``), so that ``+44 7700
    900123`` and ``447700900123`` are one person. The number only enters a SHA-256 digest:
    the ``call_ref`` does not reveal it.
    """
    key = f"notify:{event.name}:{agent_id.strip()}:{destination}"
    if call_key:
        key = f"{call_key}/{key}"
    return event.identity.call_ref(key)


class VonageStudioCallNotifier(BaseNotifier):
    """Place an AI Studio agent call when an Airflow callback fires.

    :param to: number (``+44 7700 900123``, ``447700900123``, ...) or ``sip:user@host``, or a
        list of them (each is called, in order). Templated.
    :param agent_id: the published agent that makes the call. Templated.
    :param session_parameters: parameters for the agent, a mapping or the API's list of
        ``{"name", "value"}``; rendered with the callback's context, e.g.
        ``{"DAG_ID": "{{ dag.dag_id }}", "TASK_ID": "{{ ti.task_id }}"}`` (a DAG-level callback
        without a task instance renders ``ti`` as empty). Values are sent as strings. Templated.
    :param vonage_studio_conn_id: the ``vonage_studio`` connection. Templated.
    :param status_url: where AI Studio posts the status when the callee does not pick up.
        Default: the connection's callback receiver (``callback_base_url`` + a signed token).
    :param hangup_on_answer_machine: AI Studio's beta answering-machine hang-up.
    :param default_country: ISO country (``"GB"``) for numbers written without a country code.
    :param strict_parameter_names: refuse parameter names that break AI Studio's ``UPPER_CASE`` rule.
    :param timeout: read timeout of the API request in seconds (default: the connection's, 30;
        at most 120).
    :param call_key: mixed into every ``call_ref``: tells apart two uses of one notifier for the
        same event (see the module documentation).
    :param do_not_call: numbers never to ring, on top of the store's do-not-call list: a list,
        or one string of numbers separated by commas or line breaks, read like ``to``. A
        listed number is not rung (``DoNotCall``); the others are. Templated.

    Constructing the notifier checks the argument types, and the values that are not
    templates (``agent_id``, ``status_url``, ``timeout``, the shape of ``do_not_call`` and
    ``session_parameters``); numbers and the connection are checked when it fires, before
    anyone is rung.

    :raises VonageStudioConfigError: (at construction) ``to`` is not a string or a list of
        strings, ``agent_id`` is not a string or is empty or holds whitespace or control
        characters, ``status_url`` is not a well-formed absolute http(s) URL with a host,
        ``timeout`` is not a number of seconds in (0, 120], ``do_not_call`` is malformed.
    :raises InvalidSessionParameter: (at construction) static ``session_parameters`` break
        AI Studio's rules or the documented limits.
    """

    template_fields: Sequence[str] = (
        "to",
        "agent_id",
        "session_parameters",
        "vonage_studio_conn_id",
        "do_not_call",
    )

    def __init__(
        self,
        to: str | Sequence[str],
        agent_id: str,
        session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        vonage_studio_conn_id: str = "vonage_studio_default",
        status_url: str | None = None,
        hangup_on_answer_machine: bool | None = None,
        default_country: str | None = None,
        strict_parameter_names: bool = True,
        timeout: float | None = None,
        call_key: str | None = None,
        do_not_call: str | Sequence[str] | None = (),
        **kwargs: Any,
    ) -> None:
        # kwargs carries ``context`` when Airflow builds the notifier for a deadline alert.
        super().__init__(**kwargs)
        if not (isinstance(to, str) or _is_str_list(to)):
            raise VonageStudioConfigError(
                f"to: expected a number or SIP URI, or a list of them, got {type(to).__name__}"
            )
        if not isinstance(agent_id, str):
            raise VonageStudioConfigError(f"agent_id: expected a string, got {type(agent_id).__name__}")
        from airflow_provider_vonage_studio.operators._calling import checked_do_not_call
        from airflow_provider_vonage_studio.validation import check_request_timeout, check_status_url

        # status_url is not templated: it is checked as given.
        if status_url is not None:
            check_status_url(status_url)
        self.do_not_call = checked_do_not_call(
            agent_id=agent_id,
            session_parameters=session_parameters,
            strict_parameter_names=strict_parameter_names,
            do_not_call=do_not_call,
        )
        self.to = to
        self.agent_id = agent_id
        self.session_parameters = session_parameters
        self.vonage_studio_conn_id = vonage_studio_conn_id
        self.status_url = status_url
        self.hangup_on_answer_machine = hangup_on_answer_machine
        self.default_country = default_country
        self.strict_parameter_names = strict_parameter_names
        self.timeout = check_request_timeout(timeout)
        self.call_key = call_key

    # BaseNotifier renders the template fields in place, for good. One instance often serves
    # many events (default_args, task and DAG level, `airflow dags test` in one process), so
    # each event renders a copy and the instance keeps its templates.
    def __call__(self, *args: Any) -> None:
        """Send the notification for a callback context (what Airflow calls)."""
        BaseNotifier.__call__(copy.copy(self), *args)

    def __await__(self) -> Generator[Any, None, None]:
        """Send the notification from the triggerer (deadline alerts; context given at construction)."""
        return BaseNotifier.__await__(copy.copy(self))

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        """Render the template fields with the callback's context (in place, on the copy).

        ``airflow dags test`` runs DAG-level callbacks with the scheduler's ``SerializedDAG``
        in the context, which has no ``get_template_env`` (apache/airflow#64649): then the
        plain sandboxed environment is used (no user-defined macros), instead of failing.
        """
        dag = context.get("dag")
        if jinja_env is None and dag is not None and not hasattr(dag, "get_template_env"):
            jinja_env = self.get_template_env(dag=None)
        super().render_template_fields(context, jinja_env)

    @property
    def hook(self) -> VonageStudioHook:
        """A new hook on the notifier's connection (pacing and ledger come with it)."""
        from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

        return VonageStudioHook(self.vonage_studio_conn_id, timeout=self.timeout)

    def notify(self, context: Context) -> None:
        """Ring every number in ``to`` for the event in ``context`` (once per event).

        :raises VonageStudioError: the first error, after every number was tried (logged
            redacted before); see the module documentation for what is raised when.
        """
        self.place_calls(context)

    async def async_notify(self, context: Context) -> None:
        """:meth:`notify` for the triggerer: the blocking hook runs in a worker thread.

        :raises VonageStudioError: as :meth:`notify`.
        """
        import asyncio

        await asyncio.to_thread(self.place_calls, context)

    def place_calls(self, context: Mapping[str, Any]) -> list[CallResult]:
        """Ring every number in ``to`` for the event in ``context``; return what AI Studio answered.

        A number already rung for this event is not rung again: its earlier result is returned.

        :raises VonageStudioConfigError: the context names no DAG run, ``agent_id`` is empty,
            a number, a ``do_not_call`` entry or a parameter is malformed, the connection is
            broken.
        :raises VonageStudioError: an API error (401, 404, 429 after retries, ...),
            :class:`~airflow_provider_vonage_studio.exceptions.DoNotCall`,
            :class:`~airflow_provider_vonage_studio.exceptions.CallOutcomeUnknown`.
        """
        from airflow_provider_vonage_studio.destinations import parse_number_list, redact

        event = alert_event(context)
        numbers = [self.to] if isinstance(self.to, str) else list(self.to)
        if not numbers:
            raise VonageStudioConfigError("to: the list of numbers to call is empty")
        # Normalised with default_country, as each number in `to` is; checked before anyone rings.
        self._do_not_call = parse_number_list(
            self.do_not_call, field="do_not_call", default_country=self.default_country
        )
        hook = self.hook
        results: list[CallResult] = []
        errors: list[Exception] = []
        for number in numbers:
            try:
                results.append(self._ring(hook, event, number))
            except VonageStudioError as exc:
                self.log.error(
                    "Alert call to %s from agent %s for %s failed: %s",
                    redact(number),
                    self.agent_id,
                    event.name,
                    exc,
                )
                errors.append(exc)
            except Exception as exc:
                if type(exc).__module__.startswith("sqlalchemy"):
                    # SQLAlchemy's messages carry the statement's parameters (numbers): keep
                    # them out of the logs, and out of the chained traceback too.
                    self.log.error(
                        "Alert call to %s for %s failed: the call store raised %s",
                        redact(number),
                        event.name,
                        type(exc).__name__,
                    )
                    errors.append(
                        VonageStudioError(
                            f"alert call to {redact(number)}: the call store raised {type(exc).__name__}"
                        )
                    )
                else:
                    self.log.exception("Alert call to %s for %s failed", redact(number), event.name)
                    errors.append(exc)
        if errors:
            raise errors[0]
        return results

    def _ring(self, hook: VonageStudioHook, event: AlertEvent, number: str) -> CallResult:
        from airflow_provider_vonage_studio.destinations import normalize_destination, redact

        if not isinstance(number, str):
            raise VonageStudioConfigError(f"to: expected a number or SIP URI, got {type(number).__name__}")
        destination = normalize_destination(number, default_country=self.default_country)
        from airflow_provider_vonage_studio.validation import check_agent_id

        agent_id = check_agent_id(self.agent_id)
        call_ref = alert_call_ref(event, destination, agent_id, self.call_key)
        earlier = hook.store.get_call(call_ref)
        if earlier is not None and earlier.state.value == "placed":
            self.log.info(
                "Already rang %s for %s (call_ref %s, session %s): not calling again",
                redact(destination),
                event.name,
                call_ref,
                earlier.session_id,
            )
        else:
            self.log.info(
                "Alert call to %s from agent %s for %s of %s/%s (call_ref %s)",
                redact(destination),
                agent_id,
                event.name,
                event.dag_id,
                event.run_id,
                call_ref,
            )
        # The hook decides for a call seen before (placed: earlier result, no request;
        # refused: the same error; unknown outcome: CallOutcomeUnknown, no second dial), and
        # does it atomically, so two processes running the same callback cannot both dial.
        return hook.make_call(
            destination,
            agent_id,
            session_parameters=self.session_parameters,
            status_url=self.status_url or hook.status_url_for(call_ref),
            hangup_on_answer_machine=self.hangup_on_answer_machine,
            call_ref=call_ref,
            strict_parameter_names=self.strict_parameter_names,
            identity=event.identity,
            recipient_key=f"notify:{event.name}",
            extra_do_not_call=self._do_not_call,
        )


#: Function-style alias, like Airflow's ``send_slack_notification``.
send_vonage_studio_call_notification = VonageStudioCallNotifier


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping (a deadline's JSON ``dag_run``), else ``obj.name``."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _map_index(ti: Any) -> int:
    value = getattr(ti, "map_index", -1)
    return -1 if value is None else int(value)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
