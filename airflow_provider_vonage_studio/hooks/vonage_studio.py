"""The hook that owns every conversation with Vonage AI Studio.

Only this module talks to the API. It owns the connection (key, region, limits), one
``requests.Session``, the retry policy, the mapping of API errors to
:mod:`~airflow_provider_vonage_studio.exceptions`, pacing through shared slots in the call
store, and the exactly-once ledger around ``make-call``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_vonage_studio._compat import BaseHook
from airflow_provider_vonage_studio.exceptions import (  # error_for & co. re-exported: their old home
    PRECONFIGURED_SESSION_MESSAGE,  # noqa: F401
    RETRYABLE_STATUSES,
    CallOutcomeUnknown,
    CallPlacedNotRecorded,
    CallStoreUnavailable,
    DoNotCall,
    VonageStudioConfigError,
    VonageStudioConnectionError,
    VonageStudioError,
    VonageStudioRateLimited,
    error_for,
)
from airflow_provider_vonage_studio.timeutil import is_date_only, to_utc

if TYPE_CHECKING:
    import requests

    from airflow_provider_vonage_studio.store import CallRecord, CallStore

log = logging.getLogger(__name__)

REGION_HOSTS = {
    "eu": "https://studio-api-eu.ai.vonage.com",
    "us": "https://studio-api-us.ai.vonage.com",
}
ALLOWED_CALLS_PER_SECOND = (1, 3, 5)
PACE_SCOPES = ("agent", "key")
DEFAULT_TIMEOUT = 30.0
#: Shortest ``callback_secret`` accepted: guessable below, and too short for the log masker.
MIN_CALLBACK_SECRET_LENGTH = 16
CONNECT_TIMEOUT = 10.0
MAKE_CALL_PATH = "/telephony/make-call"
# The seed's 500 that means "this agent has no preconfigured session": configuration, not an outage.
INSIGHTS_MAX_RANGE = timedelta(days=60)
#: How many single-key wrapper objects (``{"data": ...}``, ``{"result": ...}``) around an Insights
#: body are looked through; deeper bodies are refused rather than searched.
INSIGHTS_MAX_WRAPPERS = 3


@dataclass(frozen=True)
class ConnectionConfig:
    """The ``vonage_studio`` connection, parsed and checked."""

    api_key: str
    base_url: str
    region: str
    calls_per_second: int
    pace_scope: str
    callback_base_url: str | None
    callback_secret: str | None
    timeout: float
    #: Extra spacing on top of ``1 / calls_per_second`` (extra ``pacing_margin``; 0.01 = 1 %).
    pacing_margin: float = 0.01

    def __repr__(self) -> str:  # the key and secret must not reach logs through a repr
        return (
            f"ConnectionConfig(base_url={self.base_url!r}, region={self.region!r}, "
            f"calls_per_second={self.calls_per_second}, pace_scope={self.pace_scope!r}, "
            f"callback_base_url={self.callback_base_url!r}, timeout={self.timeout})"
        )


@dataclass(frozen=True)
class CallResult:
    """What AI Studio answered for a placed call."""

    session_id: str
    session_start_time: datetime
    call_ref: str | None
    to: str
    agent_id: str
    status_url: str | None = None

    def to_xcom(self) -> dict[str, Any]:
        """JSON-safe dict for XCom: the number redacted, the start time ISO-8601 UTC, no token."""
        from airflow_provider_vonage_studio.destinations import redact

        return {
            "session_id": self.session_id,
            "session_start_time": self.session_start_time.astimezone(timezone.utc).isoformat(),
            "call_ref": self.call_ref,
            "agent_id": self.agent_id,
            "to": redact(self.to),
        }


def parse_connection(conn: Any, *, timeout: float | None = None) -> ConnectionConfig:
    """Build a :class:`ConnectionConfig` from an Airflow ``Connection``.

    :raises VonageStudioConfigError: naming the field, for a missing key, an unknown region,
        a ``calls_per_second`` other than 1/3/5 (a bool is not a number), a ``timeout`` that
        is not a finite number of seconds in (0, 120], a ``callback_base_url`` that is not a
        well-formed http(s) URL with a host, a ``callback_secret`` shorter than
        :data:`MIN_CALLBACK_SECRET_LENGTH` characters, or an extra of the wrong type
        (e.g. a number where a string belongs).
    """
    from airflow_provider_vonage_studio.validation import MAX_REQUEST_TIMEOUT, check_http_url, check_seconds

    extra = dict(conn.extra_dejson or {})
    where = f"connection {conn.conn_id!r}"
    api_key = (conn.password or _extra_str(extra, "api_key", where) or "").strip()
    if not api_key:
        raise VonageStudioConfigError(f"{where}: field 'password' (the API key sent as X-Vgai-Key) is empty")
    region = (_extra_str(extra, "region", where) or "eu").lower()
    if region not in REGION_HOSTS:
        raise VonageStudioConfigError(f"{where}: extra 'region' is {region!r}; expected 'eu' or 'us'")
    cps_raw = extra.get("calls_per_second", 1)
    try:
        if isinstance(cps_raw, bool):
            # JSON true is not a number (int(True) would silently be 1).
            raise ValueError
        cps = int(cps_raw)
        if str(cps) != str(cps_raw).strip() and float(cps_raw) != cps:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        cps = -1
    if cps not in ALLOWED_CALLS_PER_SECOND:
        raise VonageStudioConfigError(
            f"{where}: extra 'calls_per_second' is {cps_raw!r}; "
            "AI Studio grants 1 (default), 3 or 5 calls per second (a number, not true/false)"
        )
    pace_scope = (_extra_str(extra, "pace_scope", where) or "agent").lower()
    if pace_scope not in PACE_SCOPES:
        raise VonageStudioConfigError(
            f"{where}: extra 'pace_scope' is {pace_scope!r}; expected 'agent' or 'key'"
        )
    if timeout is None:
        timeout_raw: Any = extra.get("timeout", DEFAULT_TIMEOUT)
        field = f"{where}: extra 'timeout'"
        if isinstance(timeout_raw, str):
            # The connection form stores every field as text.
            try:
                timeout_raw = float(timeout_raw.strip())
            except ValueError:
                raise VonageStudioConfigError(
                    f"{field}: {timeout_raw!r} is not a number of seconds (e.g. 30)"
                ) from None
    else:
        timeout_raw, field = timeout, f"{where}: argument 'timeout'"
    timeout = check_seconds(timeout_raw, field=field, exclusive_minimum=True, maximum=MAX_REQUEST_TIMEOUT)
    callback_base_url = _extra_str(extra, "callback_base_url", where)
    if callback_base_url:
        callback_base_url = check_http_url(
            callback_base_url, field=f"{where}: extra 'callback_base_url'", allow_query=False
        )
    callback_secret = _extra_str(extra, "callback_secret", where)
    if callback_secret and len(callback_secret) < MIN_CALLBACK_SECRET_LENGTH:
        # A short secret can be guessed, and Airflow's log masker skips secrets this short.
        raise VonageStudioConfigError(
            f"{where}: extra 'callback_secret' has {len(callback_secret)} characters; use a random "
            f'secret of at least {MIN_CALLBACK_SECRET_LENGTH} (e.g. python -c "import secrets; '
            'print(secrets.token_urlsafe(32))")'
        )
    return ConnectionConfig(
        api_key=api_key,
        base_url=_base_url(conn, region),
        region=region,
        calls_per_second=cps,
        pace_scope=pace_scope,
        callback_base_url=callback_base_url.rstrip("/") if callback_base_url else None,
        callback_secret=callback_secret,
        timeout=float(timeout),
        pacing_margin=_pacing_margin(conn.conn_id, extra),
    )


def _extra_str(extra: Mapping[str, Any], name: str, where: str) -> str | None:
    """Extra ``name`` stripped (``None`` when absent or empty), or raise if it is not a string."""
    value = extra.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise VonageStudioConfigError(f"{where}: extra {name!r} must be a string, got {type(value).__name__}")
    return value.strip() or None


#: Default ``pacing_margin``: the slots are spaced 1 % wider than ``1 / calls_per_second``, so
#: dialers seldom wait at the send gate (which is what keeps a strict limiter from ever
#: seeing N + 1 arrivals in a second: see ``CallStore.pace_send``); a wider margin only
#: lowers the achieved rate (10 % would cap it at 0.91 of the allowed one).
DEFAULT_PACING_MARGIN = 0.01


def _pacing_margin(conn_id: str, extra: Mapping[str, Any]) -> float:
    """The ``pacing_margin`` extra: a fraction 0..1 of ``1 / calls_per_second`` added to the spacing.

    :raises VonageStudioConfigError: for a bool, a non-number, NaN/infinity or a value outside 0..1.
    """
    raw = extra.get("pacing_margin", DEFAULT_PACING_MARGIN)
    problem = None
    value = 0.0
    if isinstance(raw, bool) or raw is None:
        problem = "not a number"
    else:
        try:
            value = float(raw.strip()) if isinstance(raw, str) else float(raw)
        except (TypeError, ValueError):
            problem = "not a number"
        else:
            if not math.isfinite(value):
                problem = "not finite"
            elif not 0 <= value <= 1:
                problem = "outside 0..1"
    if problem is not None:
        raise VonageStudioConfigError(
            f"connection {conn_id!r}: extra 'pacing_margin' is {raw!r} ({problem}); expected a fraction "
            "0..1 of the spacing 1 / calls_per_second to add as a safety margin "
            f"(default {DEFAULT_PACING_MARGIN})"
        )
    return value


def _base_url(conn: Any, region: str) -> str:
    host = (conn.host or "").strip()
    if not host:
        return REGION_HOSTS[region]
    if "://" in host:
        base = host.rstrip("/")
    else:
        # URI-form connections cannot carry a scheme in the host; the schema field may ("http"
        # for the emulator on a laptop), else https.
        scheme = (conn.schema or "").strip().lower() or "https"
        if scheme not in ("http", "https"):
            raise VonageStudioConfigError(
                f"connection {conn.conn_id!r}: field 'schema' is {conn.schema!r}; use http or https "
                "(or put the full base URL in 'host')"
            )
        base = f"{scheme}://{host.rstrip('/')}"
    if conn.port and base.count(":") < 2:
        base = f"{base}:{conn.port}"
    if not base.startswith(("http://", "https://")):
        raise VonageStudioConfigError(
            f"connection {conn.conn_id!r}: field 'host' must be a URL starting with http:// or https://"
        )
    return base


@dataclass
class _LedgerRow:
    """Internal: where one dial's ledger row stands while the hook works on it."""

    call_ref: str
    #: True from the queued -> sending step until the answer (or a definite "not placed").
    sending: bool = False
    #: The dial ended without a request in flight and the row must stay ``queued`` (429 time bound).
    keep_queued: bool = False


class _Retry(Exception):
    """Internal: an attempt failed in a way that is safe to try again."""

    def __init__(self, error: VonageStudioError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class VonageStudioHook(BaseHook):
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
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, PasswordField, StringField
        from wtforms.validators import AnyOf, Optional

        # Airflow 3.1 accepts only String/Integer/Password/Boolean fields here (no select).
        return {
            "region": StringField(
                lazy_gettext("Region (eu or us)"),
                validators=[Optional(), AnyOf(["eu", "us"])],
                widget=BS3TextFieldWidget(),
                default="eu",
            ),
            "calls_per_second": IntegerField(
                lazy_gettext("Calls per second (1, 3 or 5)"),
                validators=[Optional(), AnyOf([1, 3, 5])],
                widget=BS3TextFieldWidget(),
                default=1,
            ),
            "pace_scope": StringField(
                lazy_gettext("Pacing scope (agent or key)"),
                validators=[Optional(), AnyOf(["agent", "key"])],
                widget=BS3TextFieldWidget(),
                default="agent",
            ),
            "callback_base_url": StringField(lazy_gettext("Callback base URL"), widget=BS3TextFieldWidget()),
            "callback_secret": PasswordField(
                lazy_gettext("Callback secret"), widget=BS3PasswordFieldWidget()
            ),
            "previous_callback_secrets": PasswordField(
                lazy_gettext("Previous callback secrets"), widget=BS3PasswordFieldWidget()
            ),
            "timeout": StringField(lazy_gettext("Timeout (s)"), widget=BS3TextFieldWidget(), default="30"),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel and hide the generic fields (Airflow 3.1; >= 3.2 reads ui-field-behaviour)."""
        from airflow_provider_vonage_studio import get_provider_info

        behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
        return {
            "hidden_fields": behaviour["hidden-fields"],
            "relabeling": behaviour["relabeling"],
            "placeholders": behaviour["placeholders"],
        }

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
        dag_id: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        map_index: int = -1,
        recipient_key: str | None = None,
        extra_do_not_call: str | Sequence[str] | None = (),
    ) -> CallResult:
        """Place one outbound call from ``agent_id`` to ``to``.

        Inputs are validated before anything is written or sent. With a ``call_ref`` the call
        goes through the exactly-once ledger: a call already ``placed`` returns its earlier
        result without a request; one ``rejected`` raises the same error again; one whose
        outcome is ``unknown`` (or still ``pending`` from a killed try) raises
        :class:`CallOutcomeUnknown` unless ``redial_unknown=True``.

        :raises InvalidDestination: ``to`` is not a possible number or SIP URI.
        :raises InvalidSessionParameter: a parameter name or value breaks AI Studio's rules, or
            there are too many parameters or a value is too long.
        :raises VonageStudioConfigError: ``agent_id`` is empty or holds whitespace or control
            characters; ``status_url`` is not a well-formed absolute http(s) URL with a host;
            ``extra_do_not_call`` (numbers typed like ``to``: a list, or one string of numbers
            separated by commas or line breaks) is malformed.
        :raises DoNotCall: the destination is on the do-not-call list.
        :raises VonageStudioBadRequest: 400. :raises VonageStudioAuthError: 401.
        :raises VonageStudioAgentNotFound: 404. :raises VonageStudioRateLimited: 429 after retries.
        :raises VonageStudioServerError: 5xx. :raises VonageStudioConnectionError: unreachable.
        :raises CallOutcomeUnknown: the request was sent and no answer came back.
        """
        from airflow_provider_vonage_studio.destinations import normalize_destination, redact
        from airflow_provider_vonage_studio.params import normalize_session_parameters
        from airflow_provider_vonage_studio.validation import check_agent_id, check_status_url

        agent_id = check_agent_id(agent_id)
        destination = normalize_destination(to, default_country=default_country)
        params = normalize_session_parameters(session_parameters, strict_names=strict_parameter_names)
        if hangup_on_answer_machine is not None and not isinstance(hangup_on_answer_machine, bool):
            raise VonageStudioConfigError(
                f"hangup_on_answer_machine must be true or false, got {hangup_on_answer_machine!r}"
            )
        if status_url is not None:
            status_url = check_status_url(status_url)
        # Checked now, so a malformed list fails before the ledger is touched.
        _normalized_numbers(extra_do_not_call, default_country)
        body: dict[str, Any] = {"agent_id": agent_id, "to": destination}
        if status_url:
            body["status_url"] = status_url
        if hangup_on_answer_machine is not None:
            body["hangup_on_answer_machine"] = hangup_on_answer_machine
        if params:
            body["session_parameters"] = params
        self.config  # noqa: B018 -- a broken connection fails here, before the ledger is touched

        if call_ref is None:
            self._check_do_not_call(destination, extra_do_not_call, default_country)
            return self._post_call(body, call_ref=None, status_url=status_url)

        store = self.store
        before = f"before dialing call {call_ref}"
        with store.unavailable_as_error(before):
            earlier = store.get_call(call_ref)
        if earlier is None:
            self._check_do_not_call(destination, extra_do_not_call, default_country)
            with store.unavailable_as_error(before):
                created, earlier = store.begin_call(
                    call_ref,
                    agent_id=agent_id,
                    destination=destination,
                    dag_id=dag_id,
                    run_id=run_id,
                    task_id=task_id,
                    map_index=map_index,
                    recipient_key=recipient_key,
                )
            if created:
                return self._dial_recorded(body, call_ref, status_url)
        # Another try (or a concurrent one) already owns this call_ref.
        if earlier.destination != destination or earlier.agent_id != agent_id:
            raise VonageStudioConfigError(
                f"call_ref {call_ref} was used earlier for {redact(earlier.destination)} from agent "
                f"{earlier.agent_id!r}; a retry must dial the same call. Use a new call_key to call "
                "someone else."
            )
        state = earlier.state.value
        if state == "placed":
            self.log.info("Call %s was placed on an earlier try; not dialing again.", call_ref)
            return _result_from_record(earlier, status_url)
        if state == "queued":
            # Written by a try that ended before its request left (killed in the slot wait, or out
            # of time after 429s): nothing was sent, so this try dials it. Two tries holding the
            # row cannot both send: the queued -> sending step is a compare-and-set.
            self._check_do_not_call(destination, extra_do_not_call, default_country)
            return self._dial_recorded(body, call_ref, status_url)
        if state == "rejected":
            err = error_for(earlier.error_status, earlier.error_message or "rejected earlier")
            if not err.retryable:
                self.log.info("Call %s was refused by AI Studio on an earlier try; not dialing.", call_ref)
                raise err
        elif not redial_unknown:
            if state == "sending":
                # A try was killed between starting the request and recording the answer: say so
                # in the ledger (compare-and-set, so an outcome recorded meanwhile is kept).
                from contextlib import suppress

                from airflow_provider_vonage_studio.store import CallStateConflict

                with suppress(CallStateConflict), store.unavailable_as_error(before):
                    store.mark_unknown(call_ref, "an earlier try ended while dialing", expected=earlier)
            raise CallOutcomeUnknown(
                f"call {call_ref} to {redact(destination)} was sent on an earlier try and its outcome is "
                f"unknown ({state}): it may or may not have rung, so it is not dialed again. Check the "
                "agent's history; to call again on purpose set redial_unknown=True or use a new call_key."
            )
        # Definitely not dialed (retryable refusal) or explicitly asked to redial.
        self._check_do_not_call(destination, extra_do_not_call, default_country)
        from airflow_provider_vonage_studio.store import CallStateConflict

        try:
            with store.unavailable_as_error(before):
                store.restart_call(call_ref, expected=earlier)
        except CallStateConflict:
            raise CallOutcomeUnknown(
                f"call {call_ref} to {redact(destination)} changed while this try decided to redial "
                "(another try is dialing it): not dialing twice"
            ) from None
        return self._dial_recorded(body, call_ref, status_url)

    def _check_do_not_call(
        self, destination: str, extra: str | Sequence[str] | None, default_country: str | None = None
    ) -> None:
        from airflow_provider_vonage_studio.destinations import redact

        if destination in _normalized_numbers(extra, default_country) or self.store.dnc_filter([destination]):
            raise DoNotCall(f"{redact(destination)} is on the do-not-call list; not dialed")

    def _dial_recorded(self, body: dict[str, Any], call_ref: str, status_url: str | None) -> CallResult:
        """Dial a call whose ledger row is ``queued`` and record what became of it.

        The row goes ``sending`` only when the send gate grants a request leave (compare-and-set,
        inside the pacing step; at most a short final wait precedes the request), back to
        ``queued`` after each definite "not placed", and ends ``placed``, ``rejected`` or
        ``unknown``. Whatever ends this function before that leave (a store outage, a kill in the
        slot wait, the 429 time bound) leaves it ``queued``.
        """
        from airflow_provider_vonage_studio.destinations import redact

        store = self.store
        ledger = _LedgerRow(call_ref)
        try:
            result = self._post_call(body, call_ref=call_ref, status_url=status_url, ledger=ledger)
        except CallOutcomeUnknown as exc:
            if ledger.sending:
                self._record_after_send(
                    f"call {call_ref}: the request was sent but its answer did not come back",
                    store.mark_unknown,
                    call_ref,
                    exc.message,
                )
            raise
        except CallStoreUnavailable:
            raise  # the row is as the failed write left it: queued, or sending (-> unknown later)
        except VonageStudioError as exc:
            if not ledger.keep_queued:
                self._record_after_send(
                    f"call {call_ref}: AI Studio refused it ({exc}; definitely not placed)",
                    store.mark_rejected,
                    call_ref,
                    exc.status,
                    exc.message,
                )
            raise
        except BaseException as exc:
            # Anything else (a bug, a kill signal turned exception) while the request may have
            # left: we cannot know whether it did, so the row says so. Before that (in the slot
            # wait, e.g. the task's execution_timeout) the row stays queued: nothing was sent.
            if ledger.sending:
                with contextlib.suppress(Exception):
                    store.mark_unknown(call_ref, f"{type(exc).__name__} while dialing")
            raise
        try:
            self._record_after_send(
                f"call {call_ref}: placed as session {result.session_id}",
                store.mark_placed,
                call_ref,
                result.session_id,
                result.session_start_time,
            )
        except CallStoreUnavailable as exc:
            message = (
                f"call {call_ref} to {redact(result.to)} WAS PLACED by AI Studio (session_id "
                f"{result.session_id}, session_start_time {result.session_start_time.isoformat()}) but "
                f"the call store could not record it: {exc.message}. It is not dialed again: a later "
                "try reports it as unknown. Keep this session id to follow the call up."
            )
            self.log.error(message)
            raise CallPlacedNotRecorded(
                message,
                session_id=result.session_id,
                session_start_time=result.session_start_time.isoformat(),
            ) from exc
        return result

    def _record_after_send(self, what: str, write: Callable[..., None], *args: Any) -> None:
        """Run a ledger write that follows a request, retrying store outages with back-off for
        up to ``store_retry_seconds``: what AI Studio answered must not be lost to a blip.

        :raises CallStoreUnavailable: the store stayed unreachable (``what`` says what was lost).
        """
        from sqlalchemy.exc import InterfaceError, OperationalError

        deadline = time.monotonic() + self.store_retry_seconds
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.store.unavailable_as_error(f"after dialing ({what})"):
                    write(*args)
                return
            except CallStoreUnavailable as exc:
                if not isinstance(exc.__cause__, (OperationalError, InterfaceError)):
                    raise  # pragma: no cover - unavailable_as_error only wraps these
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                self.log.warning(
                    "The call store failed a write after dialing (attempt %d): %s; retrying in %.1fs",
                    attempt,
                    exc.message,
                    min(delay, left),
                )
                self._sleep(min(delay, left))
                delay = min(delay * 2, 5.0)

    def _post_call(
        self,
        body: dict[str, Any],
        *,
        call_ref: str | None,
        status_url: str | None,
        ledger: _LedgerRow | None = None,
    ) -> CallResult:
        from airflow_provider_vonage_studio.callbacks.tokens import elide_token
        from airflow_provider_vonage_studio.destinations import redact

        self.log.info(
            "Dialing %s from agent %s (call_ref=%s, status_url=%s)",
            redact(body["to"]),
            body["agent_id"],
            call_ref,
            elide_token(status_url) if status_url else None,
        )
        # Build the session before taking a slot: its first-use cost (imports, TLS context) would
        # otherwise sit between the slot and the request and squeeze the gap to the next dial.
        self.session  # noqa: B018
        rate_limited_until = time.monotonic() + self.max_rate_limited_seconds

        def attempt() -> requests.Response:
            while True:
                sent_at = self._before_send(body["agent_id"], ledger)
                try:
                    try:
                        resp = self._send("POST", MAKE_CALL_PATH, json=body, idempotent=False)
                    finally:
                        # Read at once: the request arrived before this, and the next dial's gate
                        # counts from it (a later clock reading would only slow everyone down).
                        answered_at = time.time()
                except _Retry as exc:
                    rate_limited = exc.error.status == 429
                    if sent_at is not None:
                        # The answer is in: the request no longer counts as on its way. A 429 also
                        # widens the spacing for every process sharing the store.
                        self._pace_feedback(
                            body["agent_id"],
                            sent_at=sent_at,
                            answered_at=answered_at,
                            rate_limited=rate_limited,
                            narrow=False,
                            retry_after=exc.retry_after if rate_limited else None,
                        )
                    # Definitely not placed: the row goes back to queued before any back-off, so a
                    # try killed while waiting leaves a call that the next try dials.
                    if ledger is not None:
                        ledger.sending = False
                        self._record_after_send(
                            f"call {ledger.call_ref}: refused with {exc.error} (not placed)",
                            self.store.requeue,
                            ledger.call_ref,
                            exc.error.status,
                            exc.error.message,
                        )
                    if not (self.pace and rate_limited):
                        raise
                    # Under the shared pacer a 429 waits for a new slot and is retried: never given
                    # up for a count of 429s, only for time.
                    if time.monotonic() >= rate_limited_until:
                        if ledger is not None:
                            ledger.keep_queued = True
                        raise VonageStudioRateLimited(
                            f"{exc.error.message}: still refused after {self.max_rate_limited_seconds:g}s of "
                            "paced retries (max_rate_limited_seconds); the call was not placed and a later "
                            "try dials it",
                            429,
                        ) from None
                    continue
                except VonageStudioError as exc:
                    if sent_at is not None and not isinstance(exc, CallOutcomeUnknown):
                        # A refusal: answered, so over. (No answer: the store's bound applies.)
                        self._pace_feedback(
                            body["agent_id"],
                            sent_at=sent_at,
                            answered_at=answered_at,
                            rate_limited=False,
                            narrow=False,
                        )
                    raise
                if sent_at is not None:
                    self._pace_feedback(
                        body["agent_id"], sent_at=sent_at, answered_at=answered_at, rate_limited=False
                    )
                return resp

        resp = self._with_retries(attempt, what=f"make-call to {redact(body['to'])}")
        try:
            data = _json(resp)
        except VonageStudioError as exc:
            # A 2xx is AI Studio accepting the call: an unreadable body must not be recorded as
            # a refusal ("definitely not placed") of a call that may be ringing.
            raise CallOutcomeUnknown(exc.message) from exc
        try:
            session_id = str(data["session_id"])
            start = parse_api_time(str(data["session_start_time"]))
        except (KeyError, TypeError, ValueError) as exc:
            # The call was placed (2xx) but the answer is unusable: the outcome is known to be
            # "dialed", so this must not be retried as if nothing happened.
            raise CallOutcomeUnknown(
                f"AI Studio answered {resp.status_code} without a usable session_id/session_start_time "
                f"(keys: {sorted(data) if isinstance(data, dict) else type(data).__name__})"
            ) from exc
        self.log.info("Placed call %s: session %s", call_ref or "(no ref)", session_id)
        return CallResult(
            session_id=session_id,
            session_start_time=start,
            call_ref=call_ref,
            to=body["to"],
            agent_id=body["agent_id"],
            status_url=status_url,
        )

    def pacing_key(self, agent_id: str) -> str:
        """The shared slot a dial must reserve: per agent, or per key with ``pace_scope=key``."""
        cfg = self.config
        if cfg.pace_scope == "key":
            fingerprint = hashlib.sha256(cfg.api_key.encode()).hexdigest()[:16]
            return f"{cfg.base_url}|key:{fingerprint}"
        return f"{cfg.base_url}|agent:{agent_id}"

    def pacing_interval(self) -> float:
        """The floor of the spacing between two dials of one pacing key, in seconds:
        ``(1 / calls_per_second) * (1 + pacing_margin)``. The store widens it after 429s."""
        cfg = self.config
        return (1.0 / cfg.calls_per_second) * (1.0 + cfg.pacing_margin)

    def _before_send(self, agent_id: str, ledger: _LedgerRow | None) -> float | None:
        """Wait for this dial's shared slot, then take leave to send: the row becomes ``sending``.

        Returns the request's ``sent_at`` in the shared pacer (``None`` without the pacer, a
        testing knob: then only the ledger step is taken).
        """
        store = self.store if (self.pace or ledger is not None) else None
        if store is None:
            return None
        doing = "before dialing" if ledger is None else f"before dialing call {ledger.call_ref}"
        if not self.pace:
            assert ledger is not None
            with store.unavailable_as_error(doing):

                def mark_sending() -> tuple[float, float | None]:
                    store.mark_sending(ledger.call_ref)
                    return 0.0, None

                self._claim(mark_sending, ledger)
            return None
        key, interval = self.pacing_key(agent_id), self.pacing_interval()
        limit = self.config.calls_per_second
        with store.unavailable_as_error(doing):
            slot = store.reserve_slot(key, interval)
        delay = slot - time.time()
        if delay > 0:
            self._sleep(delay)
        while True:
            # The gate: a request leaves only once those older than the last `limit - 1` have been
            # answered a full second ago, so arrival jitter cannot put limit + 1 calls in one window.
            # Leave comes in advance, for the gate's opening time: the row is already `sending`
            # then, so nothing but this process's wake-up stands between that time and the request.
            with store.unavailable_as_error(doing):
                wait, sent_at = self._claim(
                    lambda: store.pace_send(
                        key, interval, limit=limit, call_ref=None if ledger is None else ledger.call_ref
                    ),
                    ledger,
                )
            if sent_at is not None:
                self._sleep_until(sent_at)
                return sent_at
            self._sleep(wait)

    def _sleep_until(self, at: float) -> None:
        """Sleep until the epoch time ``at``, never waking before it: a coarse sleep, then the last
        couple of milliseconds yielding in a loop (a plain sleep may overshoot by a scheduler tick,
        and every millisecond late here is lost from every dialing cycle)."""
        while (left := at - time.time()) > 0:
            if left > 0.002:
                self._sleep(left - 0.002)
            else:
                time.sleep(0)

    def _claim(
        self, step: Callable[[], tuple[float, float | None]], ledger: _LedgerRow | None
    ) -> tuple[float, float | None]:
        """Run the ledger's queued -> sending step; a row no longer queued is another try's."""
        from airflow_provider_vonage_studio.store import CallStateConflict

        try:
            wait, sent_at = step()
        except CallStateConflict as exc:
            raise CallOutcomeUnknown(
                f"{exc.message}: another try of this call is dialing it or has dialed it, so its "
                "outcome is unknown to this try, which does not send it again"
            ) from None
        if ledger is not None and (wait <= 0 or sent_at is not None):
            ledger.sending = True
        return wait, sent_at

    def _pace_feedback(
        self,
        agent_id: str,
        *,
        sent_at: float,
        answered_at: float,
        rate_limited: bool,
        narrow: bool = True,
        retry_after: float | None = None,
    ) -> None:
        """Tell the shared pacer the request was answered (a 429 widens the spacing for everyone,
        an accepted call narrows it back)."""
        try:
            factor = self.store.pace_feedback(
                self.pacing_key(agent_id),
                self.pacing_interval(),
                rate_limited=rate_limited,
                sent_at=sent_at,
                answered_at=answered_at,
                narrow=narrow,
                retry_after=retry_after,
            )
        except Exception as exc:  # adapting is best effort: it must never fail a placed call
            self.log.warning("Could not update the shared pacing state: %s", type(exc).__name__)
            return
        if rate_limited:
            self.log.warning(
                "Spacing of agent %s widened to %.2fx the floor (%.3fs) after a 429",
                agent_id,
                factor,
                factor * self.pacing_interval(),
            )

    # -- HTTP plumbing --------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        idempotent: bool,
    ) -> requests.Response:
        """One HTTP attempt, classified: returns a 2xx response, raises ``_Retry`` for what may be
        tried again, or the final :class:`VonageStudioError`."""
        import requests

        cfg = self.config
        url = cfg.base_url + path
        try:
            resp = self.session.request(
                method, url, json=json, params=params, timeout=(CONNECT_TIMEOUT, cfg.timeout)
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise _Retry(VonageStudioConnectionError(f"timed out connecting to {cfg.base_url}")) from exc
        except requests.exceptions.ReadTimeout as exc:
            if idempotent:
                raise _Retry(
                    VonageStudioConnectionError(f"no answer from {cfg.base_url} within {cfg.timeout:g}s")
                ) from exc
            raise CallOutcomeUnknown(
                f"the request reached {cfg.base_url} but no answer came within {cfg.timeout:g}s: the call "
                "may or may not have been placed, so it is not retried"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            # Refused, reset or closed without a single byte of response: the request did not reach
            # the application (typically a keep-alive connection the server had already closed).
            raise _Retry(
                VonageStudioConnectionError(f"could not reach {cfg.base_url}: {_reason(exc)}")
            ) from exc
        if resp.status_code < 300:
            return resp
        message = _error_message(resp)
        error = error_for(resp.status_code, message, insights=path.startswith("/insights"))
        if resp.status_code == 429:
            with self._lock:
                self.rate_limited_count += 1
            self.log.warning(
                "AI Studio answered 429 (rate limited, #%d in this hook)", self.rate_limited_count
            )
            raise _Retry(error, _retry_after(resp))
        if error.retryable and resp.status_code in RETRYABLE_STATUSES:
            raise _Retry(error, _retry_after(resp))
        raise error

    def _with_retries(self, attempt: Callable[[], requests.Response], *, what: str) -> requests.Response:
        """Run ``attempt`` under the retry policy: jittered exponential back-off, ``Retry-After``
        honoured, bounded by ``max_attempts`` and ``max_retry_seconds``."""
        from tenacity import (
            RetryCallState,
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            stop_after_delay,
            wait_random_exponential,
        )

        backoff = wait_random_exponential(multiplier=self.retry_backoff, max=30)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Retry) and exc.retry_after is not None:
                return min(exc.retry_after, 60.0)
            return float(backoff(state))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "%s: attempt %d failed (%s); retrying in %.2fs",
                what,
                state.attempt_number,
                exc,
                state.next_action.sleep if state.next_action else 0.0,
            )

        retrying = Retrying(
            retry=retry_if_exception_type(_Retry),
            wait=wait,
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_retry_seconds),
            sleep=lambda seconds: self._sleep(seconds),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retry as exc:
            raise exc.error from None

    # -- Insights ---------------------------------------------------------------------------------

    def get_session_parameters(
        self, session_id: str, session_start_time: datetime | date | str
    ) -> dict[str, str]:
        """What the conversation collected: ``GET /insights/sessions/{id}/parameters``.

        ``session_start_time``: a day (``date`` or ``"YYYY-MM-DD"``, sent as the day) or an
        instant (stdlib or pendulum datetime, naive meaning UTC, or an ISO-8601 string).

        :raises VonageStudioConfigError: an empty ``session_id``, or a ``session_start_time`` that
            is neither (nothing is sent).
        :raises SessionNotFound: 404 — unknown, or not indexed yet (normal right after a call).
        :raises VonageStudioAuthError: 401 — bad key, or parameters the API refused.
        """
        if not session_id or not str(session_id).strip():
            raise VonageStudioConfigError("session_id must be a non-empty string")
        start = _iso_param(session_start_time, "session_start_time")
        resp = self._with_retries(
            lambda: self._send(
                "GET",
                f"/insights/sessions/{_quote(session_id)}/parameters",
                params={"session_start_time": start},
                idempotent=True,
            ),
            what="get session parameters",
        )
        return parse_parameters_body(_json(resp))

    def search_sessions(
        self,
        from_date: datetime | date | str,
        to_date: datetime | date | str,
        *,
        filter_by: Mapping[str, Any] | None = None,
        sort_by: str | Sequence[str] | None = None,
        project_fields: str | Sequence[str] | None = None,
        page_size: int = 100,
        split_range: bool = False,
        include_to_date: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Sessions between ``from_date`` and ``to_date``, page by page, lazily.

        Arguments are checked at once; requests start when the iterator is first advanced and
        only one page is held at a time. ``from_date``/``to_date``: stdlib or pendulum datetimes
        (naive means UTC), dates (their midnight UTC) or ISO-8601 strings, normalised by
        :func:`~airflow_provider_vonage_studio.timeutil.to_utc`.

        :param filter_by: an Elasticsearch-style bool query (``must``/``must_not``/``should``),
            sent as JSON.
        :param sort_by: ``"attribute:asc|desc"`` items (a list or one comma-separated string).
        :param project_fields: field names to return (a list, or one comma-separated string).
        :param page_size: sessions per request (1..1000).
        :param split_range: search a range longer than 60 days in consecutive windows of at
            most 60 days (a session on a shared boundary is returned once).
        :param include_to_date: the API's bounds are inclusive; ``False`` leaves out sessions
            that start exactly at ``to_date``, so consecutive half-open windows (Airflow data
            intervals) never return one session twice.
        :raises VonageStudioConfigError: a bound that is not a datetime, date or ISO-8601 string;
            the range is reversed, or longer than 60 days without ``split_range=True``; a bad
            ``page_size``.
        :raises VonageStudioAuthError: 401 — bad key, or parameters the API refused (while iterating).
        :raises VonageStudioError: a page whose body has an unknown shape, or an API that returned
            a short page while its total says more sessions exist (it caps ``page_size``).
        """
        start = to_utc(from_date, field="from_date")
        end = to_utc(to_date, field="to_date")
        if end < start:
            raise VonageStudioConfigError("to_date is before from_date")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise VonageStudioConfigError(
                f"page_size must be an integer between 1 and 1000, got {page_size!r}"
            )
        if end - start > INSIGHTS_MAX_RANGE and not split_range:
            raise VonageStudioConfigError(
                f"from_date..to_date spans {(end - start).days} days; AI Studio searches at most 60 days "
                "at once. Narrow the range or pass split_range=True."
            )
        windows: list[tuple[datetime, datetime]] = []
        cursor = start
        while True:
            window_end = min(cursor + INSIGHTS_MAX_RANGE, end)
            windows.append((cursor, window_end))
            if window_end >= end:
                break
            cursor = window_end
        fields = _field_list(project_fields, "project_fields")
        # Boundary handling reads each session's start time: request it even when the caller
        # projected it away, and drop it again before yielding.
        strip_start = (
            bool(fields) and "session_start_time" not in fields and (len(windows) > 1 or not include_to_date)
        )
        if strip_start:
            fields.append("session_start_time")
        return self._search_pages(
            windows,
            filter_by,
            sort_by,
            fields,
            page_size,
            include_to_date=include_to_date,
            strip_start=strip_start,
        )

    def _search_pages(
        self,
        windows: list[tuple[datetime, datetime]],
        filter_by: Mapping[str, Any] | None,
        sort_by: str | Sequence[str] | None,
        project_fields: Sequence[str],
        page_size: int,
        *,
        include_to_date: bool,
        strip_start: bool,
    ) -> Iterator[dict[str, Any]]:
        import json as jsonlib

        for index, (start, end) in enumerate(windows):
            last_window = index == len(windows) - 1
            # Consecutive windows share their boundary instant: a session there belongs to the
            # later window (and to none when the caller's own end is exclusive).
            end_exclusive = not last_window or not include_to_date
            page = 0
            while True:
                params: list[tuple[str, Any]] = [
                    ("from_date", _fmt_dt(start)),
                    ("to_date", _fmt_dt(end)),
                    ("page_number", page),
                    ("page_size", page_size),
                ]
                if sort_by:
                    params.append(("sort_by", sort_by if isinstance(sort_by, str) else ",".join(sort_by)))
                for field in project_fields:
                    params.append(("project_fields", field))
                if filter_by:
                    params.append(("filter_by", jsonlib.dumps(filter_by, separators=(",", ":"))))
                resp = self._with_retries(
                    lambda query=params: self._send(  # type: ignore[misc]
                        "GET", "/insights/sessions", params=query, idempotent=True
                    ),
                    what=f"search sessions page {page}",
                )
                sessions, total = parse_search_body(_json(resp))
                del resp  # the decoded page is all that is needed; let the raw body go
                for session in sessions:
                    at = _session_at(session)
                    if end_exclusive and at is not None and at >= end:
                        continue
                    if strip_start:
                        session.pop("session_start_time", None)
                    yield session
                page += 1
                if total is not None and len(sessions) < page_size and page * page_size < total:
                    # Paging on would skip sessions (page_number counts pages of our size).
                    raise VonageStudioError(
                        f"AI Studio returned {len(sessions)} sessions for page {page - 1} of size "
                        f"{page_size} while reporting {total} in total: it seems to cap page_size; "
                        f"retry with page_size={len(sessions)} or less"
                    )
                if len(sessions) < page_size or (total is not None and page * page_size >= total):
                    break


# -- pure helpers (module level so they can be tested directly) ---------------------------------------


def parse_api_time(value: str, field: str = "session_start_time") -> datetime:
    """AI Studio's timestamps are naive ISO-8601 in UTC; return an aware UTC datetime.

    :raises VonageStudioConfigError: (a ``ValueError``) when ``value`` is not ISO-8601.
    """
    return to_utc(value, field=field)


def parse_parameters_body(data: Any) -> dict[str, str]:
    """Session parameters from an undocumented body. Accepted, and nothing else:

    1. a list of ``{"name": ..., "value": ...}`` objects;
    2. an object of parameter name -> scalar value (``{"CONFIRMED": "yes"}``), without a
       ``value`` key (that is one parameter's record, e.g. ``{"CONFIRMED": {"value": "yes"}}``);
    3. an object holding exactly one list or object of form 1 or 2 beside any number of
       scalar keys (metadata): ``{"session_id": "...", "parameters": [...]}``;
    4. any of these inside up to :data:`INSIGHTS_MAX_WRAPPERS` nested single-key objects
       (``{"data": {...}}``, ``{"data": {"result": {...}}}``).

    Values become strings (``None`` -> ``""``, booleans ``true``/``false``, lists and objects JSON).

    :raises VonageStudioError: for any other shape (two candidate lists or objects, a list of
        something else, deeper nesting), naming the keys and types seen, never values: they are
        what callers said.
    """
    return _unwrapped(data, _parameters_form, "session parameters")


_T = TypeVar("_T")


def _unwrapped(data: Any, form: Callable[[Any], _T | None], what: str) -> _T:
    """``form``'s reading of ``data`` or of what up to :data:`INSIGHTS_MAX_WRAPPERS` nested
    single-key objects wrap; raises :class:`VonageStudioError` naming keys and types only."""
    inner: Any = data
    path: list[str] = []
    while True:
        found = form(inner)
        if found is not None:
            return found
        if not _is_wrapper(inner) or len(path) == INSIGHTS_MAX_WRAPPERS:
            break
        ((key, inner),) = inner.items()
        path.append(str(key))
    raise VonageStudioError(f"unexpected shape of {what} from AI Studio: " + _shape_at(data, inner, path))


def _parameters_form(data: Any) -> dict[str, str] | None:
    """Forms 1-3 of :func:`parse_parameters_body` at this level, or ``None``."""
    direct = _parameters_container(data)
    if direct is not None or not isinstance(data, Mapping):
        return direct
    containers = [value for value in data.values() if not _is_scalar(value)]
    if len(containers) != 1:
        return None
    return _parameters_container(containers[0])


def _parameters_container(data: Any) -> dict[str, str] | None:
    """Form 1 (list of ``{name, value}``) or form 2 (name -> scalar), or ``None``."""
    if isinstance(data, list):
        if all(isinstance(item, Mapping) and "name" in item for item in data):
            return {str(item["name"]): _str(item.get("value")) for item in data}
        return None
    if isinstance(data, Mapping) and all(_is_scalar(value) for value in data.values()):
        if "value" in data:
            # One parameter's record ({"CONFIRMED": {"value": "yes"}} seen through its key), not
            # the parameters: AI Studio's names are capitals, never "value".
            return None
        return {str(key): _str(value) for key, value in data.items()}
    return None


def parse_search_body(data: Any) -> tuple[list[dict[str, Any]], int | None]:
    """Sessions and total from an undocumented search body. Accepted, and nothing else:

    1. a bare list of session objects (no total);
    2. an object with exactly one list, of session objects, beside any other keys; the total is
       the first integer among ``total``, ``count``, ``total_count``, ``totalCount``,
       ``total_sessions``, ``total_elements`` at that level (else unknown); ``{}`` is no sessions;
    3. either inside up to :data:`INSIGHTS_MAX_WRAPPERS` nested single-key objects
       (``{"data": {"sessions": [...], "total": 2}}``).

    :raises VonageStudioError: for any other shape (no list, two lists, a list of something
        else, deeper nesting), naming the keys and types seen, never values.
    """
    return _unwrapped(data, _search_form, "session search results")


def _search_form(data: Any) -> tuple[list[dict[str, Any]], int | None] | None:
    """Forms 1-2 of :func:`parse_search_body` at this level, or ``None``."""
    if isinstance(data, list):
        if all(isinstance(item, Mapping) for item in data):
            return [dict(item) for item in data], None
        return None
    if not isinstance(data, Mapping):
        return None
    if not data:
        return [], 0
    lists = [value for value in data.values() if isinstance(value, list)]
    if len(lists) != 1 or not all(isinstance(item, Mapping) for item in lists[0]):
        return None
    total = None
    for key in ("total", "count", "total_count", "totalCount", "total_sessions", "total_elements"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            total = value
            break
    return [dict(item) for item in lists[0]], total


def _is_wrapper(data: Any) -> bool:
    """A single-key object around another object: ``{"data": {...}}``."""
    return isinstance(data, Mapping) and len(data) == 1 and isinstance(next(iter(data.values())), Mapping)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _shape_at(original: Any, inner: Any, path: list[str]) -> str:
    """The refused body's shape, and where the search stopped inside its wrappers."""
    if not path:
        return _shape(original)
    where = ".".join(path)
    deeper = (
        f" (looked through at most {INSIGHTS_MAX_WRAPPERS} wrappers)"
        if len(path) == INSIGHTS_MAX_WRAPPERS
        else ""
    )
    return f"{_shape(original)}; inside {where}: {_shape(inner)}{deeper}"


def _shape(data: Any) -> str:
    if isinstance(data, Mapping):
        return "object with keys " + ", ".join(f"{k!s}: {type(v).__name__}" for k, v in data.items())
    if isinstance(data, list):
        kinds = sorted({type(item).__name__ for item in data})
        return f"list of {len(data)} ({', '.join(kinds) or 'empty'})"
    return type(data).__name__


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (Mapping, list)):
        import json

        # JSON, not Python's repr: the value may end up in a warehouse column.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _session_at(session: Mapping[str, Any]) -> datetime | None:
    value = session.get("session_start_time")
    if not isinstance(value, str):
        return None
    try:
        return parse_api_time(value)
    except ValueError:
        return None


def _fmt_dt(value: datetime) -> str:
    # Milliseconds as usual; microseconds only when the value has them, so a bound sent to the
    # API is exactly the one the client compares session times against (window boundaries).
    spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _field_list(value: str | Sequence[str] | None, field: str) -> list[str]:
    """``project_fields`` as a list: a string is one comma-separated list (never its characters)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    result = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise VonageStudioConfigError(f"{field} must hold non-empty field names, got {item!r}")
        result.append(item.strip())
    return result


def _iso_param(value: datetime | date | str, field: str) -> str:
    """A day as the day (``2020-10-14``), an instant as the API's UTC timestamp."""
    instant = to_utc(value, field=field)  # checks the day as well
    return instant.date().isoformat() if is_date_only(value) else _fmt_dt(instant)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value).strip(), safe="")


def _json(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise VonageStudioError(
            f"AI Studio answered {resp.status_code} with a body that is not JSON", resp.status_code
        ) from exc


def _error_message(resp: requests.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        text = (resp.text or "").strip()
        return text[:200] or resp.reason or f"HTTP {resp.status_code}"
    if isinstance(data, Mapping):
        for key in ("message", "detail", "error"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return resp.reason or f"HTTP {resp.status_code}"


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "RemoteDisconnected", "Connection aborted"):
        if marker in text:
            return marker
    return type(exc).__name__


def _normalized_numbers(numbers: Any, default_country: str | None) -> frozenset[str]:
    """``make_call``'s ``extra_do_not_call`` as the API would see each number. Typed like ``to``,
    so ``default_country`` applies; shapes as
    :func:`~airflow_provider_vonage_studio.destinations.parse_number_list` (one string is one
    number, or a comma/newline-separated list; never its characters).

    :raises VonageStudioConfigError: naming ``extra_do_not_call``, for a list of the wrong
        type or an entry that is not a possible number or SIP URI (nothing is dialed).
    """
    # Cached on the list as given: a batch passes the same list before every dial, and even
    # splitting a long list again would cost more per dial than the pacing gap allows.
    key = tuple(numbers) if isinstance(numbers, list) else numbers
    try:
        return _normalized_cached(key, default_country)
    except TypeError:  # unhashable (a mapping, a list holding lists): refused below, uncached
        return _normalize_numbers(numbers, default_country)


@lru_cache(maxsize=16)
def _normalized_cached(numbers: Any, default_country: str | None) -> frozenset[str]:
    return _normalize_numbers(numbers, default_country)


def _normalize_numbers(numbers: Any, default_country: str | None) -> frozenset[str]:
    from airflow_provider_vonage_studio.destinations import parse_number_list

    return frozenset(parse_number_list(numbers, field="extra_do_not_call", default_country=default_country))


def _result_from_record(record: CallRecord, status_url: str | None) -> CallResult:
    if record.session_id is None or record.session_start_time is None:
        raise CallOutcomeUnknown(f"call {record.call_ref} is marked placed but has no session recorded")
    return CallResult(
        session_id=record.session_id,
        session_start_time=record.session_start_time,
        call_ref=record.call_ref,
        to=record.destination,
        agent_id=record.agent_id,
        status_url=status_url,
    )


def _mask(secret: str) -> None:
    try:
        from airflow.providers.common.compat.sdk import mask_secret

        mask_secret(secret)
    except Exception:  # masking is best effort outside a task (e.g. a plain script)
        log.debug("could not register a secret with the log masker")


__all__ = ["CallResult", "ConnectionConfig", "VonageStudioHook", "error_for", "parse_connection"]
