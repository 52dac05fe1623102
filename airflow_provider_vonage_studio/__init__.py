"""Apache Airflow provider for Vonage AI Studio: place outbound agent calls from DAGs.

Importing this package is cheap on purpose: Airflow imports it to read
:func:`get_provider_info` in every process, so nothing heavy loads here.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PKG = "airflow_provider_vonage_studio"
_INTEGRATION = "Vonage AI Studio"


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's ``ProvidersManager`` (entry point ``apache_airflow_provider``).

    Validates against the ``provider_info.schema.json`` that airflow-core ships; the
    ``conn-fields`` / ``ui-field-behaviour`` entries let Airflow >= 3.2 draw the connection
    form without importing the hook, and the hook's own form methods serve 3.1.
    """
    return {
        "package-name": "airflow-provider-vonage-studio",
        "name": "Vonage AI Studio",
        "description": "Place outbound calls from Vonage AI Studio virtual agents, wait for their "
        "outcome and read what the conversation collected.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://studio.docs.ai.vonage.com/",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": _INTEGRATION, "python-modules": [f"{_PKG}.hooks.vonage_studio"]}],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [f"{_PKG}.operators.vonage_studio", f"{_PKG}.operators.messaging"],
            }
        ],
        "sensors": [{"integration-name": _INTEGRATION, "python-modules": [f"{_PKG}.sensors.vonage_studio"]}],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [f"{_PKG}.triggers.vonage_studio", f"{_PKG}.triggers.outcome_events"],
            }
        ],
        "notifications": [f"{_PKG}.notifications.vonage_studio.VonageStudioCallNotifier"],
        # The task instance's "Call outcomes" button (attached to each calling or waiting operator).
        "extra-links": [f"{_PKG}.links.CallOutcomesLink"],
        "connection-types": [
            {
                "hook-class-name": f"{_PKG}.hooks.vonage_studio.VonageStudioHook",
                "hook-name": "Vonage AI Studio",
                "connection-type": "vonage_studio",
                "conn-fields": _conn_fields(),
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"password": "API key (X-Vgai-Key)", "host": "Base URL override"},
                    "placeholders": {
                        "host": "empty: the region's host; http://127.0.0.1:8765 for the emulator",
                        "password": "key from AI Studio: user icon > Generate API Key",
                    },
                },
            }
        ],
        "cli": [f"{_PKG}.cli.get_cli_commands"],
        "config": {
            "vonage_studio": {
                "description": "Settings of the Vonage AI Studio provider.",
                "options": {
                    "store_url": {
                        "description": "SQLAlchemy URL of the call store (call ledger, statuses, "
                        "pacing slots, do-not-call list). Every worker, the triggerer and the callback "
                        "receiver must share it: keep the SQLite default on one machine, use PostgreSQL "
                        "(postgresql+psycopg://...) when tasks run on several machines. Default: "
                        "sqlite:///<AIRFLOW_HOME>/vonage_studio.db",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "postgresql+psycopg://airflow@db:5432/airflow",
                        "default": None,
                        "sensitive": True,
                    },
                    "callback_conn_id": {
                        "description": "The vonage_studio connection whose callback_secret the "
                        "receiver mounted in the API server uses to verify call tokens.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": None,
                        "default": "vonage_studio_default",
                    },
                    "callback_max_age": {
                        "description": "Seconds after a call started (or its callback token was issued, "
                        "where that is earlier) during which the callback receiver accepts its status "
                        "callbacks; later ones are refused with 410. AI Studio reports a missed call within "
                        "minutes. A positive number, at most 604800 (7 days).",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "3600",
                        "default": "21600",
                    },
                },
            }
        },
    }


def _conn_fields() -> dict[str, Any]:
    return {
        "region": {
            "label": "Region",
            "description": "Where the agent is deployed: eu or us. Ignored when a base URL is set.",
            "schema": {"type": ["string", "null"], "enum": ["eu", "us", None], "default": "eu"},
        },
        "calls_per_second": {
            "label": "Calls per second",
            "description": "Outbound limit agreed with Vonage: 1 (default), 3 or 5.",
            "schema": {"type": ["integer", "null"], "enum": [1, 3, 5, None], "default": 1},
        },
        "pace_scope": {
            "label": "Pacing scope",
            "description": "agent (default): the limit applies per agent; key: every call made with this key "
            "shares one limit.",
            "schema": {"type": ["string", "null"], "enum": ["agent", "key", None], "default": "agent"},
        },
        "callback_base_url": {
            "label": "Callback base URL",
            "description": "Public URL of the callback receiver; each call then gets "
            "status_url = <base>/calls/<token>/status.",
            "schema": {"type": ["string", "null"]},
        },
        "callback_secret": {
            "label": "Callback secret",
            "description": "HMAC key that signs each call's status_url token.",
            "schema": {"type": ["string", "null"], "format": "password"},
        },
        "previous_callback_secrets": {
            "label": "Previous callback secrets",
            "description": "Comma-separated secrets still accepted by the receiver while tokens signed "
            "with them may arrive (secret rotation).",
            "schema": {"type": ["string", "null"], "format": "password"},
        },
        "end_call_webhook": {
            "label": "End-call webhook",
            "description": "Give each call its signed token as the session parameter VS_CALL_TOKEN, for "
            "the agent's End Call Event webhook (POST <callback base URL>/calls/<token>/ended): an "
            "answered call is then confirmed as soon as it ends. Needs the callback base URL.",
            "schema": {"type": ["boolean", "null"], "default": False},
        },
        "timeout": {
            "label": "Timeout (s)",
            "description": "Read timeout of API requests in seconds (default 30).",
            "schema": {"type": ["number", "null"], "default": 30},
        },
    }
