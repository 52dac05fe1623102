"""``airflow vonage-studio ...``: the provider's CLI commands (declared under ``cli`` in the provider info).

::

    airflow vonage-studio callbacks serve [--host 127.0.0.1] [--port 8766] [--conn-id ID] [--outcome-view]
    airflow vonage-studio dnc add NUMBER [--reason TEXT] [--default-country GB]
    airflow vonage-studio dnc remove NUMBER [--default-country GB]
    airflow vonage-studio dnc list [--show-numbers] [--output table|json]

``callbacks serve`` runs the callback receiver on its own under uvicorn, for deployments
that do not expose the Airflow API server to AI Studio (put it behind a TLS reverse proxy
and set the connection's ``callback_base_url`` to its public URL). The outcome view is
off there unless ``--outcome-view`` is given, because a standalone receiver usually faces
the Internet and has no Airflow login in front of it.

``dnc`` manages the do-not-call list in the call store: the hook refuses to dial a listed
number. Numbers are normalised like every destination (``+44 7700 900123`` and
``447700900123`` are the same entry) and printed redacted unless ``--show-numbers``.

Airflow imports this module to build its CLI parser on every ``airflow`` command, so it
imports nothing heavy at top level; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.cli.cli_config import GroupCommand

__all__ = ["callbacks_serve", "dnc_add", "dnc_list", "dnc_remove", "get_cli_commands"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8766
# Same as callbacks.app.DEFAULT_CONN_ID, repeated so that building the parser imports no FastAPI.
DEFAULT_CONN_ID = "vonage_studio_default"


def get_cli_commands() -> list[GroupCommand]:
    """The ``vonage-studio`` command group, for Airflow's CLI parser."""
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand

    arg_host = Arg(("--host",), help=f"Address to listen on (default {DEFAULT_HOST})", default=DEFAULT_HOST)
    arg_port = Arg(
        ("--port",), help=f"Port to listen on (default {DEFAULT_PORT})", type=int, default=DEFAULT_PORT
    )
    arg_conn_id = Arg(
        ("--conn-id",),
        help=f"vonage_studio connection holding callback_secret (default {DEFAULT_CONN_ID})",
        default=DEFAULT_CONN_ID,
    )
    arg_outcome_view = Arg(
        ("--outcome-view",),
        help="Also serve the outcome view at /outcomes WITHOUT authentication (numbers stay redacted); "
        "only behind an authenticating proxy or on a private address",
        action="store_true",
    )
    arg_log_level = Arg(
        ("--log-level",),
        help="uvicorn log level (default info)",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    arg_number = Arg(
        ("number",), help="Phone number (with country code, or national with --default-country) or SIP URI"
    )
    arg_reason = Arg(("--reason",), help="Why the number must not be called (kept with the entry)")
    arg_country = Arg(
        ("--default-country",),
        help="ISO country code for numbers given without country code, e.g. GB",
    )
    arg_show = Arg(("--show-numbers",), help="Print numbers in full instead of redacted", action="store_true")
    arg_output = Arg(
        ("-o", "--output"), help="Output format (default table)", default="table", choices=["table", "json"]
    )
    return [
        GroupCommand(
            name="vonage-studio",
            help="Vonage AI Studio provider: callback receiver and do-not-call list",
            subcommands=(
                GroupCommand(
                    name="callbacks",
                    help="AI Studio status callback receiver",
                    subcommands=(
                        ActionCommand(
                            name="serve",
                            help="Run the callback receiver under uvicorn",
                            description="Run the callback receiver (POST /calls/<token>/status, GET /health) "
                            "under uvicorn. Set the connection's callback_base_url to the public URL of this "
                            "server.",
                            func=callbacks_serve,
                            args=(arg_host, arg_port, arg_conn_id, arg_outcome_view, arg_log_level),
                        ),
                    ),
                ),
                GroupCommand(
                    name="dnc",
                    help="Do-not-call list (numbers the provider refuses to dial)",
                    subcommands=(
                        ActionCommand(
                            name="add",
                            help="Put a number on the do-not-call list",
                            func=dnc_add,
                            args=(arg_number, arg_reason, arg_country),
                        ),
                        ActionCommand(
                            name="remove",
                            help="Take a number off the do-not-call list (exit code 1 if it was not listed)",
                            func=dnc_remove,
                            args=(arg_number, arg_country),
                        ),
                        ActionCommand(
                            name="list",
                            help="Show the do-not-call list (numbers redacted unless --show-numbers)",
                            func=dnc_list,
                            args=(arg_show, arg_output),
                        ),
                    ),
                ),
            ),
        )
    ]


# ------------------------------------------------------------------------------ callbacks


def callbacks_serve(args: argparse.Namespace) -> None:
    """``callbacks serve``: run the receiver until interrupted.

    :raises SystemExit: when the connection cannot be read or has no ``callback_secret``
        (the receiver could verify no token).
    """
    import uvicorn

    from airflow_provider_vonage_studio.callbacks.app import connection_secrets, create_app
    from airflow_provider_vonage_studio.store import CallStore

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
