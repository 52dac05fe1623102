"""``python -m airflow_provider_vonage_studio.testing.emulator``: run an emulator in the
foreground until SIGTERM or SIGINT, printing ``emulator listening on <url>`` first."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from airflow_provider_vonage_studio.testing.emulator.config import (
    AgentConfig,
    EmulatorConfigError,
    InsightsShape,
)
from airflow_provider_vonage_studio.testing.emulator.lifecycle import Emulator

KEYS_ENV = "VONAGE_STUDIO_EMULATOR_KEYS"


def _parse_agent(value: str) -> tuple[str, AgentConfig]:
    agent_id, sep, rate = value.partition("=")
    if not agent_id:
        raise argparse.ArgumentTypeError(f"--agent needs an agent id, got {value!r}")
    if not sep:
        return agent_id, AgentConfig()
    try:
        return agent_id, AgentConfig(calls_per_second=int(rate))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--agent {value!r}: calls per second must be an integer") from None


def _parse_script(value: str) -> tuple[str, list[str]]:
    """``TO=OUTCOME[,OUTCOME...]``: one outcome per successive attempt, the last repeating."""
    to, sep, outcomes = value.rpartition("=")
    if not sep or not to or not outcomes or not all(o.strip() for o in outcomes.split(",")):
        raise argparse.ArgumentTypeError(f"script must be TO=OUTCOME[,OUTCOME...], got {value!r}")
    return to, [o.strip() for o in outcomes.split(",")]


def _keys_from_env() -> tuple[str, ...]:
    return tuple(k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip())


def _argument_parser() -> argparse.ArgumentParser:
    # One add_argument per knob: long because the emulator has many knobs, not because
    # it does much.
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_vonage_studio.testing.emulator",
        description="Run the Vonage AI Studio emulator in the foreground (stop with Ctrl-C or SIGTERM).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--agent",
        action="append",
        type=_parse_agent,
        metavar="ID[=CPS]",
        help="known agent, optionally with its own calls per second (repeatable; default agent-1)",
    )
    parser.add_argument(
        "--key",
        action="append",
        metavar="KEY",
        help=f"accepted X-Vgai-Key (repeatable; default: comma-separated ${KEYS_ENV}, else test-key). "
        f"Prefer ${KEYS_ENV} for real-looking keys: arguments are visible to every user in ps",
    )
    parser.add_argument("--calls-per-second", type=int, default=1, help="per-agent limit (default 1)")
    parser.add_argument(
        "--rate-tolerance",
        type=float,
        default=0.0,
        help="opt-in slack: shorten the 1 s rate window by this many seconds (default 0: strict)",
    )
    parser.add_argument(
        "--separate-messaging-budget",
        action="store_true",
        help="give messages a per-agent rate budget of their own (default: shared with calls)",
    )
    parser.add_argument("--retry-after", type=int, default=None, help="Retry-After seconds on 429")
    parser.add_argument(
        "--script",
        action="append",
        type=_parse_script,
        default=[],
        metavar="TO=OUTCOME[,OUTCOME...]",
        help="scripted call outcome(s) for a destination, one per attempt, the last repeating "
        "(repeatable), e.g. 447700900123=busy,answered",
    )
    parser.add_argument(
        "--message-script",
        action="append",
        type=_parse_script,
        default=[],
        metavar="TO=OUTCOME[,OUTCOME...]",
        help="scripted message outcome(s) for a destination (repeatable), e.g. 447700900123=read",
    )
    parser.add_argument("--callback-delay", type=float, default=0.2, help="seconds before a callback")
    parser.add_argument("--index-delay", type=float, default=0.5, help="seconds before Insights sees a call")
    parser.add_argument(
        "--talk-time",
        type=float,
        default=1.0,
        help="seconds an answered call lasts before its end-call webhook",
    )
    parser.add_argument(
        "--end-call-url",
        default=None,
        metavar="URL",
        help="end-call webhook URL: a template with $VS_CALL_TOKEN, or a base for /calls/<token>/ended "
        "(default: derived from each call's status_url)",
    )
    parser.add_argument(
        "--no-end-call", action="store_true", help="never post end-call webhooks (an agent without the node)"
    )
    parser.add_argument(
        "--insights-shape",
        choices=[s.value for s in InsightsShape],
        default=InsightsShape.DEFAULT.value,
        help="shape of Insights responses",
    )
    parser.add_argument(
        "--insights-wrapper",
        default=None,
        metavar="KEY[,KEY...]",
        help="wrap successful Insights bodies in these keys, outermost first (e.g. data,result)",
    )
    return parser


def _emulator_from(args: argparse.Namespace) -> Emulator:
    """The emulator the arguments describe. Raises EmulatorConfigError."""
    emulator = Emulator(
        api_keys=tuple(args.key or _keys_from_env() or ("test-key",)),
        agents=dict(args.agent or [("agent-1", AgentConfig())]),
        calls_per_second=args.calls_per_second,
        rate_tolerance=args.rate_tolerance,
        retry_after=args.retry_after,
        callback_delay=args.callback_delay,
        insights_index_delay=args.index_delay,
        insights_shape=args.insights_shape,
        insights_wrapper=args.insights_wrapper.split(",") if args.insights_wrapper else None,
        talk_time=args.talk_time,
        end_call_webhook=not args.no_end_call,
        end_call_url=args.end_call_url,
        shared_rate_budget=not args.separate_messaging_budget,
    )
    for to, outcomes in args.script:
        emulator.script(to, outcomes)
    for to, outcomes in args.message_script:
        emulator.script_message(to, outcomes)
    return emulator


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGTERM or SIGINT; returns the process exit status."""
    parser = _argument_parser()
    args = parser.parse_args(argv)
    try:
        emulator = _emulator_from(args)
    except EmulatorConfigError as exc:
        parser.error(str(exc))

    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        emulator.start(args.host, args.port)
        print(f"emulator listening on {emulator.url}", flush=True)
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(0.5):
            if not emulator.running:
                print("emulator server stopped unexpectedly", file=sys.stderr, flush=True)
                return 1
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
