""":class:`EmulatorState`: the emulator's settings, scripts and faults, what it recorded.

It is what the route modules (:mod:`.telephony`, :mod:`.messaging`, :mod:`.insights`,
:mod:`.control`, :mod:`.delivery`, :mod:`.app`) work on: they read and change its
underscored state under ``_lock``, are one unit with this module, and those names are not
API outside the package. The public :class:`~.lifecycle.Emulator` adds the ASGI app and the
server thread on top, so nothing here imports the app or the routes.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow_provider_vonage_studio.testing.emulator.config import (
    AGENT_NUMBER,
    MAKE_CALL_PATH,
    AgentConfig,
    CallScript,
    EmulatorConfigError,
    Fault,
    InsightsShape,
    MessageScript,
    Outcome,
    as_str_tuple,
    call_script,
    check_destination_key,
    check_non_negative,
    check_positive_int,
    check_shape,
    check_wrapper,
    message_script,
)
from airflow_provider_vonage_studio.testing.emulator.limits import StrictLimiter
from airflow_provider_vonage_studio.testing.emulator.records import (
    ApiError,
    CallbackAttempt,
    PendingFault,
    PlacedCall,
    PlacedMessage,
    RecordedRequest,
    Session,
    new_session,
)


class EmulatorState:
    """The emulator without its HTTP app and server: settings, scripts, faults, recordings.

    Use :class:`~.lifecycle.Emulator`; its docstring describes these keyword arguments.
    Thread-safe under ``_lock``. Raises :class:`EmulatorConfigError` for malformed settings.
    """

    # Long only because every setting is checked here, a line or two apiece.
    def __init__(
        self,
        *,
        api_keys: str | Iterable[str] = ("test-key",),
        agents: str | Iterable[str] | Mapping[str, AgentConfig | None] = ("agent-1",),
        calls_per_second: int = 1,
        rate_tolerance: float = 0.0,
        retry_after: int | None = None,
        callback_delay: float = 0.2,
        insights_index_delay: float = 0.5,
        insights_shape: InsightsShape | str = InsightsShape.DEFAULT,
        scripts: Mapping[str, Any] | None = None,
        insights_wrapper: str | Sequence[str] | None = None,
        talk_time: float = 1.0,
        end_call_webhook: bool = True,
        end_call_url: str | None = None,
        shared_rate_budget: bool = True,
        message_scripts: Mapping[str, Any] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.api_keys = as_str_tuple(api_keys, "api_keys")
        if not self.api_keys:
            raise EmulatorConfigError("api_keys must name at least one key")
        self.agents: dict[str, AgentConfig] = {}
        if isinstance(agents, Mapping):
            for agent_id, config in agents.items():
                self.add_agent(agent_id, config)
        else:
            for agent_id in as_str_tuple(agents, "agents"):
                self.add_agent(agent_id)
        self.calls_per_second = check_positive_int(calls_per_second, "calls_per_second")
        self.rate_tolerance = check_non_negative(rate_tolerance, "rate_tolerance")
        if self.rate_tolerance >= 1:
            raise EmulatorConfigError(f"rate_tolerance must be below 1, got {rate_tolerance!r}")
        self.retry_after = None if retry_after is None else check_positive_int(retry_after, "retry_after")
        self.callback_delay = check_non_negative(callback_delay, "callback_delay")
        self.insights_index_delay = check_non_negative(insights_index_delay, "insights_index_delay")
        self._insights_shape = check_shape(insights_shape)
        self._insights_wrapper = check_wrapper(insights_wrapper)
        self.talk_time = check_non_negative(talk_time, "talk_time")
        if not isinstance(end_call_webhook, bool):
            raise EmulatorConfigError(f"end_call_webhook must be a boolean, got {end_call_webhook!r}")
        self.end_call_webhook = end_call_webhook
        if end_call_url is not None and (not isinstance(end_call_url, str) or "://" not in end_call_url):
            raise EmulatorConfigError(f"end_call_url must be an http(s) URL or None, got {end_call_url!r}")
        self.end_call_url = end_call_url
        if not isinstance(shared_rate_budget, bool):
            raise EmulatorConfigError(f"shared_rate_budget must be a boolean, got {shared_rate_budget!r}")
        self.shared_rate_budget = shared_rate_budget

        self._requests: list[RecordedRequest] = []
        self._calls: list[PlacedCall] = []
        self._messages: list[PlacedMessage] = []
        self._callbacks: list[CallbackAttempt] = []
        self._end_calls: list[CallbackAttempt] = []
        self._message_callbacks: list[CallbackAttempt] = []
        self._sessions: dict[str, Session] = {}
        self._scripts: dict[str, CallScript] = {}
        self._message_scripts: dict[str, MessageScript] = {}
        self._call_attempts: dict[str, int] = {}
        self._message_attempts: dict[str, int] = {}
        self._faults: list[PendingFault] = []
        self._limiter = StrictLimiter()
        self._timers: set[threading.Timer] = set()
        self._generation = 0  # bumped by reset(); stale callback threads check it
        self._stopping = threading.Event()  # set by Emulator.stop(); delivery threads give up

        for to, outcome in (scripts or {}).items():
            self.script(to, outcome)
        for to, outcome in (message_scripts or {}).items():
            self.script_message(to, outcome)

    # ----------------------------------------------------------------- configuration

    @property
    def insights_shape(self) -> InsightsShape:
        """Shape of Insights responses; may be changed while serving (accepts the string)."""
        return self._insights_shape

    @insights_shape.setter
    def insights_shape(self, value: InsightsShape | str) -> None:
        self._insights_shape = check_shape(value)

    @property
    def insights_wrapper(self) -> tuple[str, ...]:
        """Keys wrapping successful Insights bodies, outermost first (``()``: none); may be
        changed while serving (accepts one key, a sequence of keys or ``None``)."""
        return self._insights_wrapper

    @insights_wrapper.setter
    def insights_wrapper(self, value: str | Sequence[str] | None) -> None:
        self._insights_wrapper = check_wrapper(value)

    def add_agent(self, agent_id: str, config: AgentConfig | None = None) -> None:
        """Make ``agent_id`` known (or change its config). Raises EmulatorConfigError."""
        if not isinstance(agent_id, str) or not agent_id:
            raise EmulatorConfigError(f"agent id must be a non-empty string, got {agent_id!r}")
        config = config or AgentConfig()
        if not isinstance(config, AgentConfig):
            raise EmulatorConfigError(f"agents[{agent_id!r}] must be an AgentConfig, got {config!r}")
        if config.calls_per_second is not None:
            check_positive_int(config.calls_per_second, f"agents[{agent_id!r}].calls_per_second")
        with self._lock:
            self.agents[agent_id] = config

    def limit_for(self, agent_id: str) -> int:
        """Calls per second allowed for ``agent_id``."""
        config = self.agents.get(agent_id)
        if config is not None and config.calls_per_second is not None:
            return config.calls_per_second
        return self.calls_per_second

    @staticmethod
    def key_fingerprint(key: str) -> str:
        """What recorded requests show instead of an ``X-Vgai-Key`` value."""
        return "<redacted:" + hashlib.sha256(key.encode()).hexdigest()[:8] + ">"

    def script(
        self,
        to: str,
        outcome: Outcome | str | Sequence[Outcome | str],
        parameters: Any = None,
        *,
        talk_time: float | None = None,
        end_call: bool = True,
        end_call_delay: float = 0.0,
        index_delay: float | None = None,
    ) -> None:
        """Make calls to ``to`` (exactly as sent: digits or SIP URI) end with ``outcome``.

        ``outcome`` may be a list, one per successive accepted call to ``to`` (``["busy",
        "answered"]``: busy first, answered on the second call and every later one: the last
        repeats); scripting ``to`` again starts its list over. ``parameters`` (mapping or
        list of ``{"name", "value"}``) are what an answered call collects: Insights reports
        them, the end-call webhook posts them. ``talk_time``, ``end_call``,
        ``end_call_delay`` and ``index_delay`` are described at :class:`CallScript`.
        Scripts stay until :meth:`reset`. Raises EmulatorConfigError for an unknown outcome
        or a malformed setting.
        """
        check_destination_key(to, "script to")
        resolved = call_script(
            outcome,
            parameters,
            talk_time=talk_time,
            end_call=end_call,
            end_call_delay=end_call_delay,
            index_delay=index_delay,
        )
        with self._lock:
            self._scripts[to] = resolved
            self._call_attempts.pop(to, None)

    def script_message(self, to: str, outcome: Any) -> None:
        """Make messages to ``to`` end with ``outcome`` (a :class:`MessageOutcome`, or a
        list of them, one per successive accepted message, the last repeating). Unscripted
        messages are ``delivered``. Raises EmulatorConfigError."""
        check_destination_key(to, "message script to")
        resolved = message_script(outcome)
        with self._lock:
            self._message_scripts[to] = resolved
            self._message_attempts.pop(to, None)

    def inject(
        self,
        fault: Fault | str | int,
        count: int = 1,
        to: str | None = None,
        *,
        retry_after: int | None = None,
        delay: float = 5.0,
        path: str = MAKE_CALL_PATH,
    ) -> None:
        """Queue ``count`` occurrences of ``fault`` (see :class:`Fault`).

        Faults apply to requests whose path starts with ``path`` (default: make-call; pass
        ``MESSAGING_PATH`` for messages) and, when ``to`` is given, whose JSON body has that
        exact ``to``; they are consumed in the order injected. ``retry_after`` adds
        ``Retry-After`` to a 429; ``delay`` is how long a ``timeout`` fault holds the
        response. Raises EmulatorConfigError.
        """
        try:
            # str() of a str-mixin Enum is "Fault.DROP" on 3.11, hence .value; ints (429) welcome.
            kind = Fault(fault.value if isinstance(fault, Fault) else str(fault))
        except ValueError:
            choices = ", ".join(f.value for f in Fault)
            raise EmulatorConfigError(f"fault must be one of {choices}, got {fault!r}") from None
        check_positive_int(count, "count")
        if retry_after is not None:
            check_positive_int(retry_after, "retry_after")
        delay = check_non_negative(delay, "delay")
        if to is not None:
            check_destination_key(to, "fault to")
        if not isinstance(path, str) or not path.startswith("/"):
            raise EmulatorConfigError(f"fault path must start with '/', got {path!r}")
        with self._lock:
            self._faults.append(PendingFault(kind, count, to, path, retry_after, delay))

    def add_session(self, **fields: Any) -> dict[str, Any]:
        """Add an Insights session, indexed at once, and return it as the API shows it.

        Known fields (all optional): ``id`` (uuid4), ``agent_id`` (first agent),
        ``destination``, ``source`` (:data:`AGENT_NUMBER`), ``session_start_time``
        (datetime or ISO string; now), ``status`` ("answered"), ``channel_data`` or
        ``duration``, ``parameters`` (mapping or list). Other fields are returned as given.
        Raises EmulatorConfigError for an unparseable start time or parameters.
        """
        session = new_session(fields, next(iter(self.agents), "agent-1"))
        with self._lock:
            self._sessions[session.id] = session
        return session.to_dict()

    def reset(self) -> None:
        """Forget recorded traffic, calls, messages, callbacks, sessions, scripts, faults and
        rate state."""
        with self._lock:
            self._cancel_timers()
            for recorded in (
                self._requests,
                self._calls,
                self._messages,
                self._callbacks,
                self._end_calls,
                self._message_callbacks,
                self._faults,
            ):
                recorded.clear()
            for state in (
                self._sessions,
                self._scripts,
                self._message_scripts,
                self._call_attempts,
                self._message_attempts,
            ):
                state.clear()
            self._limiter.reset()
            self._generation += 1

    # ----------------------------------------------------------------- inspection

    def _snapshot(self, items: list[Any]) -> list[Any]:
        with self._lock:
            return list(items)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every recorded API request, oldest first."""
        return self._snapshot(self._requests)

    @property
    def calls(self) -> list[PlacedCall]:
        """Snapshot of accepted calls, oldest first."""
        return self._snapshot(self._calls)

    @property
    def messages(self) -> list[PlacedMessage]:
        """Snapshot of accepted messages, oldest first."""
        return self._snapshot(self._messages)

    @property
    def callbacks(self) -> list[CallbackAttempt]:
        """Snapshot of call status-callback attempts, oldest first."""
        return self._snapshot(self._callbacks)

    @property
    def end_calls(self) -> list[CallbackAttempt]:
        """Snapshot of end-call webhook attempts, oldest first."""
        return self._snapshot(self._end_calls)

    @property
    def message_callbacks(self) -> list[CallbackAttempt]:
        """Snapshot of message status-callback attempts, oldest first."""
        return self._snapshot(self._message_callbacks)

    @property
    def sessions(self) -> list[dict[str, Any]]:
        """Snapshot of every Insights session (indexed or not yet), as the API shows them."""
        with self._lock:
            return [s.to_dict() for s in self._sessions.values()]

    def _wait_for(self, items: list[CallbackAttempt], count: int, timeout: float, what: str) -> list[Any]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(items) >= count, timeout):
                raise TimeoutError(f"{len(items)} of {count} {what} after {timeout}s")
            return list(items)

    def wait_for_callbacks(self, count: int = 1, timeout: float = 5.0) -> list[CallbackAttempt]:
        """Block until at least ``count`` callback attempts are recorded; return them all.

        Raises TimeoutError when ``timeout`` seconds pass first.
        """
        return self._wait_for(self._callbacks, count, timeout, "callback attempts")

    def wait_for_end_calls(self, count: int = 1, timeout: float = 5.0) -> list[CallbackAttempt]:
        """Block until at least ``count`` end-call webhook attempts are recorded; return them
        all. Raises TimeoutError when ``timeout`` seconds pass first."""
        return self._wait_for(self._end_calls, count, timeout, "end-call attempts")

    def wait_for_message_callbacks(self, count: int = 1, timeout: float = 5.0) -> list[CallbackAttempt]:
        """Block until at least ``count`` message status-callback attempts are recorded;
        return them all. Raises TimeoutError when ``timeout`` seconds pass first."""
        return self._wait_for(self._message_callbacks, count, timeout, "message callback attempts")

    # ----------------------------------------------------------------- used by the routes

    def _cancel_timers(self) -> None:
        """Cancel every pending callback timer."""
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()

    def _authorise(self, key: str | None) -> None:
        """Raises ApiError (401) unless ``key`` is one of the accepted keys."""
        if not key or not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys):
            raise ApiError(401, "Not Authorised")

    def _known_agent(self, agent_id: str) -> AgentConfig:
        """The agent's config. Raises ApiError (404) for an unknown agent."""
        agent = self.agents.get(agent_id)
        if agent is None:
            raise ApiError(404, f"Version information for number {AGENT_NUMBER} doesn't exist")
        return agent

    def _admit(self, agent_id: str, agent: AgentConfig, budget: str, now: float) -> None:
        """Rate limit, then preconfigured session (lock held); raises ApiError (429, 500).

        ``budget`` is ``"voice"`` or ``"messaging"``; with a shared budget both count
        together. The request counts towards the limit only when nothing refuses it.
        """
        key = (agent_id,) if self.shared_rate_budget else (agent_id, budget)
        if not self._limiter.has_room(key, self.limit_for(agent_id), now, tolerance=self.rate_tolerance):
            headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
            raise ApiError(429, "Too Many Requests", headers)
        if not agent.preconfigured:
            raise ApiError(500, "Failed to fetch preconfigured session information")
        self._limiter.admit(key, now)

    def _next_attempt(self, attempts: dict[str, int], to: str) -> int:
        """Count one more accepted request to ``to``; returns its 1-based number (lock held)."""
        attempts[to] = attempts.get(to, 0) + 1
        return attempts[to]

    def _wrap(self, body: Any) -> Any:
        for key in reversed(self._insights_wrapper):
            body = {key: body}
        return body
