"""A batch's recipients: checked and planned before anything is dialed
(:func:`plan_recipients`), and what became of each (:class:`RecipientResult`,
:class:`BatchReport`).

Pure: no request, no store access. ``phonenumbers`` loads inside the functions that use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from datetime import time as dtime
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioError
from airflow_provider_vonage_studio.windows import check_zone, recipient_timezone

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store.batch_results import BatchResultRow

__all__ = [
    "RECIPIENT_FIELDS",
    "SKIPPED_DO_NOT_CALL",
    "SKIPPED_DUPLICATE",
    "BatchReport",
    "Recipient",
    "RecipientResult",
    "ResultKind",
    "UnreadableItem",
    "chunked",
    "iter_plan",
    "plan_recipients",
    "stored_result",
]

#: Keys a recipient given as a mapping may have.
RECIPIENT_FIELDS = ("to", "session_parameters", "key", "timezone")

#: ``reason`` of a recipient skipped because an earlier recipient has the same destination.
SKIPPED_DUPLICATE = "duplicate"
#: ``reason`` of a recipient skipped because its number is on a do-not-call list.
SKIPPED_DO_NOT_CALL = "do-not-call"


class ResultKind(str, Enum):
    """What became of one recipient of a batch."""

    PLACED = "placed"  # AI Studio accepted the call (now, or on an earlier try)
    REJECTED = "rejected"  # refused (invalid input, or by AI Studio): nothing rang
    SKIPPED = "skipped"  # deliberately not dialed (duplicate, do-not-call, batch stopped)
    UNKNOWN = "unknown"  # sent, no answer: it may have rung; never dialed again on its own
    DEFERRED = "deferred"  # outside its calling window; dialed when the window opens


@dataclass(frozen=True)
class UnreadableItem:
    """An item of a recipient stream that could not be read (a line of a file that is not
    JSON): planned as a ``rejected`` recipient saying why, like any malformed item."""

    why: str


@dataclass(frozen=True)
class Recipient:
    """One entry of a batch, checked and normalised (see :func:`plan_recipients`).

    ``to`` is the value as given and must never be logged; ``destination`` is the normalised
    number or SIP URI (``None`` when invalid); ``error`` says why it cannot be dialed at all;
    ``duplicate_of`` is the index of an earlier recipient with the same destination;
    ``timezone`` is the zone its calling window is read in (``None`` without a window).
    """

    index: int
    to: str
    destination: str | None
    key: str | None = None
    session_parameters: tuple[tuple[str, str], ...] = ()
    timezone: str | None = None
    error: str | None = None
    duplicate_of: int | None = None

    @property
    def dialable(self) -> bool:
        """Valid and not a duplicate: it gets a call_ref and (maybe) a call."""
        return self.error is None and self.duplicate_of is None and self.destination is not None

    @property
    def ref_key(self) -> str:
        """The recipient's part of its ``call_ref``: its own key, else its destination.

        Namespaced (``key:`` / ``to:``) so that a key that happens to look like another
        recipient's number can never collide with it.
        """
        if self.key is not None:
            return f"key:{self.key}"
        return f"to:{self.destination}"

    @property
    def shown(self) -> str:
        """The destination as it may appear in logs and results (redacted)."""
        from airflow_provider_vonage_studio.destinations import redact

        return redact(self.destination or self.to)

    def parameters_list(self) -> list[dict[str, str]]:
        """Session parameters in the API's shape."""
        return [{"name": name, "value": value} for name, value in self.session_parameters]


@dataclass(frozen=True)
class RecipientResult:
    """The outcome of one recipient; :meth:`to_dict` is what the operator returns (XCom)."""

    index: int
    to: str  # redacted
    key: str | None
    call_ref: str | None
    result: ResultKind
    reason: str | None = None
    session_id: str | None = None
    session_start_time: datetime | None = None
    duplicate_of: int | None = None
    opens_at: datetime | None = None
    status: str | None = None
    with_status: bool = False
    #: Where ``status`` came from (``callback``, ``end_call``, ``insights``, ``inferred``).
    outcome_source: str | None = None
    # The normalised destination, as the ledger stores it: for the store's batch results only,
    # never in to_dict (XCom) or logs.
    destination: str | None = field(default=None, repr=False, compare=False)

    def to_row(self) -> BatchResultRow:
        """The row the store keeps for this result (``store.batch_results``)."""
        return {
            "position": self.index,
            "call_ref": self.call_ref,
            "destination": self.destination,
            "recipient_key": self.key,
            "result": self.result.value,
            "reason": self.reason,
            "session_id": self.session_id,
            "session_start_time": self.session_start_time,
            "duplicate_of": self.duplicate_of,
            "opens_at": self.opens_at,
            "status": self.status,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: number redacted, times ISO-8601 UTC, no token or secret."""
        data: dict[str, Any] = {
            "index": self.index,
            "to": self.to,
            "key": self.key,
            "call_ref": self.call_ref,
            "result": self.result.value,
            "reason": self.reason,
            "session_id": self.session_id,
            "session_start_time": _iso(self.session_start_time),
        }
        if self.duplicate_of is not None:
            data["duplicate_of"] = self.duplicate_of
        if self.opens_at is not None:
            data["opens_at"] = _iso(self.opens_at)
        if self.with_status:
            data["status"] = self.status
            data["outcome_source"] = self.outcome_source
        return data


@dataclass(frozen=True)
class BatchReport:
    """The results of one pass over a batch, in the recipients' order.

    ``next_opening`` is the earliest calling-window opening among ``deferred`` recipients
    (``None`` when none is deferred). ``stopped`` is the error that made the pass stop dialing
    (a refused key, an unknown agent, an outage); recipients after it are ``skipped``.
    ``rate_limited`` is how many 429s the hook absorbed during the pass.

    A pass over a batch too big to hold (more recipients than it was asked to keep) has
    ``results`` empty and ``complete`` false; then ``tally`` counts every recipient,
    ``total`` is how many there were, ``problems`` holds the first few rejected or unknown
    ones (for error messages) and ``placed`` the placed calls' refs when they were collected.
    The full list is in the store's batch results.
    """

    results: tuple[RecipientResult, ...]
    next_opening: datetime | None = None
    stopped: VonageStudioError | None = None
    rate_limited: int = 0
    dialed: int = 0
    tally: Mapping[str, int] | None = None
    total: int | None = None
    problems: tuple[RecipientResult, ...] = ()
    placed: tuple[str, ...] | None = None

    @property
    def complete(self) -> bool:
        """Whether ``results`` holds every recipient."""
        return self.tally is None

    @property
    def size(self) -> int:
        """How many recipients the pass went over."""
        return len(self.results) if self.total is None else self.total

    def counts(self) -> dict[str, int]:
        """How many recipients ended in each :class:`ResultKind` (all kinds, zeros included)."""
        counts = {kind.value: 0 for kind in ResultKind}
        if self.tally is not None:
            counts.update(self.tally)
            return counts
        for result in self.results:
            counts[result.result.value] += 1
        return counts

    def placed_refs(self) -> list[str]:
        """call_refs of the placed calls, in order."""
        if self.placed is not None:
            return list(self.placed)
        return [r.call_ref for r in self.results if r.result is ResultKind.PLACED and r.call_ref]

    def summary(self) -> str:
        """One line for logs and errors: ``placed 997, rejected 2, unknown 1 of 1000``."""
        counts = self.counts()
        parts = [f"{kind} {n}" for kind, n in counts.items() if n]
        return f"{', '.join(parts) or 'nothing'} of {self.size} recipient(s)"

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-safe results (see :meth:`RecipientResult.to_dict`)."""
        return [r.to_dict() for r in self.results]


def stored_result(row: Mapping[str, Any], *, show_numbers: bool = False) -> dict[str, Any]:
    """A stored batch result (``CallStore.batch_results``) as JSON-safe data: the keys of
    :meth:`RecipientResult.to_dict` plus ``task_id`` and ``map_index``; the number redacted
    unless ``show_numbers``."""
    from airflow_provider_vonage_studio.destinations import redact

    destination = row.get("destination")
    data: dict[str, Any] = {
        "task_id": row.get("task_id"),
        "map_index": row.get("map_index"),
        "index": row["position"],
        "to": (destination if show_numbers else redact(destination)) if destination else None,
        "key": row.get("recipient_key"),
        "call_ref": row.get("call_ref"),
        "result": row["result"],
        "reason": row.get("reason"),
        "session_id": row.get("session_id"),
        "session_start_time": _iso(row.get("session_start_time")),
        "status": row.get("status"),
    }
    if row.get("duplicate_of") is not None:
        data["duplicate_of"] = row["duplicate_of"]
    if row.get("opens_at") is not None:
        data["opens_at"] = _iso(row["opens_at"])
    return data


# ------------------------------------------------------------------------------ planning


def plan_recipients(
    recipients: Iterable[Any] | None,
    *,
    default_country: str | None = None,
    session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    strict_parameter_names: bool = True,
    calling_window: tuple[dtime, dtime] | None = None,
    timezone_name: str = "UTC",
) -> list[Recipient]:
    """Check and normalise ``recipients`` without any request or store access.

    Each item is a number / SIP URI (``str``, or an ``int`` of digits with the country
    code), or a mapping with ``to`` and optional ``session_parameters`` (merged over the
    batch's, by name), ``key`` (what makes its call_ref; default: the normalised destination)
    and ``timezone`` (IANA name of the callee's zone for the calling window). A bad item does
    not fail the batch: it comes back with ``error`` set and is reported ``rejected``. An item
    whose destination (after normalisation) repeats an earlier one gets ``duplicate_of``.
    With ``calling_window`` each valid recipient gets the zone its window is read in:
    its own ``timezone``, else the one ``phonenumbers`` gives for the number when there is
    exactly one, else ``timezone_name``.

    The whole plan as a list; :func:`iter_plan` is the same, one recipient at a time.

    :raises VonageStudioConfigError: naming ``recipients`` when it is not a list (a string,
        a mapping, ``None``), naming ``timezone`` when ``timezone_name`` is not a known zone.
    :raises InvalidSessionParameter: the batch-wide ``session_parameters`` break AI Studio's rules.
    """
    return list(
        iter_plan(
            recipients,
            default_country=default_country,
            session_parameters=session_parameters,
            strict_parameter_names=strict_parameter_names,
            calling_window=calling_window,
            timezone_name=timezone_name,
        )
    )


def iter_plan(
    recipients: Iterable[Any] | None,
    *,
    default_country: str | None = None,
    session_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    strict_parameter_names: bool = True,
    calling_window: tuple[dtime, dtime] | None = None,
    timezone_name: str = "UTC",
) -> Iterator[Recipient]:
    """:func:`plan_recipients` one recipient at a time, for batches too big to hold.

    The arguments are checked when this is called (before the first item is read); the items
    are read as the result is iterated. What it keeps while iterating is the de-duplication
    index: the first index of every destination and key seen (about 150 bytes per recipient:
    some 15 MB for 100,000), never the recipients themselves.

    :raises VonageStudioConfigError: / :raises InvalidSessionParameter: as :func:`plan_recipients`.
    """
    from airflow_provider_vonage_studio.params import normalize_session_parameters

    if recipients is None or isinstance(recipients, (str, bytes, Mapping)) or not _iterable(recipients):
        hint = (
            " (a template rendered to text: pass an upstream task's output, or set the DAG's "
            "render_template_as_native_obj=True)"
            if isinstance(recipients, str)
            else ""
        )
        raise VonageStudioConfigError(
            "recipients: expected a list of numbers or of mappings with 'to', "
            f"got {type(recipients).__name__}{hint}"
        )
    defaults = {
        p["name"]: p["value"]
        for p in normalize_session_parameters(session_parameters, strict_names=strict_parameter_names)
    }
    if calling_window is not None:
        check_zone(timezone_name, "timezone")
    return _planned(
        recipients,
        defaults,
        default_country=default_country,
        strict_parameter_names=strict_parameter_names,
        timezone_name=timezone_name if calling_window is not None else None,
    )


def _planned(
    recipients: Iterable[Any],
    defaults: Mapping[str, str],
    *,
    default_country: str | None,
    strict_parameter_names: bool,
    timezone_name: str | None,
) -> Iterator[Recipient]:
    """The plan loop: normalise each item, mark duplicates of earlier destinations and keys."""
    first_by_destination: dict[str, int] = {}
    first_by_key: dict[str, int] = {}
    for index, item in enumerate(recipients):
        raw, fields, error = _split_item(index, item)
        recipient = Recipient(index=index, to=raw, destination=None, error=error)
        if error is None:
            try:
                recipient = _normalized(
                    recipient,
                    fields,
                    defaults,
                    default_country=default_country,
                    strict_parameter_names=strict_parameter_names,
                    timezone_name=timezone_name,
                )
            except VonageStudioError as exc:
                recipient = replace(recipient, error=f"recipients[{index}]: {exc.message}")
        dest, key = recipient.destination, recipient.key
        if recipient.error is None and dest is not None:
            earlier = first_by_destination.get(dest)
            if earlier is not None:
                recipient = replace(recipient, duplicate_of=earlier)
            elif key is not None and key in first_by_key:
                recipient = replace(
                    recipient,
                    error=f"recipients[{index}]: key {key!r} is already the key of "
                    f"recipients[{first_by_key[key]}]; keys must be unique within a batch",
                )
            else:
                first_by_destination[dest] = index
                if key is not None:
                    first_by_key[key] = index
        yield recipient


def chunked(items: Iterable[Recipient], size: int) -> Iterator[list[Recipient]]:
    """``items`` in lists of at most ``size`` (the unit a batch reads the ledger and writes results in)."""
    chunk: list[Recipient] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _normalized(
    recipient: Recipient,
    fields: Mapping[str, Any],
    defaults: Mapping[str, str],
    *,
    default_country: str | None,
    strict_parameter_names: bool,
    timezone_name: str | None,
) -> Recipient:
    """``recipient`` with its destination, parameters (over the batch's ``defaults``), key and,
    when a calling window is used (``timezone_name`` set), the zone it is read in.

    :raises VonageStudioError: the item's number, parameters or zone are invalid.
    """
    from airflow_provider_vonage_studio.destinations import normalize_destination
    from airflow_provider_vonage_studio.params import normalize_session_parameters

    destination = normalize_destination(recipient.to, default_country=default_country)
    params = dict(defaults)
    for p in normalize_session_parameters(
        fields.get("session_parameters"), strict_names=strict_parameter_names
    ):
        params[p["name"]] = p["value"]
    zone = None
    if timezone_name is not None:
        if fields.get("timezone") is not None:
            check_zone(fields["timezone"], f"recipients[{recipient.index}].timezone")
        zone = recipient_timezone(destination, fields.get("timezone"), timezone_name)
    return replace(
        recipient,
        destination=destination,
        key=fields.get("key"),
        session_parameters=tuple(params.items()),
        timezone=zone,
    )


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _split_item(index: int, item: Any) -> tuple[str, dict[str, Any], str | None]:
    """``(to as given, other fields, error)`` of one recipient item; never raises."""
    where = f"recipients[{index}]"
    if isinstance(item, UnreadableItem):
        return "", {}, f"{where}: {item.why}"
    if isinstance(item, bool):
        return str(item), {}, f"{where}: expected a number or a mapping with 'to', got bool"
    if isinstance(item, (str, int)):
        return str(item), {}, None
    if not isinstance(item, Mapping):
        return "", {}, f"{where}: expected a number or a mapping with 'to', got {type(item).__name__}"
    to = item.get("to")
    raw = str(to) if isinstance(to, (str, int)) and not isinstance(to, bool) else ""
    unknown = sorted(str(k) for k in item if k not in RECIPIENT_FIELDS)
    if unknown:
        # A typo such as "session_parameter" must not silently drop what the agent should say.
        allowed = ", ".join(RECIPIENT_FIELDS)
        return raw, {}, f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {allowed}"
    if not raw:
        return raw, {}, f"{where}: 'to' is missing or not a string (a number or sip:user@host)"
    fields: dict[str, Any] = {"session_parameters": item.get("session_parameters")}
    key = item.get("key")
    if key is not None:
        if isinstance(key, bool) or not isinstance(key, (str, int)) or str(key) == "":
            return raw, {}, f"{where}: 'key' must be a non-empty string, got {type(key).__name__}"
        fields["key"] = str(key)
    zone = item.get("timezone")
    if zone is not None:
        if not isinstance(zone, str) or not zone.strip():
            return raw, {}, f"{where}: 'timezone' must be an IANA zone name such as 'Europe/London'"
        fields["timezone"] = zone.strip()
    return raw, fields, None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()
