"""Fixtures for DAG runs that need AI Studio's status callbacks to arrive.

``callback_receiver_factory(store_url, secret)`` serves the real callback receiver app under
uvicorn in a daemon thread on a free loopback port and returns its base URL, for the
connection's ``callback_base_url``. ``airflow dags test`` runs in a subprocess that shares the
store (``AIRFLOW__VONAGE_STUDIO__STORE_URL``) with the receiver.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest


class ReceiverServer:
    """An ASGI app under uvicorn in a daemon thread, on 127.0.0.1 and a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self, timeout: float = 10) -> ReceiverServer:
        """Serve; returns once uvicorn is listening. Raises AssertionError after ``timeout`` s."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            assert time.monotonic() < deadline, "the callback receiver did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.should_exit = True
        self._thread.join(5)
        self._sock.close()


@pytest.fixture(scope="module")
def callback_receiver_factory() -> Iterator[Callable[[str, str], str]]:
    """``factory(store_url, secret) -> base URL`` of a running callback receiver (module scope)."""
    from airflow_provider_vonage_studio.callbacks.app import create_app
    from airflow_provider_vonage_studio.store import CallStore

    started: list[tuple[ReceiverServer, CallStore]] = []

    def factory(store_url: str, secret: str) -> str:
        store = CallStore(store_url)
        app = create_app(store=store, secret_provider=lambda: [secret], outcome_view="off")
        server = ReceiverServer(app).start()
        started.append((server, store))
        return server.url

    yield factory
    for server, store in started:
        server.stop()
        store.dispose()
