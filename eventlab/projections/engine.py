"""DuckDB over the event store: copy the log, build the projections, catch up, look back.

How the store is read (measured here on a 1M-event, 490 MB SQLite store, 2 cores):

- DuckDB's ``sqlite`` extension attaches the store ``READ_ONLY`` (SQLite itself opens the file
  read-only, so no statement can write to it). Its table scan runs on every core but cannot
  push ``position > n`` down into SQLite, so it always reads the whole log (~0.3 s for two
  columns, ~0.6-1 s for the columns the projections need). ``sqlite_query('store', '… WHERE
  position > n')`` runs inside SQLite on the primary key: 1,000 new rows in ~6 ms. (SQLite's own
  JSON functions are no way round it: extracting the fields in SQLite took 4.3 s.)
- So the log is **copied** into a DuckDB table ``events``: a rebuild scans everything in
  parallel, a refresh asks SQLite for the rows after the checkpoint only. On the way in each
  JSON document is parsed once (``json_transform``, ~0.45 s for 1M) into typed columns, so no
  projection parses JSON. Querying the attached store for every relation instead would scan
  and parse the whole log each time; the DESIGN notes measured Python ``sqlite3`` → polars →
  DuckDB at ~4x the attach scan.
- A relation with a key (``orders``, ``notifications``) is a table; a refresh recomputes the
  rows of the keys the new events touch, from all the events of those keys, with the same SQL
  a rebuild runs — which is why both give identical results (a fold that carried state from
  batch to batch would need its own incremental logic per projection, and its own bugs). The
  other relations are views over the tables and ``events``, computed when read. A refresh runs
  in one DuckDB transaction, so a reader never sees half of it.

Where the time goes (CPU seconds, 1M events, ``benchmarks/projections.py --profile`` on an idle
machine): the copy ~1.15 (the SQLite scan ~0.45, the JSON ~0.45, writing the table ~0.25),
``orders`` ~0.3 and ``notifications`` ~0.15; reading every relation once ~2.3, mostly
``saga_timeline`` (~0.8, its window ~0.7), ``events`` (~0.75, the sort into position order ~0.45:
the key alone sorts in 0.02, moving the string columns is the cost) and ``inventory_history``
(~0.4). Measured and no cheaper: ``saga_timeline`` with a ``ROWS`` frame, with ``arg_min`` over
the order instead of ``first_value``, with the window over three columns joined back, as one
window over the whole log, or partitioned by a hash of the order id (slower: the string key is
not the cost); ``inventory_history`` partitioned by product; the five ``arg_min`` of ``orders``
as one over a struct; DuckDB's allocator settings. The events copied in position order
(``preserve_insertion_order`` on) so that reading ``events`` needs no sort: the read drops from
~0.6 to ~0.27, but DuckDB cannot keep the SQLite scan's order on several threads, so the copy runs
on one (1M: rebuild 0.8 -> 1.3 s wall) and parallelising it in order (a ``UNION ALL`` of position
ranges, or cursors committing in turn) costs more than the sort. The scan gives one thread per
122,880 rows, so below ~250k events the copy runs on one core; splitting it into position ranges
read in parallel does not pay: ``sqlite_query`` on the primary key costs ~30 % more per row than
the attached scan (five columns; ~40 % with all), a ``UNION ALL`` of ranges runs them one after
the other, and two cursors in Python threads inserting into one table took the 200k copy from 0.21
to 0.16 s wall for 0.21 -> 0.29 CPU-s. Each document is parsed once; the transform is ~0.27 of
the JSON (parsing alone ~0.09, ``metadata.source`` ~0.1), and a narrower shape per event type
would save at most ~0.12 while changing what ``events`` shows for a document carrying fields its
type does not declare; parsing ``lines`` only for ``OrderCreated`` measured no cheaper. (A refresh
types its rows in one statement, which parses each document twice: ~1 ms per 1,000 events, not
worth a statement more.)

How the log is read is the caller's choice (:class:`Projections`), between the two log sources
of :mod:`.sources`: Python's ``sqlite3`` (safe next to a shop that has the store open in this
process) or DuckDB's ``sqlite`` extension (``attach=True``); a PostgreSQL store named by its URL is
attached with DuckDB's ``postgres`` extension and read with ``postgres_query``. Only the sources
know which database the store is; the projections only ever see the normalised ``events`` relation.

Several stores (a service given a store of its own) are read as one log. Each store's rows keep
their own order (a stream's versions, a saga's steps as that service wrote them); the stores are
interleaved by ``merge_key`` — the latest ``recorded_at`` of that store up to the row, so each
store's sequence is already sorted by it — then by store name, then by position in the store: a
deterministic merge that never reorders a store, and that puts an effect after its cause across
stores as long as their writers share a clock (an event a service wrote after reading another
service's event is recorded after it). ``position`` is the place in that merged log (1, 2, …),
``store`` and ``store_position`` say where the row is stored; with one store nothing changes:
``position`` is the store's own and ``events`` has no store columns (the default stays as fast).
A refresh reads each store after its own last position; a row that sorts before rows already
projected (a commit that arrived late) moves those up one place each, and the keys of every moved
or new row are recomputed, so a refresh still equals a rebuild. ``main.log`` keeps every row's
place, the invalid ones (left out of ``events``) included.

User SQL never runs on the building connection (it has the ``sqlite`` extension loaded, whose
table functions read any file): :meth:`Projections.sql` hands the relations as Arrow to a
:class:`~eventlab.projections.sandbox.Sandbox` (measured at 200k events: ~0.1-0.17 s once per
refresh, then a few milliseconds per query).

Around the engine: :mod:`.typed` turns stored rows into the typed ``events`` relation,
:mod:`.snapshot` reads a schema's relations (live ones in ``main``, "as of" ones in
``as_of_<n>``), :mod:`.render` shows them in a notebook.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Self, SupportsIndex, TypeVar

import duckdb

from eventlab.errors import StoreError
from eventlab.ids import new_id
from eventlab.projections.definitions import RELATIONS
from eventlab.projections.render import projections_html
from eventlab.projections.sandbox import (
    DEFAULT_TIMEOUT,
    ProjectionError,
    QueryRefused,
    QueryTimeout,
    Sandbox,
    bounded,
    memory_limit,
    time_limit,
    turn_within,
)
from eventlab.projections.snapshot import SchemaRelations, Snapshot, snapshot_views
from eventlab.projections.sources import (
    MONEY,
    AttachedLog,
    LogSource,
    MirroredLog,
    PostgresUrl,
    cancel_reads,
    connect,
    connect_stores,
    describe,
    sql_literal,
    store_location,
)
from eventlab.projections.typed import create_typed_events, typed_events
from eventlab.store import ShopStores
from eventlab.store.base import EventStore
from eventlab.store.sqlite import SCHEMA_VERSION, SqliteEventStore, open_in_this_process, store_tables

__all__ = ["Projections", "Source"]

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger(__name__)


def _utc_naive(time: datetime) -> datetime:
    return time if time.tzinfo is None else time.astimezone(UTC).replace(tzinfo=None)


class _Default:
    """The type of "not given": ``sql(timeout=None)`` means no limit, so ``None`` cannot mean the default."""


_DEFAULT = _Default()
#: One event store the projections can read: a SQLite file, a ``postgresql://`` URL, or an open store.
Source = str | Path | EventStore
#: The columns of a raw event row, as every store keeps them.
_RAW_COLUMNS = (
    "event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data, metadata, recorded_at"
)
_RAW_COLUMNS_OF_U = ", ".join(f"u.{column.strip()}" for column in _RAW_COLUMNS.split(","))
#: The merged log of a split shop: each store's rows in its own order, the stores interleaved by
#: ``merge_key`` (the latest ``recorded_at`` of the store up to that row), then store name, then position.
_MERGE_ORDER = "merge_key, store, store_position"
_MERGE_KEY = "max(CAST(recorded_at AS TIMESTAMP)) OVER (PARTITION BY store ORDER BY position ROWS UNBOUNDED PRECEDING)"
_SPLIT_RAW_EVENTS = """
SELECT l.position, l.store, l.store_position, u.event_id, u.aggregate_type, u.aggregate_id, u.version, u.event_type,
       u.schema_version, u.data, u.metadata, CAST(u.recorded_at AS TIMESTAMP) AS recorded_at
FROM ({events}) AS u JOIN main.log AS l ON l.store = u.store AND l.store_position = u.position
WHERE l.position <= {upto}
ORDER BY l.position
"""
#: The relations that are tables (the rest are views over them), handed to the sandbox as Arrow.
_TABLES = ("events", *(r.name for r in RELATIONS.values() if r.key))
_RAW_EVENTS = """
SELECT position, event_id, aggregate_type, aggregate_id, version, event_type, schema_version,
       data, metadata, CAST(recorded_at AS TIMESTAMP) AS recorded_at
FROM store.events
WHERE position <= {upto}
ORDER BY position
"""


def _mentions(query: str, name: str) -> bool:
    """Whether ``query`` may read ``schema.table`` (quoted or not; a mention in a string counts too,
    which only costs handing over a table that is not read)."""
    schema, table = name.split(".")
    pattern = rf'\b"?{re.escape(schema)}"?\s*\.\s*"?{re.escape(table)}\b'
    return re.search(pattern, query, re.IGNORECASE) is not None


def _sources(
    source: Source | ShopStores | Sequence[Source], attach: bool
) -> list[tuple[str, Path | PostgresUrl | EventStore]]:
    """Each distinct store ``source`` names, as (name, what to read), sorted by name (the order of the
    ``store`` column and of the merge); one store keeps what its caller named."""
    given: list[Source]
    if isinstance(source, ShopStores):
        given = list(source)
    elif isinstance(source, str | Path | EventStore):
        given = [source]
    elif isinstance(source, Sequence) and source:
        given = list(source)
    else:
        raise ProjectionError(f"projections read an EventStore, a path or a URL, or several, not {source!r}")
    found: dict[str, Path | PostgresUrl | EventStore] = {}
    for one in given:
        location: Path | PostgresUrl | EventStore
        if isinstance(one, SqliteEventStore):
            if attach:
                raise ProjectionError("a store open in this process is read through sqlite3, never attached")
            location = one.path
        elif isinstance(one, EventStore):  # PostgreSQL, memory: read through the port
            if attach:
                raise ProjectionError(f"only a store named by a path or URL can be attached, not {one!r}")
            location = one
        elif isinstance(one, str | Path):
            location = store_location(one)
        else:
            raise ProjectionError(f"projections read an EventStore, a path or a URL, not {type(one).__name__}")
        if attach and isinstance(location, Path) and open_in_this_process(location):
            raise ProjectionError(
                f"{location} is open in this process: pass the store itself (Projections(shop.store)) "
                "so it is read through sqlite3 — attaching it with DuckDB's SQLite would crash the process"
            )
        if isinstance(source, ShopStores):
            name = source.name_of(one)  # type: ignore[arg-type]  # a ShopStores holds EventStores
        elif isinstance(location, EventStore):
            name = repr(location)
        elif isinstance(location, Path):
            name = str(location.expanduser().resolve()) if len(given) > 1 else describe(location)
        else:
            name = describe(location)
        found.setdefault(name, location)
    return sorted(found.items()) if len(found) > 1 else list(found.items())


def _cancel_all(urls: Sequence[PostgresUrl], session: str) -> None:
    """Cancel what the connections named ``session`` run on each PostgreSQL server of ``urls``."""
    for url in urls:
        cancel_reads(url, session)


def _in_turn(method: Callable[Concatenate[Projections, P], T]) -> Callable[Concatenate[Projections, P], T]:
    """``method`` run while it holds the object's connections: one thread at a time, and not once closed."""

    @functools.wraps(method)
    def in_turn(self: Projections, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._turn:
            self._check_open()
            return method(self, *args, **kwargs)

    return in_turn


def every_position(rows: str, after: int, upto: int, store: str | None = None) -> str:
    """A statement that fails unless ``rows`` hold every position after ``after`` up to ``upto``
    (``store``: its rows in a merged log, by ``store_position``). A store's positions have no gaps,
    so a missing one means lost events: a damaged file (SQLite may read a garbled page as the end of
    its table, without an error) or rows deleted by hand. The projections would answer from part of
    the log, without a word."""
    if store is None:
        position, where, named = "position", "TRUE", ""
    else:
        position, where, named = "store_position", f"store = {sql_literal(store)}", f"{store}: "
    expected = upto - after
    lost = f" events where positions {after + 1} to {upto} hold {expected}: the store lost events"
    return (
        f"SELECT error({sql_literal(named + 'read ')} || n || {sql_literal(lost)}"
        " || ' (a damaged file, or rows deleted by hand)')"
        f" FROM (SELECT count(*) AS n, coalesce(max(CAST({position} AS BIGINT)), {after}) AS last FROM {rows} WHERE {where})"
        f" WHERE n <> {expected} OR last <> {upto}"
    )


class Projections(SchemaRelations):
    """The shop's read models, built in an in-memory DuckDB from the event store (or the shop's stores).

    Opening copies the whole log and builds every projection; :meth:`refresh` then copies only
    the events after the checkpoint and recomputes the orders they touch. :meth:`rebuild`
    starts over; both give identical relations. Nothing is ever written to the store.

    How the log is read is the caller's choice, never guessed from what else the process has open:

    - ``Projections(shop.store)`` (a :class:`~eventlab.store.SqliteEventStore`) or
      ``Projections(path)``: through Python's ``sqlite3`` (:class:`~eventlab.store.sqlite_log.SqliteLog`),
      safe next to a shop writing the same file in this process;
    - ``Projections(path, attach=True)``: DuckDB's ``sqlite`` extension attaches the file
      read-only and scans it on every core — ~4x faster on big stores, but only for a process
      that has no ``sqlite3`` connection to that file (two SQLite libraries on one WAL file crash
      the process with a SIGBUS), such as the command line. Refused if this process has it open;
    - ``Projections("postgresql://user:pw@host:5432/db")`` (the same URL as ``EVENTLAB_STORE_URL``;
      ``sqlite:///abs/path`` names a file): DuckDB's ``postgres`` extension attaches the schema the
      URL's ``search_path`` names, read-only; any other open store (PostgreSQL, memory) is read
      through its port.

    A shop whose services have stores of their own (``EVENTLAB_<SERVICE>_STORE_URL``) is projected
    whole from a :class:`~eventlab.store.ShopStores` or a list of the above (each distinct store
    once, read as just described): the stores' logs merged into one (see the module docstring),
    where ``position`` is the place in the merged log and ``events`` also has ``store`` (its name,
    :attr:`stores`) and ``store_position``; the raw ``store.*`` tables hold every store's rows with a
    ``store`` column first.

    :meth:`sql` runs user SQL in a :class:`~eventlab.projections.sandbox.Sandbox` that can read
    these relations and nothing else, for at most ``timeout`` seconds (``None``/``0``: no limit) and
    ``memory`` (bytes or a size like ``"512MiB"``; default: ``EVENTLAB_QUERY_MEMORY``, read now;
    see :func:`~eventlab.projections.sandbox.memory_limit`).

    Threads may share one object: its methods take turns on its connections (a query waits for
    another's within its own time limit), and each relation or query result comes back on a
    cursor of its own, readable while the object refreshes.

    Example:
        >>> projections = Projections(store_path)
        >>> projections.refresh()  # events applied since the last call
        0
        >>> orders = projections.pl("orders")  # a polars DataFrame (via Arrow)
        >>> old = projections.as_of(position=1).relation("inventory")  # a DuckDB relation
    """

    def __init__(
        self,
        source: Source | ShopStores | Sequence[Source],
        *,
        attach: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        memory: int | str | None = None,
    ) -> None:
        found = _sources(source, attach)
        self._turn = threading.RLock()
        self._closed = False
        self.schema = "main"
        self.timeout = time_limit(timeout)
        self.memory = memory_limit(memory)  # a bad one, or a bad EVENTLAB_QUERY_MEMORY: refused here
        self.checkpoint = 0
        self._checkpoint_event_id: str | None = None
        self._snapshots: set[int] = set()
        self._sandbox: Sandbox | None = None
        self._generation = 0  # bumped whenever the relations change
        self._in_transaction = False  # left True by a COMMIT or ROLLBACK that was interrupted
        self._handed: dict[str, int] = {}  # sandbox relation -> generation it was handed at
        self._raw_tables: frozenset[str] | None = None
        self._raw_by_alias: dict[str, frozenset[str]] = {}
        #: Stops what the PostgreSQL servers run for this object (DuckDB's interrupt cannot reach a scan waiting there).
        self._cancel: Callable[[], None] | None = None
        #: Each store of a split shop: (name, alias on the building connection, its log); empty for one store.
        self._parts: list[tuple[str, str, LogSource]] = []
        #: Per store of a split shop: the last position projected and its event id.
        self._heads: dict[str, tuple[int, str | None]] = {}
        #: Each SQLite file projected, by store name (the others are PostgreSQL or read through their port).
        self.store_files: dict[str, Path] = {}
        if len(found) == 1:
            self._open_one(found[0][1], attach)
        else:
            self._open_split(found, attach)
        try:
            self.rebuild()
        except BaseException:
            self.close()
            raise

    def _open_one(self, location: Path | PostgresUrl | EventStore, attach: bool) -> None:
        #: The SQLite file projected (None: a PostgreSQL URL, a store read through its port, or several stores).
        self.store_path = location if isinstance(location, Path) else None
        #: What is projected, for messages: the SQLite file, the PostgreSQL URL (no password), the store, or the stores.
        self.source = repr(location) if isinstance(location, EventStore) else describe(location)
        #: The names of the stores projected, in the order of their ``store`` column (one: its :attr:`source`).
        self.stores: tuple[str, ...] = (self.source,)
        if self.store_path is not None:
            self.store_files[self.source] = self.store_path
        #: Whether DuckDB's ``sqlite`` extension reads the files (``attach=True``), never Python's ``sqlite3``.
        self.attached = attach and self.store_path is not None
        mirrored: Path | EventStore | None = None
        if isinstance(location, PostgresUrl):
            session = f"eventlab-read-{new_id()}"
            self._cancel = functools.partial(cancel_reads, location, session)
            self._con = connect(location, session=session)  # DuckDB's postgres extension reads it
        elif self.attached and isinstance(location, Path):
            self._con = connect(location)  # DuckDB's sqlite extension reads it
        else:
            self._con, mirrored = connect(None), location
        # replaced below when mirrored; closes safely
        postgres = isinstance(location, PostgresUrl)
        self._log: LogSource = AttachedLog(self._con, "postgres_query" if postgres else "sqlite_query")
        if mirrored is not None:
            try:
                self._log = MirroredLog(mirrored, self._con)
            except BaseException:
                self._con.close()
                raise

    def _open_split(self, found: list[tuple[str, Path | PostgresUrl | EventStore]], attach: bool) -> None:
        """Every store on one building connection, store ``i`` (by name) as ``store_<i>``."""
        self.store_path = None
        self.stores = tuple(name for name, _ in found)
        self.source = f"{len(found)} stores: {', '.join(self.stores)}"
        self.store_files = {name: location for name, location in found if isinstance(location, Path)}
        self.attached = attach and bool(self.store_files)
        aliases = {f"store_{i}": location for i, (_, location) in enumerate(found, 1)}
        urls = [location for location in aliases.values() if isinstance(location, PostgresUrl)]
        session = f"eventlab-read-{new_id()}" if urls else None
        if session is not None:
            self._cancel = functools.partial(_cancel_all, urls, session)
        attached = {
            alias: location if isinstance(location, PostgresUrl) or (attach and isinstance(location, Path)) else None
            for alias, location in aliases.items()
        }
        self._con = connect_stores(attached, session=session)
        self._log = AttachedLog(self._con)  # each store has its own log (below); this one is never read
        try:
            for (name, location), (alias, at) in zip(found, attached.items(), strict=True):
                log: LogSource
                if at is None:
                    assert not isinstance(location, PostgresUrl)
                    log = MirroredLog(location, self._con, alias)
                else:
                    log = AttachedLog(
                        self._con, "postgres_query" if isinstance(at, PostgresUrl) else "sqlite_query", alias
                    )
                self._parts.append((name, alias, log))
                self._heads[name] = (0, None)
        except BaseException:
            self.close()
            raise

    @property
    def split(self) -> bool:
        """Whether several stores are projected (``events`` then has ``store`` and ``store_position``)."""
        return bool(self._parts)

    @property
    def store_heads(self) -> dict[str, int]:
        """The last position projected of each store, by name."""
        if not self._parts:
            return {self.source: self.checkpoint}
        return {name: head for name, (head, _) in self._heads.items()}

    @property
    def names(self) -> tuple[str, ...]:
        """Every relation that can be read: ``events`` and the projections' tables and views."""
        return ("events", *RELATIONS)

    @_in_turn
    def rebuild(self) -> int:
        """Copy the whole log and build every relation from scratch; return the events copied."""
        return self._bounded(self._rebuild_split if self._parts else self._rebuild, None)

    @_in_turn
    def refresh(self) -> int:
        """Apply the events written since the checkpoint; return how many there were.

        Falls back to :meth:`rebuild` if the store no longer holds the event at the checkpoint
        (it was replaced or truncated).
        """
        return self._bounded(self._refresh_split if self._parts else self._refresh, None)

    @_in_turn
    def raw_events(self) -> duckdb.DuckDBPyRelation:
        """The store's log as stored (JSON as text) up to the checkpoint, in order; over several stores,
        the merged log: ``position`` in it, then ``store`` and ``store_position`` (where the row is stored)."""
        if self._parts:
            return self._cursor().sql(
                _SPLIT_RAW_EVENTS.format(events=self._raw_select("events"), upto=int(self.checkpoint))
            )
        return self._cursor().sql(_RAW_EVENTS.format(upto=int(self.checkpoint)))

    @_in_turn
    def attached_schema(self, store: str | None = None) -> tuple[dict[str, list[str]], str | None]:
        """The attached SQLite store's tables with their columns, and its schema version, read through
        DuckDB's catalogue: opening the file with ``sqlite3`` too could crash the process (see above).
        ``store``: which one, by name, when several are projected."""
        alias = "store" if not self._parts else next((a for n, a, _ in self._parts if n == store), None)
        if not self.attached or alias is None:
            raise ProjectionError(f"{store or self.source} is not attached: verify it through sqlite3")
        columns: dict[str, list[str]] = {}
        for table, column in self._con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = $alias"
            " AND table_name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY table_name, column_index",
            {"alias": alias},
        ).fetchall():
            columns.setdefault(table, []).append(column)
        version = None
        if columns.get("eventlab") == ["key", "value"]:
            row = self._con.execute(f"SELECT value FROM {alias}.eventlab WHERE key = 'schema_version'").fetchone()
            version = None if row is None else str(row[0])
        return columns, version

    def sql(
        self,
        query: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout: float | None | _Default = _DEFAULT,
    ) -> duckdb.DuckDBPyRelation:
        """Run one read-only ``SELECT`` over the relations, the "as of" schemas and the event store's
        own raw ``store.*`` tables (no other table sharing its file or schema), in a sandbox that can
        open no file, URL or extension.

        ``params`` fill ``?`` or ``$name`` placeholders. The query runs to its end, copying the store
        tables it names included, within ``timeout`` seconds (default: this object's :attr:`timeout`;
        ``None``/``0``: no limit) and
        its result comes back as a relation over the rows. Anything but a single read raises
        :class:`ProjectionError`; reaching outside raises :class:`~eventlab.projections.sandbox.QueryRefused`,
        running too long :class:`~eventlab.projections.sandbox.QueryTimeout`.
        """
        self._check_open()
        limit = self.timeout if isinstance(timeout, _Default) else time_limit(timeout)
        deadline = time.monotonic() + limit if limit else None

        def left() -> float | None:
            if deadline is None:
                return None
            if (remaining := deadline - time.monotonic()) <= 0:
                raise QueryTimeout(limit or 0.0)
            return remaining

        try:
            with contextlib.ExitStack() as turns:
                # Its turn on the connections, then the sandbox's, each within the query's time (another
                # thread's query may hold the sandbox for long); the connections' turn is given back
                # before the query runs, so a refresh may run meanwhile.
                with turn_within(self._turn, limit):
                    if self._sandbox is not None and not self._sandbox.spoiled:
                        turns.enter_context(self._sandbox.turn(left()))
                    sandbox = self._sandbox_for()
                    turns.enter_context(sandbox.turn(left()))  # held already, or a new one: no wait
                    sandbox.check(query)
                    # The store tables the query names are copied from the store first, within the query's
                    # time: a big table, or one locked on a PostgreSQL server, must not hold it beyond its limit.
                    readable = self._bounded(self._store_tables, limit)
                    wanted = sorted(n for n in readable if _mentions(query, n))
                    stale = [n for n in wanted if self._handed.get(n) != self._generation]
                    if stale:
                        tables = self._bounded(
                            lambda: [self._con.sql(self._raw_select(n)).to_arrow_table() for n in stale], limit
                        )
                        for name, table in zip(stale, tables, strict=True):
                            sandbox.add(name, table)
                            self._handed[name] = self._generation
                return self._run(sandbox, query, params, left(), readable)
        except QueryTimeout as exc:
            raise QueryTimeout(limit or 0.0) from exc  # the limit the caller gave, not what was left of it

    @staticmethod
    def _run(
        sandbox: Sandbox, query: str, params: object, timeout: float | None, readable: frozenset[str]
    ) -> duckdb.DuckDBPyRelation:
        """The rows of ``query``; a store table it names that is not ``readable`` here is named."""
        try:
            return sandbox.rows(sandbox.run(query, params, timeout))
        except ProjectionError as exc:
            named = (f"store.{table}" for table in store_tables())
            missing = sorted(n for n in named if n not in readable and _mentions(query, n))
            if not missing or isinstance(exc, QueryRefused | QueryTimeout):
                raise
            hint = " (dead letters: eventlab dlq list)" if "store.dead_letters" in missing else ""
            here = ", ".join(sorted(readable))
            raise ProjectionError(
                f"{', '.join(missing)}: not readable here; the store tables here are {here}{hint}"
            ) from exc

    @_in_turn
    def as_of(self, *, position: int | None = None, time: datetime | None = None) -> Snapshot:
        """The projections as they were at ``position`` (1 … :attr:`checkpoint`), or after the last
        event recorded at or before ``time`` (naive times are UTC)."""
        if (position is None) == (time is None):
            raise ProjectionError("as_of needs exactly one of position= or time=")
        if time is not None:
            position = self._position_at(time)
        if not isinstance(position, SupportsIndex):
            raise ProjectionError(f"position must be an integer, not {position!r}")
        position = operator.index(position)
        if not 1 <= position <= self.checkpoint:
            raise ProjectionError(f"position {position} is outside the projected log (1 … {self.checkpoint})")
        if position not in self._snapshots:
            with self._transaction():
                for statement in snapshot_views(position):
                    self._con.execute(statement)
            if self._sandbox is not None:
                for statement in snapshot_views(position):
                    self._sandbox.execute(statement)
            self._snapshots.add(position)
        row = self._con.execute("SELECT recorded_at FROM main.events WHERE position = ?", [position]).fetchone()
        return Snapshot(self, self._con, position, row[0] if row else None)

    def close(self) -> None:
        """Close the DuckDB connections (the store was only ever read); closing again does nothing."""
        with self._turn:
            if self._closed:
                return
            self._closed = True
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None
            self._log.close()
            for _, _, part in self._parts:
                part.close()
            self._con.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ProjectionError("these projections are closed: open new ones with Projections(...)")

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._turn:
            self._check_open()
            return self._con.cursor()

    def _rebuild(self) -> int:
        head, head_id, _ = self._log.head(0)
        create, *clean = create_typed_events("main.events_next", self._log.rows(0, head))
        self._build_and_swap(["events"], [create, every_position("main.events_next", 0, head), *clean])
        self.checkpoint, self._checkpoint_event_id = head, head_id
        self._generation += 1
        log.info("rebuilt projections of %s: %d events", self.source, head)
        return head

    def _build_and_swap(self, copied: Sequence[str], statements: Sequence[str]) -> None:
        """Run ``statements`` (each creating ``main.<name>_next`` for a name of ``copied``, ``events``
        among them), build every keyed table from ``main.events_next``, then swap them all in at once
        and recreate the views over them."""
        tables = [*copied, *(r.name for r in RELATIONS.values() if r.key)]
        # The new tables are built outside a transaction (DuckDB scans committed tables on every
        # core, tables written in the same transaction ~1.6x slower), then swapped in at once.
        try:
            with self._reading_store():
                for statement in statements:
                    self._con.execute(statement)
                for r in RELATIONS.values():
                    if r.key:  # keyed relations read nothing but events
                        built = r.render({"events": "main.events_next"})
                        self._con.execute(f"CREATE OR REPLACE TABLE main.{r.name}_next AS {built}")
            with self._transaction():
                for name in tables:
                    self._con.execute(f"DROP TABLE IF EXISTS main.{name}")
                    self._con.execute(f"ALTER TABLE main.{name}_next RENAME TO {name}")
                inputs = {name: f"main.{name}" for name in self.names}
                for r in RELATIONS.values():
                    if not r.key:
                        self._con.execute(f"CREATE OR REPLACE VIEW main.{r.name} AS {r.render(inputs)}")
        finally:
            for name in tables:
                self._con.execute(f"DROP TABLE IF EXISTS main.{name}_next")

    def _refresh(self) -> int:
        head, head_id, checkpoint_id = self._log.head(self.checkpoint)
        if checkpoint_id != self._checkpoint_event_id:
            log.warning("%s is not the log projected so far (checkpoint %d): rebuilding", self.source, self.checkpoint)
            return self._rebuild()
        if head == self.checkpoint:
            return 0
        if self.checkpoint == 0:
            return self._rebuild()
        after = self.checkpoint
        with self._transaction():
            rows = self._log.rows(after, head)  # in the transaction: a mirrored log's copy is rolled back too
            self._con.execute(every_position(rows, after, head))
            self._con.execute(f"INSERT INTO main.events {typed_events(rows)}")
            self._recompute_keys(after)
        self.checkpoint, self._checkpoint_event_id = head, head_id
        self._generation += 1
        log.info("refreshed projections of %s: %d new events, checkpoint %d", self.source, head - after, head)
        return head - after

    def _recompute_keys(self, after: int) -> None:
        """Recompute each keyed table's rows for the keys the events after position ``after`` touch."""
        for key in sorted({r.key for r in RELATIONS.values() if r.key}):
            # the keys the new events touch, then every event of those keys (the join's key
            # range is pushed into the scan), then each keyed table recomputed for them only
            self._con.execute(
                f"CREATE OR REPLACE TEMP TABLE changed AS SELECT DISTINCT {key} FROM main.events"
                f" WHERE position > {int(after)} AND {key} IS NOT NULL"
            )
            self._con.execute(
                f"CREATE OR REPLACE TEMP TABLE scope AS SELECT * FROM main.events SEMI JOIN temp.changed USING ({key})"
            )
            for r in RELATIONS.values():
                if r.key == key:
                    self._con.execute(f"DELETE FROM main.{r.name} WHERE {key} IN (SELECT {key} FROM temp.changed)")
                    self._con.execute(f"INSERT INTO main.{r.name} {r.render({'events': 'temp.scope'})}")
            self._con.execute("DROP TABLE temp.scope")
            self._con.execute("DROP TABLE temp.changed")

    # -- several stores: one log merged from each store's own ------------------------------------

    def _union(self, ranges: Mapping[str, tuple[int, int]]) -> str:
        """The rows of each store named in ``ranges`` (name -> (after, upto)), with a ``store`` column first."""
        return " UNION ALL ".join(
            f"SELECT {sql_literal(name)} AS store, position, {_RAW_COLUMNS} FROM {log.rows(*ranges[name])}"
            for name, _, log in self._parts
            if name in ranges
        )

    @staticmethod
    def _placed(union: str, placement: str) -> str:
        """The rows of ``union`` with their place in the merged log (``placement``: position, store,
        store_position) as ``position``, for :func:`typed_events`."""
        return (
            f"(SELECT l.position, u.store, u.position AS store_position, {_RAW_COLUMNS_OF_U}"
            f" FROM ({union}) AS u JOIN {placement} AS l ON l.store = u.store AND l.store_position = u.position)"
        )

    def _rebuild_split(self) -> int:
        heads = {name: log.head(0) for name, _, log in self._parts}
        union = self._union({name: (0, head) for name, (head, _, _) in heads.items()})
        placed = self._placed(union, "main.log_next")
        merged = (
            "CREATE OR REPLACE TABLE main.log_next AS"
            f" SELECT row_number() OVER (ORDER BY {_MERGE_ORDER}) AS position, store, store_position, merge_key"
            f" FROM (SELECT store, CAST(position AS BIGINT) AS store_position, {_MERGE_KEY} AS merge_key FROM ({union}))"
        )
        whole = [every_position("main.log_next", 0, head, name) for name, (head, _, _) in heads.items()]
        self._build_and_swap(
            ["log", "events"], [merged, *whole, *create_typed_events("main.events_next", placed, split=True)]
        )
        self.checkpoint = self._count()
        self._heads = {name: (head, head_id) for name, (head, head_id, _) in heads.items()}
        self._generation += 1
        log.info("rebuilt projections of %s: %d events", self.source, self.checkpoint)
        return self.checkpoint

    def _count(self) -> int:
        [(count,)] = self._con.execute("SELECT count(*) FROM main.log").fetchall()
        return int(count)

    def _refresh_split(self) -> int:
        """Merge each store's new rows into the log: a row that sorts before rows already projected
        (a store's commit that arrived late) moves those rows up, and every key they touch is recomputed."""
        ranges: dict[str, tuple[int, int]] = {}
        heads: dict[str, tuple[int, str | None]] = {}
        for name, _, log_source in self._parts:
            seen, seen_id = self._heads[name]
            head, head_id, at = log_source.head(seen)
            if at != seen_id:
                log.warning("%s is not the log projected so far (position %d): rebuilding", name, seen)
                return self._rebuild_split()
            heads[name] = (head, head_id)
            if head > seen:
                ranges[name] = (seen, head)
        if not ranges:
            return 0
        if self.checkpoint == 0:
            return self._rebuild_split()
        union = self._union(ranges)
        with self._transaction():
            self._con.execute(
                "CREATE OR REPLACE TEMP TABLE fresh AS"
                " SELECT u.store, u.store_position, greatest(u.merge_key, c.carry) AS merge_key"
                f" FROM (SELECT store, CAST(position AS BIGINT) AS store_position, {_MERGE_KEY} AS merge_key"
                f" FROM ({union})) AS u"
                " LEFT JOIN (SELECT store, max(merge_key) AS carry FROM main.log GROUP BY store) AS c USING (store)"
            )
            for name, (after, head) in ranges.items():
                self._con.execute(every_position("temp.fresh", after, head, name))
            [(start, added)] = self._con.execute(
                "SELECT coalesce(min(l.position), $next), (SELECT count(*) FROM temp.fresh) FROM main.log AS l,"
                f" (SELECT * FROM temp.fresh ORDER BY {_MERGE_ORDER} LIMIT 1) AS f"
                " WHERE l.merge_key > f.merge_key OR (l.merge_key = f.merge_key AND (l.store > f.store"
                " OR (l.store = f.store AND l.store_position > f.store_position)))",
                {"next": self.checkpoint + 1},
            ).fetchall()
            self._con.execute(
                "CREATE OR REPLACE TEMP TABLE placed AS"
                f" SELECT $start - 1 + row_number() OVER (ORDER BY {_MERGE_ORDER}) AS position, store, store_position,"
                " merge_key FROM (SELECT store, store_position, merge_key FROM main.log WHERE position >= $start"
                " UNION ALL SELECT * FROM temp.fresh)",
                {"start": start},
            )
            self._con.execute(f"DELETE FROM main.log WHERE position >= {int(start)}")
            self._con.execute("INSERT INTO main.log SELECT * FROM temp.placed")
            self._con.execute(
                "UPDATE main.events AS e SET position = p.position FROM temp.placed AS p"
                f" WHERE e.position >= {int(start)} AND e.store = p.store AND e.store_position = p.store_position"
            )
            placed = self._placed(union, "temp.placed")
            self._con.execute(f"INSERT INTO main.events {typed_events(placed, split=True)}")
            self._recompute_keys(start - 1)
            self._con.execute("DROP TABLE temp.placed")
            self._con.execute("DROP TABLE temp.fresh")
        self.checkpoint += int(added)
        self._heads = heads
        self._generation += 1
        log.info("refreshed projections of %s: %d new events, checkpoint %d", self.source, added, self.checkpoint)
        return int(added)

    def _sandbox_for(self) -> Sandbox:
        """The sandbox holding the current relations: the tables handed over as Arrow whenever they
        changed (once per refresh), the views and "as of" schemas created over them once."""
        if self._sandbox is not None and self._sandbox.spoiled:  # a query changed its settings: start again
            self._sandbox = None  # not closed: results read from it stay readable, and keep it until they go
            self._handed.clear()
        if self._sandbox is None:
            sandbox = Sandbox(self.memory)
            try:
                sandbox.execute(MONEY)
                self._hand_tables(sandbox)
                inputs = {name: f"main.{name}" for name in self.names}
                for r in RELATIONS.values():
                    if not r.key:
                        sandbox.execute(f"CREATE VIEW main.{r.name} AS {r.render(inputs)}")
                for position in sorted(self._snapshots):
                    for statement in snapshot_views(position):
                        sandbox.execute(statement)
            except BaseException:
                sandbox.close()
                raise
            self._sandbox = sandbox
        elif any(self._handed.get(f"main.{name}") != self._generation for name in _TABLES):
            self._hand_tables(self._sandbox)
        return self._sandbox

    def _hand_tables(self, sandbox: Sandbox) -> None:
        tables = self._bounded(
            lambda: [self._con.sql(f"SELECT * FROM main.{n}").to_arrow_table() for n in _TABLES], None
        )
        for name, table in zip(_TABLES, tables, strict=True):
            sandbox.add(f"main.{name}", table)
            self._handed[f"main.{name}"] = self._generation

    def _store_tables(self) -> frozenset[str]:
        """The raw tables of the store (``store.<name>``) that a query may read: the event store's own
        tables of its schema version, never another application's tables sharing its file or
        PostgreSQL schema (the attachment shows them all). Over several stores, each table any of
        them has, their rows together with a ``store`` column first."""
        if self._raw_tables is None:
            aliases = [alias for _, alias, _ in self._parts] or ["store"]
            self._raw_by_alias = {alias: self._own_tables(alias) for alias in aliases}
            self._raw_tables = frozenset(f"store.{name}" for tables in self._raw_by_alias.values() for name in tables)
        return self._raw_tables

    def _own_tables(self, alias: str) -> frozenset[str]:
        """The event store's own tables attached (or mirrored) as ``alias``."""
        rows = self._con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = $a OR schema_name = $a", {"a": alias}
        ).fetchall()
        present = {name for (name,) in rows}
        version = SCHEMA_VERSION  # a mirrored log holds only events and checkpoints, of every version
        if "eventlab" in present:  # an attached store: its version was checked when it was attached
            row = self._con.execute(f"SELECT value FROM {alias}.eventlab WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else version
        return frozenset(present & store_tables(version))

    def _raw_select(self, name: str) -> str:
        """The ``SELECT`` of the raw table ``name`` (``store.events`` or ``events``): the store's own, or
        over several stores each one's rows, named by a ``store`` column first."""
        table = name.removeprefix("store.")
        if not self._parts:
            return f"SELECT * FROM store.{table}"
        self._store_tables()
        return " UNION ALL BY NAME ".join(
            f"SELECT {sql_literal(store)} AS store, * FROM {alias}.{table}"
            for store, alias, _ in self._parts
            if table in self._raw_by_alias[alias]
        )

    def _bounded(self, work: Callable[[], T], timeout: float | None) -> T:
        self._roll_back_left_open()
        return bounded([self._con], work, timeout, self._cancel)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<Projections of {self.source!r}, closed>"
        return f"<Projections of {self.source!r} at position {self.checkpoint}: {len(RELATIONS)} relations>"

    def _repr_html_(self) -> str:
        return projections_html(self.source, self.checkpoint)

    def _position_at(self, time: datetime) -> int:
        if not isinstance(time, datetime):
            raise ProjectionError(f"time must be a datetime, not {time!r}")
        try:
            utc = _utc_naive(time)
        except OverflowError:
            raise ProjectionError(f"time {time.isoformat()} is outside the years 1 to 9999 in UTC") from None
        [(first, last, position)] = self._con.execute(
            "SELECT min(recorded_at), max(recorded_at), max(position) FILTER (recorded_at <= $t) FROM main.events",
            {"t": utc},
        ).fetchall()
        if first is None:
            raise ProjectionError("the event store is empty")
        if not first <= utc <= last:
            raise ProjectionError(f"time {time.isoformat()} is outside the projected log ({first} … {last} UTC)")
        return int(position)

    @contextmanager
    def _reading_store(self) -> Iterator[None]:
        """A DuckDB error while projecting (a malformed row, an unreadable file) becomes a :class:`StoreError`."""
        try:
            yield
        except duckdb.Error as exc:
            raise StoreError(f"cannot project {self.source}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One DuckDB transaction: all of it or nothing."""
        with self._reading_store():
            self._roll_back_left_open()
            self._con.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            try:
                yield
            except BaseException:
                self._con.execute("ROLLBACK")
                self._in_transaction = False
                raise
            self._con.execute("COMMIT")
            self._in_transaction = False

    def _roll_back_left_open(self) -> None:
        """Roll back the transaction an interrupted call left open: Ctrl-C interrupts DuckDB until the
        call ends, so its ROLLBACK (or COMMIT) can be interrupted too."""
        if self._in_transaction:
            with contextlib.suppress(duckdb.TransactionException):
                self._con.execute("ROLLBACK")
            self._in_transaction = False
