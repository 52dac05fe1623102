"""The HTTP layer: one attempt classified (:meth:`HttpMixin._send`) and the retry policy over
typed errors (:meth:`HttpMixin._with_retries`, tenacity), plus reading AI Studio's bodies.

``requests`` and ``tenacity`` load inside the functions that use them, never at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.exceptions import (
    RETRYABLE_STATUSES,
    CallOutcomeUnknown,
    VonageStudioConnectionError,
    VonageStudioError,
    error_for,
)
from airflow_provider_vonage_studio.hooks.base import HookParts
from airflow_provider_vonage_studio.timeutil import to_utc

if TYPE_CHECKING:
    import requests

__all__ = ["CONNECT_TIMEOUT", "MAKE_CALL_PATH", "HttpMixin", "parse_api_time"]

CONNECT_TIMEOUT = 10.0
MAKE_CALL_PATH = "/telephony/make-call"


class _Retry(Exception):
    """Internal: an attempt failed in a way that is safe to try again."""

    def __init__(self, error: VonageStudioError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class HttpMixin(HookParts):
    """The hook's HTTP plumbing: classified attempts and the retry policy."""

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


def parse_api_time(value: str, field: str = "session_start_time") -> datetime:
    """AI Studio's timestamps are naive ISO-8601 in UTC; return an aware UTC datetime.

    :raises VonageStudioConfigError: (a ``ValueError``) when ``value`` is not ISO-8601.
    """
    return to_utc(value, field=field)


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
