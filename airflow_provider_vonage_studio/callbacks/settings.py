"""The receiver's settings: the default connection, who may see the outcome view, the callbacks' age bound."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Literal

__all__ = [
    "DEFAULT_CALLBACK_MAX_AGE",
    "DEFAULT_CONN_ID",
    "LOGGER_NAME",
    "MAX_CALLBACK_MAX_AGE",
    "OutcomeViewMode",
    "resolve_callback_max_age",
]

DEFAULT_CONN_ID = "vonage_studio_default"
#: The logger every module of the receiver writes to: one name, the one deployments already
#: configure (it was the single module's name before the receiver was split into several).
LOGGER_NAME = "airflow_provider_vonage_studio.callbacks.app"
#: How long after a call started (or its token was issued, where earlier) its callbacks are
#: accepted. AI Studio reports a missed call within minutes; hours leave room for its retries
#: and for a receiver that was down for a while, without letting an old token rewrite history.
DEFAULT_CALLBACK_MAX_AGE = timedelta(hours=6)
#: The largest ``callback_max_age`` accepted: beyond a week the bound protects nothing.
MAX_CALLBACK_MAX_AGE = timedelta(days=7)
#: Who may see the outcome view: ``"airflow"`` any user logged in to the Airflow API server
#: this app is mounted in (rows limited to the DAGs they may read), ``"public"`` anyone who
#: can reach the app, ``"off"`` nobody (404).
OutcomeViewMode = Literal["airflow", "public", "off"]


def resolve_callback_max_age(value: float | timedelta | None = None) -> timedelta:
    """The callbacks' maximum age: ``value``, else ``[vonage_studio] callback_max_age``, else 6 h.

    ``value`` is a :class:`~datetime.timedelta` or a number of seconds; the configuration
    option (env ``AIRFLOW__VONAGE_STUDIO__CALLBACK_MAX_AGE``) is a number of seconds.

    :raises VonageStudioConfigError: naming the setting, when it is not a number of seconds
        (a bool, a non-numeric string, NaN, infinity), not positive, or over 7 days
        (:data:`MAX_CALLBACK_MAX_AGE`).
    """
    from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

    field = "callback_max_age"
    seconds: float
    if value is None:
        from airflow_provider_vonage_studio._compat import conf

        raw = conf.get("vonage_studio", "callback_max_age", fallback=None)
        if raw is None or not str(raw).strip():
            return DEFAULT_CALLBACK_MAX_AGE
        field = "[vonage_studio] callback_max_age"
        try:
            seconds = float(str(raw).strip())
        except ValueError:
            raise VonageStudioConfigError(
                f"{field}: must be a number of seconds such as 21600, got {str(raw)[:40]!r}"
            ) from None
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VonageStudioConfigError(
            f"{field}: must be a timedelta or a number of seconds, got {type(value).__name__}"
        )
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise VonageStudioConfigError(
            f"{field}: must be a positive, finite number of seconds, got {seconds!r}"
        )
    if seconds > MAX_CALLBACK_MAX_AGE.total_seconds():
        raise VonageStudioConfigError(
            f"{field}: must be at most {int(MAX_CALLBACK_MAX_AGE.total_seconds())} seconds (7 days), "
            f"got {seconds:g}"
        )
    return timedelta(seconds=seconds)
