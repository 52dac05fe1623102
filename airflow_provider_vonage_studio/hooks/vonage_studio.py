"""The hook that owns every conversation with Vonage AI Studio.

Only this package talks to the API. :class:`VonageStudioHook` is thin: it reads the connection,
applies the exactly-once decision (:func:`~airflow_provider_vonage_studio.ledger.decide`) to a
call's ledger row and hands the dial on. Its parts live beside it, each in its own module and
never importing this one:

* :mod:`.connection` — parsing and checking the connection, the UI form;
* :mod:`.http` — one ``requests.Session``, classified attempts, the tenacity retry policy;
* :mod:`.pacing` — shared slots and the send gate in the call store;
* :mod:`.dialing` — the make-call request and the ledger writes after it;
* :mod:`.insights` — session parameters and session search, and their body readers.

(Over 500 lines only by the block of old names re-exported for one release, about 90 lines.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio._compat import BaseHook
from airflow_provider_vonage_studio.calls import CallState, TaskIdentity
from airflow_provider_vonage_studio.exceptions import (  # error_for & co. re-exported: their old home
    PRECONFIGURED_SESSION_MESSAGE,  # noqa: F401
    RETRYABLE_STATUSES,  # noqa: F401
    CallOutcomeUnknown,
    CallPlacedNotRecorded,  # noqa: F401
    CallStoreUnavailable,  # noqa: F401
    DoNotCall,
    VonageStudioConfigError,
    VonageStudioConnectionError,  # noqa: F401
    VonageStudioError,
    VonageStudioRateLimited,  # noqa: F401
    error_for,
)

# Kept importable for one release: these lived in this module before the hook was split.
from airflow_provider_vonage_studio.hooks.connection import (  # noqa: F401
    ALLOWED_CALLS_PER_SECOND,
    DEFAULT_PACING_MARGIN,
    DEFAULT_TIMEOUT,
    MIN_CALLBACK_SECRET_LENGTH,
    PACE_SCOPES,
    REGION_HOSTS,
    ConnectionConfig,
    _base_url,
    _extra_str,
    _mask,
    _pacing_margin,
    connection_form_widgets,
    parse_connection,
    ui_field_behaviour,
)
from airflow_provider_vonage_studio.hooks.dialing import (  # noqa: F401
    CallResult,
    DialingMixin,
    _normalize_numbers,
    _normalized_cached,
    _normalized_numbers,
    _result_from_record,
    call_body,
)
from airflow_provider_vonage_studio.hooks.http import (  # noqa: F401
    CONNECT_TIMEOUT,
    MAKE_CALL_PATH,
    _error_message,
    _json,
    _reason,
    _Retry,
    _retry_after,
    parse_api_time,
)
from airflow_provider_vonage_studio.hooks.insights import (  # noqa: F401
    INSIGHTS_MAX_RANGE,
    INSIGHTS_MAX_WRAPPERS,
    InsightsMixin,
    _field_list,
    _fmt_dt,
    _is_scalar,
    _is_wrapper,
    _iso_param,
    _parameters_container,
    _parameters_form,
    _quote,
    _search_form,
    _session_at,
    _shape,
    _shape_at,
    _str,
    _unwrapped,
    parse_parameters_body,
    parse_search_body,
)
from airflow_provider_vonage_studio.hooks.messaging import MessageResult, MessagingMixin  # noqa: F401
from airflow_provider_vonage_studio.hooks.pacing import _LedgerRow  # noqa: F401
from airflow_provider_vonage_studio.ledger import Action, Decision, decide
from airflow_provider_vonage_studio.timeutil import is_date_only, to_utc  # noqa: F401

if TYPE_CHECKING:
    import requests

    from airflow_provider_vonage_studio.calls import CallRecord
    from airflow_provider_vonage_studio.store import CallStore

log = logging.getLogger(__name__)

#: Why :meth:`VonageStudioHook.settle_abandoned` marks a row ``unknown`` unless told otherwise.
ABANDONED_REASON = (
    "an earlier try of the task ended while this call was being dialed (worker killed?): "
    "the request may have reached AI Studio, so whether the phone rang is unknown"
)

_IDENTITY_FIELDS = ("dag_id", "run_id", "task_id", "map_index")


class VonageStudioHook(MessagingMixin, DialingMixin, InsightsMixin, BaseHook):
    """Talk to Vonage AI Studio: place calls, test the key, read Insights.

    :param vonage_studio_conn_id: Airflow connection of type ``vonage_studio``.
    :param timeout: read timeout in seconds; overrides the connection's ``timeout`` extra (default 30).
    :param store: the :class:`~airflow_provider_vonage_studio.store.CallStore` for the ledger and pacing;
        defaults to the configured store (``[vonage_studio] store_url``).
    :param max_attempts: attempts per request for retryable failures (connect errors, 429, 502/503/504).
    :param max_retry_seconds: total time budget of those attempts.
    :param retry_backoff: first back-off in seconds (doubled each attempt, jittered, capped at 30 s).
    :param pace: reserve a shared slot before each dial (leave on; off only for isolated unit tests).
    :param max_rate_limited_seconds: how long a dial keeps retrying 429s through the shared pacer
        (they do not count against ``max_attempts``); after that the call is left ``queued`` (not
        placed) and :class:`VonageStudioRateLimited` tells Airflow to retry the task.
    :param store_retry_seconds: how long a ledger write after a request (``placed``, ``rejected``,
        ``unknown``) is retried through a call-store outage before giving up.
    """

    conn_name_attr = "vonage_studio_conn_id"
    default_conn_name = "vonage_studio_default"
    conn_type = "vonage_studio"
    hook_name = "Vonage AI Studio"

    def __init__(
        self,
        vonage_studio_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        store: CallStore | None = None,
        max_attempts: int = 6,
        max_retry_seconds: float = 120.0,
        retry_backoff: float = 0.5,
        pace: bool = True,
        max_rate_limited_seconds: float = 600.0,
        store_retry_seconds: float = 60.0,
    ) -> None:
        super().__init__()
        from airflow_provider_vonage_studio.validation import (
            MAX_REQUEST_TIMEOUT,
            MAX_RETRY_BACKOFF,
            MAX_RETRY_TIME,
            check_seconds,
        )

        self.vonage_studio_conn_id = vonage_studio_conn_id
        # Checked here, not when the connection is first read: a bad value fails the task
        # before anything is written to the ledger.
        self._timeout = (
            None
            if timeout is None
            else check_seconds(timeout, field="timeout", exclusive_minimum=True, maximum=MAX_REQUEST_TIMEOUT)
        )
        self._store = store
        if (
            isinstance(max_attempts, bool)
            or not isinstance(max_attempts, int)
            or not 1 <= max_attempts <= 100
        ):
            raise VonageStudioConfigError(f"max_attempts: expected an integer 1..100, got {max_attempts!r}")
        self.max_attempts = max_attempts
        self.max_retry_seconds = check_seconds(
            max_retry_seconds, field="max_retry_seconds", maximum=MAX_RETRY_TIME
        )
        self.retry_backoff = check_seconds(retry_backoff, field="retry_backoff", maximum=MAX_RETRY_BACKOFF)
        self.pace = pace
        self.max_rate_limited_seconds = check_seconds(
            max_rate_limited_seconds, field="max_rate_limited_seconds"
        )
        self.store_retry_seconds = check_seconds(store_retry_seconds, field="store_retry_seconds")
        self.rate_limited_count = 0
        # Indirection so tests can observe the waits without sleeping.
        self._sleep: Callable[[float], None] = time.sleep
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form (Airflow 3.1 reads these; >= 3.2 reads conn-fields)."""
        return connection_form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel and hide the generic fields (Airflow 3.1; >= 3.2 reads ui-field-behaviour)."""
        return ui_field_behaviour()

    @cached_property
    def config(self) -> ConnectionConfig:
        """The parsed connection. Registers the key and secret with Airflow's log masker."""
        conn = self.get_connection(self.vonage_studio_conn_id)
        config = parse_connection(conn, timeout=self._timeout)
        _mask(config.api_key)
        if config.callback_secret:
            _mask(config.callback_secret)
        return config

    @cached_property
    def session(self) -> requests.Session:
        """One HTTP session per hook: keep-alive across the calls of a batch."""
        import requests

        from airflow_provider_vonage_studio import __version__

        session = requests.Session()
        session.headers.update(
            {
                "X-Vgai-Key": self.config.api_key,
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"airflow-provider-vonage-studio/{__version__}",
            }
        )
        return session

    def get_conn(self) -> requests.Session:
        """The hook's ``requests.Session`` (Airflow's conventional accessor)."""
        return self.session

    @property
    def store(self) -> CallStore:
        """The call store (ledger, statuses, pacing slots), opened on first use."""
        if self._store is None:
            from airflow_provider_vonage_studio.store import CallStore

            self._store = CallStore.default()
        return self._store

    def status_url_for(self, call_ref: str) -> str | None:
        """``<callback_base_url>/calls/<signed token>/status`` when the connection has both
        ``callback_base_url`` and ``callback_secret``, else ``None``."""
        cfg = self.config
        if not (cfg.callback_base_url and cfg.callback_secret):
            return None
        from airflow_provider_vonage_studio.callbacks.tokens import build_status_url

        return build_status_url(cfg.callback_base_url, call_ref, cfg.callback_secret)

    def test_connection(self) -> tuple[bool, str]:
        """Check the key without placing a call. Never raises.

        Sends ``POST /telephony/make-call`` with an empty JSON object: no ``agent_id`` and no
        ``to``, so nothing can be dialed. AI Studio checks ``X-Vgai-Key`` before the body, so
        401 means the key was refused; any other 4xx means the key was accepted and only the
        (deliberately empty) body was refused.
        """
        import requests

        try:
            cfg = self.config
            resp = self.session.post(
                cfg.base_url + MAKE_CALL_PATH, data=b"{}", timeout=(CONNECT_TIMEOUT, min(cfg.timeout, 30.0))
            )
        except VonageStudioError as exc:
            return False, exc.message
        except requests.RequestException as exc:
            return False, f"could not reach {self._safe_base()}: {type(exc).__name__}"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if resp.status_code == 401:
            return False, "AI Studio refused the API key (401 Not Authorised)"
        if resp.status_code == 429:
            return True, "API key accepted (the agent is at its call limit right now: 429)"
        if 400 <= resp.status_code < 500:
            return (
                True,
                f"API key accepted by {cfg.base_url} (probe without destination answered {resp.status_code})",
            )
        if resp.status_code < 300:
            # Should not happen: an empty body cannot name a destination.
            return True, f"API key accepted by {cfg.base_url}"
        return False, f"{cfg.base_url} answered {resp.status_code}: {_error_message(resp)}"

    def _safe_base(self) -> str:
        try:
            return self.config.base_url
        except Exception:
            return "AI Studio"

    # -- make-call ----------------------------------------------------------------------------

    def make_call(
        self,
        to: str,
        agent_id: str,
        *,
        session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        status_url: str | None = None,
        hangup_on_answer_machine: bool | None = None,
        call_ref: str | None = None,
        default_country: str | None = None,
        strict_parameter_names: bool = True,
        redial_unknown: bool = False,
        identity: TaskIdentity | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        map_index: int = -1,
        recipient_key: str | None = None,
        extra_do_not_call: str | Sequence[str] | None = (),
    ) -> CallResult:
        """Place one outbound call from ``agent_id`` to ``to``.

        Inputs are validated before anything is written or sent. With a ``call_ref`` the call
        goes through the exactly-once ledger (:func:`~airflow_provider_vonage_studio.ledger.decide`):
        a call already ``placed`` returns its earlier result without a request; one ``rejected``
        raises the same error again; one whose outcome is ``unknown`` (or still ``sending`` from
        a killed try) raises :class:`CallOutcomeUnknown` unless ``redial_unknown=True``.

        The task instance the ledger row belongs to is ``identity`` (a
        :class:`~airflow_provider_vonage_studio.calls.TaskIdentity`), or the same four values
        given one by one as ``dag_id``, ``run_id``, ``task_id``, ``map_index``.

        :raises InvalidDestination: ``to`` is not a possible number or SIP URI.
        :raises InvalidSessionParameter: a parameter name or value breaks AI Studio's rules, or
            there are too many parameters or a value is too long.
        :raises VonageStudioConfigError: ``agent_id`` is empty or holds whitespace or control
            characters; ``status_url`` is not a well-formed absolute http(s) URL with a host;
            ``extra_do_not_call`` (numbers typed like ``to``: a list, or one string of numbers
            separated by commas or line breaks) is malformed; ``identity`` is given together with
            any of ``dag_id``/``run_id``/``task_id``/``map_index``; ``call_ref`` was used earlier
            for another destination or agent.
        :raises DoNotCall: the destination is on the do-not-call list.
        :raises VonageStudioBadRequest: 400. :raises VonageStudioAuthError: 401.
        :raises VonageStudioAgentNotFound: 404. :raises VonageStudioRateLimited: 429 after retries.
        :raises VonageStudioServerError: 5xx. :raises VonageStudioConnectionError: unreachable.
        :raises CallOutcomeUnknown: the request was sent and no answer came back.
        """
        task = _task_identity(identity, dag_id, run_id, task_id, map_index)
        body, status_url = call_body(
            to,
            agent_id,
            session_parameters=session_parameters,
            status_url=status_url,
            hangup_on_answer_machine=hangup_on_answer_machine,
            default_country=default_country,
            strict_parameter_names=strict_parameter_names,
        )
        # Checked now, so a malformed list fails before the ledger is touched.
        _normalized_numbers(extra_do_not_call, default_country)
        self.config  # noqa: B018 -- a broken connection fails here, before the ledger is touched

        def check_do_not_call() -> None:
            self._check_do_not_call(body["to"], extra_do_not_call, default_country)

        if call_ref is None:
            check_do_not_call()
            return self._post_call(body, call_ref=None, status_url=status_url)
        return self._make_recorded_call(
            body,
            call_ref,
            status_url,
            task=task,
            recipient_key=recipient_key,
            redial_unknown=redial_unknown,
            check_do_not_call=check_do_not_call,
        )

    def _make_recorded_call(
        self,
        body: dict[str, Any],
        call_ref: str,
        status_url: str | None,
        *,
        task: dict[str, Any],
        recipient_key: str | None,
        redial_unknown: bool,
        check_do_not_call: Callable[[], None],
    ) -> CallResult:
        """``make_call`` with a ``call_ref``: read the ledger row, decide, act on the decision.

        The do-not-call list is consulted once, before a decision that sends (a call placed
        earlier is still reported, whatever the list says now).
        """
        store = self.store
        destination, agent_id = body["to"], body["agent_id"]
        with store.unavailable_as_error(f"before dialing call {call_ref}"):
            earlier = store.get_call(call_ref)
        decision = decide(earlier, destination, agent_id, redial_unknown=redial_unknown)
        if decision.sends:
            check_do_not_call()
        if earlier is None:
            with store.unavailable_as_error(f"before dialing call {call_ref}"):
                created, earlier = store.begin_call(
                    call_ref, agent_id=agent_id, destination=destination, recipient_key=recipient_key, **task
                )
            if created:
                return self._dial_recorded(body, call_ref, status_url)
            # Another try (or a concurrent one) wrote the row first: its row decides.
            decision = decide(earlier, destination, agent_id, redial_unknown=redial_unknown)
        return self._act_on(decision, earlier, body, call_ref, status_url)

    def _act_on(
        self,
        decision: Decision,
        earlier: CallRecord,
        body: dict[str, Any],
        call_ref: str,
        status_url: str | None,
    ) -> CallResult:
        """Carry out ``decision`` for a call whose ledger row ``earlier`` already exists."""
        from airflow_provider_vonage_studio.destinations import redact

        action = decision.action
        if action is Action.MISMATCH:
            raise VonageStudioConfigError(
                f"call_ref {call_ref} was used earlier for {redact(earlier.destination)} from agent "
                f"{earlier.agent_id!r}; a retry must dial the same call. Use a new call_key to call "
                "someone else."
            )
        if action is Action.REUSE:
            self.log.info("Call %s was placed on an earlier try; not dialing again.", call_ref)
            return _result_from_record(earlier, status_url)
        if action is Action.RAISE:
            self.log.info("Call %s was refused by AI Studio on an earlier try; not dialing.", call_ref)
            assert decision.error is not None
            raise decision.error
        if action is Action.UNKNOWN:
            if decision.abandoned:
                # A try was killed between starting the request and recording the answer.
                self.settle_abandoned(
                    [earlier],
                    reason="an earlier try ended while dialing",
                    doing=f"before dialing call {call_ref}",
                )
            raise CallOutcomeUnknown(
                f"call {call_ref} to {redact(earlier.destination)} was sent on an earlier try and its "
                f"outcome is unknown ({earlier.state.value}): it may or may not have rung, so it is not "
                "dialed again. Check the agent's history; to call again on purpose set "
                "redial_unknown=True or use a new call_key."
            )
        if action is Action.REDIAL:
            self._restart(earlier, call_ref)
        # DIAL (a queued row: nothing was sent; the queued -> sending step is a compare-and-set,
        # so two tries holding the row cannot both send) or REDIAL (the row is queued again).
        return self._dial_recorded(body, call_ref, status_url)

    def _restart(self, earlier: CallRecord, call_ref: str) -> None:
        """Put a definitely-not-placed (or explicitly redialed) row back to ``queued``."""
        from airflow_provider_vonage_studio.destinations import redact
        from airflow_provider_vonage_studio.store import CallStateConflict

        try:
            with self.store.unavailable_as_error(f"before dialing call {call_ref}"):
                self.store.restart_call(call_ref, expected=earlier)
        except CallStateConflict:
            raise CallOutcomeUnknown(
                f"call {call_ref} to {redact(earlier.destination)} changed while this try decided to redial "
                "(another try is dialing it): not dialing twice"
            ) from None

    def settle_abandoned(
        self,
        records: Iterable[CallRecord],
        *,
        reason: str = ABANDONED_REASON,
        doing: str = "before dialing",
    ) -> list[str]:
        """Mark ``unknown`` the rows among ``records`` still ``sending``: the try that sent them
        died before it recorded the answer, so whether the phone rang is unknown.

        Each change is a compare-and-set on the row as read, so an outcome recorded meanwhile
        (a try that was not dead after all) is kept. Other rows are left alone (``queued``:
        nothing was sent). Returns the call_refs of the rows that were ``sending``; re-read them
        to see what they hold now.

        :raises CallStoreUnavailable: the store could not be reached (``doing`` says when).
        """
        from airflow_provider_vonage_studio.store import CallStateConflict

        store = self.store
        abandoned = [rec for rec in records if CallState(rec.state) is CallState.SENDING]
        for rec in abandoned:
            with suppress(CallStateConflict), store.unavailable_as_error(doing):
                store.mark_unknown(rec.call_ref, reason, expected=rec)
        return [rec.call_ref for rec in abandoned]

    def _check_do_not_call(
        self, destination: str, extra: str | Sequence[str] | None, default_country: str | None = None
    ) -> None:
        from airflow_provider_vonage_studio.destinations import redact

        if destination in _normalized_numbers(extra, default_country) or self.store.dnc_filter([destination]):
            raise DoNotCall(f"{redact(destination)} is on the do-not-call list; not dialed")


def _task_identity(
    identity: TaskIdentity | None, dag_id: str | None, run_id: str | None, task_id: str | None, map_index: int
) -> dict[str, Any]:
    """The ledger row's task fields, from ``identity`` or the four separate keywords.

    :raises VonageStudioConfigError: both forms given, naming the separate keywords passed.
    """
    given = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index}
    if identity is None:
        return given
    if not isinstance(identity, TaskIdentity):
        raise VonageStudioConfigError(f"identity: expected a TaskIdentity, got {type(identity).__name__}")
    clashing = [name for name in _IDENTITY_FIELDS if given[name] != (-1 if name == "map_index" else None)]
    if clashing:
        raise VonageStudioConfigError(
            f"identity and {', '.join(clashing)} were both given: pass the task instance either as "
            "identity=TaskIdentity(...) or as dag_id/run_id/task_id/map_index, not both"
        )
    return identity.row_fields()


__all__ = [
    "ABANDONED_REASON",
    "CallResult",
    "ConnectionConfig",
    "VonageStudioHook",
    "error_for",
    "parse_connection",
]
