"""Fixtures for DAG runs that need AI Studio's status callbacks to arrive.

``callback_receiver_factory(store_url, secret)`` serves the real callback receiver app under
uvicorn in a daemon thread on a free loopback port and returns its base URL, for the
connection's ``callback_base_url``. ``airflow dags test`` runs in a subprocess that shares the
store (``AIRFLOW__VONAGE_STUDIO__STORE_URL``) with the receiver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from airflow_provider_vonage_studio.testing.servers import ThreadedServer


@pytest.fixture(scope="module")
def callback_receiver_factory() -> Iterator[Callable[[str, str], str]]:
    """``factory(store_url, secret) -> base URL`` of a running callback receiver (module scope)."""
    from airflow_provider_vonage_studio.callbacks.app import create_app
    from airflow_provider_vonage_studio.store import CallStore

    started: list[tuple[ThreadedServer, CallStore]] = []

    def factory(store_url: str, secret: str) -> str:
        store = CallStore(store_url)
        app = create_app(store=store, secret_provider=lambda: [secret], outcome_view="off")
        server = ThreadedServer(app).start()
        started.append((server, store))
        return server.url

    yield factory
    for server, store in started:
        server.stop()
        store.dispose()
