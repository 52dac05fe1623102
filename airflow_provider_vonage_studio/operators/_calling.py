"""What the calling tasks share: the checks and options of ``MakeCallOperator``,
``MakeCallsOperator`` and ``VonageStudioCallNotifier``, written once.

Imported when DAG files are parsed (through the operator and notifier modules): nothing heavy
at the top; phone-number metadata and the hook load inside functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_vonage_studio._compat import default_deferrable
from airflow_provider_vonage_studio.calls import TaskIdentity
from airflow_provider_vonage_studio.outcome import (
    normalize_answer_window,
    normalize_fail_on,
    normalize_interval,
)
from airflow_provider_vonage_studio.validation import check_call_arguments

if TYPE_CHECKING:
    from airflow_provider_vonage_studio._compat import Context
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

__all__ = [
    "CallingTask",
    "WaitOptions",
    "checked_do_not_call",
    "closed_window",
    "task_identity",
    "ti_identity",
    "wait_options",
]


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


def task_identity(context: Context) -> TaskIdentity:
    """The running task instance as a :class:`~airflow_provider_vonage_studio.calls.TaskIdentity`."""
    return TaskIdentity(**ti_identity(context))


def checked_do_not_call(
    *,
    agent_id: Any,
    session_parameters: Any,
    strict_parameter_names: bool,
    do_not_call: Any,
    status_url: Any = None,
) -> Any:
    """Check a calling task's arguments as given to its constructor (templates are left for
    ``execute``), so that a mistake fails when the DAG is parsed, not after dialing; return
    ``do_not_call`` as the task should keep it.

    :raises VonageStudioConfigError: / :raises InvalidSessionParameter: as
        :func:`~airflow_provider_vonage_studio.validation.check_call_arguments`.
    """
    return check_call_arguments(
        agent_id=agent_id,
        status_url=status_url,
        session_parameters=session_parameters,
        strict_parameter_names=strict_parameter_names,
        do_not_call=do_not_call,
        rendered=False,
    )


class WaitOptions(NamedTuple):
    """How a calling operator waits for statuses after dialing (``wait_for_status=True``)."""

    wait_for_status: bool
    answer_window: timedelta
    fail_on: tuple[str, ...]
    poke_interval: float
    deferrable: bool


def wait_options(
    wait_for_status: bool,
    answer_window: timedelta | float,
    fail_on: Iterable[str] | None,
    poke_interval: float,
    deferrable: bool | None,
) -> WaitOptions:
    """The wait arguments, checked (``deferrable=None``: ``[operators] default_deferrable``).

    :raises VonageStudioConfigError: naming ``answer_window``, ``fail_on`` or ``poke_interval``.
    """
    return WaitOptions(
        bool(wait_for_status),
        normalize_answer_window(answer_window),
        normalize_fail_on(fail_on),
        normalize_interval(poke_interval, "poke_interval"),
        default_deferrable() if deferrable is None else bool(deferrable),
    )


class CallingTask:
    """Mixin of the operators that dial: the arguments they share, kept and checked once."""

    agent_id: Any
    session_parameters: Mapping[str, Any] | Any
    hangup_on_answer_machine: bool | None
    vonage_studio_conn_id: str
    default_country: str | None
    strict_parameter_names: bool
    call_key: str | None
    redial_unknown: bool
    do_not_call: Any
    timeout: float | None

    def _keep_call_options(
        self,
        *,
        agent_id: Any,
        session_parameters: Any,
        hangup_on_answer_machine: bool | None,
        vonage_studio_conn_id: str,
        default_country: str | None,
        strict_parameter_names: bool,
        call_key: str | None,
        redial_unknown: bool,
        do_not_call: Any,
        timeout: float | None,
        status_url: Any = None,
    ) -> None:
        """Keep the shared arguments, checked as given (see :func:`checked_do_not_call`).

        :raises VonageStudioConfigError: / :raises InvalidSessionParameter: for a malformed
            argument, naming it; ``timeout`` outside ``(0, 120]``.
        """
        from airflow_provider_vonage_studio.validation import check_request_timeout

        self.agent_id = agent_id
        self.session_parameters = session_parameters
        self.hangup_on_answer_machine = hangup_on_answer_machine
        self.vonage_studio_conn_id = vonage_studio_conn_id
        self.default_country = default_country
        self.strict_parameter_names = strict_parameter_names
        self.call_key = call_key
        self.redial_unknown = redial_unknown
        self.do_not_call = checked_do_not_call(
            agent_id=agent_id,
            session_parameters=session_parameters,
            strict_parameter_names=strict_parameter_names,
            do_not_call=do_not_call,
            status_url=status_url,
        )
        self.timeout = check_request_timeout(timeout)

    def _check_rendered(self, status_url: Any = None) -> Any:
        """Check the rendered arguments (first thing in ``execute``, before any request or
        deferral); return the rendered ``do_not_call`` split into its entries.

        :raises VonageStudioConfigError: / :raises InvalidSessionParameter: naming the field.
        """
        return check_call_arguments(
            agent_id=self.agent_id,
            status_url=status_url,
            session_parameters=self.session_parameters,
            strict_parameter_names=self.strict_parameter_names,
            do_not_call=self.do_not_call,
            default_country=self.default_country,
            rendered=True,
        )

    def _rendered_call_key(self) -> str | None:
        """``call_key`` as mixed into call_refs (an empty rendering is no key)."""
        return None if self.call_key in (None, "") else str(self.call_key)

    @property
    def hook(self) -> VonageStudioHook:
        """A hook on the task's connection, with its request ``timeout``."""
        from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

        return VonageStudioHook(self.vonage_studio_conn_id, timeout=self.timeout)


def closed_window(
    hook: VonageStudioHook,
    to: Any,
    call_ref: str,
    *,
    calling_window: Any,
    default_country: str | None,
    redial_unknown: bool,
    timezone: str,
    now: datetime,
) -> tuple[datetime, str] | None:
    """When the callee's calling window is closed at ``now``: its next opening, and a line
    for the log (number redacted); ``None`` when the call may be dialed now.

    ``None`` too when there is no window, when ``to`` is malformed (the hook then refuses it
    without waiting) or when the ledger shows this call will not be dialed anyway (placed,
    refused or of unknown outcome on an earlier try). The zone is the one ``phonenumbers``
    gives for the number when there is exactly one, else ``timezone``.

    :raises VonageStudioConfigError: ``timezone`` is not a known zone.
    """
    from airflow_provider_vonage_studio.windows import parse_calling_window

    window = parse_calling_window(calling_window)
    if window is None:
        return None
    from airflow_provider_vonage_studio.batch import would_dial
    from airflow_provider_vonage_studio.destinations import normalize_destination, redact
    from airflow_provider_vonage_studio.exceptions import VonageStudioError
    from airflow_provider_vonage_studio.windows import dial_window_opening, recipient_timezone

    try:
        destination = normalize_destination(to, default_country=default_country)
    except VonageStudioError:
        return None
    record = hook.store.get_call(call_ref)
    if record is not None and not would_dial(record, redial_unknown):
        return None
    zone = recipient_timezone(destination, None, timezone)
    opening = dial_window_opening(now, window, zone)
    if opening is None:
        return None
    return opening, (
        f"Calling window {window[0].isoformat()}-{window[1].isoformat()} ({zone}) of {redact(destination)} "
        f"is closed; deferring the call until {opening.isoformat()} (no worker slot held)"
    )
