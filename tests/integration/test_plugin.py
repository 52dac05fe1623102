"""The plugin inside Airflow's own API-server app: the mount is Airflow's, not ours."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from airflow_provider_vonage_studio._compat import AIRFLOW_V_3_2_PLUS, API_SERVER_ACCESS_LOG, loaded_plugins
from airflow_provider_vonage_studio.callbacks.tokens import make_call_ref, sign_token
from airflow_provider_vonage_studio.store import CallStore
from tests.conftest import TEST_SECRET, conn_json

NUMBER = "447700900123"


def test_plugin_module_does_not_import_fastapi_or_the_store() -> None:
    # Every Airflow process loads plugins; Airflow itself is loaded first, so measure what
    # importing the plugin module adds on top of it.
    code = "\n".join(
        [
            "import sys, time",
            "import airflow",
            "before = set(sys.modules)",
            "t = time.perf_counter()",
            "import airflow_provider_vonage_studio.plugins",
            "took = time.perf_counter() - t",
            "added = set(sys.modules) - before",
            "ours = ('store', 'callbacks', 'hooks', 'destinations')",
            "heavy = sorted(m for m in added if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn', "
            "'phonenumbers') or m.startswith(tuple('airflow_provider_vonage_studio.' + o for o in ours)))",
            "print('RESULT', 'fastapi' in sys.modules, heavy, f'{took * 1000:.1f}ms', len(added))",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    fields = line.split(" ", 3)
    assert fields[1:3] == ["False", "[]"], line
    print(line)  # the import time, for the record (tests never assert on wall time)


def test_plugin_is_discovered_through_the_entry_point() -> None:
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    plugins, errors = loaded_plugins()
    ours = [p for p in plugins if p.name == "vonage_studio"]
    assert len(ours) == 1, [p.name for p in plugins]
    assert not any("vonage" in key for key in errors), errors
    plugin = ours[0]
    assert "airflow.plugins" in str(plugin.source)
    (app_entry,) = plugin.fastapi_apps
    assert app_entry["url_prefix"] == "/vonage-studio"
    # The UI accepts our external views as they are (Airflow's own response model).
    views = [ExternalViewResponse.model_validate(view) for view in plugin.external_views]
    assert {(v.destination, v.href) for v in views} == {
        ("nav", "/vonage-studio/outcomes"),
        ("dag_run", "/vonage-studio/outcomes?dag_id={DAG_ID}&run_id={RUN_ID}"),
    }


class _AccessLog:
    """Stands in for the API server's access logger to see which paths it logs."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def info(self, event: str, **fields: Any) -> None:
        self.paths.append(str(fields.get("path")))


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, _AccessLog]]:
    """Airflow's API-server app (``airflow.api_fastapi.app.create_app``), plugin included."""
    home = tmp_path_factory.mktemp("api-server")
    store_url = f"sqlite:///{home / 'vonage_studio.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", store_url)
        mp.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", conn_json(callback_secret=TEST_SECRET))
        mp.setenv("AIRFLOW__API__EXPOSE_CONFIG", "False")

        from airflow import settings
        from airflow.api_fastapi import app as api_app

        if AIRFLOW_V_3_2_PLUS:
            from airflow.models.revoked_token import RevokedToken

            # The login check (JWT) looks up revoked tokens in the metadata database (from
            # Airflow 3.2); this test needs only that table, not a full `airflow db migrate`.
            assert settings.engine is not None
            RevokedToken.__table__.create(settings.engine, checkfirst=True)

        access_log = _AccessLog()
        if API_SERVER_ACCESS_LOG:
            from airflow.api_fastapi.common import http_access_log

            mp.setattr(http_access_log, "logger", access_log)
        api_app.purge_cached_app()
        app = api_app.create_app()
        with TestClient(app) as client:
            client.headers["host"] = "localhost"
            yield client, store_url, access_log
        api_app.purge_cached_app()
    CallStore._clear_default_cache(store_url)


def _place(store_url: str, dag_id: str, key: str) -> str:
    store = CallStore(store_url)
    call_ref = make_call_ref(dag_id, "manual__1", "call", key=key)
    store.begin_call(
        call_ref, agent_id="agent-1", destination=NUMBER, dag_id=dag_id, run_id="manual__1", task_id="call"
    )
    store.mark_placed(call_ref, str(uuid.uuid4()), datetime.now(timezone.utc))
    store.dispose()
    return call_ref


def _callback(status: str = "busy") -> dict[str, str]:
    return {
        "agent_id": "agent-1",
        "to": NUMBER,
        "conversation_uuid": "CON-plugin",
        "status": status,
        "timestamp": "2024-05-31T06:40:45.475Z",
    }


def test_callback_posted_through_the_api_server_is_recorded(
    api_server: tuple[TestClient, str, _AccessLog],
) -> None:
    client, store_url, access_log = api_server
    call_ref = _place(store_url, "plugin_dag", "one")
    token = sign_token(call_ref, TEST_SECRET)

    resp = client.post(f"/vonage-studio/calls/{token}/status", json=_callback())
    assert (resp.status_code, resp.json()) == (200, {"result": "recorded"})
    assert client.post(f"/vonage-studio/calls/{token}/status", json=_callback()).json() == {
        "result": "duplicate"
    }
    forged = client.post(f"/vonage-studio/calls/{call_ref}.{'Q' * 43}/status", json=_callback())
    assert forged.status_code == 401

    store = CallStore(store_url)
    record = store.get_call(call_ref)
    store.dispose()
    assert record is not None and record.status == "busy"
    assert len([e for e in CallStore(store_url).status_history(call_ref)]) == 1

    assert client.get("/vonage-studio/health").json() == {"status": "ok"}
    if API_SERVER_ACCESS_LOG:
        # The API server's access log saw our requests with the token elided. (Airflow 3.1 has
        # no access log of its own: uvicorn's, tested in test_cli, is the one there.)
        ours = [p for p in access_log.paths if p.startswith("/vonage-studio/calls/")]
        assert ours and all(p == "/vonage-studio/calls/***/status" for p in ours), ours
        assert not any(token in p for p in access_log.paths)


def test_outcome_view_needs_an_airflow_login_and_shows_readable_dags_only(
    api_server: tuple[TestClient, str, _AccessLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, store_url, _ = api_server
    visible = _place(store_url, "visible_dag", "v")
    hidden = _place(store_url, "hidden_dag", "h")

    anonymous = client.get("/vonage-studio/outcomes")
    assert anonymous.status_code == 401
    assert "Log in to Airflow" in anonymous.text
    assert client.get("/vonage-studio/outcomes.json").status_code == 401
    assert client.get(
        "/vonage-studio/outcomes.json", headers={"Authorization": "Bearer not-a-jwt"}
    ).status_code in (
        401,
        403,
    )

    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    auth_manager = get_auth_manager()
    jwt = auth_manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))

    def only_visible(*, dag_ids: set[str], user: Any, method: str = "GET", **_: Any) -> set[str]:
        assert user.get_name() == "viewer" and method == "GET"
        return {d for d in dag_ids if d != "hidden_dag"}

    monkeypatch.setattr(auth_manager, "filter_authorized_dag_ids", only_visible)

    data = client.get("/vonage-studio/outcomes.json", headers={"Authorization": f"Bearer {jwt}"}).json()
    refs = {call["call_ref"] for run in data["runs"] for call in run["calls"]}
    assert visible in refs and hidden not in refs

    # The UI's iframe carries the session cookie, not a header.
    client.cookies.set("_token", jwt)
    try:
        page = client.get("/vonage-studio/outcomes?dag_id=visible_dag")
    finally:
        client.cookies.clear()
    assert page.status_code == 200
    assert "visible_dag" in page.text and "hidden_dag" not in page.text
    assert NUMBER not in page.text and "+44•••••0123" in page.text


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_mounted_receiver_serves_no_schema_or_docs(
    api_server: tuple[TestClient, str, _AccessLog], path: str
) -> None:
    client, _, _ = api_server
    resp = client.get(f"/vonage-studio{path}")
    assert resp.status_code == 404, resp.text[:300]
    assert "swagger" not in resp.text.lower() and "openapi" not in resp.text.lower()


def test_reserved_prefix_and_mount_are_airflows(api_server: tuple[TestClient, str, _AccessLog]) -> None:
    client, _, _ = api_server
    from starlette.routing import Mount

    mounts = [r for r in client.app.routes if isinstance(r, Mount) and r.path == "/vonage-studio"]  # type: ignore[attr-defined]
    assert len(mounts) == 1
    assert type(mounts[0].app).__name__ == "LazyReceiverApp"


def test_plugin_list_endpoint_describes_the_plugin(
    api_server: tuple[TestClient, str, _AccessLog], tmp_path: Path
) -> None:
    client, _, _ = api_server
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    jwt = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    resp = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {jwt}"})
    assert resp.status_code == 200, resp.text
    (ours,) = [p for p in resp.json()["plugins"] if p["name"] == "vonage_studio"]
    assert ours["fastapi_apps"][0]["url_prefix"] == "/vonage-studio"
    assert ours["external_views"][0]["href"] == "/vonage-studio/outcomes"


def test_plugin_receiver_reads_the_configured_connection(monkeypatch):
    """[vonage_studio] callback_conn_id picks the connection whose secret verifies tokens."""
    from airflow_provider_vonage_studio import plugins
    from airflow_provider_vonage_studio.callbacks import app as app_module

    seen: list[dict] = []
    monkeypatch.setattr(app_module, "create_app", lambda **kwargs: seen.append(kwargs) or object())
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__CALLBACK_CONN_ID", "vs_callbacks")
    plugins.LazyReceiverApp(outcome_view="off").app  # noqa: B018
    monkeypatch.delenv("AIRFLOW__VONAGE_STUDIO__CALLBACK_CONN_ID")
    plugins.LazyReceiverApp(outcome_view="off").app  # noqa: B018
    plugins.LazyReceiverApp(outcome_view="off", conn_id="explicit").app  # noqa: B018
    assert [kwargs["conn_id"] for kwargs in seen] == ["vs_callbacks", "vonage_studio_default", "explicit"]


def test_plugin_receiver_reads_callback_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    """[vonage_studio] callback_max_age reaches the receiver in the API server; a bad value fails loudly."""
    from datetime import timedelta

    from airflow_provider_vonage_studio import plugins
    from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__CALLBACK_MAX_AGE", "1800")
    app = plugins.LazyReceiverApp(outcome_view="off").app
    assert app.state.callback_max_age == timedelta(minutes=30)  # type: ignore[attr-defined]
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__CALLBACK_MAX_AGE", "nan")
    with pytest.raises(VonageStudioConfigError, match=r"\[vonage_studio\] callback_max_age"):
        plugins.LazyReceiverApp(outcome_view="off").app  # noqa: B018
