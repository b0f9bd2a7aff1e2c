"""Events as Kafka messages: CloudEvents 1.0 in binary content mode.

The message value is the event's JSON data; the envelope travels in headers (``ce_id``,
``ce_type``, ...), plus W3C ``traceparent`` and eventlab's correlation and causation ids.
Any CloudEvents SDK or ``kcat`` can read these messages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from eventlab.events import EVENT_TYPES, MAX_ID_LENGTH, Event, beyond_64_bits, fields, readable_versions
from eventlab.store.base import EventRecord, StoredEvent, json_loads

__all__ = ["SOURCE_PREFIX", "Message", "UndecodableMessage", "from_message", "record_topic", "to_message"]

SOURCE_PREFIX = "/eventlab/"
Headers = list[tuple[str, bytes]]


class UndecodableMessage(ValueError):
    """A message that is not a valid eventlab CloudEvent; ``str()`` is the reason."""


#: A JSON escape of NUL: valid JSON and Python text, but PostgreSQL stores no NUL in text or JSON, so
#: an event or id carrying one would hold its partition there for ever (each store call failing).
_NUL_ESCAPE = b"\\u0000"
#: The headers whose text is stored (ids in columns, the rest in the metadata).
_KEPT_HEADERS = ("ce_id", "ce_type", "correlation_id", "traceparent")


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded event with its envelope."""

    event_id: str
    event: Event
    correlation_id: str
    traceparent: str


def to_message(stored: StoredEvent | EventRecord) -> tuple[str, bytes, Headers]:
    """Key, value and headers for a stored event (decoded or as a raw record)."""
    if isinstance(stored, EventRecord):
        value, meta = stored.data, json_loads(stored.metadata)
        time = stored.recorded_at.replace(" ", "T") + "Z"
    else:
        value, meta = stored.to_json(), stored.metadata
        time = stored.recorded_at.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", stored.event_id.encode()),
        ("ce_source", (SOURCE_PREFIX + meta.get("source", "eventlab")).encode()),
        ("ce_type", stored.event_type.encode()),
        ("ce_time", time.encode()),
        ("ce_subject", stored.aggregate_id.encode()),
        ("ce_dataschemaversion", str(stored.schema_version).encode()),
        ("content-type", b"application/json"),
        ("correlation_id", meta.get("correlation_id", "").encode()),
    ]
    if meta.get("traceparent"):
        headers.append(("traceparent", meta["traceparent"].encode()))
    return stored.aggregate_id, value.encode(), headers


def _validate(cls: type[Event], value: bytes | str) -> Event:
    """``value`` parsed as JSON and validated as ``cls``, or :class:`UndecodableMessage` saying why.

    Strict: ``"5"`` or ``true`` for an integer, ``1`` for text, are refused, not coerced, so what a
    service acts on is what the projections read. What pydantic's parser refuses is parsed again by
    ``json.loads``, only to tell garbage and a too deep document from invalid data.
    """
    try:
        return cls.model_validate_json(value, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
    try:
        json.loads(value)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise UndecodableMessage(f"value is not JSON: {str(exc)[:200]}") from exc
    except RecursionError as exc:  # e.g. a 100,000-deep JSON array: json's C parser gives up
        raise UndecodableMessage("value is nested too deeply to decode") from exc
    field = ".".join(str(part) for part in first["loc"]) or "value"
    raise UndecodableMessage(f"invalid {cls.__name__}: {field}: {first['msg']}")


def _check_version(cls: type[Event], version: object) -> None:
    """:class:`UndecodableMessage` unless ``version`` is a schema version of ``cls`` this code reads
    (a newer one may have fields this code would refuse, or mean something else by old ones)."""
    readable = readable_versions(cls)
    try:
        number = int(str(version))
    except ValueError:
        raise UndecodableMessage(f"{cls.__name__}: schema version {version!r} is not a number") from None
    if number not in readable:
        raise UndecodableMessage(
            f"{cls.__name__}: schema version {number} is not one this eventlab reads"
            f" ({readable.start}..{readable.stop - 1})"
        )


def record_topic(record: EventRecord) -> str:
    """The topic a raw stored event is published to, once checked as a consumer will check it
    (known type, data valid, metadata a JSON object); else :class:`UndecodableMessage`."""
    cls = EVENT_TYPES.get(record.event_type)
    if cls is None:
        raise UndecodableMessage(f"unknown event type {record.event_type!r}")
    _check_version(cls, record.schema_version)
    _validate(cls, record.data)
    try:
        metadata = json_loads(record.metadata)  # pydantic-core's parser, json.loads for what it refuses
    except (ValueError, RecursionError) as exc:
        raise UndecodableMessage(f"metadata is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(metadata, dict):
        raise UndecodableMessage("metadata is not a JSON object")
    return cls.topic


def from_message(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None) -> Message:
    """Decode a Kafka message into a typed event, or raise :class:`UndecodableMessage` saying why."""
    found = {}
    for key, raw in headers or ():
        try:
            found[key] = (raw or b"").decode()
        except UnicodeDecodeError:
            if key == "ce_id":  # replaced, two ids could become one, and the second be skipped as handled
                raise UndecodableMessage(f"ce_id is not UTF-8: {(raw or b'')[:100]!r}") from None
            found[key] = (raw or b"").decode("utf-8", "replace")
    for required in ("ce_specversion", "ce_id", "ce_type"):
        if not found.get(required):
            raise UndecodableMessage(f"missing header {required}")
    for kept in _KEPT_HEADERS:
        if "\x00" in found.get(kept, ""):
            raise UndecodableMessage(f"header {kept} holds a NUL character")
    for indexed in ("ce_id", "correlation_id"):  # see MAX_ID_LENGTH: PostgreSQL would refuse it on every retry
        if len(found.get(indexed, "")) > MAX_ID_LENGTH:
            raise UndecodableMessage(f"header {indexed} is longer than {MAX_ID_LENGTH} characters")
    if found["ce_specversion"] != "1.0":
        raise UndecodableMessage(f"unsupported ce_specversion {found['ce_specversion']!r}")
    event_type = found["ce_type"]
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise UndecodableMessage(f"unknown ce_type {event_type!r}")
    if found.get("ce_dataschemaversion"):  # an extension attribute: a message without it is read as it is
        _check_version(cls, found["ce_dataschemaversion"])
    event = _validate(cls, value or b"")
    if value and _NUL_ESCAPE in value and any(isinstance(v, str) and "\x00" in v for _, v in fields(event)):
        raise UndecodableMessage("value holds a NUL character (\\u0000): no store keeps it as text")
    if too_large := beyond_64_bits(event):
        raise UndecodableMessage(f"{cls.__name__}: {', '.join(too_large)} beyond 64-bit integers")
    return Message(
        event_id=found["ce_id"],
        event=event,
        correlation_id=found.get("correlation_id", ""),
        traceparent=found.get("traceparent", ""),
    )
