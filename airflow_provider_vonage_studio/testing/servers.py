"""Serve an ASGI app (the callback receiver, say) under uvicorn in a thread, for tests.

with ThreadedServer(create_app(store=store, secret_provider=lambda: [secret])) as server:
    conn_extra = {"callback_base_url": server.url, "callback_secret": secret}
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class ThreadedServer:
    """``app`` under uvicorn in a daemon thread, on 127.0.0.1 and a free port (``.url``).

    The socket is made with ``IPPROTO_TCP`` so asyncio sets ``TCP_NODELAY`` on accepted
    connections; with the default protocol 0 every keep-alive response waits ~40 ms for the
    client's delayed ACK.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1") -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind((host, 0))
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        """Serve; returns once uvicorn is listening.

        :raises RuntimeError: when it is not listening after ``timeout`` seconds.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start serving {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
