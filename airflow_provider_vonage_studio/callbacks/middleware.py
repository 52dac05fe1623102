"""ASGI middleware of the receiver: a token never reaches an access log (a call's status and
end-call routes, a message's status route alike)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow_provider_vonage_studio.signing import elide_token

__all__ = ["elide_token"]


class _ElideTokenInPath:
    """ASGI middleware: rewrite the request path with the token elided before it is logged.

    Access loggers (uvicorn's, which logs when the response starts, and the Airflow API
    server's, which logs when the request ends) read ``scope["path"]`` from the scope
    dict that is handed down to this app. Routing is over by the time the response
    starts, so the path is replaced then, and again at the end in case no response was
    sent.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or ("/calls/" not in path and "/messages/" not in path):
            await self.app(scope, receive, send)
            return

        elided = False

        def elide() -> None:
            nonlocal elided
            scope["path"] = elide_token(scope["path"])
            raw = scope.get("raw_path")
            if isinstance(raw, bytes):
                scope["raw_path"] = elide_token(raw.decode("latin-1")).encode("latin-1")
            elided = True

        async def send_elided(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                elide()
            await send(message)

        try:
            await self.app(scope, receive, send_elided)
        finally:
            # Once is enough (four regular-expression passes per callback otherwise doubled).
            if not elided:
                elide()
