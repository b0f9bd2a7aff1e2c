"""Event store port and its implementations; :func:`open_store` is the one place that picks one."""

from __future__ import annotations

from eventlab.settings import Settings
from eventlab.store.base import EventRecord, EventStore, Metadata, NewEvent, StoreBusy, StoredEvent
from eventlab.store.sqlite import SqliteEventStore

__all__ = [
    "EventRecord",
    "EventStore",
    "Metadata",
    "NewEvent",
    "SqliteEventStore",
    "StoreBusy",
    "StoredEvent",
    "open_store",
]


def open_store(settings: Settings, *, create: bool = True) -> EventStore:
    """The event store ``settings`` name: today the SQLite file ``settings.store_path``.

    ``create=False`` refuses to create a store that is not there (:class:`~eventlab.errors.StoreError`),
    for commands that only read one. Every entry point opens its store here, so a new backend is
    chosen in this one place.
    """
    return SqliteEventStore(settings.store_path, create=create)
