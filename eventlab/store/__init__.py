"""Event store port and its implementations."""

from __future__ import annotations

from eventlab.store.base import EventRecord, EventStore, Metadata, NewEvent, StoreBusy, StoredEvent
from eventlab.store.sqlite import SqliteEventStore

__all__ = ["EventRecord", "EventStore", "Metadata", "NewEvent", "SqliteEventStore", "StoreBusy", "StoredEvent"]
