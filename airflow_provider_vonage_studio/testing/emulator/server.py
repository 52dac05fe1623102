"""Serving an ASGI app with uvicorn from a daemon thread, on a socket bound up front."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn


class ServerThread:
    """One uvicorn server in a daemon thread; ``start`` returns once it answers HTTP."""

    def __init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.host: str | None = None
        self.port: int | None = None

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran and :meth:`stop` has not."""
        return self._thread is not None

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def url(self) -> str:
        """Base URL. Raises RuntimeError before :meth:`start`."""
        if self.port is None:
            raise RuntimeError("the emulator is not started")
        host = self.host or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self, app: Any, host: str, port: int, *, health_path: str, timeout: float) -> None:
        """Bind ``host:port`` (0: a free port) and serve ``app``; wait until ``health_path``
        answers 200. Raises RuntimeError if already started or not up within ``timeout``;
        OSError if the port is taken."""
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP, and accepted sockets inherit it. Without it every response on a
        # keep-alive connection waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.host = host
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            loop="asyncio",
            ws="none",
            lifespan="off",
            log_config=None,  # never reconfigure the host process's logging
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"vonage-studio-emulator-{self.port}"
        )
        self._thread.daemon = True
        self._thread.start()
        self._wait_until_serving(health_path, timeout)

    def _wait_until_serving(self, health_path: str, timeout: float) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + timeout
        # Proxies from the environment must never see loopback traffic.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                self._cleanup()
                raise RuntimeError("the emulator server thread exited during start-up")
            if self._server.started:
                try:
                    with opener.open(f"{self.url()}{health_path}", timeout=1.0) as response:
                        if response.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"the emulator did not answer within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the server to exit and wait up to ``timeout`` seconds for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._server = None
        self._thread = None
