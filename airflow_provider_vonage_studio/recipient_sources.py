"""Where a batch's recipients come from: a list (or an upstream XCom), a file in object
storage, or a SQL query; read as a stream, so a campaign of 100,000 never sits in memory.

* **a list** of numbers or mappings (today's form): items as :func:`~airflow_provider_vonage_studio.
  recipients.plan_recipients` documents them;
* **a file URI** (``file:///data/campaign.csv``, ``s3://bucket/campaign.jsonl`` when the
  provider of that scheme is installed), read through Airflow's ``ObjectStoragePath``. The
  suffix says the format: ``.jsonl`` / ``.ndjson`` (one JSON value per line, each like a list
  item) or ``.csv`` (a header row; see below);
* **a SQL query** (``recipients_sql`` + ``recipients_conn_id``) run through the connection's
  SQLAlchemy engine with a server-side cursor, rows fetched :data:`FETCH_ROWS` at a time.

CSV columns and SQL result columns: ``to`` (required), ``key`` and ``timezone`` (optional);
every other column is a session parameter of that name (so ``SELECT phone AS "to", name AS
"CALLER_NAME" ...``). Empty cells and NULLs are left out (the batch's own
``session_parameters`` apply).

:func:`resolve_source` checks the arguments and :func:`open_items` checks the header (the
columns) before the first item is returned, so a bad source fails the task before anyone is
dialed. A line of a JSON Lines file that is not JSON is not fatal: that recipient is
``rejected`` like any malformed item.

Nothing heavy at the top: the operator module imports this lazily.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.recipients import UnreadableItem

__all__ = [
    "FETCH_ROWS",
    "FILE_SUFFIXES",
    "RecipientSource",
    "SourceKind",
    "UnreadableItem",
    "open_items",
    "resolve_source",
]

#: Suffixes of recipient files and the format each means.
FILE_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: Rows a SQL source fetches per round trip (server-side cursor).
FETCH_ROWS = 1000
# Columns of a CSV / SQL source that are recipient fields, not session parameters.
_FIELD_COLUMNS = ("to", "key", "timezone")
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class SourceKind(str, Enum):
    """The three forms of ``recipients``."""

    LIST = "list"
    FILE = "file"
    SQL = "sql"


@dataclass(frozen=True)
class RecipientSource:
    """A checked recipient source: ``value`` is the list, the URI or the query."""

    kind: SourceKind
    value: Any
    conn_id: str | None = None

    def describe(self) -> str:
        """For log lines (a query is not shown: it may be long; a URI names no person)."""
        if self.kind is SourceKind.LIST:
            return "a list"
        if self.kind is SourceKind.FILE:
            return f"file {self.value}"
        return f"a SQL query on connection {self.conn_id!r}"


def is_uri(value: Any) -> bool:
    """Whether ``value`` is a string that looks like a file / object-storage URI."""
    return isinstance(value, str) and bool(_URI_RE.match(value.strip()))


def resolve_source(
    recipients: Any, recipients_sql: Any = None, recipients_conn_id: Any = None
) -> RecipientSource:
    """Which source the (rendered) arguments name, checked before anything is read.

    :raises VonageStudioConfigError: naming ``recipients`` (both or neither source given; a
        URI whose suffix is not ``.csv``, ``.jsonl`` or ``.ndjson``), ``recipients_sql`` (not a
        non-empty string) or ``recipients_conn_id`` (missing or not a string with a query).
        A list given as ``recipients`` is checked when planned.
    """
    if recipients_sql is not None:
        if recipients is not None:
            raise VonageStudioConfigError("recipients: give either recipients or recipients_sql, not both")
        if not isinstance(recipients_sql, str) or not recipients_sql.strip():
            raise VonageStudioConfigError(
                f"recipients_sql: expected a non-empty SQL query, got {type(recipients_sql).__name__}"
            )
        if not isinstance(recipients_conn_id, str) or not recipients_conn_id.strip():
            raise VonageStudioConfigError(
                "recipients_conn_id: recipients_sql needs the id of the Airflow connection to run it on"
            )
        return RecipientSource(SourceKind.SQL, recipients_sql.strip(), recipients_conn_id.strip())
    if recipients_conn_id not in (None, ""):
        raise VonageStudioConfigError("recipients_conn_id: only used with recipients_sql")
    if is_uri(recipients):
        uri = recipients.strip()
        _file_format(uri)
        return RecipientSource(SourceKind.FILE, uri)
    return RecipientSource(SourceKind.LIST, recipients)


def _file_format(uri: str) -> str:
    path = uri.split("?", 1)[0].split("#", 1)[0].lower()
    for suffix, kind in FILE_SUFFIXES.items():
        if path.endswith(suffix):
            return kind
    raise VonageStudioConfigError(
        f"recipients: file URI {uri!r} has no supported suffix; expected one of {', '.join(FILE_SUFFIXES)}"
    )


def open_items(source: RecipientSource, *, strict_parameter_names: bool = True) -> Iterator[Any]:
    """The items of ``source`` (numbers, mappings or :class:`UnreadableItem`), read lazily.

    The file is opened, its header (or the query's columns) checked, before this returns.

    :raises VonageStudioConfigError: naming ``recipients`` / ``recipients_sql``: the file or
        query cannot be read, or has no column ``to``; a column that is not a valid session
        parameter name (``InvalidSessionParameter``).
    """
    if source.kind is SourceKind.LIST:
        return iter(source.value) if isinstance(source.value, Sequence) else source.value
    if source.kind is SourceKind.FILE:
        return _file_items(source.value, strict_parameter_names)
    return _sql_items(source.value, source.conn_id or "", strict_parameter_names)


# ------------------------------------------------------------------------------ files


def _file_items(uri: str, strict: bool) -> Iterator[Any]:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    kind = _file_format(uri)
    try:
        handle = ObjectStoragePath(uri).open("rb")
    except Exception as exc:  # any backend: missing file, no provider for the scheme, no access
        raise VonageStudioConfigError(
            f"recipients: cannot open {uri!r}: {type(exc).__name__}: {exc}"
        ) from exc
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    try:
        if kind == "csv":
            reader = csv.reader(text)
            header = next(reader, None)
            columns = _columns(header or [], "recipients", f"the header of {uri!r}", strict)
            return _closing(text, (_row_item(columns, row) for row in reader))
        first = _first_jsonl(text, uri)
        return _closing(text, _jsonl_items(text, first))
    except BaseException:
        text.close()
        raise


def _first_jsonl(text: io.TextIOWrapper, uri: str) -> list[Any]:
    """The first non-blank line, parsed, after checking it (a mapping must have ``to``)."""
    for line in text:
        if not line.strip():
            continue
        item = _jsonl_item(line)
        if isinstance(item, Mapping) and "to" not in item:
            raise VonageStudioConfigError(f"recipients: the first line of {uri!r} has no field 'to'")
        return [item]
    return []


def _jsonl_items(text: io.TextIOWrapper, first: list[Any]) -> Iterator[Any]:
    yield from first
    for line in text:
        if line.strip():
            yield _jsonl_item(line)


def _jsonl_item(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return UnreadableItem(f"not a JSON value ({exc.msg} at column {exc.colno})")


def _closing(handle: Any, items: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from items
    finally:
        handle.close()


# ----------------------------------------------------------------------------- columns


def _columns(names: Sequence[Any], field: str, where: str, strict: bool) -> tuple[str, ...]:
    """The column names, checked: ``to`` present, the others valid session parameter names."""
    from airflow_provider_vonage_studio.params import normalize_session_parameters

    columns = tuple(str(name).strip() for name in names)
    if "to" not in columns:
        raise VonageStudioConfigError(f"{field}: {where} has no column 'to' (columns: {', '.join(columns)})")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise VonageStudioConfigError(f"{field}: {where} repeats column(s) {', '.join(duplicated)}")
    parameters = [c for c in columns if c not in _FIELD_COLUMNS]
    normalize_session_parameters({name: "" for name in parameters}, strict_names=strict)
    return columns


def _row_item(columns: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """One CSV / SQL row as a recipient mapping (empty cells and NULLs left out)."""
    item: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    for name, value in zip(columns, values, strict=False):
        if value is None or value == "":
            continue
        if name in _FIELD_COLUMNS:
            item[name] = value if name != "key" else str(value)
        else:
            parameters[name] = value
    if parameters:
        item["session_parameters"] = parameters
    item.setdefault("to", None)
    return item


# --------------------------------------------------------------------------------- SQL


def sql_engine(conn_id: str) -> Any:
    """A SQLAlchemy engine for the Airflow connection ``conn_id``: its DB-API hook's
    (``get_sqlalchemy_engine``) when the connection type has one, else one made from the
    connection's URI (``postgres://`` read as ``postgresql+psycopg://``).

    :raises VonageStudioConfigError: naming ``recipients_conn_id`` when the connection is
        missing or cannot make an engine.
    """
    import sqlalchemy as sa

    from airflow_provider_vonage_studio._compat import BaseHook

    try:
        connection = BaseHook.get_connection(conn_id)
    except Exception as exc:
        raise VonageStudioConfigError(
            f"recipients_conn_id: cannot read connection {conn_id!r}: {exc}"
        ) from exc
    try:
        hook = connection.get_hook()
    except Exception:  # the connection type's provider is not installed: fall back to its URI
        hook = None
    if hook is not None and hasattr(hook, "get_sqlalchemy_engine"):
        return hook.get_sqlalchemy_engine()
    uri = connection.get_uri()
    for scheme in ("postgres://", "postgresql://"):
        if uri.startswith(scheme):
            uri = "postgresql+psycopg://" + uri[len(scheme) :]
    try:
        return sa.create_engine(uri)
    except Exception as exc:
        raise VonageStudioConfigError(
            f"recipients_conn_id: connection {conn_id!r} (type {connection.conn_type!r}) gives no SQL "
            f"engine: {type(exc).__name__}"
        ) from exc


def _sql_items(query: str, conn_id: str, strict: bool) -> Iterator[Any]:
    import sqlalchemy as sa

    engine = sql_engine(conn_id)
    connection = engine.connect()
    try:
        # A server-side cursor: rows arrive FETCH_ROWS at a time, never the whole result.
        result = connection.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(
            sa.text(query)
        )
        columns = _columns(list(result.keys()), "recipients_sql", "the query's result", strict)
    except VonageStudioConfigError:
        connection.close()
        raise
    except Exception as exc:
        connection.close()
        raise VonageStudioConfigError(
            f"recipients_sql: the query failed on connection {conn_id!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return _closing(connection, (_row_item(columns, row) for row in result))
