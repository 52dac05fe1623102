"""The "Call outcomes" extra link: from a task instance to the outcome view of its calls.

As the dbt Cloud provider links a task to its job run, every calling or waiting task of this
provider links to ``<api server>/vonage-studio/outcomes`` filtered to that task instance
(DAG, run, task and map index). Imported when DAG files are parsed (the operator and sensor
modules attach the link): nothing here imports more than Airflow's SDK base class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from airflow.providers.common.compat.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

__all__ = ["CALL_OUTCOMES_LINK_NAME", "CallOutcomesLink", "outcomes_url"]

#: The button's name in the task instance's page.
CALL_OUTCOMES_LINK_NAME = "Call outcomes"


def outcomes_url(
    base_url: str | None,
    *,
    dag_id: str,
    run_id: str,
    task_id: str | None = None,
    map_index: int | None = None,
) -> str:
    """The outcome view's address for one DAG run, or one task instance of it.

    ``base_url`` is the API server's public address (``[api] base_url``, e.g.
    ``https://airflow.example.com``, with any path prefix it has); empty or ``None`` gives a
    path relative to the server (``/vonage-studio/outcomes?...``), which the UI resolves itself.
    ``map_index`` ``None`` or ``-1`` (an unmapped task) is left out of the query.
    """
    from airflow_provider_vonage_studio.plugins import URL_PREFIX

    query: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id}
    if task_id is not None:
        query["task_id"] = task_id
    if map_index is not None and int(map_index) >= 0:
        query["map_index"] = int(map_index)
    return f"{(base_url or '').rstrip('/')}{URL_PREFIX}/outcomes?{urlencode(query)}"


def _api_base_url() -> str:
    """``[api] base_url`` (``""`` when unset or unreadable: the link is then relative)."""
    from airflow.providers.common.compat.sdk import conf

    try:
        return str(conf.get("api", "base_url", fallback="") or "")
    except Exception:  # a broken config must not break the task page
        return ""


class CallOutcomesLink(BaseOperatorLink):
    """Operator extra link "Call outcomes": the outcome view filtered to the task instance."""

    name = CALL_OUTCOMES_LINK_NAME

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        """The outcome view's URL for ``ti_key`` (its calls only)."""
        return outcomes_url(
            _api_base_url(),
            dag_id=ti_key.dag_id,
            run_id=ti_key.run_id,
            task_id=ti_key.task_id,
            map_index=ti_key.map_index,
        )
