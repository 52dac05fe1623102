"""Airflow plugin: the callback receiver and the outcome view inside the Airflow 3 API server.

Registered through the ``airflow.plugins`` entry point only (declaring it in the provider
info too would register it twice when providers load eagerly), so ``airflow api-server``
mounts :mod:`~airflow_provider_vonage_studio.callbacks.app` at ``/vonage-studio``:

* ``POST /vonage-studio/calls/<token>/status`` -- AI Studio's status callbacks; set the
  connection's ``callback_base_url`` to ``https://<airflow host>/vonage-studio``;
* ``GET /vonage-studio/health``;
* ``GET /vonage-studio/outcomes`` (and ``.json``) -- the outcome view, linked from the UI's
  *Browse* menu and from every DAG run page.

Apps mounted through ``fastapi_apps`` are not behind Airflow's authentication. The
callback route is guarded by the signed token in each call's ``status_url``; the outcome
view checks the Airflow login itself (the UI's session cookie or a bearer JWT) and shows
only the DAGs the user may read (``outcome_view="airflow"`` in
:func:`~airflow_provider_vonage_studio.callbacks.app.create_app`).

Every Airflow process loads plugins (scheduler, workers, DAG processor), so this module
stays cheap to import: the FastAPI app is built by :class:`LazyReceiverApp` on its first
request, in the API server only, and nothing here imports FastAPI, the store or the hook.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.providers.common.compat.sdk import AirflowPlugin

__all__ = ["URL_PREFIX", "LazyReceiverApp", "VonageStudioPlugin"]

#: Where the API server mounts the receiver.
URL_PREFIX = "/vonage-studio"

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyReceiverApp:
    """An ASGI app that builds the receiver (:func:`create_app`) on its first request.

    The API server mounts any ASGI callable (``app.mount``), so the plugin can hand it this
    small object instead of a FastAPI app built at import time.

    :param factory_kwargs: passed to
        :func:`~airflow_provider_vonage_studio.callbacks.app.create_app`.
    """

    def __init__(self, **factory_kwargs: Any) -> None:
        self._kwargs = factory_kwargs
        self._app: Callable[[_Scope, _Receive, _Send], Awaitable[None]] | None = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Callable[[_Scope, _Receive, _Send], Awaitable[None]]:
        """The receiver app, built now if it was not yet."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from airflow_provider_vonage_studio.callbacks.app import create_app

                    kwargs = dict(self._kwargs)
                    if "conn_id" not in kwargs:
                        from airflow_provider_vonage_studio._compat import conf

                        # Read when the first request arrives, not at import: config may change
                        # between plugin discovery and serving.
                        kwargs["conn_id"] = conf.get(
                            "vonage_studio", "callback_conn_id", fallback="vonage_studio_default"
                        )
                    self._app = create_app(**kwargs)
        return self._app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        await self.app(scope, receive, send)


class VonageStudioPlugin(AirflowPlugin):
    """Mounts the Vonage AI Studio callback receiver and links its outcome view in the UI."""

    name = "vonage_studio"
    fastapi_apps = [  # noqa: RUF012 -- AirflowPlugin declares these as class-level lists
        {
            "app": LazyReceiverApp(outcome_view="airflow"),
            "url_prefix": URL_PREFIX,
            "name": "Vonage AI Studio callbacks",
        }
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "Call outcomes",
            "href": f"{URL_PREFIX}/outcomes",
            "destination": "nav",
            "category": "browse",
            "url_route": "vonage-studio-outcomes",
        },
        {
            # A tab on each DAG run: the UI fills in {DAG_ID} and {RUN_ID}.
            "name": "Call outcomes",
            "href": f"{URL_PREFIX}/outcomes?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "vonage-studio-run-outcomes",
        },
    ]
