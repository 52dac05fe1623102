"""Airflow connections that point at a running emulator (JSON and URI forms)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class AirflowConnectionMixin:
    """``connection_json`` / ``connection_uri`` for :class:`Emulator`, which provides
    ``url``, ``api_keys`` and ``calls_per_second``."""

    api_keys: tuple[str, ...]
    calls_per_second: int

    @property
    def url(self) -> str:
        """The emulator's base URL (provided by :class:`Emulator`)."""
        raise NotImplementedError

    def connection_json(self, key: str | None = None, **extras: Any) -> str:
        """Value for ``AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT`` (JSON form) pointing here.

        ``key`` defaults to the first accepted key. The extra carries ``calls_per_second``
        (this emulator's limit) plus ``extras``; an extra given as ``None`` is left out.
        """
        return json.dumps(
            {
                "conn_type": "vonage_studio",
                "host": self.url,
                "password": self.api_keys[0] if key is None else key,
                "extra": self._extras(extras),
            }
        )

    def connection_uri(self, key: str | None = None, **extras: Any) -> str:
        """The same connection in Airflow's URI form
        (``vonage-studio://http://:KEY@127.0.0.1%3APORT/?__extra__=...``)."""
        from urllib.parse import quote, urlencode

        host = self.url.split("://", 1)[1]
        password = self.api_keys[0] if key is None else key
        query = urlencode({"__extra__": json.dumps(self._extras(extras))})
        return f"vonage-studio://http://:{quote(password, safe='')}@{quote(host, safe='')}/?{query}"

    def _extras(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {"calls_per_second": self.calls_per_second, **extras}
        return {k: v for k, v in merged.items() if v is not None}
