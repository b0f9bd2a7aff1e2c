"""Event store port and its implementations."""

from __future__ import annotations

from eventlab.store.base import EventStore, Metadata, NewEvent, StoredEvent
from eventlab.store.sqlite import SqliteEventStore

__all__ = ["EventStore", "Metadata", "NewEvent", "StoredEvent", "SqliteEventStore"]
