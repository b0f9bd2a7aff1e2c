"""Event store port and its implementations; :func:`open_store` is the one place that picks one."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from eventlab.errors import StoreError
from eventlab.settings import SERVICE_PORTS, Settings, service_store_variable
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
    "ShopStores",
    "SqliteEventStore",
    "StoreBusy",
    "StoredEvent",
    "check_stores_named",
    "open_store",
    "open_stores",
    "own_store_checkpoint",
    "record_own_store",
    "refuse_another_own_store",
    "store_identity",
]

#: The checkpoint holding a store's own random id. The shared store records it for each service whose
#: store it is (:func:`own_store_checkpoint`), so pointing a service at another store is told, however
#: the file was named or moved.
STORE_ID = "store id"


def open_store(settings: Settings, *, create: bool = True) -> EventStore:
    """The event store ``settings.store_url`` names (``EVENTLAB_STORE_URL``): by default the SQLite
    file ``settings.store_path``; PostgreSQL for ``postgresql://…``; a new, empty in-memory store for
    ``memory://``.

    ``create=False`` refuses to create a store that is not there (:class:`~eventlab.errors.StoreError`),
    for commands that only read one (so it refuses ``memory://``, always new). Every entry point
    opens its store here, so a backend is chosen in this one place. PostgreSQL needs psycopg
    (``pip install 'eventlab[postgres]'``), imported only when asked for.
    """
    backend = settings.store_backend
    if backend == "memory" and not create:  # a new one would be empty: there is nothing to read
        raise StoreError("memory:// is a store in one process's memory: read a SQLite file or a postgresql:// URL")
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


@dataclass(frozen=True)
class ShopStores:
    """The shop's event stores: the one each service writes to, by service name.

    By default every service shares one store (``EVENTLAB_STORE_URL``); a service given a store of
    its own (``EVENTLAB_<SERVICE>_STORE_URL``) keeps its events and its processed markers there.
    Services that name the same store, however they name it (see :func:`store_identity`), share one
    store object. ``names`` gives each distinct store a name for messages (the SQLite file, or the
    URL without its password).

    Example:
        >>> stores = open_stores(Settings(store_url="memory://"))
        >>> stores.split, stores.of("order") is stores.of("user")
        (False, True)
    """

    by_service: Mapping[str, EventStore]
    names: Mapping[str, EventStore]

    @classmethod
    def one(cls, store: EventStore) -> ShopStores:
        """``store`` for every service (a shop that is not split, or a part given one store)."""
        return cls(dict.fromkeys(SERVICE_PORTS, store), {repr(store): store})

    def of(self, service: str) -> EventStore:
        """The store ``service`` writes its events and processed markers to."""
        return self.by_service[service]

    def of_each(self, services: Iterable[str]) -> dict[str, EventStore]:
        """The store of each of ``services``, by name (where consumers keep their processed markers)."""
        return {service: self.by_service[service] for service in services}

    @property
    def split(self) -> bool:
        """Whether the services write to more than one store."""
        return len(self.names) > 1

    def __iter__(self) -> Iterator[EventStore]:
        """Each distinct store once."""
        return iter(self.names.values())

    def name_of(self, store: EventStore) -> str:
        """The name of ``store`` (one of these)."""
        return next(name for name, candidate in self.names.items() if candidate is store)

    def services_of(self, store: EventStore) -> list[str]:
        """The services that write to ``store``."""
        return [service for service, candidate in self.by_service.items() if candidate is store]

    def close(self) -> None:
        """Close every store."""
        for store in self:
            store.close()

    def __repr__(self) -> str:
        shared = [f"{name}: {'+'.join(self.services_of(store))}" for name, store in self.names.items()]
        return f"<ShopStores {', '.join(shared)}>"


def open_stores(
    settings: Settings, *, create: bool = True, opener: Callable[[Settings], EventStore] | None = None
) -> ShopStores:
    """Open the store of every service (see :class:`ShopStores`), each distinct store once
    (with ``opener`` when given, e.g. a test's; else :func:`open_store`)."""
    opened: dict[str, EventStore] = {}  # by identity
    names: dict[str, EventStore] = {}
    by_service: dict[str, EventStore] = {}
    try:
        for service in SERVICE_PORTS:
            own = settings.store_of(service)
            identity = store_identity(own)
            if identity not in opened:
                store = open_store(own, create=create) if opener is None else opener(own)
                opened[identity] = names[identity if own.store_backend == "sqlite" else own.store_shown] = store
            by_service[service] = opened[identity]
    except BaseException:  # one store failed to open: close those already open, then say why
        for store in opened.values():
            store.close()
        raise
    return ShopStores(by_service, names)


def store_identity(settings: Settings) -> str:
    """Where the events of the store ``settings`` names live, the same however it is named: a SQLite
    file's real path; PostgreSQL's server, database and schema as the server reads the URL (asked
    over one connection); ``memory://`` as is (each process's own)."""
    backend = settings.store_backend
    if backend == "sqlite":
        try:
            return str(settings.store_path.resolve())
        except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError before Python 3.13, then OSError
            raise StoreError(f"{settings.store_path}: the path cannot be followed to a file ({exc})") from exc
    if backend == "postgresql":
        from eventlab.store.postgres import identity

        return identity(settings.store_url)
    return settings.store_url


def own_store_checkpoint(service: str) -> str:
    """The checkpoint, in the shared store, recording that ``service`` has a store of its own
    (written when a shop with ``EVENTLAB_<SERVICE>_STORE_URL`` starts)."""
    return f"own store:{service}"


def record_own_store(service: str, own: EventStore, shared: EventStore) -> None:
    """Record in ``shared`` that ``service``'s store is ``own`` (giving ``own`` its id if it has none)."""
    if not (ident := own.checkpoint(STORE_ID)):
        ident = own.advance_checkpoint(STORE_ID, secrets.randbelow(2**62) + 2)  # a racing start's, if larger
    if shared.checkpoint(own_store_checkpoint(service)) != ident:
        shared.set_checkpoint(own_store_checkpoint(service), ident)


def refuse_another_own_store(settings: Settings, service: str, own: EventStore, shared: EventStore) -> None:
    """Raise :class:`~eventlab.errors.StoreError` if ``shared`` recorded another store than ``own`` as
    ``service``'s (not when it recorded none, or only that there was one: 1, as eventlab did before
    stores had ids)."""
    recorded = shared.checkpoint(own_store_checkpoint(service))
    if recorded > 1 and own.checkpoint(STORE_ID) != recorded:
        variable = service_store_variable(service)
        raise StoreError(
            f"{service} ran on another store of its own than {variable} names ({settings.store_of(service).store_shown}):"
            f" set {variable} as when it ran, or start with a new data directory (or empty stores); moving a"
            " service's data between stores is not supported"
        )


def check_stores_named(settings: Settings, services: Iterable[str] = SERVICE_PORTS) -> None:
    """Refuse settings that give none of ``services`` a store of its own where one ran on it
    (:func:`own_store_checkpoint`, in the shared store), or give one another store than the one it
    ran on (:func:`refuse_another_own_store`): a reader would miss its events. Raises
    :class:`~eventlab.errors.StoreError` naming the variables to set; nothing to check when the
    shared store is not there (or is ``memory://``)."""
    if settings.store_backend == "memory":
        return
    try:
        shared = open_store(settings, create=False)
    except StoreError:  # not there: nothing ran on it
        return
    try:
        named = [service for service in services if service in settings.service_store_urls]
        for service in named:
            _check_named_store(settings, service, shared)
        elsewhere = [
            service for service in services if service not in named and shared.checkpoint(own_store_checkpoint(service))
        ]
    finally:
        shared.close()
    if elsewhere:
        variables = ", ".join(service_store_variable(service) for service in elsewhere)
        raise StoreError(
            f"{', '.join(elsewhere)} ran on a store of its own, which these settings do not name: set {variables}"
            " as when the shop ran"
        )


def _check_named_store(settings: Settings, service: str, shared: EventStore) -> None:
    """Refuse the store of its own that ``settings`` give ``service`` if it is not the one it ran on."""
    own_settings = settings.store_of(service)
    if store_identity(own_settings) == store_identity(settings):
        return
    try:
        own = open_store(own_settings, create=False)
    except StoreError:  # not there: whoever reads it says so
        return
    try:
        refuse_another_own_store(settings, service, own, shared)
    finally:
        own.close()
