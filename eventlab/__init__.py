"""eventlab: a Kafka event-sourced online shop to learn from, run and analyse.

Example:
    >>> from eventlab import Shop
    >>> with Shop(data_dir="/tmp/my-shop") as shop:  # doctest: +SKIP
    ...     shop.seed_catalogue()
    ...     shop.wait(shop.place_order("U001", {"P001": 1}))
"""

from __future__ import annotations

from eventlab.application import OrderView, money
from eventlab.errors import (
    AlreadyExists,
    BrokerError,
    ConcurrencyError,
    EventlabError,
    InvalidCommand,
    NotFound,
    SagaTimeout,
    StoreError,
)
from eventlab.settings import PortInUse, Settings, SettingsError
from eventlab.shop import Shop
from eventlab.store import EventStore, NewEvent, SqliteEventStore, StoredEvent

__all__ = [
    "AlreadyExists",
    "BrokerError",
    "ConcurrencyError",
    "EventStore",
    "EventlabError",
    "InvalidCommand",
    "NewEvent",
    "NotFound",
    "OrderView",
    "PortInUse",
    "SagaTimeout",
    "Settings",
    "SettingsError",
    "Shop",
    "SqliteEventStore",
    "StoreError",
    "StoredEvent",
    "money",
]
__version__ = "0.1.0"
