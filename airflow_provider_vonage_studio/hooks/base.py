"""What the hook's parts (HTTP, pacing, dialing, Insights) may use of the hook they make up.

Each part is a mixin of :class:`~airflow_provider_vonage_studio.hooks.vonage_studio.VonageStudioHook`;
this class only names, for the type checker, the state the hook module provides, so that the
parts never import the hook module (imports run one way: parts first, hook last).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

    from airflow_provider_vonage_studio.hooks.connection import ConnectionConfig
    from airflow_provider_vonage_studio.store import CallStore

__all__ = ["HookParts"]


class HookParts:
    """The hook's state, as its parts see it (set by ``VonageStudioHook.__init__``)."""

    max_attempts: int
    max_retry_seconds: float
    retry_backoff: float
    pace: bool
    max_rate_limited_seconds: float
    store_retry_seconds: float
    rate_limited_count: int
    _sleep: Callable[[float], None]
    _lock: threading.Lock

    if TYPE_CHECKING:
        log: Any

        @property
        def config(self) -> ConnectionConfig: ...

        @property
        def session(self) -> requests.Session: ...

        @property
        def store(self) -> CallStore: ...
