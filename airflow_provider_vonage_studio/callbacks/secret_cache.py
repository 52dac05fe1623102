"""The secrets that may have signed a callback token: read from the connection, cached briefly."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from airflow_provider_vonage_studio.callbacks.settings import DEFAULT_CONN_ID, LOGGER_NAME

__all__ = ["SECRET_CACHE_SECONDS", "connection_secrets"]

log = logging.getLogger(LOGGER_NAME)

#: How long secrets read from the connection are reused: short enough that a rotation takes
#: effect within half a minute, long enough that a burst of callbacks does not look the
#: connection up (possibly in the metadata database or a secrets backend) every time.
SECRET_CACHE_SECONDS = 30.0


def connection_secrets(conn_id: str = DEFAULT_CONN_ID) -> list[str]:
    """The callback secrets of connection ``conn_id``: current first, then previous ones.

    The current secret is the connection's ``callback_secret`` extra (read through
    :class:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook`, which also
    registers it with Airflow's log masker). During a rotation, secrets listed in the
    optional extra ``previous_callback_secrets`` (a list, or one comma-separated string)
    keep verifying the tokens of calls placed before the change. A receiver-only
    connection without an API key is fine: only the secrets are read.

    Returns an empty list when no secret is configured.

    :raises Exception: whatever Airflow raises when the connection does not exist or the
        secrets backend fails (the receiver answers 503).
    """
    from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

    hook = VonageStudioHook(conn_id)
    conn = hook.get_connection(conn_id)
    extra = dict(conn.extra_dejson or {})
    try:
        current = hook.config.callback_secret
    except VonageStudioConfigError:
        # The hook insists on an API key; the receiver does not need one.
        current = (str(extra.get("callback_secret") or "")).strip() or None
    previous = extra.get("previous_callback_secrets") or []
    if isinstance(previous, str):
        previous = previous.split(",")
    secrets = [current] if current else []
    for item in previous if isinstance(previous, list) else []:
        text = str(item).strip()
        if text and text not in secrets:
            secrets.append(text)
    _mask_secrets(secrets)
    return secrets


def _mask_secrets(secrets: list[str]) -> None:
    try:
        from airflow.providers.common.compat.sdk import mask_secret

        for secret in secrets:
            mask_secret(secret)
    except Exception:  # best effort: masking needs Airflow's logging set up
        log.debug("could not register the callback secrets with the log masker")


class _SecretCache:
    """Secrets from a provider, reused for ``ttl`` seconds; thread-safe.

    A failed lookup is remembered for ``retry_after`` seconds, so that an outage of the
    secrets backend is not hit again by every callback that arrives meanwhile.
    """

    def __init__(self, provider: Callable[[], list[str]], ttl: float, retry_after: float = 5.0) -> None:
        self._provider = provider
        self._ttl = ttl
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._value: list[str] | None = None
        self._expires = 0.0
        self._failure: Exception | None = None
        self._failure_until = 0.0

    def cached(self) -> list[str] | None:
        """The secrets when still fresh, else ``None`` (never blocks on the provider)."""
        value = self._value
        return value if value is not None and time.monotonic() < self._expires else None

    def get(self) -> list[str]:
        """Fresh secrets, asking the provider when the cached ones expired (may block)."""
        with self._lock:
            value = self.cached()
            if value is not None:
                return value
            if self._failure is not None and time.monotonic() < self._failure_until:
                raise self._failure
            try:
                value = [s for s in self._provider() if isinstance(s, str) and s]
            except Exception as exc:
                self._failure, self._failure_until = exc, time.monotonic() + self._retry_after
                raise
            self._failure = None
            self._value, self._expires = value, time.monotonic() + self._ttl
            return value
