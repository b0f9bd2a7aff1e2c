"""Event store port and its implementations; :func:`open_store` is the one place that picks one."""

from __future__ import annotations

from eventlab.errors import StoreError
from eventlab.settings import Settings
from eventlab.store.base import Append, EventRecord, EventStore, Metadata, NewEvent, StoreBusy, StoredEvent
from eventlab.store.memory import MemoryEventStore
from eventlab.store.sqlite import SqliteEventStore

__all__ = [
    "Append",
    "EventRecord",
    "EventStore",
    "MemoryEventStore",
    "Metadata",
    "NewEvent",
    "SqliteEventStore",
    "StoreBusy",
    "StoredEvent",
    "open_store",
]


def open_store(settings: Settings, *, create: bool = True) -> EventStore:
    """The event store ``settings.store_url`` names (``EVENTLAB_STORE_URL``): by default the SQLite
    file ``settings.store_path``; PostgreSQL for ``postgresql://…``; a new, empty in-memory store for
    ``memory://``.

    ``create=False`` refuses to create a store that is not there (:class:`~eventlab.errors.StoreError`),
    for commands that only read one. Every entry point opens its store here, so a backend is chosen
    in this one place. PostgreSQL needs psycopg (``pip install 'eventlab[postgres]'``), imported only
    when asked for.
    """
    backend = settings.store_backend
    if backend == "memory":
        return MemoryEventStore()
    if backend == "postgresql":
        try:
            from eventlab.store.postgres import PostgresEventStore
        except ImportError as exc:
            raise StoreError(
                f"EVENTLAB_STORE_URL names PostgreSQL, but {exc.name} is not installed: pip install 'eventlab[postgres]'"
            ) from exc
        return PostgresEventStore(settings.store_url, create=create)
    return SqliteEventStore(settings.store_path, create=create)
