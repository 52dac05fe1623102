"""The ``vonage_studio`` connection: parsing and checking it, and its form in the Airflow UI.

Standard library only at import time (the form's widgets load inside the function that
builds them), so the hook module stays as cheap to import as before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

__all__ = [
    "ALLOWED_CALLS_PER_SECOND",
    "DEFAULT_PACING_MARGIN",
    "DEFAULT_TIMEOUT",
    "END_CALL_TOKEN_PARAMETER",
    "MIN_CALLBACK_SECRET_LENGTH",
    "PACE_SCOPES",
    "REGION_HOSTS",
    "ConnectionConfig",
    "connection_form_widgets",
    "parse_connection",
    "ui_field_behaviour",
]

log = logging.getLogger(__name__)

REGION_HOSTS = {
    "eu": "https://studio-api-eu.ai.vonage.com",
    "us": "https://studio-api-us.ai.vonage.com",
}
ALLOWED_CALLS_PER_SECOND = (1, 3, 5)
PACE_SCOPES = ("agent", "key")
DEFAULT_TIMEOUT = 30.0
#: The session parameter that carries a call's signed token to its agent when the connection's
#: ``end_call_webhook`` is on (the agent's End Call Event webhook posts to
#: ``<callback_base_url>/calls/$VS_CALL_TOKEN/ended``); reserved: a user parameter of that name
#: is refused.
END_CALL_TOKEN_PARAMETER = "VS_CALL_TOKEN"
#: Shortest ``callback_secret`` accepted: guessable below, and too short for the log masker.
MIN_CALLBACK_SECRET_LENGTH = 16


@dataclass(frozen=True)
class ConnectionConfig:
    """The ``vonage_studio`` connection, parsed and checked."""

    api_key: str
    base_url: str
    region: str
    calls_per_second: int
    pace_scope: str
    callback_base_url: str | None
    callback_secret: str | None
    timeout: float
    #: Extra spacing on top of ``1 / calls_per_second`` (extra ``pacing_margin``; 0.01 = 1 %).
    pacing_margin: float = 0.01
    #: Extra ``end_call_webhook``: every placed call carries its signed token as the session
    #: parameter ``VS_CALL_TOKEN``, for the agent's End Call Event webhook (docs/outcomes.md).
    end_call_webhook: bool = False

    def __repr__(self) -> str:  # the key and secret must not reach logs through a repr
        return (
            f"ConnectionConfig(base_url={self.base_url!r}, region={self.region!r}, "
            f"calls_per_second={self.calls_per_second}, pace_scope={self.pace_scope!r}, "
            f"callback_base_url={self.callback_base_url!r}, timeout={self.timeout}, "
            f"end_call_webhook={self.end_call_webhook})"
        )


def parse_connection(conn: Any, *, timeout: float | None = None) -> ConnectionConfig:
    """Build a :class:`ConnectionConfig` from an Airflow ``Connection``.

    :raises VonageStudioConfigError: naming the field, for a missing key, an unknown region,
        a ``calls_per_second`` other than 1/3/5 (a bool is not a number), a ``timeout`` that
        is not a finite number of seconds in (0, 120], a ``callback_base_url`` that is not a
        well-formed http(s) URL with a host, a ``callback_secret`` shorter than
        :data:`MIN_CALLBACK_SECRET_LENGTH` characters, an ``end_call_webhook`` that is not
        true/false or is on without ``callback_base_url`` and ``callback_secret``, or an extra of
        the wrong type (e.g. a number where a string belongs).
    """
    from airflow_provider_vonage_studio.validation import MAX_REQUEST_TIMEOUT, check_http_url, check_seconds

    extra = dict(conn.extra_dejson or {})
    where = f"connection {conn.conn_id!r}"
    api_key = (conn.password or _extra_str(extra, "api_key", where) or "").strip()
    if not api_key:
        raise VonageStudioConfigError(f"{where}: field 'password' (the API key sent as X-Vgai-Key) is empty")
    region = (_extra_str(extra, "region", where) or "eu").lower()
    if region not in REGION_HOSTS:
        raise VonageStudioConfigError(f"{where}: extra 'region' is {region!r}; expected 'eu' or 'us'")
    cps_raw = extra.get("calls_per_second", 1)
    try:
        if isinstance(cps_raw, bool):
            # JSON true is not a number (int(True) would silently be 1).
            raise ValueError
        cps = int(cps_raw)
        if str(cps) != str(cps_raw).strip() and float(cps_raw) != cps:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        cps = -1
    if cps not in ALLOWED_CALLS_PER_SECOND:
        raise VonageStudioConfigError(
            f"{where}: extra 'calls_per_second' is {cps_raw!r}; "
            "AI Studio grants 1 (default), 3 or 5 calls per second (a number, not true/false)"
        )
    pace_scope = (_extra_str(extra, "pace_scope", where) or "agent").lower()
    if pace_scope not in PACE_SCOPES:
        raise VonageStudioConfigError(
            f"{where}: extra 'pace_scope' is {pace_scope!r}; expected 'agent' or 'key'"
        )
    if timeout is None:
        timeout_raw: Any = extra.get("timeout", DEFAULT_TIMEOUT)
        field = f"{where}: extra 'timeout'"
        if isinstance(timeout_raw, str):
            # The connection form stores every field as text.
            try:
                timeout_raw = float(timeout_raw.strip())
            except ValueError:
                raise VonageStudioConfigError(
                    f"{field}: {timeout_raw!r} is not a number of seconds (e.g. 30)"
                ) from None
    else:
        timeout_raw, field = timeout, f"{where}: argument 'timeout'"
    timeout = check_seconds(timeout_raw, field=field, exclusive_minimum=True, maximum=MAX_REQUEST_TIMEOUT)
    callback_base_url = _extra_str(extra, "callback_base_url", where)
    if callback_base_url:
        callback_base_url = check_http_url(
            callback_base_url, field=f"{where}: extra 'callback_base_url'", allow_query=False
        )
    callback_secret = _extra_str(extra, "callback_secret", where)
    if callback_secret and len(callback_secret) < MIN_CALLBACK_SECRET_LENGTH:
        # A short secret can be guessed, and Airflow's log masker skips secrets this short.
        raise VonageStudioConfigError(
            f"{where}: extra 'callback_secret' has {len(callback_secret)} characters; use a random "
            f'secret of at least {MIN_CALLBACK_SECRET_LENGTH} (e.g. python -c "import secrets; '
            'print(secrets.token_urlsafe(32))")'
        )
    end_call_webhook = _end_call_webhook(where, extra, callback_base_url, callback_secret)
    return ConnectionConfig(
        api_key=api_key,
        base_url=_base_url(conn, region),
        region=region,
        calls_per_second=cps,
        pace_scope=pace_scope,
        callback_base_url=callback_base_url.rstrip("/") if callback_base_url else None,
        callback_secret=callback_secret,
        timeout=float(timeout),
        pacing_margin=_pacing_margin(conn.conn_id, extra),
        end_call_webhook=end_call_webhook,
    )


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def _end_call_webhook(
    where: str, extra: Mapping[str, Any], callback_base_url: str | None, callback_secret: str | None
) -> bool:
    """The ``end_call_webhook`` extra as a bool (the connection form stores text: ``"true"``).

    :raises VonageStudioConfigError: for a value that is not true/false, or ``true`` without
        ``callback_base_url`` (where the agent posts) and ``callback_secret`` (what signs the token).
    """
    raw = extra.get("end_call_webhook")
    if raw is None:  # absent, or null in the JSON form
        value = False
    elif isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
        value = raw.strip().lower() in _TRUE
    else:
        raise VonageStudioConfigError(f"{where}: extra 'end_call_webhook' is {raw!r}; expected true or false")
    if value and not (callback_base_url and callback_secret):
        needed = (("callback_base_url", callback_base_url), ("callback_secret", callback_secret))
        missing = " and ".join(name for name, present in needed if not present)
        raise VonageStudioConfigError(
            f"{where}: extra 'end_call_webhook' is on but extra {missing} is not set: the agent's "
            "End Call Event webhook posts to <callback_base_url>/calls/<token>/ended, with a token "
            "signed with callback_secret"
        )
    return value


def _extra_str(extra: Mapping[str, Any], name: str, where: str) -> str | None:
    """Extra ``name`` stripped (``None`` when absent or empty), or raise if it is not a string."""
    value = extra.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise VonageStudioConfigError(f"{where}: extra {name!r} must be a string, got {type(value).__name__}")
    return value.strip() or None


#: Default ``pacing_margin``: the slots are spaced 1 % wider than ``1 / calls_per_second``, so
#: dialers seldom wait at the send gate (which is what keeps a strict limiter from ever
#: seeing N + 1 arrivals in a second: see ``CallStore.pace_send``); a wider margin only
#: lowers the achieved rate (10 % would cap it at 0.91 of the allowed one).
DEFAULT_PACING_MARGIN = 0.01


def _pacing_margin(conn_id: str, extra: Mapping[str, Any]) -> float:
    """The ``pacing_margin`` extra: a fraction 0..1 of ``1 / calls_per_second`` added to the spacing.

    :raises VonageStudioConfigError: for a bool, a non-number, NaN/infinity or a value outside 0..1.
    """
    raw = extra.get("pacing_margin", DEFAULT_PACING_MARGIN)
    problem = None
    value = 0.0
    if isinstance(raw, bool) or raw is None:
        problem = "not a number"
    else:
        try:
            value = float(raw.strip()) if isinstance(raw, str) else float(raw)
        except (TypeError, ValueError):
            problem = "not a number"
        else:
            if not math.isfinite(value):
                problem = "not finite"
            elif not 0 <= value <= 1:
                problem = "outside 0..1"
    if problem is not None:
        raise VonageStudioConfigError(
            f"connection {conn_id!r}: extra 'pacing_margin' is {raw!r} ({problem}); expected a fraction "
            "0..1 of the spacing 1 / calls_per_second to add as a safety margin "
            f"(default {DEFAULT_PACING_MARGIN})"
        )
    return value


def _base_url(conn: Any, region: str) -> str:
    host = (conn.host or "").strip()
    if not host:
        return REGION_HOSTS[region]
    if "://" in host:
        base = host.rstrip("/")
    else:
        # URI-form connections cannot carry a scheme in the host; the schema field may ("http"
        # for the emulator on a laptop), else https.
        scheme = (conn.schema or "").strip().lower() or "https"
        if scheme not in ("http", "https"):
            raise VonageStudioConfigError(
                f"connection {conn.conn_id!r}: field 'schema' is {conn.schema!r}; use http or https "
                "(or put the full base URL in 'host')"
            )
        base = f"{scheme}://{host.rstrip('/')}"
    if conn.port and base.count(":") < 2:
        base = f"{base}:{conn.port}"
    if not base.startswith(("http://", "https://")):
        raise VonageStudioConfigError(
            f"connection {conn.conn_id!r}: field 'host' must be a URL starting with http:// or https://"
        )
    return base


def connection_form_widgets() -> dict[str, Any]:
    """Extra fields of the connection form (Airflow 3.1 reads these; >= 3.2 reads conn-fields)."""
    from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import BooleanField, IntegerField, PasswordField, StringField
    from wtforms.validators import AnyOf, Optional

    # Airflow 3.1 accepts only String/Integer/Password/Boolean fields here (no select).
    return {
        "region": StringField(
            lazy_gettext("Region (eu or us)"),
            validators=[Optional(), AnyOf(["eu", "us"])],
            widget=BS3TextFieldWidget(),
            default="eu",
        ),
        "calls_per_second": IntegerField(
            lazy_gettext("Calls per second (1, 3 or 5)"),
            validators=[Optional(), AnyOf([1, 3, 5])],
            widget=BS3TextFieldWidget(),
            default=1,
        ),
        "pace_scope": StringField(
            lazy_gettext("Pacing scope (agent or key)"),
            validators=[Optional(), AnyOf(["agent", "key"])],
            widget=BS3TextFieldWidget(),
            default="agent",
        ),
        "callback_base_url": StringField(lazy_gettext("Callback base URL"), widget=BS3TextFieldWidget()),
        "callback_secret": PasswordField(lazy_gettext("Callback secret"), widget=BS3PasswordFieldWidget()),
        "previous_callback_secrets": PasswordField(
            lazy_gettext("Previous callback secrets"), widget=BS3PasswordFieldWidget()
        ),
        "timeout": StringField(lazy_gettext("Timeout (s)"), widget=BS3TextFieldWidget(), default="30"),
        "end_call_webhook": BooleanField(lazy_gettext("End-call webhook (VS_CALL_TOKEN)"), default=False),
    }


def ui_field_behaviour() -> dict[str, Any]:
    """Relabel and hide the generic fields (Airflow 3.1; >= 3.2 reads ui-field-behaviour)."""
    from airflow_provider_vonage_studio import get_provider_info

    behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
    return {
        "hidden_fields": behaviour["hidden-fields"],
        "relabeling": behaviour["relabeling"],
        "placeholders": behaviour["placeholders"],
    }


def _mask(secret: str) -> None:
    try:
        from airflow.providers.common.compat.sdk import mask_secret

        mask_secret(secret)
    except Exception:  # masking is best effort outside a task (e.g. a plain script)
        log.debug("could not register a secret with the log masker")
