"""Shared test setup: a throw-away AIRFLOW_HOME before Airflow is imported, and common fixtures."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Airflow reads AIRFLOW_HOME when it is first imported; every test run gets its own.
_HOME = Path(tempfile.mkdtemp(prefix="vonage-studio-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.pop("AIRFLOW__VONAGE_STUDIO__STORE_URL", None)

# pytester: tests of the test setup itself (tests/unit/test_test_setup.py) run pytest in pytest.
pytest_plugins = ["tests.store_fixtures", "pytester"]

TEST_KEY = "test-key-Cuub4r22PXb0zYzJ2dt82KUZ"
TEST_SECRET = "callback-secret-5b1d8e0c9f"


def conn_json(host: str = "https://studio.test", key: str = TEST_KEY, **extra: object) -> str:
    """An AIRFLOW_CONN_* value for a vonage_studio connection."""
    return json.dumps({"conn_type": "vonage_studio", "host": host, "password": key, "extra": extra})


@pytest.fixture
def airflow_home() -> Path:
    return _HOME


@pytest.fixture
def vs_conn(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """vonage_studio_default pointing at a fake host, for requests-mock tests."""
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", conn_json(calls_per_second=5))
    yield "https://studio.test"
