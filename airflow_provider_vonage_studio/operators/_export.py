"""The pieces of ``ExportSessionsOperator`` that are not the operator: which window to
export, the ``filter_by`` argument, and writing JSON Lines to object storage so that a
re-run replaces the earlier export whole.

Loaded by the operator module at DAG parse time: standard library only at the top.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

if TYPE_CHECKING:
    from airflow_provider_vonage_studio._compat import Context

__all__ = ["LOCAL_PROTOCOLS", "export_window", "parse_filter_by", "write_jsonl"]

#: Protocols of object storage that is a local filesystem: there a temporary sibling can be
#: renamed over the final file atomically. Object stores have no rename (it is copy + delete)
#: but replace a whole object atomically when an upload completes, so they are written to the
#: final key directly.
LOCAL_PROTOCOLS = ("", "file", "local")


def export_window(
    context: Context | Mapping[str, Any],
    from_date: Any,
    to_date: Any,
    lookback: timedelta | None,
    log: Any,
) -> tuple[datetime, datetime]:
    """The window to export, as aware UTC datetimes: the (rendered) bounds, the data
    interval, or ``lookback`` before the run's anchor. Every value, whatever Airflow or the
    template gave (pendulum, stdlib, string), passes through
    :func:`~airflow_provider_vonage_studio.timeutil.to_utc`.

    :raises VonageStudioConfigError: only one bound given, a bound that is not a datetime,
        date or ISO-8601 string, or no usable data interval and ``lookback=None``.
    """
    from airflow_provider_vonage_studio.timeutil import to_utc

    given = [value not in (None, "") for value in (from_date, to_date)]
    if all(given):
        return to_utc(from_date, field="from_date"), to_utc(to_date, field="to_date")
    if any(given):
        raise VonageStudioConfigError("from_date and to_date: both rendered, or neither (the data interval)")
    raw_start = context.get("data_interval_start")
    raw_end = context.get("data_interval_end")
    start = None if raw_start is None else to_utc(raw_start, field="data_interval_start")
    end = None if raw_end is None else to_utc(raw_end, field="data_interval_end")
    if start is not None and end is not None and end > start:
        return start, end
    # A manual or asset-triggered run has no data interval (or start == end in Airflow 3).
    if lookback is None:
        raise VonageStudioConfigError(
            "this run has no data interval to export (a manual run?) and lookback=None: pass "
            "from_date and to_date"
        )
    anchor = end if end is not None else _run_anchor(context)
    log.warning(
        "This run has no data interval; exporting the %s before %s (lookback). Pass from_date and "
        "to_date to choose the window.",
        lookback,
        anchor.isoformat(),
    )
    return anchor - lookback, anchor


def _run_anchor(context: Context | Mapping[str, Any]) -> datetime:
    """The run's logical date, else its ``run_after`` (stable across re-runs), else now."""
    from airflow_provider_vonage_studio.timeutil import to_utc

    logical_date = context.get("logical_date")
    if logical_date is not None:
        return to_utc(logical_date, field="logical_date")
    run_after = getattr(context.get("dag_run"), "run_after", None)
    if run_after is not None:
        return to_utc(run_after, field="run_after")
    return datetime.now(timezone.utc)


def parse_filter_by(filter_by: Any) -> Mapping[str, Any] | None:
    """``filter_by`` as rendered: a bool query object, its JSON, or nothing.

    :raises VonageStudioConfigError: naming ``filter_by``: not valid JSON, or not an object.
    """
    if isinstance(filter_by, str):
        try:
            filter_by = json.loads(filter_by) if filter_by.strip() else None
        except ValueError as exc:
            raise VonageStudioConfigError(f"filter_by: not valid JSON ({exc})") from None
    if filter_by is not None and not isinstance(filter_by, Mapping):
        raise VonageStudioConfigError(
            f"filter_by: expected a bool query object, got {type(filter_by).__name__}"
        )
    return filter_by


def write_jsonl(path: Any, sessions: Iterable[Mapping[str, Any]], log: Any) -> int:
    """Stream ``sessions`` into ``path`` (an ``ObjectStoragePath``) as JSON Lines, replacing
    what was there whole; returns the number of lines."""
    import os
    import uuid

    if path.protocol not in LOCAL_PROTOCOLS:
        # In an fsspec transaction the upload is committed only when every line is written;
        # a failure mid-export discards it (e.g. aborts the multipart upload), so the earlier
        # object stays whole instead of being replaced by a partial one.
        with path.fs.transaction:
            return _write_lines(path, sessions)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling, unique per attempt: a concurrent or killed try never leaves a
    # half-written file under the final name.
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        rows = _write_lines(temporary, sessions)
        os.replace(temporary.path, path.path)  # atomic, and overwrites an earlier export
    except BaseException:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            log.warning("Could not remove the temporary file %s", str(temporary))
        raise
    return rows


def _write_lines(path: Any, sessions: Iterable[Mapping[str, Any]]) -> int:
    rows = 0
    with path.open("wb") as handle:
        for session in sessions:
            # Compact, non-ASCII kept as UTF-8; the API's JSON is re-encoded unchanged.
            line = json.dumps(session, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            handle.write(line.encode("utf-8") + b"\n")
            rows += 1
    return rows
