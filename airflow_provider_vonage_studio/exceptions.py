"""Errors raised by the Vonage AI Studio provider.

Every error carries the API's ``status`` (HTTP status, or ``None`` for local errors)
and ``message`` (the API's own words, or ours). Whether Airflow should retry the task
is decided by :attr:`VonageStudioError.retryable`: operators turn non-retryable errors
into ``AirflowFailException`` so a bad key or a malformed number does not burn task
retries (and, worse, dial again).
"""

from __future__ import annotations


class VonageStudioError(Exception):
    """Base class of every error the provider raises on purpose."""

    #: Whether a later Airflow task retry could succeed.
    retryable: bool = False

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message if status is None else f"{status}: {message}")
        self.status = status
        self.message = message


class VonageStudioConfigError(VonageStudioError, ValueError):
    """The connection or an argument is malformed (names the field); nothing was sent."""


class InvalidDestination(VonageStudioConfigError):
    """The ``to`` value is neither a possible phone number nor a SIP URI; nothing was sent."""


class InvalidSessionParameter(VonageStudioConfigError):
    """A session parameter name or value breaks AI Studio's rules; nothing was sent."""


class VonageStudioBadRequest(VonageStudioError):
    """400: the API refused the request (e.g. ``Bad destination number format``)."""


class VonageStudioAuthError(VonageStudioError):
    """401: the API key was refused (Insights also answers 401 for bad query parameters)."""


class VonageStudioAgentNotFound(VonageStudioError):
    """404 on make-call: the agent does not exist or has no published version."""


class SessionNotFound(VonageStudioError):
    """404 on Insights: the session is unknown, or not indexed yet (normal right after a call)."""

    retryable = True


class VonageStudioRateLimited(VonageStudioError):
    """429 still answered after the hook's retries were spent."""

    retryable = True


class VonageStudioServerError(VonageStudioError):
    """5xx from the API. The seed's 500 "Failed to fetch preconfigured session
    information" is a configuration problem and is not retryable; 502/503/504 are."""

    def __init__(self, message: str, status: int | None = None, *, retryable: bool = True) -> None:
        super().__init__(message, status)
        self.retryable = retryable


class VonageStudioConnectionError(VonageStudioError):
    """The API could not be reached (connection refused/reset before the request was sent)."""

    retryable = True


class CallOutcomeUnknown(VonageStudioError):
    """The request reached AI Studio but its answer did not: a read timeout, a 2xx whose body
    cannot be read, or a try killed while dialing.

    (A connection closed before any byte of an answer is retried instead, as a refusal would
    be: see docs/guarantees.md for that trade-off.) The phone may or may not be ringing. The
    provider never re-dials such a call on its own: pass ``redial_unknown=True`` (or a new
    ``call_key``) to call again on purpose.
    """


class CallStoreUnavailable(VonageStudioError):
    """The call store (``[vonage_studio] store_url``) could not be reached or written.

    Raised before a dial (nothing was sent) or for a ledger write that is not a placed call's
    (see :class:`CallPlacedNotRecorded` for that). The message names the store's URL without
    its password. Retryable: a later try finds the ledger as it was.
    """

    retryable = True


class CallPlacedNotRecorded(VonageStudioError):
    """AI Studio accepted the call, but the call store could not record it, even after retries.

    The call WAS placed: ``session_id`` and ``session_start_time`` hold what AI Studio answered
    (also in the message and in the task log at error level). The ledger row is left
    ``sending``, so a later try reports the call ``unknown`` and never dials it again. Not
    retryable: a retry cannot learn more than this error says.
    """

    def __init__(self, message: str, *, session_id: str, session_start_time: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.session_start_time = session_start_time


class CallRejectedEarlier(VonageStudioError):
    """The ledger shows the API refused this call on an earlier try; re-raised without a request."""


class DoNotCall(VonageStudioError):
    """The destination is on the do-not-call list; nothing was sent."""


class UnknownCall(VonageStudioError):
    """No call with this ``call_ref`` is recorded in the call store."""


class CallFailed(VonageStudioError):
    """The call's status callback reported a failure listed in ``fail_on`` (busy, timeout, ...)."""

    def __init__(self, message: str, call_status: str) -> None:
        super().__init__(message)
        self.call_status = call_status


#: HTTP statuses that say "not placed, try again later": 429 and the gateway errors.
RETRYABLE_STATUSES = (429, 502, 503, 504)

#: AI Studio's 500 that names a configuration problem (not worth retrying).
PRECONFIGURED_SESSION_MESSAGE = "Failed to fetch preconfigured session information"


def error_for(status: int | None, message: str, *, insights: bool = False) -> VonageStudioError:
    """Map an API status and message to the provider's exception class."""
    if status == 400:
        return VonageStudioBadRequest(message, status)
    if status == 401:
        return VonageStudioAuthError(message, status)
    if status == 404:
        return SessionNotFound(message, status) if insights else VonageStudioAgentNotFound(message, status)
    if status == 429:
        return VonageStudioRateLimited(message, status)
    if status is not None and status >= 500:
        retryable = status in RETRYABLE_STATUSES and PRECONFIGURED_SESSION_MESSAGE not in message
        return VonageStudioServerError(message, status, retryable=retryable)
    if status is None:
        return VonageStudioConnectionError(message)
    return VonageStudioError(message, status)
