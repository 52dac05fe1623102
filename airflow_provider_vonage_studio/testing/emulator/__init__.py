"""An AI Studio emulator: a real HTTP server that behaves like the outbound-call API.

It is strict where the documented API is strict (the ``X-Vgai-Key`` header, the body
fields, the destination format, the per-agent calls-per-second limit) so that tests of
the provider fail for the same reasons production would. It also answers the Insights
endpoints, starts SMS and WhatsApp conversations (``/messaging/conversation``), posts the
documented status callbacks for calls the callee did not pick up and for messages, posts
the agent's end-call webhook for answered calls that carry ``VS_CALL_TOKEN``, and can
inject faults (429, 503, a dropped connection, a response that never comes in time) to
exercise the client's retry and exactly-once logic.

Use it in-process::

    with Emulator(api_keys=("test-key",), agents=("agent-1",)) as emulator:
        emulator.script("447700900123", ["busy", "answered"])  # busy, then answered
        emulator.script_message("447700900123", "read")
        ...  # point the connection at emulator.url
        assert emulator.calls[0].to == "447700900123"

or from the command line (``python -m airflow_provider_vonage_studio.testing.emulator
--port 8765 --agent agent-1 --key test-key``), or through the pytest fixtures in
:mod:`airflow_provider_vonage_studio.testing.pytest_plugin`.

One module per room, lowest first (each imports only rooms listed before it):

- :mod:`.config`: constants, enums, :class:`AgentConfig`, call and message scripts, checks.
- :mod:`.records`: what is recorded (requests, calls, messages, callback attempts, sessions,
  a session built from :meth:`Emulator.add_session`'s fields).
- :mod:`.limits`: the strict per-agent limiter.
- :mod:`.connection`: Airflow connection strings pointing at a running emulator.
- :mod:`.server`: uvicorn in a daemon thread.
- :mod:`.answers`: reading request bodies, answering the API's error body.
- :mod:`.state`: :class:`~.state.EmulatorState`, the settings, scripts, faults and
  recordings the routes work on.
- :mod:`.delivery`: posting callbacks from timer threads.
- :mod:`.telephony`: ``POST /telephony/make-call``, status callbacks, the end-call webhook.
- :mod:`.messaging`: ``POST /messaging/conversation`` and message status callbacks.
- :mod:`.insights`: the Insights routes and the ``filter_by`` compiler.
- :mod:`.control`: the ``/_emulator`` routes (its docstring lists them).
- :mod:`.app`: the ASGI app (recording and faults in front of the routes).
- :mod:`.lifecycle`: :class:`Emulator`, an ``EmulatorState`` with its app, server thread
  and connection strings; start, stop, ``url``, context manager.
- :mod:`.cli`: the command line.
"""

from __future__ import annotations

from airflow_provider_vonage_studio.testing.emulator import app as _app
from airflow_provider_vonage_studio.testing.emulator import cli as _cli
from airflow_provider_vonage_studio.testing.emulator import config as _config
from airflow_provider_vonage_studio.testing.emulator import insights as _insights
from airflow_provider_vonage_studio.testing.emulator import records as _records
from airflow_provider_vonage_studio.testing.emulator.app import (
    ConnectionDropped,
    build_app,
    drop_connection,
)
from airflow_provider_vonage_studio.testing.emulator.cli import (
    KEYS_ENV,
    main,
)
from airflow_provider_vonage_studio.testing.emulator.config import (
    AGENT_NUMBER,
    CONTROL_PREFIX,
    DEFAULT_PAGE_SIZE,
    END_CALL_TOKEN_PARAMETER,
    KEY_HEADER,
    MAKE_CALL_PATH,
    MAX_PAGE_SIZE,
    MESSAGING_PATH,
    AgentConfig,
    CallScript,
    Channel,
    EmulatorConfigError,
    Fault,
    InsightsShape,
    MessageOutcome,
    MessageScript,
    Outcome,
)
from airflow_provider_vonage_studio.testing.emulator.insights import MAX_SEARCH_SPAN, compile_filter
from airflow_provider_vonage_studio.testing.emulator.lifecycle import Emulator
from airflow_provider_vonage_studio.testing.emulator.records import (
    ApiError,
    CallbackAttempt,
    PendingFault,
    PlacedCall,
    PlacedMessage,
    RecordedRequest,
    Session,
)

# The single-module emulator's private helpers, importable from here for one release
# (they now live in the modules above under public names).
Message = _app.Message
Receive = _app.Receive
Send = _app.Send
_argument_parser = _cli._argument_parser
_keys_from_env = _cli._keys_from_env
_parse_agent = _cli._parse_agent
_parse_script = _cli._parse_script
_ApiError = ApiError
_ConnectionDropped = ConnectionDropped
_PendingFault = PendingFault
_Session = Session
_build_app = build_app
_drop_connection = drop_connection
_compile_filter = compile_filter
_DIGITS_RE = _config._DIGITS_RE
_SIP_RE = _config._SIP_RE
_valid_destination = _config.valid_destination
_as_str_tuple = _config.as_str_tuple
_check_positive_int = _config.check_positive_int
_check_non_negative = _config.check_non_negative
_parameters_list = _config.parameters_list
_utcnow = _records.utcnow
_format_start_time = _records.format_start_time
_format_callback_timestamp = _records.format_callback_timestamp
_parse_datetime = _records.parse_datetime
_merge_parameters = _records.merge_parameters
_resolve = _insights._resolve
_project = _insights._project
_sort_key = _insights._sort_key
_sort_key_for = _insights._sort_key_for
_matches = _insights._matches
_clauses = _insights._clauses
_bool_query = _insights._bool_query
_SENSITIVE_HEADERS = _app._SENSITIVE_HEADERS

__all__ = [
    "AGENT_NUMBER",
    "CONTROL_PREFIX",
    "DEFAULT_PAGE_SIZE",
    "END_CALL_TOKEN_PARAMETER",
    "KEYS_ENV",
    "KEY_HEADER",
    "MAKE_CALL_PATH",
    "MAX_PAGE_SIZE",
    "MAX_SEARCH_SPAN",
    "MESSAGING_PATH",
    "AgentConfig",
    "CallScript",
    "CallbackAttempt",
    "Channel",
    "Emulator",
    "EmulatorConfigError",
    "Fault",
    "InsightsShape",
    "MessageOutcome",
    "MessageScript",
    "Outcome",
    "PlacedCall",
    "PlacedMessage",
    "RecordedRequest",
    "main",
]
