"""Operators that send SMS and WhatsApp messages through AI Studio's messaging agents.

Thin, like the calling operators: they check their arguments (static ones when the DAG is
parsed, all of them again once rendered, before any request), build the message's ledger
reference from the task instance, and hand each message to
:meth:`~airflow_provider_vonage_studio.hooks.messaging.MessagingMixin.send_message`, which
sends it exactly once (a retried task finds its earlier messages in the ledger).
Imported when DAG files are parsed: nothing heavy at the top.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider_vonage_studio._compat import AirflowFailException, BaseOperator
from airflow_provider_vonage_studio.events import fail_task
from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioError
from airflow_provider_vonage_studio.links import CallOutcomesLink
from airflow_provider_vonage_studio.operators._calling import checked_do_not_call, task_identity
from airflow_provider_vonage_studio.validation import check_call_arguments, is_templated

if TYPE_CHECKING:
    from airflow_provider_vonage_studio._compat import Context
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
    from airflow_provider_vonage_studio.recipients import Recipient

__all__ = ["SendMessageOperator", "SendMessagesOperator"]

_TEMPLATE_FIELDS = ("namespace", "template", "locale", "components")


class _MessagingTask(BaseOperator):
    """What the two messaging operators share: their arguments, kept and checked once."""

    template_fields_renderers: ClassVar[dict[str, str]] = {
        "session_parameters": "json",
        "components": "json",
    }

    def __init__(
        self,
        *,
        agent_id: str,
        channel: str,
        session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        namespace: str | None = None,
        template: str | None = None,
        locale: str | None = None,
        components: Sequence[Mapping[str, Any]] | None = None,
        status_url: str | None = None,
        vonage_studio_conn_id: str = "vonage_studio_default",
        default_country: str | None = None,
        strict_parameter_names: bool = True,
        message_key: str | None = None,
        redial_unknown: bool = False,
        do_not_call: str | Sequence[str] | None = (),
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from airflow_provider_vonage_studio.hooks.messaging import check_channel
        from airflow_provider_vonage_studio.validation import check_request_timeout

        self.channel = check_channel(channel)
        self.agent_id = agent_id
        self.session_parameters = session_parameters
        self.namespace, self.template, self.locale, self.components = namespace, template, locale, components
        self.status_url = status_url
        self.vonage_studio_conn_id = vonage_studio_conn_id
        self.default_country = default_country
        self.strict_parameter_names = strict_parameter_names
        self.message_key = message_key
        self.redial_unknown = redial_unknown
        # Checked here (values that are not templates), so a mistake fails when the DAG is parsed.
        self.do_not_call = checked_do_not_call(
            agent_id=agent_id,
            session_parameters=session_parameters,
            strict_parameter_names=strict_parameter_names,
            do_not_call=do_not_call,
            status_url=status_url,
        )
        self._template_fields(rendered=False)
        self.timeout = check_request_timeout(timeout)

    def _template_fields(self, *, rendered: bool) -> dict[str, Any]:
        """WhatsApp's fields for ``channel``, checked (at construction, a template is left for
        ``execute``; a field given with ``sms`` or missing with ``whatsapp`` fails at once).

        :raises VonageStudioConfigError: naming the field.
        """
        from airflow_provider_vonage_studio.hooks.messaging import check_message_fields

        given = {name: getattr(self, name) for name in _TEMPLATE_FIELDS}
        if not rendered:
            # A template stands for a value of the right kind: check the others now.
            given = {
                name: ("-" if name != "components" else []) if is_templated(value) else value
                for name, value in given.items()
            }
        return check_message_fields(self.channel, **given)

    def _check_rendered(self) -> tuple[Any, dict[str, Any]]:
        """Every argument once rendered (first thing in ``execute``): the do-not-call entries and
        WhatsApp's fields. :raises VonageStudioConfigError: / InvalidSessionParameter: naming the field."""
        do_not_call = check_call_arguments(
            agent_id=self.agent_id,
            status_url=self.status_url or None,
            session_parameters=self.session_parameters,
            strict_parameter_names=self.strict_parameter_names,
            do_not_call=self.do_not_call,
            default_country=self.default_country,
            rendered=True,
        )
        return do_not_call, self._template_fields(rendered=True)

    def _key(self, recipient_key: str | None = None) -> str:
        """The part of a message's ledger reference this task adds (``message[/<message_key>]``,
        then ``/<recipient>`` in a batch): a retry finds the same rows, a new key sends again."""
        key = "message" if self.message_key in (None, "") else f"message/{self.message_key}"
        return key if recipient_key is None else f"{key}/{recipient_key}"

    @property
    def hook(self) -> VonageStudioHook:
        """A hook on the task's connection, with its request ``timeout``."""
        from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

        return VonageStudioHook(self.vonage_studio_conn_id, timeout=self.timeout)


class SendMessageOperator(_MessagingTask):
    """Send one SMS or WhatsApp message from an AI Studio messaging agent (mappable:
    ``SendMessageOperator.partial(...).expand(to=[...])``).

    :param to: the phone number (``+44 7700 900123``, ``447700900123``). Templated.
    :param agent_id: the published messaging agent. Templated.
    :param channel: ``"sms"`` or ``"whatsapp"``.
    :param session_parameters: parameters for the agent (mapping or the API's list of
        ``{"name", "value"}``); values are sent as strings. Templated.
    :param namespace: WhatsApp template namespace (WhatsApp only; required there). Templated.
    :param template: WhatsApp template name (WhatsApp only; required there). Templated.
    :param locale: WhatsApp template locale, e.g. ``en_GB`` (WhatsApp only; required there). Templated.
    :param components: WhatsApp template components, a list of ``{"type", "parameters": [...]}``
        (WhatsApp only; optional). Templated.
    :param status_url: where the agent posts the message's statuses (mandatory for the API).
        Default: the connection's receiver (``callback_base_url`` + a signed token). Templated.
    :param message_key: mixed into the message's ledger reference; change it to send the same
        message again on purpose within one task instance. Templated.
    :param redial_unknown: send again when an earlier try's outcome is unknown (it may have arrived).
    :param do_not_call: extra numbers never to message, on top of the store's do-not-call list.
        Templated.
    :param default_country: ISO country for numbers typed without a country code.
    :param strict_parameter_names: refuse parameter names that break AI Studio's ``UPPER_CASE`` rule.
    :param timeout: read timeout of the request in seconds (default: the connection's).

    Returns (XCom) a JSON-safe dict: ``session_id``, ``session_start_time`` (ISO-8601 UTC or
    ``None``), ``message_ref``, ``agent_id``, ``channel`` and the redacted ``to``.
    """

    template_fields: Sequence[str] = (
        "to",
        "agent_id",
        "session_parameters",
        *_TEMPLATE_FIELDS,
        "status_url",
        "message_key",
        "do_not_call",
    )
    ui_color = "#b8f5d0"
    operator_extra_links = (CallOutcomesLink(),)

    def __init__(self, *, to: str, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.to = to

    def message_ref(self, context: Context) -> str:
        """Deterministic ledger reference of this task instance's message (the same on every retry)."""
        return task_identity(context).call_ref(self._key())

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        try:
            do_not_call, fields = self._check_rendered()
            result = hook.send_message(
                self.to,
                self.agent_id,
                channel=self.channel,
                session_parameters=self.session_parameters,
                status_url=self.status_url or None,
                call_ref=self.message_ref(context),
                identity=task_identity(context),
                redial_unknown=self.redial_unknown,
                extra_do_not_call=do_not_call,
                default_country=self.default_country,
                strict_parameter_names=self.strict_parameter_names,
                **fields,
            )
        except VonageStudioError as exc:
            raise fail_task(exc) from exc
        return result.to_xcom()


class SendMessagesOperator(_MessagingTask):
    """Send one message to each of a list of recipients from one task: paced (the agent's
    slots, shared with its calls), exactly once per recipient, resumable after a crash.

    Each recipient has its own ledger row, keyed as ``MakeCallsOperator``'s recipients are
    (``"key:<key>"`` or ``"to:<normalised number>"``, under ``message[/<message_key>]``), so a
    retried task sends only to those not sent yet; a recipient whose send was cut off (the
    worker was killed) is reported ``unknown`` and not sent again.

    :param recipients: numbers, or mappings with ``to`` and optional ``session_parameters``
        (merged over the batch's by name) and ``key``. Templated.
    :param fail_on_rejected: fail the task at the end when any recipient was rejected or has
        an unknown outcome (default); the results are then pushed under the XCom key ``results``.
    :param progress_interval: seconds between progress lines in the log.

    The other parameters are :class:`SendMessageOperator`'s, for every recipient.

    Returns (XCom) a JSON-safe list, one dict per recipient in order: ``index``, ``to``
    (redacted), ``key``, ``message_ref``, ``result`` (``sent``, ``rejected``, ``skipped`` or
    ``unknown``), ``reason``, ``session_id``.

    :raises AirflowFailException: bad arguments (before any request); the key or the agent
        refused (the batch stops); at the end, recipients rejected or unknown.
    :raises VonageStudioError: retryable (429s, 5xx, unreachable, the store down) outlasted the
        hook's retries: the batch stops and a task retry resumes it.
    """

    template_fields: Sequence[str] = (
        "recipients",
        "agent_id",
        "session_parameters",
        *_TEMPLATE_FIELDS,
        "status_url",
        "message_key",
        "do_not_call",
    )
    ui_color = "#b8f5e8"
    operator_extra_links = (CallOutcomesLink(),)

    def __init__(
        self, *, recipients: Any, fail_on_rejected: bool = True, progress_interval: float = 5.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        from airflow_provider_vonage_studio.outcome import normalize_interval

        self.recipients = recipients
        self.fail_on_rejected = bool(fail_on_rejected)
        self.progress_interval = normalize_interval(progress_interval, "progress_interval")

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from airflow_provider_vonage_studio.recipients import plan_recipients

        hook = self.hook
        try:
            do_not_call, fields = self._check_rendered()
            if not (self.status_url or hook.message_status_url_for("vs-check")):
                # Every recipient would be refused for it: one failure, before the first send.
                raise VonageStudioConfigError(
                    "status_url: AI Studio requires one for every message; pass status_url, or set extras "
                    f"'callback_base_url' and 'callback_secret' on connection {self.vonage_studio_conn_id!r}"
                )
            plan = plan_recipients(
                self.recipients,
                default_country=self.default_country,
                session_parameters=self.session_parameters,
                strict_parameter_names=self.strict_parameter_names,
            )
        except VonageStudioError as exc:
            raise fail_task(exc) from exc
        self.log.info("Sending %d %s message(s) from agent %s", len(plan), self.channel, self.agent_id)
        results: list[dict[str, Any]] = []
        last_log = time.monotonic()
        for recipient in plan:
            try:
                results.append(self._send_one(hook, context, recipient, do_not_call, fields))
            except VonageStudioError as exc:
                # The key, the agent or the service: nobody else can be sent to either.
                # Refused (rejected, recorded) or not sent at all (retryable: the row is queued).
                results.append(_result(recipient, None, "skipped" if exc.retryable else "rejected", str(exc)))
                stopped = f"not sent: the batch stopped ({exc})"
                results += [_result(r, None, "skipped", stopped) for r in plan[len(results) :]]
                context["ti"].xcom_push(key="results", value=results)
                self.log.error("The batch stopped sending: %s", exc)
                raise fail_task(exc) from exc
            if time.monotonic() - last_log >= self.progress_interval:
                last_log = time.monotonic()
                self.log.info("Messages: %d/%d done", len(results), len(plan))
        return self._finish(context, results)

    def _send_one(
        self,
        hook: VonageStudioHook,
        context: Context,
        recipient: Recipient,
        do_not_call: Any,
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        """One recipient's send and its result; raises what stops the batch (see the class)."""
        from airflow_provider_vonage_studio.exceptions import (
            CallOutcomeUnknown,
            DoNotCall,
            VonageStudioBadRequest,
        )

        if recipient.error is not None:
            return _result(recipient, None, "rejected", recipient.error)
        if recipient.duplicate_of is not None:
            return _result(recipient, None, "skipped", "duplicate")
        ref = task_identity(context).call_ref(self._key(recipient.ref_key))
        refused = _refused_earlier(hook, ref)
        if refused is not None:
            # History of an earlier try (a refused key, say): reported, neither re-sent nor a stop.
            return _result(recipient, ref, "rejected", refused)
        try:
            sent = hook.send_message(
                recipient.destination or recipient.to,
                self.agent_id,
                channel=self.channel,
                session_parameters=recipient.parameters_list(),
                status_url=self.status_url or None,
                call_ref=ref,
                identity=task_identity(context),
                recipient_key=recipient.key,
                redial_unknown=self.redial_unknown,
                extra_do_not_call=do_not_call,
                default_country=self.default_country,
                strict_parameter_names=self.strict_parameter_names,
                **fields,
            )
        except DoNotCall:
            return _result(recipient, ref, "skipped", "do-not-call")
        except CallOutcomeUnknown as exc:
            return _result(recipient, ref, "unknown", exc.message)
        except (VonageStudioConfigError, VonageStudioBadRequest) as exc:
            return _result(recipient, ref, "rejected", exc.message)
        return _result(recipient, ref, "sent", None, sent.session_id)

    def _finish(self, context: Context, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for item in results:
            counts[item["result"]] = counts.get(item["result"], 0) + 1
        self.log.info("Messages done: %s", ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none")
        failed = counts.get("rejected", 0) + counts.get("unknown", 0)
        if self.fail_on_rejected and failed:
            context["ti"].xcom_push(key="results", value=results)
            raise AirflowFailException(
                f"{failed} of {len(results)} recipient(s) were rejected or have an unknown outcome "
                "(results under the XCom key 'results')"
            )
        return results


def _refused_earlier(hook: VonageStudioHook, ref: str) -> str | None:
    """Why the message ``ref`` was refused for good on an earlier try, or ``None``."""
    from airflow_provider_vonage_studio.calls import CallState
    from airflow_provider_vonage_studio.ledger import rejection_of

    with hook.store.unavailable_as_error(f"before sending message {ref}"):
        earlier = hook.store.get_call(ref)
    if earlier is None or CallState(earlier.state) is not CallState.REJECTED:
        return None
    error = rejection_of(earlier)
    return None if error.retryable else str(error)


def _result(
    recipient: Recipient, ref: str | None, result: str, reason: str | None, session_id: str | None = None
) -> dict[str, Any]:
    return {
        "index": recipient.index,
        "to": recipient.shown,
        "key": recipient.key,
        "message_ref": ref,
        "result": result,
        "reason": reason,
        "session_id": session_id,
    }
