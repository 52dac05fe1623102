"""The provider as Airflow sees it: schema-valid provider info, discovered by `airflow providers`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest

import airflow_provider_vonage_studio
from airflow_provider_vonage_studio import get_provider_info


def _airflow_schema() -> dict:
    import airflow

    path = Path(airflow.__file__).parent / "provider_info.schema.json"
    return json.loads(path.read_text())


def test_provider_info_validates_against_airflows_schema():
    jsonschema.validate(get_provider_info(), _airflow_schema())


def test_entry_point_resolves_to_get_provider_info():
    eps = metadata.entry_points(group="apache_airflow_provider")
    ours = [ep for ep in eps if ep.value.startswith("airflow_provider_vonage_studio")]
    assert len(ours) == 1
    assert ours[0].load() is get_provider_info


def test_every_declared_class_and_module_imports():
    import importlib

    info = get_provider_info()
    modules = [
        m
        for key in ("hooks", "operators", "sensors", "triggers")
        for e in info[key]
        for m in e["python-modules"]
    ]
    classes = [c["hook-class-name"] for c in info["connection-types"]] + info["notifications"]
    classes += info["cli"] + info["extra-links"]
    for module in modules:
        importlib.import_module(module)
    for dotted in classes:
        module, _, name = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), name), dotted


def test_connection_fields_match_the_hook():
    from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook

    conn_type = get_provider_info()["connection-types"][0]
    assert conn_type["connection-type"] == VonageStudioHook.conn_type == "vonage_studio"
    assert set(conn_type["conn-fields"]) == {
        "region",
        "calls_per_second",
        "pace_scope",
        "callback_base_url",
        "callback_secret",
        "previous_callback_secrets",
        "end_call_webhook",
        "timeout",
    }
    assert conn_type["conn-fields"]["callback_secret"]["schema"]["format"] == "password"
    # Airflow >= 3.2 draws a boolean as a checkbox.
    assert conn_type["conn-fields"]["end_call_webhook"]["schema"]["type"] == ["boolean", "null"]
    assert (
        VonageStudioHook.get_ui_field_behaviour()["hidden_fields"]
        == conn_type["ui-field-behaviour"]["hidden-fields"]
    )


def test_plugin_is_registered_once_through_its_entry_point():
    # Declaring it in the provider info too would register it twice when providers load eagerly.
    assert "plugins" not in get_provider_info()
    eps = [
        ep for ep in metadata.entry_points(group="airflow.plugins") if ep.value.startswith("airflow_provider")
    ]
    assert [ep.value for ep in eps] == ["airflow_provider_vonage_studio.plugins:VonageStudioPlugin"]


def test_version_is_the_package_version():
    assert get_provider_info()["versions"][0] == airflow_provider_vonage_studio.__version__
    assert metadata.version("airflow-provider-vonage-studio") == airflow_provider_vonage_studio.__version__


def _airflow(*args: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env["AIRFLOW_HOME"] = str(tmp_path)
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow), *args], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("providers", "list", "-o", "json"), "airflow-provider-vonage-studio"),
        (("providers", "hooks", "-o", "json"), "vonage_studio"),
        (("config", "list", "--section", "vonage_studio"), "store_url"),
    ],
)
def test_airflow_cli_sees_the_provider(tmp_path, args, expected):
    out = _airflow(*args, tmp_path=tmp_path)
    assert expected in out
    if args[1] == "hooks":
        hooks = {h["connection_type"]: h for h in json.loads(out[out.index("[{") :])}
        assert hooks["vonage_studio"]["class"].endswith("VonageStudioHook")


def test_the_call_outcomes_link_is_declared_and_registered():
    from airflow.providers_manager import ProvidersManager

    from airflow_provider_vonage_studio.links import CallOutcomesLink

    assert get_provider_info()["extra-links"] == ["airflow_provider_vonage_studio.links.CallOutcomesLink"]
    manager = ProvidersManager()
    manager.initialize_providers_list()
    assert "airflow_provider_vonage_studio.links.CallOutcomesLink" in manager.extra_links_class_names
    assert CallOutcomesLink().name == "Call outcomes"


def test_every_public_operator_and_trigger_module_is_declared():
    """Airflow's provider listing shows the modules declared here: each module that defines a
    public operator or trigger class is among them."""
    info = get_provider_info()
    declared = {m for kind in ("operators", "triggers") for e in info[kind] for m in e["python-modules"]}
    pkg = "airflow_provider_vonage_studio"
    assert {
        f"{pkg}.operators.vonage_studio",
        f"{pkg}.operators.messaging",
        f"{pkg}.triggers.vonage_studio",
        f"{pkg}.triggers.outcome_events",
    } <= declared
