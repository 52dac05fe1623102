"""Unit tests of the connection: parsing, checks naming the field, the URL forms, and
``test_connection`` (``hooks/connection.py``)."""

from __future__ import annotations

import json

import pytest
import requests

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.hooks.connection import REGION_HOSTS
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from tests.conftest import TEST_KEY, conn_json

URL = "https://studio.test/telephony/make-call"


def _hook_for(monkeypatch, value):
    monkeypatch.setenv("AIRFLOW_CONN_VS_TEST", value)
    return VonageStudioHook("vs_test", pace=False)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"region": "asia"}, "region"),
        ({"calls_per_second": 2}, "calls_per_second"),
        ({"calls_per_second": "lots"}, "calls_per_second"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"pace_scope": "galaxy"}, "pace_scope"),
        ({"callback_base_url": "ftp://x"}, "callback_base_url"),
        ({"callback_base_url": "https://x.example/cb?a=1"}, "callback_base_url"),
    ],
)
def test_connection_errors_name_the_field(monkeypatch, extra, field):
    hook = _hook_for(monkeypatch, conn_json(**extra))
    with pytest.raises(VonageStudioConfigError, match=field):
        hook.config  # noqa: B018


def test_missing_key_names_the_field(monkeypatch):
    hook = _hook_for(monkeypatch, conn_json(key=""))
    with pytest.raises(VonageStudioConfigError, match="password"):
        hook.config  # noqa: B018


def test_region_selects_host_when_no_override(monkeypatch):
    hook = _hook_for(
        monkeypatch, json.dumps({"conn_type": "vonage_studio", "password": "k", "extra": {"region": "us"}})
    )
    assert hook.config.base_url == REGION_HOSTS["us"]
    hook = _hook_for(monkeypatch, json.dumps({"conn_type": "vonage_studio", "password": "k"}))
    assert hook.config.base_url == REGION_HOSTS["eu"]
    assert hook.config.calls_per_second == 1
    assert hook.config.timeout == 30


def test_uri_form(monkeypatch):
    hook = _hook_for(
        monkeypatch, "vonage-studio://:s3cret@127.0.0.1:8765/http?region=us&calls_per_second=3&timeout=5"
    )
    cfg = hook.config
    assert cfg.base_url == "http://127.0.0.1:8765"
    assert cfg.api_key == "s3cret"
    assert (cfg.region, cfg.calls_per_second, cfg.timeout) == ("us", 3, 5.0)


def test_hook_timeout_overrides_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_VS_TEST", conn_json(timeout=7))
    assert VonageStudioHook("vs_test").config.timeout == 7
    assert VonageStudioHook("vs_test", timeout=2.5).config.timeout == 2.5


def test_config_repr_hides_secrets(monkeypatch):
    hook = _hook_for(monkeypatch, conn_json(callback_secret="very-secret-value"))
    assert TEST_KEY not in repr(hook.config)
    assert "very-secret-value" not in repr(hook.config)


@pytest.mark.parametrize(
    ("response", "ok", "text"),
    [
        ({"status_code": 401, "json": {"status": 401, "message": "Not Authorised"}}, False, "refused"),
        (
            {"status_code": 400, "json": {"status": 400, "message": "Bad destination number format"}},
            True,
            "accepted",
        ),
        ({"status_code": 422, "json": {"detail": "x"}}, True, "accepted"),
        ({"status_code": 503, "text": "down"}, False, "503"),
        ({"exc": requests.exceptions.ConnectionError("Connection refused")}, False, "could not reach"),
    ],
)
def test_test_connection_never_dials_and_never_raises(vs_conn, requests_mock, response, ok, text):
    requests_mock.post(URL, **response)
    result = VonageStudioHook().test_connection()
    assert result[0] is ok
    assert text in result[1]
    assert json.loads(requests_mock.request_history[0].body) == {}


def test_test_connection_with_broken_connection(monkeypatch):
    hook = _hook_for(monkeypatch, conn_json(region="mars"))
    ok, message = hook.test_connection()
    assert ok is False
    assert "region" in message
