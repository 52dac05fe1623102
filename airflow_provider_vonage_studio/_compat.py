"""The one place that knows where Airflow keeps things across 3.1 .. 3.3 (version_compat).

Everything goes through ``airflow.providers.common.compat.sdk`` as the official
providers do; only triggers still come from ``airflow.triggers.base``. Every check of the
running Airflow's version lives here too (``AIRFLOW_V_3_2_PLUS`` ..., as the official
providers' ``version_compat`` modules have it), so that supporting a new minor or dropping
an old one is one module's change.

What differs per minor, and what the provider does about it:

* ``airflow <provider> ...`` CLI commands from the provider info's ``cli`` entry exist from
  Airflow 3.2 (:data:`PROVIDER_CLI_SUPPORTED`); the ``vonage-studio`` console script runs
  the same commands on every version.
* ``AirflowRescheduleException`` lives in ``airflow.sdk.exceptions`` from 3.2, in
  ``airflow.exceptions`` before.
* The trigger that runs a ``DeadlineAlert``'s async callback is ``CallbackTrigger``
  (``airflow.triggers.callback``) from 3.2, ``DeadlineCallbackTrigger``
  (``airflow.triggers.deadline``) in 3.1.
* ``airflow.plugins_manager`` returns the loaded plugins from ``_get_plugins()`` from 3.2;
  3.1 keeps them in module globals (:func:`loaded_plugins`).
* The API server has its own access-log middleware (``airflow.api_fastapi.common.http_access_log``)
  from 3.2; 3.1 leaves access logging to uvicorn (:data:`API_SERVER_ACCESS_LOG`). The receiver
  elides tokens from the request path either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow import __version__ as AIRFLOW_VERSION_STRING
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

if TYPE_CHECKING:
    from airflow.triggers.base import BaseTrigger


def _base_version(version: str) -> tuple[int, int, int]:
    """``(major, minor, micro)`` of a version string, ignoring pre/dev/local parts (3.2.0rc1 is 3.2)."""
    from packaging.version import Version

    release = (*Version(version).release, 0, 0)
    return release[0], release[1], release[2]


#: The running Airflow's (major, minor, micro).
AIRFLOW_VERSION: tuple[int, int, int] = _base_version(AIRFLOW_VERSION_STRING)
AIRFLOW_V_3_2_PLUS = AIRFLOW_VERSION >= (3, 2, 0)
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION >= (3, 3, 0)
#: Whether ``airflow vonage-studio ...`` exists (Airflow reads the provider info's ``cli`` from 3.2).
PROVIDER_CLI_SUPPORTED = AIRFLOW_V_3_2_PLUS
#: Whether the API server logs requests itself (``http_access_log``), not only through uvicorn.
API_SERVER_ACCESS_LOG = AIRFLOW_V_3_2_PLUS

if AIRFLOW_V_3_2_PLUS:
    from airflow.sdk.exceptions import AirflowRescheduleException  # type: ignore[attr-defined,unused-ignore]
else:
    from airflow.exceptions import AirflowRescheduleException  # type: ignore[no-redef,attr-defined,unused-ignore]

__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "API_SERVER_ACCESS_LOG",
    "PROVIDER_CLI_SUPPORTED",
    "AirflowException",
    "AirflowFailException",
    "AirflowRescheduleException",
    "BaseHook",
    "BaseNotifier",
    "BaseOperator",
    "BaseSensorOperator",
    "Context",
    "conf",
    "deadline_callback_trigger",
    "default_deferrable",
    "loaded_plugins",
]


def default_deferrable() -> bool:
    """``[operators] default_deferrable``, read when an operator is built."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def deadline_callback_trigger() -> type[BaseTrigger]:
    """The trigger class the triggerer runs a ``DeadlineAlert``'s ``AsyncCallback`` in.

    ``CallbackTrigger`` from Airflow 3.2, ``DeadlineCallbackTrigger`` in 3.1; both take
    ``callback_path`` and ``callback_kwargs``.
    """
    if AIRFLOW_V_3_2_PLUS:
        from airflow.triggers.callback import CallbackTrigger

        return CallbackTrigger
    from airflow.triggers.deadline import DeadlineCallbackTrigger  # type: ignore[import-not-found,unused-ignore]

    return DeadlineCallbackTrigger


def loaded_plugins() -> tuple[list[Any], dict[str, str]]:
    """The plugins Airflow loads in this process and its plugin import errors (by source).

    ``plugins_manager._get_plugins()`` from Airflow 3.2; ``ensure_plugins_loaded()`` and the
    module's ``plugins`` / ``import_errors`` in 3.1.
    """
    from airflow import plugins_manager

    if AIRFLOW_V_3_2_PLUS:
        found, errors = plugins_manager._get_plugins()  # type: ignore[attr-defined,unused-ignore]
        return list(found), dict(errors)
    plugins_manager.ensure_plugins_loaded()
    return list(getattr(plugins_manager, "plugins", None) or []), dict(
        getattr(plugins_manager, "import_errors", {})
    )
