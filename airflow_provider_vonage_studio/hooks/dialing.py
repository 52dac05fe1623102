"""Dialing one call: the make-call request through pacing and retries, and the ledger writes
that follow it (``placed``, ``rejected``, ``unknown``; store outages retried for a while).

What an existing ledger row means for a new attempt is decided in
:mod:`~airflow_provider_vonage_studio.ledger`; the hook's ``make_call`` applies that decision
and hands the dial to :meth:`DialingMixin._dial_recorded` (or ``_post_call`` without a ledger).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.exceptions import (
    CallOutcomeUnknown,
    CallPlacedNotRecorded,
    CallStoreUnavailable,
    InvalidSessionParameter,
    VonageStudioConfigError,
    VonageStudioError,
    VonageStudioRateLimited,
)
from airflow_provider_vonage_studio.hooks.connection import END_CALL_TOKEN_PARAMETER
from airflow_provider_vonage_studio.hooks.http import MAKE_CALL_PATH, HttpMixin, _json, _Retry, parse_api_time
from airflow_provider_vonage_studio.hooks.pacing import PacingMixin, _LedgerRow

if TYPE_CHECKING:
    import requests

    from airflow_provider_vonage_studio.calls import CallRecord

__all__ = ["CallResult", "DialingMixin", "call_body"]


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


class DialingMixin(PacingMixin, HttpMixin):
    """The hook's dial of one call and the ledger writes around its request."""

    def _dial_recorded(
        self,
        body: dict[str, Any],
        call_ref: str,
        status_url: str | None,
        *,
        path: str = MAKE_CALL_PATH,
        read: Callable[..., Any] | None = None,
    ) -> CallResult:
        """Dial a call whose ledger row is ``queued`` and record what became of it.

        The row goes ``sending`` only when the send gate grants a request leave (compare-and-set,
        inside the pacing step; at most a short final wait precedes the request), back to
        ``queued`` after each definite "not placed", and ends ``placed``, ``rejected`` or
        ``unknown``. Whatever ends this function before that leave (a store outage, a kill in the
        slot wait, the 429 time bound) leaves it ``queued``. ``path`` and ``read`` (see
        :meth:`_post_call`) let a message go through the same steps.
        """
        from airflow_provider_vonage_studio.destinations import redact

        store = self.store
        ledger = _LedgerRow(call_ref)
        try:
            result = self._post_call(
                body, call_ref=call_ref, status_url=status_url, ledger=ledger, path=path, read=read
            )
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
            started = None if result.session_start_time is None else result.session_start_time.isoformat()
            message = (
                f"call {call_ref} to {redact(result.to)} WAS PLACED by AI Studio (session_id "
                f"{result.session_id}, session_start_time {started}) but "
                f"the call store could not record it: {exc.message}. It is not dialed again: a later "
                "try reports it as unknown. Keep this session id to follow the call up."
            )
            self.log.error(message)
            raise CallPlacedNotRecorded(
                message,
                session_id=result.session_id,
                session_start_time=started,
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
        path: str = MAKE_CALL_PATH,
        read: Callable[..., Any] | None = None,
    ) -> CallResult:
        """Send the make-call request (paced, retried) and read AI Studio's answer.

        ``path`` is the endpoint (messages: ``/messaging/conversation``) and ``read`` what turns
        its 2xx answer into a result (default :meth:`_placed_result`); pacing, retries and the
        ledger steps are the same for both.
        """
        from airflow_provider_vonage_studio.callbacks.tokens import elide_token
        from airflow_provider_vonage_studio.destinations import redact

        if path == MAKE_CALL_PATH:  # a message has no end-call flow to run the webhook from
            body = self._with_end_call_token(body, call_ref, status_url)
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
                resp = self._paced_attempt(body, ledger, rate_limited_until, path)
                if resp is not None:
                    return resp

        resp = self._with_retries(attempt, what=f"make-call to {redact(body['to'])}")
        return (read or self._placed_result)(resp, body, call_ref, status_url)

    def _with_end_call_token(
        self, body: dict[str, Any], call_ref: str | None, status_url: str | None
    ) -> dict[str, Any]:
        """``body`` with the call's signed token as session parameter ``VS_CALL_TOKEN`` when the
        connection's ``end_call_webhook`` is on (and the call has a ``call_ref``: a call without one
        has no ledger row the webhook could confirm); else ``body`` unchanged.

        The token is the one in ``status_url`` when that was signed for this call, so the agent
        and the status callback present the same capability; otherwise a fresh one is signed.
        The token is never logged: the body is not, and log lines elide it from URLs.
        """
        cfg = self.config
        if not cfg.end_call_webhook or call_ref is None or not cfg.callback_secret:
            return body
        token = _token_for(call_ref, status_url, cfg.callback_secret)
        params = [*body.get("session_parameters", ()), {"name": END_CALL_TOKEN_PARAMETER, "value": token}]
        return {**body, "session_parameters": params}

    def _paced_attempt(
        self,
        body: dict[str, Any],
        ledger: _LedgerRow | None,
        rate_limited_until: float,
        path: str = MAKE_CALL_PATH,
    ) -> requests.Response | None:
        """One request after its slot: the 2xx response, ``None`` when a 429 under the shared
        pacer should wait for a new slot and try again, or the error (``_Retry`` for the policy)."""
        sent_at = self._before_send(body["agent_id"], ledger)
        try:
            try:
                resp = self._send("POST", path, json=body, idempotent=False)
            finally:
                # Read at once: the request arrived before this, and the next dial's gate
                # counts from it (a later clock reading would only slow everyone down).
                answered_at = time.time()
        except _Retry as exc:
            self._not_placed(exc, body["agent_id"], ledger, sent_at, answered_at)
            if not (self.pace and exc.error.status == 429):
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
            return None
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

    def _not_placed(
        self,
        exc: _Retry,
        agent_id: str,
        ledger: _LedgerRow | None,
        sent_at: float | None,
        answered_at: float,
    ) -> None:
        """After a retryable refusal: tell the pacer, and put the row back to ``queued``."""
        rate_limited = exc.error.status == 429
        if sent_at is not None:
            # The answer is in: the request no longer counts as on its way. A 429 also
            # widens the spacing for every process sharing the store.
            self._pace_feedback(
                agent_id,
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

    def _placed_result(
        self, resp: requests.Response, body: dict[str, Any], call_ref: str | None, status_url: str | None
    ) -> CallResult:
        """The :class:`CallResult` of a 2xx answer.

        :raises CallOutcomeUnknown: the body is unreadable or lacks the session: AI Studio
            accepted the call, so this must never read as "not placed".
        """
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


def call_body(
    to: str,
    agent_id: str,
    *,
    session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    status_url: str | None,
    hangup_on_answer_machine: bool | None,
    default_country: str | None,
    strict_parameter_names: bool,
) -> tuple[dict[str, Any], str | None]:
    """The make-call body, every input checked (nothing is written or sent before), and the
    checked ``status_url``.

    :raises InvalidDestination, InvalidSessionParameter, VonageStudioConfigError: as
        ``VonageStudioHook.make_call`` documents, naming the field.
    """
    from airflow_provider_vonage_studio.destinations import normalize_destination
    from airflow_provider_vonage_studio.params import normalize_session_parameters
    from airflow_provider_vonage_studio.validation import check_agent_id, check_status_url

    agent_id = check_agent_id(agent_id)
    destination = normalize_destination(to, default_country=default_country)
    params = normalize_session_parameters(session_parameters, strict_names=strict_parameter_names)
    if any(item.get("name") == END_CALL_TOKEN_PARAMETER for item in params or ()):
        # Reserved whether or not the connection's end_call_webhook is on, so turning it on never
        # changes what a DAG sends, and nobody can hand an agent a token of their choosing.
        raise InvalidSessionParameter(
            f"session_parameters: {END_CALL_TOKEN_PARAMETER!r} is reserved: the provider sets it to the "
            "call's signed token when the connection's extra 'end_call_webhook' is on; rename the parameter"
        )
    if hangup_on_answer_machine is not None and not isinstance(hangup_on_answer_machine, bool):
        raise VonageStudioConfigError(
            f"hangup_on_answer_machine must be true or false, got {hangup_on_answer_machine!r}"
        )
    if status_url is not None:
        status_url = check_status_url(status_url)
    body: dict[str, Any] = {"agent_id": agent_id, "to": destination}
    if status_url:
        body["status_url"] = status_url
    if hangup_on_answer_machine is not None:
        body["hangup_on_answer_machine"] = hangup_on_answer_machine
    if params:
        body["session_parameters"] = params
    return body, status_url


def _token_for(call_ref: str, status_url: str | None, secret: str) -> str:
    """The token of ``status_url`` (``.../calls/<token>/status``) if it was signed with ``secret``
    for ``call_ref``; else a fresh token for ``call_ref``."""
    from airflow_provider_vonage_studio.signing import InvalidToken, sign_token, verify_token_details

    match = _STATUS_TOKEN_RE.search(status_url or "")
    if match is not None:
        try:
            if verify_token_details(match.group(1), secret).call_ref == call_ref:
                return match.group(1)
        except InvalidToken:
            pass
    return sign_token(call_ref, secret)


# The token segment of a status URL the hook built (signing.build_status_url).
_STATUS_TOKEN_RE = re.compile(r"/calls/([^/?#]+)/status/?$")


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
