"""Call rows and store hygiene shared by the outcome, trigger and event tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from airflow_provider_vonage_studio import outcome as outcome_module
from airflow_provider_vonage_studio.store import CallStore

UTC = timezone.utc
AGENT = "agent-1"
NUMBER = "447700900123"


@pytest.fixture(autouse=True)
def dispose_named_stores() -> Iterator[None]:
    """Close the stores open_store() cached for this test's URLs (their databases go away).

    Autouse in every module that imports it.
    """
    yield
    with outcome_module._STORES_LOCK:
        stores = list(outcome_module._STORES.values())
        outcome_module._STORES.clear()
    for opened in stores:
        opened.dispose()


def placed(store: CallStore, ref: str, *, started: datetime | None = None) -> None:
    """Record ``ref`` as a call AI Studio accepted (started now unless told)."""
    created, _ = store.begin_call(ref, agent_id=AGENT, destination=NUMBER)
    assert created
    store.mark_placed(ref, f"session-{ref}", started or datetime.now(UTC))


def reported(store: CallStore, ref: str, status: str = "busy") -> None:
    """Record a failure callback (``busy`` unless told) for ``ref``."""
    store.record_status(
        ref,
        status=status,
        conversation_uuid=f"CON-{ref}",
        timestamp=datetime.now(UTC),
        payload={"status": status},
    )
