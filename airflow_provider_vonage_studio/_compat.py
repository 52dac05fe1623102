"""The one place that knows where Airflow keeps things across 3.1 .. 3.3.

Everything goes through ``airflow.providers.common.compat.sdk`` as the official
providers do; only triggers still come from ``airflow.triggers.base``.
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    BaseHook,
    BaseNotifier,
    BaseOperator,
    BaseSensorOperator,
    Context,
    conf,
)

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "BaseHook",
    "BaseNotifier",
    "BaseOperator",
    "BaseSensorOperator",
    "Context",
    "conf",
    "default_deferrable",
]


def default_deferrable() -> bool:
    """``[operators] default_deferrable``, read when an operator is built."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)
