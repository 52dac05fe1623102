"""The provider's commands: the ``vonage-studio`` console script, and ``airflow vonage-studio``.

::

    vonage-studio callbacks serve [--host 127.0.0.1] [--port 8766] [--conn-id ID] [--outcome-view]
    vonage-studio dnc add NUMBER [--reason TEXT] [--default-country GB]
    vonage-studio dnc remove NUMBER [--default-country GB]
    vonage-studio dnc list [--show-numbers] [--output table|json]
    vonage-studio calls results --dag-id ID --run-id ID [--task-id ID] [--map-index N]
                                [--show-numbers] [--output table|json] [--offset N] [--limit N]

The ``vonage-studio`` console script (:func:`main`) works on every supported Airflow. On
Airflow 3.2 and later the same commands also appear as ``airflow vonage-studio ...``
(declared under ``cli`` in the provider info, read by :func:`get_cli_commands`); Airflow 3.1
has no provider CLI commands, so there only the console script exists. Both are built from
one table (``_commands()``) and run the same functions.

``callbacks serve`` runs the callback receiver on its own under uvicorn, for deployments
that do not expose the Airflow API server to AI Studio (put it behind a TLS reverse proxy
and set the connection's ``callback_base_url`` to its public URL). The outcome view is
off there unless ``--outcome-view`` is given, because a standalone receiver usually faces
the Internet and has no Airflow login in front of it.

``dnc`` manages the do-not-call list in the call store: the hook refuses to dial a listed
number. Numbers are normalised like every destination (``+44 7700 900123`` and
``447700900123`` are the same entry) and printed redacted unless ``--show-numbers``.

``calls results`` prints the per-recipient results a ``MakeCallsOperator`` batch stored for a
DAG run (what its XCom summary refers to when the batch was too big for the full list):
counts per task instance, then one line (or JSON object) per recipient, numbers redacted
unless ``--show-numbers``. ``--limit 0`` prints the counts only.

Airflow imports this module to build its CLI parser on every ``airflow`` command, so it
imports nothing heavy at top level; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from airflow.cli.cli_config import GroupCommand

__all__ = [
    "build_parser",
    "callbacks_serve",
    "calls_results",
    "dnc_add",
    "dnc_list",
    "dnc_remove",
    "get_cli_commands",
    "main",
]

PROG = "vonage-studio"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8766
# Same as callbacks.app.DEFAULT_CONN_ID, repeated so that building the parser imports no FastAPI.
DEFAULT_CONN_ID = "vonage_studio_default"


class _Arg(NamedTuple):
    flags: tuple[str, ...]
    kwargs: dict[str, Any]


class _Action(NamedTuple):
    name: str
    help: str
    func: Callable[[argparse.Namespace], None]
    args: tuple[_Arg, ...]
    description: str | None = None


class _Group(NamedTuple):
    name: str
    help: str
    subcommands: tuple[_Action, ...]


def _commands() -> tuple[_Group, ...]:
    # Over 60 lines on purpose: a declarative table of every command, its arguments and help,
    # read top to bottom like the CLI reference; splitting it would scatter one table.
    host = _Arg(
        ("--host",), {"help": f"Address to listen on (default {DEFAULT_HOST})", "default": DEFAULT_HOST}
    )
    port = _Arg(
        ("--port",),
        {"help": f"Port to listen on (default {DEFAULT_PORT})", "type": int, "default": DEFAULT_PORT},
    )
    conn_id = _Arg(
        ("--conn-id",),
        {
            "help": f"vonage_studio connection holding callback_secret (default {DEFAULT_CONN_ID})",
            "default": DEFAULT_CONN_ID,
        },
    )
    outcome_view = _Arg(
        ("--outcome-view",),
        {
            "help": "Also serve the outcome view at /outcomes WITHOUT authentication (numbers stay "
            "redacted); only behind an authenticating proxy or on a private address",
            "action": "store_true",
        },
    )
    log_level = _Arg(
        ("--log-level",),
        {
            "help": "uvicorn log level (default info)",
            "default": "info",
            "choices": ["critical", "error", "warning", "info", "debug"],
        },
    )
    number = _Arg(
        ("number",),
        {"help": "Phone number (with country code, or national with --default-country) or SIP URI"},
    )
    reason = _Arg(("--reason",), {"help": "Why the number must not be called (kept with the entry)"})
    country = _Arg(
        ("--default-country",), {"help": "ISO country code for numbers given without country code, e.g. GB"}
    )
    show = _Arg(
        ("--show-numbers",), {"help": "Print numbers in full instead of redacted", "action": "store_true"}
    )
    output = _Arg(
        ("-o", "--output"),
        {"help": "Output format (default table)", "default": "table", "choices": ["table", "json"]},
    )
    dag_id = _Arg(("--dag-id",), {"help": "DAG id of the run", "required": True})
    run_id = _Arg(("--run-id",), {"help": "Run id of the DAG run", "required": True})
    task_id = _Arg(("--task-id",), {"help": "Only this MakeCallsOperator task"})
    map_index = _Arg(("--map-index",), {"help": "Only this map index (-1: not mapped)", "type": int})
    offset = _Arg(("--offset",), {"help": "Skip this many results (default 0)", "type": int, "default": 0})
    limit = _Arg(
        ("--limit",),
        {"help": "Print at most this many results (default: all; 0: counts only)", "type": int},
    )
    return (
        _Group(
            "calls",
            "Results of calls placed by the provider",
            (
                _Action(
                    "results",
                    "Per-recipient results of a run's MakeCallsOperator batches",
                    calls_results,
                    (dag_id, run_id, task_id, map_index, show, output, offset, limit),
                    description="Print the per-recipient results MakeCallsOperator stored for a DAG run "
                    "(counts per task instance, then one row per recipient; numbers redacted unless "
                    "--show-numbers).",
                ),
            ),
        ),
        _Group(
            "callbacks",
            "AI Studio status callback receiver",
            (
                _Action(
                    "serve",
                    "Run the callback receiver under uvicorn",
                    callbacks_serve,
                    (host, port, conn_id, outcome_view, log_level),
                    description="Run the callback receiver (POST /calls/<token>/status, GET /health) under "
                    "uvicorn. Set the connection's callback_base_url to the public URL of this server.",
                ),
            ),
        ),
        _Group(
            "dnc",
            "Do-not-call list (numbers the provider refuses to dial)",
            (
                _Action("add", "Put a number on the do-not-call list", dnc_add, (number, reason, country)),
                _Action(
                    "remove",
                    "Take a number off the do-not-call list (exit code 1 if it was not listed)",
                    dnc_remove,
                    (number, country),
                ),
                _Action(
                    "list",
                    "Show the do-not-call list (numbers redacted unless --show-numbers)",
                    dnc_list,
                    (show, output),
                ),
            ),
        ),
    )


COMMANDS_HELP = "Vonage AI Studio provider: callback receiver, do-not-call list and batch results"


def get_cli_commands() -> list[GroupCommand]:
    """The ``vonage-studio`` command group, for Airflow's CLI parser (Airflow 3.2 and later)."""
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand

    return [
        GroupCommand(
            name=PROG,
            help=COMMANDS_HELP,
            subcommands=tuple(
                GroupCommand(
                    name=group.name,
                    help=group.help,
                    subcommands=tuple(
                        ActionCommand(
                            name=action.name,
                            help=action.help,
                            description=action.description,
                            func=action.func,
                            args=tuple(Arg(arg.flags, **arg.kwargs) for arg in action.args),
                        )
                        for action in group.subcommands
                    ),
                )
                for group in _commands()
            ),
        )
    ]


def build_parser() -> argparse.ArgumentParser:
    """The console script's parser: the same commands as ``airflow vonage-studio``."""
    parser = argparse.ArgumentParser(prog=PROG, description=COMMANDS_HELP)
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for group in _commands():
        group_parser = groups.add_parser(group.name, help=group.help, description=group.help)
        actions = group_parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
        for action in group.subcommands:
            action_parser = actions.add_parser(
                action.name, help=action.help, description=action.description or action.help
            )
            for arg in action.args:
                action_parser.add_argument(*arg.flags, **arg.kwargs)
            action_parser.set_defaults(func=action.func)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``vonage-studio`` console script.

    :raises SystemExit: on bad arguments (code 2) and when a command fails (see each command).
    """
    args = build_parser().parse_args(argv)
    args.func(args)


# ------------------------------------------------------------------------------ callbacks


def callbacks_serve(args: argparse.Namespace) -> None:
    """``callbacks serve``: run the receiver until interrupted.

    :raises SystemExit: when ``[vonage_studio] callback_max_age`` is malformed (one line naming
        it), or the connection cannot be read or has no ``callback_secret`` (the receiver could
        verify no token).
    """
    import uvicorn

    from airflow_provider_vonage_studio.callbacks.app import (
        connection_secrets,
        create_app,
        resolve_callback_max_age,
    )
    from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
    from airflow_provider_vonage_studio.store import CallStore

    try:
        # Checked first, as a configuration error rather than a traceback from create_app.
        max_age = resolve_callback_max_age()
    except VonageStudioConfigError as exc:
        raise SystemExit(f"error: {exc.message}") from None
    try:
        secrets = connection_secrets(args.conn_id)
    except Exception as exc:
        raise SystemExit(f"cannot read connection {args.conn_id!r}: {type(exc).__name__}: {exc}") from None
    if not secrets:
        raise SystemExit(
            f"connection {args.conn_id!r} has no extra 'callback_secret': the receiver could verify no "
            "callback token. Set it (the same secret the tasks sign status URLs with) and start again."
        )
    store = CallStore.default()
    app = create_app(
        store=store,
        conn_id=args.conn_id,
        outcome_view="public" if args.outcome_view else "off",
        callback_max_age=max_age,
    )
    print(
        f"Vonage AI Studio callback receiver on http://{args.host}:{args.port} (store {store!r})", flush=True
    )
    print(f"Callbacks: POST http://{args.host}:{args.port}/calls/<token>/status", flush=True)
    # access_log stays on: the receiver elides tokens from the path before uvicorn logs it.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, server_header=False)


# ----------------------------------------------------------------------------------- dnc


def _normalize(args: argparse.Namespace) -> str:
    from airflow_provider_vonage_studio.destinations import normalize_destination
    from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

    try:
        return normalize_destination(args.number, default_country=args.default_country)
    except VonageStudioConfigError as exc:
        raise SystemExit(f"error: {exc.message}") from None


def dnc_add(args: argparse.Namespace) -> None:
    """``dnc add``: normalise the number and list it (adding a listed number updates the reason).

    :raises SystemExit: for a number that is neither a possible phone number nor a SIP URI.
    """
    from airflow_provider_vonage_studio.destinations import redact
    from airflow_provider_vonage_studio.store import CallStore

    number = _normalize(args)
    CallStore.default().dnc_add(number, args.reason)
    print(f"{redact(number)} is on the do-not-call list")


def dnc_remove(args: argparse.Namespace) -> None:
    """``dnc remove``: take the number off the list.

    :raises SystemExit: (code 1) when the number was not listed or is malformed.
    """
    from airflow_provider_vonage_studio.destinations import redact
    from airflow_provider_vonage_studio.store import CallStore

    number = _normalize(args)
    if not CallStore.default().dnc_remove(number):
        raise SystemExit(f"{redact(number)} was not on the do-not-call list")
    print(f"{redact(number)} removed from the do-not-call list")


def dnc_list(args: argparse.Namespace) -> None:
    """``dnc list``: print the list, sorted by number, as a table or JSON."""
    from airflow_provider_vonage_studio.destinations import redact
    from airflow_provider_vonage_studio.store import CallStore

    rows: list[dict[str, Any]] = [
        {
            "number": number if args.show_numbers else redact(number),
            "added_at": added_at.isoformat(timespec="seconds"),
            "reason": reason or "",
        }
        for number, reason, added_at in CallStore.default().dnc_list()
    ]
    if args.output == "json":
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return
    if not rows:
        print("The do-not-call list is empty.")
        return
    width = max(len("number"), *(len(r["number"]) for r in rows))
    print(f"{'number':<{width}}  {'added_at (UTC)':<25}  reason")
    for row in rows:
        print(f"{row['number']:<{width}}  {row['added_at']:<25}  {row['reason']}")


# --------------------------------------------------------------------------------- calls


def calls_results(args: argparse.Namespace) -> None:
    """``calls results``: a run's stored batch results, as a table or JSON lines.

    :raises SystemExit: (code 1) when the run has no stored batch results.
    """
    from airflow_provider_vonage_studio.recipients import stored_result
    from airflow_provider_vonage_studio.store import CallStore

    store = CallStore.default()
    counts = {
        key: value
        for key, value in store.batch_result_counts(args.dag_id, args.run_id, args.task_id).items()
        if args.map_index is None or key[1] == args.map_index
    }
    if not counts:
        raise SystemExit(f"no stored batch results for dag {args.dag_id!r}, run {args.run_id!r}")
    rows = []
    if args.limit != 0:
        rows = [
            stored_result(row, show_numbers=args.show_numbers)
            for row in store.batch_results(
                args.dag_id, args.run_id, args.task_id, args.map_index, offset=args.offset, limit=args.limit
            )
        ]
    if args.output == "json":
        summary = [{"task_id": t, "map_index": m, "counts": c} for (t, m), c in sorted(counts.items())]
        json.dump({"dag_id": args.dag_id, "run_id": args.run_id, "counts": summary}, sys.stdout)
        sys.stdout.write("\n")
        for row in rows:  # one object per line: a 100,000-row answer stays streamable
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    for (task, index), by_result in sorted(counts.items()):
        shown = ", ".join(f"{kind} {n}" for kind, n in sorted(by_result.items()))
        print(f"{task} [map_index {index}]: {shown} of {sum(by_result.values())} recipient(s)")
    for row in rows:
        status = f" status={row['status']}" if row.get("status") else ""
        reason = f" ({row['reason']})" if row.get("reason") else ""
        where = f"{row['task_id']}[{row['map_index']}] #{row['index']}"
        print(f"{where} {row['to']}: {row['result']}{status}{reason}")
