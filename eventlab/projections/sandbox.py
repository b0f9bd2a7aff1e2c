"""Where user SQL runs: a DuckDB that can read nothing but what eventlab hands it, under a time limit.

DuckDB 1.5.5, as measured here:

- ``enable_external_access = false`` refuses ``read_*``, ``glob``, ``COPY``, ``ATTACH``,
  ``INSTALL`` and ``LOAD`` — but not table functions of an extension that is already loaded:
  the connection that attached the store with the ``sqlite`` extension still answers
  ``sqlite_scan('/any/file.db', 't')`` and ``sqlite_attach``. So user SQL never runs there: it
  runs on a fresh in-memory connection that never loaded an extension, and receives the
  projections as Arrow tables (:meth:`Sandbox.add`).
- Given as a ``config`` key at connect time, ``enable_external_access = false`` leaves
  ``allowed_paths`` holding ``<cwd>/:memory:`` and its WAL names, so a file of that name in the
  working directory is readable; set with ``SET`` after connecting it does not. The local file
  system is also disabled outright (``disabled_filesystems``), and the configuration locked.
- ``lock_configuration`` does not cover what a table function changes: ``SELECT * FROM
  enable_profiling()`` (every later query profiled to stderr) or ``enable_logging()`` (every later
  query's text logged where queries read it) are reads. So the settings are compared after each
  query (1.5 ms): a query that changed one is refused, and its owner starts a new sandbox.
- The Python client adds table functions to every connection that scan Python objects
  (``pandas_scan``, ``arrow_scan``, ``python_map_function``): ``pandas_scan(NULL)`` crashes the
  process. ``checkpoint('system')`` invalidates the database: every later query fails. No setting
  turns a function off, and a macro of the same name does not shadow ``system.main.pandas_scan``,
  so they are refused by name in the query's syntax tree (``json_serialize_sql``), and in the SQL a
  ``query()`` runs, which must then be a string literal.
- ``getenv`` does not exist outside the DuckDB shell; settings that would show the home
  directory (``home_directory``, ``secret_directory``) are set to a neutral value.
- Memory: DuckDB's default ``memory_limit`` is 80 % of the machine, and with no temporary
  directory nothing can spill, so a big join or aggregate would take the notebook's memory. The
  sandbox gets ``EVENTLAB_QUERY_MEMORY`` (:func:`~eventlab.settings.query_memory`, 2 GiB unless
  set); past it DuckDB raises ``OutOfMemoryException`` ("no temporary directory is specified"),
  told as :class:`QueryOutOfMemory`.
  DuckDB does not count the Arrow result it hands back (a 3 GB cross join came back under a 100 MB
  limit), so :meth:`Sandbox.run` fetches it in batches and counts them against the same number, on
  their own: the limit is applied twice, and a query whose operators hold up to the limit while its
  result fills (a sort, an aggregate, then the rows) may hold about twice the limit at its peak. Nor
  does DuckDB count the list one scalar call builds (``range(2e8)`` took 1.6 GB under 100 MB): that
  stays open. With several threads DuckDB 1.5.5 reports an out-of-memory error of one of them, 3 to 7
  times in 10, as ``INTERRUPT Error: Interrupted!`` (another thread's, stopped because of it), and
  any other error now and then too (a conversion error met in a later batch: 6 to 21 runs in 100 of
  :meth:`Sandbox.run`; DuckDB's open pull request 25902). eventlab's own interrupts (time limit,
  Ctrl-C) never reach :func:`translate`, so such an answer runs the query again, four times at most
  within its time limit, for DuckDB's own words; if it stays "Interrupted!" it is told as
  :class:`QueryOutOfMemory`. An error DuckDB meets while a later batch is read reaches Python as
  pyarrow's ``OSError`` holding DuckDB's text (:func:`duckdb_error` gives it back its kind).
- ``PIVOT`` without an ``IN`` list is parsed into a ``CREATE TYPE`` (an ``ENUM`` of the values
  found, by a read of the same sandbox) then the ``SELECT``: the generated statements carry no text of
  their own, which a statement the user wrote always does. Only that shape is let through, and the
  types are dropped after the query.

:func:`bounded` runs a statement in a worker thread while the calling thread waits: the timer or a
``KeyboardInterrupt`` (Ctrl-C) calls ``interrupt()`` on the connection, so a query without end
stops, and the caller gets :class:`QueryTimeout` or the ``KeyboardInterrupt``. DuckDB looks for an
interrupt between vectors, not inside one scalar call: a single call that runs long
(``levenshtein`` of two 100,000-character strings: 25 s) ends late, and that stays open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
from duckdb.sqltypes import DuckDBPyType

from eventlab.arguments import is_number
from eventlab.errors import EventlabError
from eventlab.settings import QUERY_MEMORY_VARIABLE, memory_size, memory_within_bounds, query_memory

__all__ = [
    "DEFAULT_TIMEOUT",
    "ProjectionError",
    "QueryOutOfMemory",
    "QueryRefused",
    "QueryTimeout",
    "Sandbox",
    "bounded",
    "duckdb_error",
    "sandbox_connection",
    "time_limit",
    "turn_within",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a query may run unless the caller says otherwise (``None`` or ``0``: no limit).
DEFAULT_TIMEOUT = 5.0

#: Rows per Arrow batch while a result is fetched and counted against the memory limit.
_BATCH_ROWS = 16_384
#: Runs of a query after DuckDB answered only "Interrupted!" (see the module docstring): at the one in
#: five seen here, five runs in all leave one query in 2,500 told by that answer.
_MASKED_RETRIES = 4

#: What a refused query is told: the same words whatever the path, so nothing is learnt about the machine.
REFUSED = "query refused: only the projections and the store's tables can be read (no files, URLs or extensions)"

#: Applied with ``SET`` after connecting, in this order (see the module docstring for why not as ``config``).
_SETTINGS = (
    "SET home_directory = '/eventlab-sandbox'",
    "SET secret_directory = '/eventlab-sandbox'",
    "SET extension_directory = '/eventlab-sandbox'",
    "SET enable_external_access = false",
    "SET disabled_filesystems = 'LocalFileSystem'",
    "SET lock_configuration = true",
)
_ALLOWED_STATEMENTS = frozenset({duckdb.StatementType.SELECT})
#: Table functions a read may not call: the Python client's scans of Python objects, which it adds
#: to every connection (``pandas_scan(NULL)`` crashes the process), and checkpoints
#: (``checkpoint('system')`` invalidates the database for good).
_REFUSED_FUNCTIONS = frozenset(
    {"pandas_scan", "arrow_scan", "arrow_scan_dumb", "python_map_function", "checkpoint", "force_checkpoint"}
)
#: A function call in a query's text: what is looked for where DuckDB cannot serialize the query.
_CALL = re.compile(r'"?([a-z_][a-z0-9_]*)"?\s*\(')
#: How deep ``query('…query(''…'')…')`` may nest.
_NESTING = 4
#: How often the waiting thread wakes to check the clock (and re-sends an interrupt once it fired).
_TICK = 0.05
#: Seconds between two calls of a :func:`bounded` caller's ``cancel`` while the work has not stopped.
_CANCEL_EVERY = 1.0


class ProjectionError(EventlabError):
    """A projection request cannot be answered: an unknown name, an "as of" outside the log,
    or a query that is not a single read."""


class QueryRefused(ProjectionError):
    """The query tried to reach outside the sandbox (a file, a URL, an extension, a setting)."""


class QueryTimeout(ProjectionError):
    """The query ran longer than its time limit and was interrupted."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"query exceeded {seconds:g} s")
        self.seconds = seconds


class QueryOutOfMemory(ProjectionError):
    """The query needed more memory than the sandbox has (and nothing can spill to disk)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"query ran out of the sandbox's memory ({_gib(limit)}): raise it with {QUERY_MEMORY_VARIABLE} "
            f"(e.g. {QUERY_MEMORY_VARIABLE}=8GiB) or ask for less (filter, aggregate, LIMIT)"
        )
        self.limit = limit


def time_limit(value: object) -> float | None:
    """``value`` as a time limit in seconds (``None`` or ``0``: no limit), else :class:`ProjectionError`.

    Example:
        >>> time_limit(2), time_limit(0), time_limit(None)
        (2.0, None, None)
        >>> time_limit(float("nan"))
        Traceback (most recent call last):
        eventlab.projections.sandbox.ProjectionError: timeout must be a number of seconds, at least 0 (None or 0: no limit), not nan
    """
    if value is None:
        return None
    if not is_number(value) or not math.isfinite(value) or value < 0:
        raise ProjectionError(f"timeout must be a number of seconds, at least 0 (None or 0: no limit), not {value!r}")
    return float(value) or None


def memory_limit(value: object) -> int:
    """``value`` as a sandbox's memory in bytes: ``None`` (``EVENTLAB_QUERY_MEMORY``, else 2 GiB), a
    number of bytes or a size like ``"512MiB"``, from 64 MiB to 1 PiB; else :class:`ProjectionError`.

    Example:
        >>> memory_limit(2**30), memory_limit("512MiB")
        (1073741824, 536870912)
        >>> memory_limit(-1)
        Traceback (most recent call last):
        eventlab.projections.sandbox.ProjectionError: memory must be bytes or a size like 512MiB, from 64MiB to 1PiB, not -1
    """
    if value is None:
        return query_memory()
    with contextlib.suppress(ValueError):
        if isinstance(value, str):
            return memory_size(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return memory_within_bounds(value)
    raise ProjectionError(f"memory must be bytes or a size like 512MiB, from 64MiB to 1PiB, not {value!r}")


@contextmanager
def turn_within(turn: threading.Lock | threading.RLock, timeout: float | None) -> Iterator[None]:
    """Hold ``turn``, waited for at most ``timeout`` seconds (``None``: no limit), else :class:`QueryTimeout`."""
    if not turn.acquire(timeout=timeout if timeout else -1):
        raise QueryTimeout(timeout or 0.0)
    try:
        yield
    finally:
        turn.release()


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB" if size >= 2**30 else f"{size / 2**20:.3g} MiB"


def sandbox_connection(memory: int | None = None) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB that cannot open any file or URL, may use ``memory`` bytes (default
    ``EVENTLAB_QUERY_MEMORY``, :func:`~eventlab.settings.query_memory`; the result it hands back is
    counted against the same number on its own, see the module docstring), and whose settings are locked."""
    con = duckdb.connect(
        config={
            "memory_limit": f"{query_memory() if memory is None else int(memory)}B",
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
            "allow_persistent_secrets": False,
            "python_enable_replacements": False,  # no Python variables read by name
            "temp_directory": "",  # never spill to disk
        }
    )
    try:
        for statement in _SETTINGS:
            con.execute(statement)
    except duckdb.Error:
        con.close()
        raise
    return con


#: Types Arrow cannot carry exactly, which a result therefore holds as their text (DuckDB's type ids):
#: DuckDB exports a UHUGEINT as a 128-bit decimal (2^128 - 1 came back as -1), a TIME_NS past
#: 23:59:59 as null, a BIT string as its bytes and a TIMETZ without its offset (``01:02:03+04`` as
#: ``01:02:03``), a BIGNUM and a GEOMETRY as their bytes; inside a list, struct, map, array or union just
#: the same (``[-1]``, ``{'t': null}``).
_AS_TEXT = frozenset({"uhugeint", "time_ns", "bit", "time with time zone", "bignum", "geometry"})


def _holds_text_type(column: DuckDBPyType) -> bool:
    """Whether ``column`` is, or holds anywhere (in a list, struct, map, array or union), one of :data:`_AS_TEXT`."""
    if column.id in _AS_TEXT:
        return True
    if column.id not in ("struct", "list", "map", "array", "union"):
        return False
    return any(isinstance(child, DuckDBPyType) and _holds_text_type(child) for _, child in column.children)


def _as_text(description: Sequence[tuple[object, ...]]) -> str:
    """The projection of a result of ``description`` casting each column that is or holds one of
    :data:`_AS_TEXT` to ``VARCHAR``, a nested one whole (``[340282366920938463463374607431768211455]``);
    "" when there is none. Every column is named by its place (``#2``): two may share a name, or differ
    only in case, which ``* REPLACE`` takes for one (``Duplicate entry "a" in REPLACE list``; of two
    named ``x`` it cast the first only)."""
    cast = [isinstance(column[1], DuckDBPyType) and _holds_text_type(column[1]) for column in description]
    if not any(cast):
        return ""
    names = ['"' + str(column[0]).replace('"', '""') + '"' for column in description]
    return ", ".join(
        f"CAST(#{place} AS VARCHAR) AS {name}" if text else f"#{place} AS {name}"
        for place, (name, text) in enumerate(zip(names, cast, strict=True), 1)
    )


def ensure_single_read(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise :class:`ProjectionError` unless ``sql`` is exactly one ``SELECT`` (``WITH``, ``FROM …``,
    ``DESCRIBE``, ``SHOW`` and ``SUMMARIZE`` are reads too)."""
    if not isinstance(sql, str):
        raise ProjectionError(f"a query must be a string, not {type(sql).__name__}")
    try:
        sql.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: from bytes that were not UTF-8 (a shell's argv)
        raise ProjectionError(f"the query is not UTF-8 text: {exc.reason} at character {exc.start}") from None
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ProjectionError(f"cannot parse the query: {exc}") from exc
    if not statements:  # "", ";" or only a comment
        raise ProjectionError("expected exactly one statement, got 0")
    *made, last = statements
    generated = all(s.type == duckdb.StatementType.CREATE and not s.query for s in made)
    pivot = made and generated and not last.query  # a PIVOT without IN: the ENUM types of its values, made by DuckDB
    if len(statements) != 1 and not pivot:
        raise ProjectionError(f"expected exactly one statement, got {len(statements)}")
    if last.type not in _ALLOWED_STATEMENTS:
        raise ProjectionError(f"only reads are allowed, not {last.type.name}")
    _refuse_functions(con, sql)


def _refuse_functions(con: duckdb.DuckDBPyConnection, sql: str, depth: int = 0) -> None:
    """Raise :class:`QueryRefused` if ``sql`` calls one of :data:`_REFUSED_FUNCTIONS`, also inside
    the SQL that ``query()`` runs (which must then be a string literal). Found in DuckDB's syntax
    tree; in the text for a statement it cannot serialize (a ``PIVOT`` without ``IN``), where
    ``query()`` is refused too."""
    (serialized,) = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0]
    tree = json.loads(serialized)
    if tree.get("error"):
        calls: list[tuple[str, list[Any] | None]] = [(name, None) for name in _CALL.findall(sql.lower())]
    else:
        calls = list(_calls(tree))
    for name, args in calls:
        if name in _REFUSED_FUNCTIONS:
            raise QueryRefused(f"query refused: {name}() is not available in the sandbox")
        if name == "query":
            texts = [arg.get("value", {}).get("value") for arg in args or () if arg.get("type") == "VALUE_CONSTANT"]
            if (
                args is None
                or len(texts) != len(args)
                or depth >= _NESTING
                or not all(isinstance(t, str) for t in texts)
            ):
                raise QueryRefused("query refused: query() takes one string literal here, nested at most four deep")
            for text in texts:
                _refuse_functions(con, text, depth + 1)


def _calls(node: object) -> Iterator[tuple[str, list[Any]]]:
    """Every function call in a serialized syntax tree: its name (lower case) and its arguments."""
    if isinstance(node, dict):
        name = node.get("function_name")
        if isinstance(name, str):
            yield name.lower(), node.get("children") or []
        for value in node.values():
            yield from _calls(value)
    elif isinstance(node, list):
        for item in node:
            yield from _calls(item)


#: DuckDB's error kinds :func:`translate` tells apart, by the words that open their message
#: (``Out of Memory Error: failed to allocate …``): all an error raised while batches are read keeps.
_KINDS: dict[str, type[duckdb.Error]] = {
    "Out of Memory": duckdb.OutOfMemoryException,
    "Permission": duckdb.PermissionException,
    "IO": duckdb.IOException,
    "HTTP": duckdb.HTTPException,
    "Catalog": duckdb.CatalogException,
    "INTERRUPT": duckdb.InterruptException,
}
_KIND = re.compile(r"([A-Za-z ]{1,40}) Error: ")


def duckdb_error(exc: BaseException) -> duckdb.Error | None:
    """The DuckDB error ``exc`` is, or carries: DuckDB's own, or the plain ``OSError`` pyarrow raises for
    an error DuckDB met while it produced a later batch of an Arrow stream (the stream's C interface
    keeps only the text, which opens with the kind: ``Out of Memory Error: …``); None for anything else.

    Example:
        >>> type(duckdb_error(OSError("Out of Memory Error: failed to allocate data of size 16.0 MiB"))).__name__
        'OutOfMemoryException'
        >>> type(duckdb_error(OSError("Out of Range Error: Cannot resize vector"))).__name__
        'Error'
        >>> duckdb_error(FileNotFoundError(2, "No such file")) is None
        True
    """
    if isinstance(exc, duckdb.Error):
        return exc
    if type(exc) is not OSError:  # pyarrow's is exactly OSError (ArrowIOError); its subclasses are the OS's
        return None
    message = str(exc)
    kind = _KIND.match(message)
    if kind is None:
        return None
    return _KINDS.get(kind[1], duckdb.Error)(message)


def translate(exc: duckdb.Error, memory: int | None = None) -> ProjectionError:
    """A DuckDB error (see :func:`duckdb_error`) as the user sees it: anything about files, URLs or
    extensions is one generic refusal (its text would tell whether a path exists); the rest keeps
    DuckDB's words."""
    if isinstance(exc, duckdb.PermissionException | duckdb.IOException | duckdb.HTTPException):
        return QueryRefused(REFUSED)
    if isinstance(exc, duckdb.OutOfMemoryException | duckdb.InterruptException) and memory is not None:
        return QueryOutOfMemory(memory)  # an interrupt eventlab did not send: see the module docstring
    message = str(exc)
    said = message.split("\n", 1)[0]  # not the query's line DuckDB quotes below it (``total_cents/100``)
    if isinstance(exc, duckdb.CatalogException) and ("extension" in said or "/" in said):
        return QueryRefused(REFUSED)
    return ProjectionError(f"query failed: {message}")


def bounded(
    connections: Sequence[duckdb.DuckDBPyConnection],
    work: Callable[[], T],
    timeout: float | None,
    cancel: Callable[[], None] | None = None,
) -> T:
    """Run ``work`` (DuckDB calls on ``connections``) in a worker thread; interrupt it after
    ``timeout`` seconds (``None``/``0``: never) or on ``KeyboardInterrupt`` (or any other exception
    raised in the calling thread while it waits).

    ``cancel`` also stops what DuckDB's interrupt cannot reach (a PostgreSQL scan waiting on the
    server for a lock); it is called when the interrupt is first sent, then at most once a second.

    Raises :class:`QueryTimeout` when the limit struck, re-raises ``KeyboardInterrupt`` (or that other
    exception) once DuckDB has stopped, and otherwise returns or raises whatever ``work`` did.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []
    done = threading.Event()
    began, abandoned, claim = threading.Event(), threading.Event(), threading.Lock()

    def run() -> None:
        with claim:  # either the work begins, and a Ctrl-C then waits for it, or the Ctrl-C came first
            if abandoned.is_set():
                return
            began.set()
        try:
            outcome.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, raised there
            failure.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=run, name="eventlab-query", daemon=True)
    deadline = time.monotonic() + timeout if timeout else None
    timed_out = False
    cancelled = [-_CANCEL_EVERY]

    def stop() -> None:
        _interrupt(connections)
        if cancel is not None and time.monotonic() - cancelled[0] >= _CANCEL_EVERY:
            cancelled[0] = time.monotonic()
            cancel()

    try:
        worker.start()  # inside: a Ctrl-C while start() waits for the thread must still stop its query
        while not done.wait(_TICK):
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                stop()
    except BaseException as exc:  # Ctrl-C, or what a signal handler raised (a SIGALRM timeout): DuckDB stops first
        log.info("interrupting the query (%s)", type(exc).__name__)
        with claim:
            abandoned.set()
            running = began.is_set()
        while running and not done.wait(_TICK):  # DuckDB stops within a vector or two; a statement may follow
            stop()
        if not running and worker.ident is not None:
            worker.join()  # started, but it returns at once: it sees it was abandoned
        raise
    if timed_out and (failure or not outcome):
        raise QueryTimeout(timeout or 0.0) from (failure[0] if failure else None)
    if failure:
        raise failure[0]
    return outcome[0]


def _distinct_names(names: Sequence[str]) -> list[str]:
    """``names`` with each repeat given the first free suffix ``_1``, ``_2``, … (no name given is taken).

    Example:
        >>> _distinct_names(["order_id", "status", "order_id", "a", "a", "a_1"])
        ['order_id', 'status', 'order_id_1', 'a', 'a_2', 'a_1']
    """
    given, used = set(names), set[str]()
    found = []
    for name in names:
        unique, number = name, 0
        while unique in used or (unique != name and unique in given):
            number += 1
            unique = f"{name}_{number}"
        used.add(unique)
        found.append(unique)
    return found


def _interrupt(connections: Sequence[duckdb.DuckDBPyConnection]) -> None:
    for con in connections:
        con.interrupt()


class Sandbox:
    """A :func:`sandbox_connection` holding the relations eventlab gave it, and nothing else.

    Tables are handed over as Arrow (DuckDB scans them in place); views are created over them with
    eventlab's own SQL before any user query runs.

    Safe to share between threads: its statements run one at a time (a DuckDB connection used by two
    threads at once can hand one thread's result to the other, or freeze the process), and each
    result comes back on a cursor of its own (:meth:`rows`), so reading it needs no turn.
    """

    def __init__(self, memory: int | str | None = None) -> None:
        self.memory = memory_limit(memory)
        self.con = sandbox_connection(self.memory)
        self._turn = threading.RLock()  # re-entrant: see turn()
        self._settings = self._current_settings()
        #: A query changed a setting (see :meth:`run`): the owner should start a new sandbox.
        self.spoiled = False

    def turn(self, timeout: float | None) -> contextlib.AbstractContextManager[None]:
        """Hold this sandbox's turn, waited for at most ``timeout`` seconds (:func:`turn_within`): its other
        methods then run at once in this thread, for a caller that must not wait beyond a query's limit."""
        return turn_within(self._turn, timeout)

    def add(self, name: str, table: pa.Table) -> None:
        """Make ``table`` readable as ``name`` (``schema.table`` or ``table``; the schema is created)."""
        schema, _, table_name = name.rpartition(".")
        schema = schema or "main"
        hidden = f"_arrow_{schema}_{table_name}"
        with self._turn:
            self.con.register(hidden, table)
            self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            self.con.execute(f"CREATE OR REPLACE VIEW {schema}.{table_name} AS SELECT * FROM {hidden}")

    def execute(self, sql: str) -> None:
        """Run eventlab's own SQL (a view, a macro) on the sandbox."""
        with self._turn:
            self.con.execute(sql)

    def check(self, sql: str) -> None:
        """Raise :class:`ProjectionError` unless ``sql`` is one read (:func:`ensure_single_read`)."""
        with self._turn:
            ensure_single_read(self.con, sql)

    def rows(self, table: pa.Table) -> duckdb.DuckDBPyRelation:
        """``table`` (a result of :meth:`run`) as a relation on a cursor of its own: still in the sandbox,
        and readable, filtered or joined in any thread while other queries run."""
        with self._turn:
            return self.con.cursor().from_arrow(table)

    def run(self, sql: str, params: object, timeout: float | None) -> pa.Table:
        """One read, bounded by ``timeout``; the whole result as an Arrow table, a repeated column
        name numbered as DuckDB numbers it (a join's second ``order_id`` is ``order_id_1``): neither
        DuckDB nor polars reads an Arrow table with two columns of one name. A query waiting for its
        turn (another thread's query is running) waits within ``timeout`` too."""
        with turn_within(self._turn, timeout):
            return self._run(sql, params, timeout)

    def _run(self, sql: str, params: object, timeout: float | None) -> pa.Table:
        ensure_single_read(self.con, sql)

        def work() -> pa.Table:
            batches, held = [], 0
            result: duckdb.DuckDBPyConnection | duckdb.DuckDBPyRelation = self.con.execute(sql, params)
            if casts := _as_text(result.description or []):  # run again, those columns as their text
                result = self.con.sql(sql, params=params).project(casts)
            reader = result.to_arrow_reader(_BATCH_ROWS)
            for batch in reader:
                held += batch.nbytes
                if held > self.memory:
                    reader.close()
                    raise QueryOutOfMemory(self.memory)
                batches.append(batch)
            table = pa.Table.from_batches(batches, reader.schema)
            return table.rename_columns(_distinct_names(table.column_names))

        deadline = time.monotonic() + timeout if timeout else None
        retries = _MASKED_RETRIES
        pivot = "pivot" in sql.lower()
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                try:
                    return bounded([self.con], work, left)
                except (duckdb.Error, OSError) as exc:  # OSError: DuckDB's error met while a later batch was read
                    error = duckdb_error(exc)
                    if error is None:
                        raise
                    masked = isinstance(error, duckdb.InterruptException)
                    if not (masked and retries and (deadline is None or time.monotonic() < deadline - 0.1)):
                        raise translate(error, self.memory) from exc
                    log.info("DuckDB answered only 'Interrupted!': running the query again for its own words")
                    retries -= 1
                    if pivot:
                        self._drop_pivot_types()
        finally:
            if pivot:
                self._drop_pivot_types()
            self._refuse_changed_settings()

    def _current_settings(self) -> list[tuple[str, str]]:
        return self.con.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall()

    def _refuse_changed_settings(self) -> None:
        """A table function may change a setting the configuration lock does not cover (``SELECT * FROM
        enable_profiling()`` or ``enable_logging()``: every later query profiled to stderr, or its text
        logged where queries read it). Such a query is refused and this sandbox marked spoiled."""
        try:
            now = self._current_settings()
        except duckdb.Error as exc:  # e.g. a FATAL error: DuckDB invalidated the database
            self.spoiled = True
            raise ProjectionError(f"query failed, and the sandbox with it (a new one is started): {exc}") from exc
        changed = [name for (name, value), was in zip(now, self._settings, strict=True) if (name, value) != was]
        if changed:
            self.spoiled = True
            raise QueryRefused(f"query refused: it changed the sandbox's settings ({', '.join(changed)})")

    def _drop_pivot_types(self) -> None:
        """Drop the ``ENUM`` types a ``PIVOT`` made (one per query: they would pile up in a notebook)."""
        made = self.con.execute(
            "SELECT type_name FROM duckdb_types() WHERE NOT internal AND starts_with(type_name, '__pivot_enum_')"
        ).fetchall()
        for (name,) in made:
            self.con.execute('DROP TYPE IF EXISTS "' + name.replace('"', '""') + '"')

    def close(self) -> None:
        """Close the connection (and drop the Arrow tables it held)."""
        with self._turn:
            self.con.close()
