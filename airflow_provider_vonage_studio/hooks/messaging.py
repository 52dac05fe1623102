"""Outbound messages: SMS and WhatsApp conversations started through AI Studio's messaging agents.

``POST /messaging/conversation`` takes the key header calls take; its body is
``{to, agent_id, channel, status_url, session_parameters}`` and WhatsApp adds ``namespace``,
``template``, ``locale`` and ``components``. A message is a row of the call ledger (with its
``channel``), so it is sent exactly once through the steps a call goes through: the ledger
decision (:func:`~airflow_provider_vonage_studio.ledger.decide`), the do-not-call list, the
agent's pacing slot (the same key as the agent's calls: the docs do not say whether voice and
messaging share a budget, so the strictest reading is taken; ``pace_scope=key`` shares one
budget across agents) and the retry policy (:meth:`DialingMixin._dial_recorded` with this
endpoint). Its answer body is not documented and is read tolerantly.

Every field is checked before anything is written or sent, naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

from airflow_provider_vonage_studio.calls import CallState, TaskIdentity
from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    InvalidDestination,
    VonageStudioConfigError,
    VonageStudioError,
)
from airflow_provider_vonage_studio.hooks.dialing import DialingMixin, _normalized_numbers
from airflow_provider_vonage_studio.hooks.http import _json, parse_api_time
from airflow_provider_vonage_studio.ledger import Action, Decision, decide

if TYPE_CHECKING:
    import requests

    from airflow_provider_vonage_studio.calls import CallRecord

__all__ = [
    "CHANNELS",
    "MESSAGING_PATH",
    "WHATSAPP_ONLY",
    "WHATSAPP_REQUIRED",
    "MessageResult",
    "MessagingMixin",
    "check_message_fields",
    "elide_message_token",
    "message_body",
]

MESSAGING_PATH = "/messaging/conversation"
#: The channels of ``/messaging/conversation``.
CHANNELS = ("sms", "whatsapp")
#: What WhatsApp requires (its docs call them mandatory) and SMS refuses.
WHATSAPP_REQUIRED = ("namespace", "template", "locale")
#: Every WhatsApp-only field.
WHATSAPP_ONLY = (*WHATSAPP_REQUIRED, "components")
#: Longest namespace / template / locale accepted (WhatsApp's own names are far shorter).
MAX_TEMPLATE_FIELD = 512
#: Most template components (header, body, buttons: a handful in practice).
MAX_COMPONENTS = 50
#: Keys an undocumented answer may carry the session id under, most likely first.
_SESSION_KEYS = ("session_id", "sessionId", "conversation_id", "conversation_uuid", "id")
_START_KEYS = ("session_start_time", "sessionStartTime", "start_time", "timestamp")
_MESSAGE_PATH_RE = re.compile(r"(/messages/)[^/?#]+(/status)(?=$|[/?#])")


@dataclass(frozen=True)
class MessageResult:
    """What AI Studio answered for a message it accepted.

    ``session_id`` and ``session_start_time`` are ``None`` when the (undocumented) answer did
    not carry them in a readable form: the message was accepted all the same.
    """

    session_id: str | None
    session_start_time: datetime | None
    message_ref: str | None
    to: str
    agent_id: str
    channel: str
    status_url: str | None = None

    def to_xcom(self) -> dict[str, Any]:
        """JSON-safe dict for XCom: the number redacted, the start time ISO-8601 UTC, no token."""
        from airflow_provider_vonage_studio.destinations import redact

        start = self.session_start_time
        return {
            "session_id": self.session_id,
            "session_start_time": None if start is None else start.astimezone(timezone.utc).isoformat(),
            "message_ref": self.message_ref,
            "agent_id": self.agent_id,
            "channel": self.channel,
            "to": redact(self.to),
        }


def elide_message_token(url: str) -> str:
    """``url`` with the token of a ``/messages/<token>/status`` path replaced by ``…``."""
    return _MESSAGE_PATH_RE.sub(r"\1…\2", url)


def check_channel(channel: Any) -> str:
    """:raises VonageStudioConfigError: naming ``channel``, unless it is ``sms`` or ``whatsapp``."""
    if not isinstance(channel, str) or channel not in CHANNELS:
        raise VonageStudioConfigError(f"channel: expected 'sms' or 'whatsapp', got {channel!r}")
    return channel


def check_message_fields(
    channel: str,
    *,
    namespace: Any = None,
    template: Any = None,
    locale: Any = None,
    components: Any = None,
) -> dict[str, Any]:
    """WhatsApp's template fields checked for ``channel``; the ones to put in the body.

    :raises VonageStudioConfigError: naming the field: a WhatsApp-only field given with
        ``sms``; ``namespace``, ``template`` or ``locale`` missing with ``whatsapp``, not a
        non-empty string, over-long or holding control characters; ``components`` not a list
        of objects each with a string ``type`` and a ``parameters`` list of objects.
    """
    channel = check_channel(channel)
    given = {"namespace": namespace, "template": template, "locale": locale, "components": components}
    if channel == "sms":
        for name in WHATSAPP_ONLY:
            if given[name] is not None:
                raise VonageStudioConfigError(f"{name} is WhatsApp-only: not allowed with channel 'sms'")
        return {}
    fields: dict[str, Any] = {}
    for name in WHATSAPP_REQUIRED:
        fields[name] = _template_string(name, given[name])
    if components is not None:
        fields["components"] = _check_components(components)
    return fields


def _template_string(name: str, value: Any) -> str:
    from airflow_provider_vonage_studio.validation import has_control_characters

    if value is None or (isinstance(value, str) and not value.strip()):
        raise VonageStudioConfigError(f"WhatsApp needs {name}: set {name} for channel 'whatsapp'")
    if not isinstance(value, str):
        raise VonageStudioConfigError(f"{name}: expected a string, got {type(value).__name__}")
    value = value.strip()
    if len(value) > MAX_TEMPLATE_FIELD or has_control_characters(value):
        raise VonageStudioConfigError(
            f"{name}: must be at most {MAX_TEMPLATE_FIELD} characters without control characters"
        )
    return value


def _check_components(components: Any) -> list[dict[str, Any]]:
    """WhatsApp template components: ``[{"type": "body", "parameters": [{"type": "text", ...}]}]``."""
    if not isinstance(components, (list, tuple)):
        raise VonageStudioConfigError(
            "components: expected a list of objects with 'type' and 'parameters', "
            f"got {type(components).__name__}"
        )
    if len(components) > MAX_COMPONENTS:
        raise VonageStudioConfigError(
            f"components: at most {MAX_COMPONENTS} components, got {len(components)}"
        )
    checked = []
    for index, item in enumerate(components):
        where = f"components[{index}]"
        if not isinstance(item, Mapping):
            raise VonageStudioConfigError(f"{where}: expected an object, got {type(item).__name__}")
        if not isinstance(item.get("type"), str) or not item["type"].strip():
            raise VonageStudioConfigError(f"{where}.type: expected a non-empty string (header, body, button)")
        params = item.get("parameters")
        if not isinstance(params, (list, tuple)):
            raise VonageStudioConfigError(f"{where}.parameters: expected a list, got {type(params).__name__}")
        for number, param in enumerate(params):
            if not isinstance(param, Mapping) or not isinstance(param.get("type"), str):
                raise VonageStudioConfigError(
                    f"{where}.parameters[{number}]: expected an object with a string 'type' (e.g. text)"
                )
        checked.append({**dict(item), "parameters": [dict(p) for p in params]})
    try:
        import json

        json.dumps(checked)
    except (TypeError, ValueError):
        raise VonageStudioConfigError(
            "components: must be JSON-serialisable (strings, numbers, lists, objects)"
        ) from None
    return checked


def message_body(
    to: str,
    agent_id: str,
    *,
    channel: str,
    session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    status_url: str | None,
    default_country: str | None,
    strict_parameter_names: bool,
    template_fields: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``/messaging/conversation`` body without ``status_url`` when none is given yet,
    every input checked (nothing is written or sent before).

    :raises InvalidDestination: ``to`` is not a possible phone number (SIP URIs cannot take a message).
    :raises InvalidSessionParameter, VonageStudioConfigError: naming the field.
    """
    from airflow_provider_vonage_studio.destinations import normalize_destination
    from airflow_provider_vonage_studio.params import normalize_session_parameters
    from airflow_provider_vonage_studio.validation import check_agent_id, check_status_url

    agent_id = check_agent_id(agent_id)
    destination = normalize_destination(to, default_country=default_country)
    if destination.startswith("sip"):
        raise InvalidDestination(f"to: {channel} needs a phone number, not a SIP URI")
    params = normalize_session_parameters(session_parameters, strict_names=strict_parameter_names)
    body: dict[str, Any] = {"to": destination, "agent_id": agent_id, "channel": channel}
    if status_url is not None:
        body["status_url"] = check_status_url(status_url)
    if params:
        body["session_parameters"] = params
    body.update(template_fields)
    return body


class MessagingMixin(DialingMixin):
    """The hook's ``send_message``: one message through the ledger, pacing and retries of calls."""

    if TYPE_CHECKING:
        # Provided by VonageStudioHook (the parts never import the hook module).
        def settle_abandoned(self, records: Any, *, reason: str = ..., doing: str = ...) -> list[str]: ...

        def _restart(self, earlier: CallRecord, call_ref: str) -> None: ...

        def _check_do_not_call(
            self, destination: str, extra: Any, default_country: str | None = None
        ) -> None: ...

    def message_status_url_for(self, message_ref: str) -> str | None:
        """``<callback_base_url>/messages/<signed token>/status`` when the connection has both
        ``callback_base_url`` and ``callback_secret``, else ``None``."""
        cfg = self.config
        if not (cfg.callback_base_url and cfg.callback_secret):
            return None
        from airflow_provider_vonage_studio.signing import sign_token

        return f"{cfg.callback_base_url}/messages/{sign_token(message_ref, cfg.callback_secret)}/status"

    def send_message(
        self,
        to: str,
        agent_id: str,
        *,
        channel: str,
        session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        status_url: str | None = None,
        namespace: str | None = None,
        template: str | None = None,
        locale: str | None = None,
        components: Sequence[Mapping[str, Any]] | None = None,
        call_ref: str | None = None,
        identity: TaskIdentity | None = None,
        recipient_key: str | None = None,
        redial_unknown: bool = False,
        extra_do_not_call: str | Sequence[str] | None = (),
        default_country: str | None = None,
        strict_parameter_names: bool = True,
    ) -> MessageResult:
        """Start one SMS or WhatsApp conversation from the messaging agent ``agent_id`` to ``to``.

        ``call_ref`` is the message's ledger reference: with it, the message is sent exactly once
        (a message accepted earlier returns its result without a request, one refused raises the
        same error, one whose outcome is unknown raises :class:`CallOutcomeUnknown` unless
        ``redial_unknown=True``). ``status_url`` is mandatory for the API: without one the hook
        builds ``<callback_base_url>/messages/<token>/status`` for the ``call_ref``.

        :raises VonageStudioConfigError: naming the field, for a bad ``channel``, a WhatsApp-only
            field with ``sms``, a missing WhatsApp field, malformed ``components``, an empty or
            malformed ``agent_id``, no ``status_url`` (and none can be built), a malformed
            ``extra_do_not_call``, or a ``call_ref`` used earlier for another destination, agent
            or channel.
        :raises InvalidDestination: ``to`` is not a possible phone number.
        :raises InvalidSessionParameter: the session parameters break AI Studio's rules.
        :raises DoNotCall: the destination is on the do-not-call list.
        :raises VonageStudioError: the API's refusals, mapped as for calls (400, 401, 404, 429, 5xx).
        :raises CallOutcomeUnknown: the request was sent and no answer came back.
        """
        fields = check_message_fields(
            channel, namespace=namespace, template=template, locale=locale, components=components
        )
        body = message_body(
            to,
            agent_id,
            channel=channel,
            session_parameters=session_parameters,
            status_url=status_url,
            default_country=default_country,
            strict_parameter_names=strict_parameter_names,
            template_fields=fields,
        )
        _normalized_numbers(extra_do_not_call, default_country)
        if identity is not None and not isinstance(identity, TaskIdentity):
            raise VonageStudioConfigError(f"identity: expected a TaskIdentity, got {type(identity).__name__}")
        self.config  # noqa: B018 -- a broken connection fails here, before the ledger is touched
        self._add_status_url(body, call_ref)
        if call_ref is None:
            self._check_do_not_call(body["to"], extra_do_not_call, default_country)
            return self._post_message(body, None)
        return self._send_recorded_message(
            body,
            call_ref,
            identity=identity,
            recipient_key=recipient_key,
            redial_unknown=redial_unknown,
            extra_do_not_call=extra_do_not_call,
            default_country=default_country,
        )

    def _add_status_url(self, body: dict[str, Any], call_ref: str | None) -> None:
        """Give ``body`` a signed ``status_url`` for ``call_ref`` unless it has one.

        :raises VonageStudioConfigError: naming ``status_url``, when none can be built (no
            ``call_ref``, or the connection lacks ``callback_base_url``/``callback_secret``).
        """
        if "status_url" not in body:
            built = None if call_ref is None else self.message_status_url_for(call_ref)
            if built is None:
                raise VonageStudioConfigError(
                    "status_url: AI Studio requires one for every message; pass status_url, or set "
                    "extras 'callback_base_url' and 'callback_secret' on the connection (and a "
                    "call_ref) so the hook builds a signed one"
                )
            body["status_url"] = built

    def _send_recorded_message(
        self,
        body: dict[str, Any],
        ref: str,
        *,
        identity: TaskIdentity | None,
        recipient_key: str | None,
        redial_unknown: bool,
        extra_do_not_call: Any,
        default_country: str | None,
    ) -> MessageResult:
        """``send_message`` with a ``call_ref``: read the ledger row, decide, act (as calls do)."""
        store = self.store
        destination, agent_id, channel = body["to"], body["agent_id"], body["channel"]
        with store.unavailable_as_error(f"before sending message {ref}"):
            earlier = store.get_call(ref)
        decision = decide(earlier, destination, agent_id, redial_unknown=redial_unknown)
        if decision.sends:
            self._check_do_not_call(destination, extra_do_not_call, default_country)
        if earlier is None:
            task: dict[str, Any] = {} if identity is None else identity.row_fields()
            with store.unavailable_as_error(f"before sending message {ref}"):
                created, earlier = store.begin_message(
                    ref,
                    agent_id=agent_id,
                    destination=destination,
                    channel=channel,
                    recipient_key=recipient_key,
                    **task,
                )
            if created:
                return self._post_message(body, ref)
            decision = decide(earlier, destination, agent_id, redial_unknown=redial_unknown)
        if (earlier.channel or "voice") != channel:
            decision = Decision(Action.MISMATCH)
        return self._act_on_message(decision, earlier, body, ref)

    def _act_on_message(
        self, decision: Decision, earlier: CallRecord, body: dict[str, Any], ref: str
    ) -> MessageResult:
        """Carry out ``decision`` for a message whose ledger row ``earlier`` already exists."""
        from airflow_provider_vonage_studio.destinations import redact

        action = decision.action
        if action is Action.MISMATCH:
            raise VonageStudioConfigError(
                f"call_ref {ref} was used earlier for {redact(earlier.destination)} from agent "
                f"{earlier.agent_id!r} on channel {earlier.channel or 'voice'!r}; a retry must send the "
                "same message. Use a new message key to message someone else."
            )
        if action is Action.REUSE:
            self.log.info("Message %s was accepted on an earlier try; not sending again.", ref)
            return _message_from_record(earlier, body.get("status_url"))
        if action is Action.RAISE:
            assert decision.error is not None
            raise decision.error
        if action is Action.UNKNOWN:
            if decision.abandoned:
                self.settle_abandoned(
                    [earlier],
                    reason="an earlier try ended while sending",
                    doing=f"before sending message {ref}",
                )
            raise CallOutcomeUnknown(
                f"message {ref} to {redact(earlier.destination)} was sent on an earlier try and its outcome "
                f"is unknown ({CallState(earlier.state).value}): it is not sent again. To send it again on "
                "purpose set redial_unknown=True or use a new message key."
            )
        if action is Action.REDIAL:
            self._restart(earlier, ref)
        return self._post_message(body, ref)

    def _post_message(self, body: dict[str, Any], ref: str | None) -> MessageResult:
        """Send (paced, retried; recorded in the ledger when ``ref`` is given).

        The dialing steps log the ``status_url`` they are given: they get it with the token
        elided (the token is a capability to post statuses); the body keeps the real one.
        """
        shown = elide_message_token(body["status_url"])
        if ref is None:
            result = self._post_call(
                body, call_ref=None, status_url=shown, path=MESSAGING_PATH, read=self._message_result
            )
        else:
            result = self._dial_recorded(body, ref, shown, path=MESSAGING_PATH, read=self._message_result)
        return cast("MessageResult", result)

    def _message_result(
        self, resp: requests.Response, body: dict[str, Any], ref: str | None, status_url: str | None
    ) -> MessageResult:
        """The :class:`MessageResult` of a 2xx answer, read tolerantly: the answer is not
        documented, and a 2xx is AI Studio accepting the message whatever its body says."""
        try:
            data = _json(resp)
        except VonageStudioError:
            data = None
        session_id, start = _read_answer(data)
        if session_id is None:
            shape = sorted(data) if isinstance(data, dict) else type(data).__name__
            self.log.warning(
                "Message %s accepted (%d) without a readable session id (body: %s)",
                ref,
                resp.status_code,
                shape,
            )
        else:
            self.log.info("Sent message %s: session %s", ref or "(no ref)", session_id)
        return MessageResult(
            session_id=session_id,
            session_start_time=start,
            message_ref=ref,
            to=body["to"],
            agent_id=body["agent_id"],
            channel=body["channel"],
            status_url=body["status_url"],
        )


def _read_answer(data: Any) -> tuple[str | None, datetime | None]:
    """Session id and start time from an answer body of unknown shape (top level, or one
    wrapper object such as ``data``); ``None`` for what is not there or unreadable."""
    candidates = [data] if isinstance(data, Mapping) else []
    if isinstance(data, Mapping):
        candidates += [
            v for k, v in data.items() if k in ("data", "session", "result") and isinstance(v, Mapping)
        ]
    session_id: str | None = None
    start: datetime | None = None
    for item in candidates:
        for key in _SESSION_KEYS:
            value = item.get(key)
            if (
                session_id is None
                and isinstance(value, (str, int))
                and not isinstance(value, bool)
                and str(value).strip()
            ):
                session_id = str(value).strip()[:255]
        for key in _START_KEYS:
            value = item.get(key)
            if start is None and isinstance(value, str):
                try:
                    start = parse_api_time(value)
                except ValueError:
                    continue
    return session_id, start


def _message_from_record(record: CallRecord, status_url: str | None) -> MessageResult:
    return MessageResult(
        session_id=record.session_id,
        session_start_time=record.session_start_time,
        message_ref=record.call_ref,
        to=record.destination,
        agent_id=record.agent_id,
        channel=record.channel or "",
        status_url=status_url,
    )
