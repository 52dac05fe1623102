"""pytest fixtures that run the AI Studio emulator for a test.

Registered as the ``vonage_studio`` pytest11 entry point, so this module is imported by
*every* pytest run of anyone who installs the provider. It therefore imports nothing
beyond pytest and the standard library at import time; the emulator (FastAPI, uvicorn)
is imported inside the fixtures, when a test actually asks for one.

Fixtures:

``vonage_studio_emulator``
    An :class:`~airflow_provider_vonage_studio.testing.emulator.Emulator` accepting key
    ``test-key`` for agent ``agent-1``, with ``AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT`` pointing
    at it for the duration of the test. Settings can be changed per test with the marker
    ``@pytest.mark.vonage_studio_emulator(calls_per_second=5, insights_index_delay=0.1)``
    (any :class:`Emulator` keyword argument).

``vonage_studio_emulator_factory``
    A callable ``factory(*, conn_id=None, connection_extras=None, **emulator_kwargs)`` that
    starts an emulator with custom settings and returns it; when ``conn_id`` is given, the
    matching ``AIRFLOW_CONN_<CONN_ID>`` variable is set to it. Every emulator it started is
    stopped when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.testing.emulator import Emulator

DEFAULT_CONN_ID = "vonage_studio_default"
DEFAULT_KEY = "test-key"
DEFAULT_AGENT = "agent-1"


class EmulatorFactory(Protocol):
    """Signature of the ``vonage_studio_emulator_factory`` fixture's value."""

    def __call__(
        self,
        *,
        conn_id: str | None = None,
        connection_extras: Mapping[str, Any] | None = None,
        **emulator_kwargs: Any,
    ) -> Emulator: ...


def connection_env_var(conn_id: str) -> str:
    """Name of the environment variable Airflow reads connection ``conn_id`` from."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker so ``--strict-markers`` runs accept it."""
    config.addinivalue_line(
        "markers",
        "vonage_studio_emulator(**kwargs): Emulator settings for the vonage_studio_emulator fixture.",
    )


@pytest.fixture
def vonage_studio_emulator_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorFactory]:
    """Start emulators with custom settings; all are stopped at the end of the test."""
    from airflow_provider_vonage_studio.testing.emulator import Emulator

    started: list[Emulator] = []

    def factory(
        *,
        conn_id: str | None = None,
        connection_extras: Mapping[str, Any] | None = None,
        **emulator_kwargs: Any,
    ) -> Emulator:
        emulator = Emulator(**emulator_kwargs)
        emulator.start()
        started.append(emulator)
        if conn_id is not None:
            monkeypatch.setenv(
                connection_env_var(conn_id), emulator.connection_json(**dict(connection_extras or {}))
            )
        return emulator

    try:
        yield factory
    finally:
        for emulator in reversed(started):
            emulator.stop()


@pytest.fixture
def vonage_studio_emulator(
    request: pytest.FixtureRequest, vonage_studio_emulator_factory: EmulatorFactory
) -> Emulator:
    """An emulator (key ``test-key``, agent ``agent-1``) behind ``vonage_studio_default``."""
    marker = request.node.get_closest_marker("vonage_studio_emulator")
    kwargs: dict[str, Any] = {"api_keys": (DEFAULT_KEY,), "agents": (DEFAULT_AGENT,)}
    if marker is not None:
        kwargs.update(marker.kwargs)
    return vonage_studio_emulator_factory(conn_id=DEFAULT_CONN_ID, **kwargs)


__all__: list[str] = [
    "DEFAULT_AGENT",
    "DEFAULT_CONN_ID",
    "DEFAULT_KEY",
    "EmulatorFactory",
    "connection_env_var",
    "vonage_studio_emulator",
    "vonage_studio_emulator_factory",
]
