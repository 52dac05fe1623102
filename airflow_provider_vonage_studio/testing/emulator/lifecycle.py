"""The public :class:`Emulator`: :class:`~.state.EmulatorState` served over HTTP.

It adds what the route modules must not depend on: the ASGI app (:mod:`.app`, which imports
them), the server thread (:mod:`.server`) and the Airflow connection strings
(:mod:`.connection`). Everything else, and every constructor argument, is
:class:`~.state.EmulatorState`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_vonage_studio.testing.emulator.app import build_app
from airflow_provider_vonage_studio.testing.emulator.config import CONTROL_PREFIX
from airflow_provider_vonage_studio.testing.emulator.connection import AirflowConnectionMixin
from airflow_provider_vonage_studio.testing.emulator.server import ServerThread
from airflow_provider_vonage_studio.testing.emulator.state import EmulatorState

if TYPE_CHECKING:
    from fastapi import FastAPI


class Emulator(AirflowConnectionMixin, EmulatorState):
    """The AI Studio emulator: configuration, recorded traffic and the HTTP server.

    All keyword arguments are optional:

    ``api_keys``: keys accepted in ``X-Vgai-Key``. ``agents``: agent ids, or a mapping
    agent id -> :class:`AgentConfig` (``None`` for defaults). ``calls_per_second``: the
    per-agent limit (Vonage grants 1, 3 or 5; any positive integer is accepted here so a
    test can effectively lift it). ``rate_tolerance``: see below. ``retry_after``: seconds
    to send in ``Retry-After`` on rate-limit 429s (``None``: no header, like the real API
    as far as is documented). ``callback_delay``: seconds between a non-answered call (or
    an accepted message) and its status callback. ``insights_index_delay``: seconds before
    a call's session is visible to Insights. ``insights_shape``: an :class:`InsightsShape`.
    ``insights_wrapper``: key(s) that wrap every successful Insights body, outermost first
    (``"data"`` answers ``{"data": <body>}``, ``("data", "result")`` answers
    ``{"data": {"result": <body>}}``; ``None``, the default, wraps nothing). ``scripts``:
    destination -> outcome (or list of outcomes, one per attempt) to start with.
    ``message_scripts``: the same for messages.

    End-call webhook: an answered call whose ``session_parameters`` carry ``VS_CALL_TOKEN``
    is followed, ``talk_time`` seconds (default 1) after it started, by the agent's End Call
    Event webhook: a POST of ``{"VS_CALL_TOKEN", <collected parameters>, "session_id",
    "ended_at"}`` to ``end_call_url`` (a template in which ``$VS_CALL_TOKEN`` is
    substituted, or a base URL to which ``/calls/<token>/ended`` is appended) or, when that
    is ``None``, to the call's ``status_url`` with its trailing ``/calls/<x>/status``
    replaced by ``/calls/<token>/ended``. ``end_call_webhook=False`` turns it off (an agent
    without the webhook node); a script can turn it off or make it late per destination.

    Rate limit: strict by default (:mod:`.limits`): a call is refused with 429 when
    ``calls_per_second`` calls were already accepted for the same agent within the trailing
    1.0 s. Messages draw on the same per-agent budget as calls (``shared_rate_budget=True``,
    the strictest reading: the docs do not say); ``False`` gives messages a budget of their
    own of the same size. ``rate_tolerance`` (default 0) shortens the window to
    ``1.0 - rate_tolerance`` seconds: an explicit opt-in for users' own tests against a
    forgiving limiter; the provider's benchmarks and guarantee tests never set it.

    Thread-safe: the server runs in its own thread; every method may be called from any
    thread. Raises :class:`EmulatorConfigError` for malformed settings.
    """

    # No __init__: the arguments are EmulatorState's as they are, so the app and the server
    # thread are made on first use.
    _app: FastAPI | None = None
    _server_thread: ServerThread | None = None

    @property
    def _server(self) -> ServerThread:
        with self._lock:
            if self._server_thread is None:
                self._server_thread = ServerThread()
            return self._server_thread

    @property
    def app(self) -> FastAPI:
        """The ASGI application (a FastAPI app), built on first use."""
        with self._lock:
            if self._app is None:
                self._app = build_app(self)
            return self._app

    @property
    def port(self) -> int:
        """The TCP port the server listens on. Raises RuntimeError before :meth:`start`."""
        if self._server.port is None:
            raise RuntimeError("the emulator is not started")
        return self._server.port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765``. Raises RuntimeError before :meth:`start`."""
        return self._server.url()

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._server.running

    def start(self, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 10.0) -> Emulator:
        """Serve on ``host:port`` (0 picks a free port) from a daemon thread.

        Returns once the server answers HTTP. Raises RuntimeError if already started or if
        it does not come up within ``timeout`` seconds; OSError if the port is taken.
        """
        if self._server.started:
            raise RuntimeError("the emulator is already started")
        self._stopping.clear()
        self._server.start(self.app, host, port, health_path=f"{CONTROL_PREFIX}/health", timeout=timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, cancel pending callbacks and wait for the server thread."""
        self._stopping.set()
        self._cancel_timers()
        self._server.stop(timeout)

    def __enter__(self) -> Emulator:
        if not self._server.started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
