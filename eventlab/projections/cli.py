"""Command-line hooks: ``eventlab audit | query | export | projections | show``.

The main ``eventlab`` parser calls :func:`add_commands`; each command reads the shop's event
stores and never writes to them: every ``--store`` given (a SQLite file, or ``postgresql://…``;
the option may be repeated), else the stores the settings name, as the shop writing them does:
``EVENTLAB_STORE_URL`` (by default ``events.db`` under ``--data-dir``) and every
``EVENTLAB_<SERVICE>_STORE_URL``, each distinct store once. Several stores are read as one log
(see :class:`~eventlab.projections.Projections`). Each sets ``args.handler`` to a function
returning the exit status.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from polars.datatypes import DataTypeClass

from eventlab.adapters.mailer import MAILBOX
from eventlab.arguments import LARGEST_INT64, directory, seconds, whole_number
from eventlab.projections.adhoc import query
from eventlab.projections.audit import audit, jsonable
from eventlab.projections.definitions import PROJECTIONS
from eventlab.projections.engine import Projections
from eventlab.projections.export import export_parquet
from eventlab.projections.sandbox import DEFAULT_TIMEOUT, ProjectionError, QueryTimeout
from eventlab.projections.snapshot import Snapshot
from eventlab.projections.sources import PostgresUrl, store_location, store_locations
from eventlab.projections.typed import EVENTS_DOC
from eventlab.services.deadlines import Deadlines
from eventlab.settings import Settings, SettingsError

__all__ = ["add_commands"]


def add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parents: Sequence[argparse.ArgumentParser]
) -> None:
    """Register the projection commands on ``subparsers`` (from ``add_subparsers``), each with
    ``parents`` (which should provide ``--data-dir``); each sets ``handler(args) -> exit status``."""
    parents = list(parents)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, description: str
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, parents=parents, help=help, description=description
        )
        parser.set_defaults(handler=handler)
        if name != "projections":  # the one command that reads no store
            parser.add_argument(
                "--store",
                type=_store_location,
                action="append",
                metavar="URL",
                help="an event store to read: a SQLite file (a path or sqlite:///abs/path) or "
                "postgresql://user:password@host:5432/dbname; repeat it for a shop split over several "
                "stores, read as one log (default: EVENTLAB_STORE_URL, else events.db in --data-dir, "
                "and every EVENTLAB_<SERVICE>_STORE_URL)",
            )
        return parser

    check = command(
        "audit",
        _audit,
        "check the shop's invariants on the event store",
        "Run the invariant checks (every order terminal, stock never negative and conserved, "
        "no double charge, failed payments compensated, every event published) as SQL over "
        "the event store. Exit status 1 if any is violated.",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object: check -> {ok, violations}")
    check.add_argument(
        "--grace",
        type=_seconds,
        metavar="SECONDS",
        help="how long a saga step may be in flight before it counts as missing (default: the payment "
        "step's deadline, twice EVENTLAB_SAGA_TIMEOUT_S: 60)",
    )

    ask = command(
        "query",
        _query,
        "run a read-only SQL query over the projections",
        "Run one SELECT over the projections (see 'eventlab projections') and the raw store "
        "tables (store.events, store.checkpoints, …; over several stores, every store's rows with a "
        "store column). Anything but a read is refused.",
    )
    ask.add_argument("sql", help='e.g. "SELECT status, count(*) FROM orders GROUP BY status"')
    _output_options(ask)

    export = command(
        "export",
        _export,
        "export the event log and the projections to Parquet",
        "Write events.parquet (the store's log as stored) and one <relation>.parquet per projection relation into DIR.",
    )
    export.add_argument("directory", type=directory, metavar="DIR", help="output directory (created if needed)")
    export.add_argument("names", nargs="*", metavar="NAME", help="only these relations (default: all)")

    command(
        "projections",
        _projections,
        "list the projections and their relations",
        "List every projection, its tables and views, and what they hold.",
    )

    show = command(
        "show",
        _show,
        "print one projection relation",
        "Print a relation (see 'eventlab projections'), optionally as of a position or time of the log.",
    )
    show.add_argument("name", help="relation name, e.g. orders, saga_timeline, inventory, revenue, funnel")
    when = show.add_mutually_exclusive_group()
    when.add_argument("--as-of-position", type=int, metavar="N", help="as it was after the event at position N")
    when.add_argument(
        "--as-of-time", type=_iso_time, metavar="TIME", help="as it was at TIME (ISO 8601; without a zone, UTC)"
    )
    show.add_argument(
        "--limit",
        type=whole_number(0, LARGEST_INT64),
        default=50,
        help="rows to print (default 50; 0 for all; a table shows at most 1,000)",
    )
    _output_options(show)


def _output_options(parser: argparse.ArgumentParser) -> None:
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="print a JSON array of rows")
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv", help="print CSV")
    fmt.add_argument(
        "--wide", dest="format", action="store_const", const="wide", help="a table with every column at full width"
    )
    parser.set_defaults(format="table")
    parser.add_argument(
        "--columns", type=_names, metavar="A,B,C", help="print only these columns, in this order (any format)"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"stop the query after SECONDS (default {DEFAULT_TIMEOUT:g}; 0 for no limit)",
    )


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no column names in {text!r}")
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise argparse.ArgumentTypeError(f"{', '.join(twice)} named twice")
    return names


#: The longest --grace or --timeout: about 31 years (the audit's clock minus much more falls before year 1).
_MAX_SECONDS = 1_000_000_000


_seconds = seconds(0, _MAX_SECONDS)  # an argparse ``type``


def _iso_time(text: str) -> datetime:
    """``--as-of-time``: an ISO 8601 time, as naive UTC (a zone that moves it past year 9999 or
    before year 1 is refused here, not an ``OverflowError`` later)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        return when
    try:
        return when.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is outside the years 1 to 9999 in UTC") from None


def _store_location(text: str) -> Path | PostgresUrl:
    """``--store``: a SQLite file or a PostgreSQL URL (an argparse ``type``)."""
    if not text.strip():  # would be events.db in the working directory
        raise argparse.ArgumentTypeError("empty: give a SQLite file or a postgresql:// URL")
    try:
        return store_location(text.strip())
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    except ProjectionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(data_dir=getattr(args, "data_dir", None))


def _store_locations(args: argparse.Namespace) -> list[Path | PostgresUrl]:
    """The stores to read: each ``--store``, else every store the settings name (as the shop writing them)."""
    if args.store:
        locations: list[Path | PostgresUrl] = args.store
        return locations
    return store_locations(_settings(args))


#: A polars dtype, as a schema holds it (an instance, or a class such as ``pl.String``).
PolarsType = pl.DataType | DataTypeClass


def _printable(dtype: PolarsType) -> PolarsType:
    """``dtype`` as JSON and CSV print it, wherever it is: a decimal as its text (polars hands Python a
    ``Decimal`` of at most 38 digits, so a HUGEINT's 39th was rounded off: 2^127 - 1 printed as
    ``1.7014118346046923173168730371588410573E+38``), and each map whose keys are nested (a list, a
    struct) as its list of ``key``/``value`` entries (Python has no dict of such keys, and JSON none
    but text)."""
    match dtype:
        case pl.Decimal():
            return pl.String
        case pl.Map() if dtype.key.is_nested():
            entry = {"key": _printable(dtype.key), "value": _printable(dtype.value)}
            return pl.List(pl.Struct(entry))
        case pl.Map():
            return pl.Map(dtype.key, _printable(dtype.value))
        case pl.List() | pl.Array():
            return pl.List(_printable(dtype.inner))
        case pl.Struct():
            return pl.Struct({field.name: _printable(field.dtype) for field in dtype.fields})
    return dtype


#: Rows made into Python values at a time for JSON and CSV: a result of millions of rows is
#: printed in slices, not held as millions of Python objects (7M integers took 2.2 GB at once).
_SLICE = 10_000
#: Rows a table shows at most: the first and the last half of them (JSON and CSV print every row).
_TABLE_ROWS = 1_000
#: The widest table polars draws (a u16: wider panics, so ``COLUMNS=65536`` is cut to it).
_TABLE_WIDTH = 65_535


def _print_frame(frame: pl.DataFrame, fmt: str, columns: Sequence[str] | None = None) -> None:
    """Print ``frame`` as JSON, CSV, a table that fits the terminal (polars' layout: long
    values cut, middle columns elided) or, ``wide``, a table of every column at full width; a
    table shows at most :data:`_TABLE_ROWS` rows and says how many there are."""
    if columns:
        unknown = [name for name in columns if name not in frame.columns]
        if unknown:
            raise ProjectionError(f"no column {', '.join(unknown)}; the columns are: {', '.join(frame.columns)}")
        frame = frame.select(columns)
    if fmt in ("json", "csv"):
        plain = {name: _printable(dtype) for name, dtype in frame.schema.items()}
        frame = frame.with_columns(
            pl.col(name).cast(plain[name]) for name, dtype in frame.schema.items() if plain[name] != dtype
        )
    if fmt == "json":
        sys.stdout.write("[")
        for start in range(0, frame.height, _SLICE):
            rows = [jsonable(row) for row in frame.slice(start, _SLICE).iter_rows(named=True)]
            sys.stdout.write(", " * bool(start) + json.dumps(rows, allow_nan=False)[1:-1])
        sys.stdout.write("]\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(frame.columns)
        for start in range(0, frame.height, _SLICE):
            writer.writerows(
                [json.dumps(jsonable(v)) if isinstance(v, list | dict) else jsonable(v) for v in row]
                for row in frame.slice(start, _SLICE).iter_rows()
            )
    elif fmt == "wide":
        with pl.Config(
            tbl_rows=_TABLE_ROWS,
            tbl_cols=-1,
            tbl_width_chars=_TABLE_WIDTH,
            fmt_str_lengths=65_535,
            fmt_table_cell_list_len=-1,
            tbl_hide_column_data_types=True,
            tbl_hide_dataframe_shape=True,
        ):
            print(frame)
    else:
        width = min(shutil.get_terminal_size().columns, _TABLE_WIDTH)
        shown = _fitting_columns(frame, width)
        with pl.Config(
            tbl_rows=_TABLE_ROWS,
            tbl_cols=-1,
            tbl_width_chars=width,
            fmt_str_lengths=_CELL,
            tbl_hide_column_data_types=True,
            tbl_hide_dataframe_shape=True,
        ):
            print(frame.select(shown))
        hidden = [name for name in frame.columns if name not in shown]
        if hidden:
            print(f"{len(hidden)} more columns (--columns or --wide): {', '.join(hidden)}")
    if fmt in ("table", "wide") and frame.height > _TABLE_ROWS:
        print(f"{frame.height:,} rows, the first and last {_TABLE_ROWS // 2:,} shown (--json or --csv print all)")


#: The widest a cell gets in a table that fits the terminal (longer values are cut with "…").
_CELL = 32


def _fitting_columns(frame: pl.DataFrame, width: int) -> list[str]:
    """The leading columns whose cells (cut at :data:`_CELL` characters) fit in ``width``; at least one."""
    shown: list[str] = []
    used = 1  # the table's left border
    for name in frame.columns:
        cell = min(max(len(name), _widest(frame[name])), _CELL) + 3  # padding and the separator
        if shown and used + cell > width:
            break
        shown.append(name)
        used += cell
    return shown


def _widest(column: pl.Series) -> int:
    """The most characters a value of ``column`` takes as text (4 for no rows); as wide as a cell
    gets for maps, lists, structs and bytes, which polars does not cast to text."""
    if column.dtype.is_nested() or column.dtype == pl.Binary:
        return _CELL
    return int(column.cast(pl.String, strict=False).str.len_chars().max() or 4)  # type: ignore[arg-type]


def _audit(args: argparse.Namespace) -> int:
    stores = _store_locations(args)
    # The mailer writes into the data directory: the shop's the settings name (a split shop's store
    # files may lie anywhere); with --store, beside the (first) SQLite file given, else there too.
    beside = args.store and not isinstance(stores[0], PostgresUrl)
    mailbox = None if beside else _settings(args).data_dir / MAILBOX
    grace = (
        Deadlines.scaled(_settings(args).saga_timeout_s).payment
        if args.grace is None
        else timedelta(seconds=args.grace)
    )
    report = audit(stores, grace=grace, mailbox=mailbox)
    print(json.dumps(report.as_dict()) if args.json else report.table())
    return 0 if report.ok else 1


def _query(args: argparse.Namespace) -> int:
    memory = _settings(args).query_memory  # every variable checked before the store is read
    return _bounded_command(
        args, lambda: query(_store_locations(args), args.sql, timeout=args.timeout or None, memory=memory)
    )


def _bounded_command(args: argparse.Namespace, fetch: Callable[[], pl.DataFrame]) -> int:
    """Print what ``fetch`` returns; a query stopped by ``--timeout`` (exit 2) or by Ctrl-C (130)
    is one line on stderr."""
    try:
        frame = fetch()
    except QueryTimeout as exc:
        print(f"eventlab: query exceeded {exc.seconds:g} s (--timeout)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eventlab: query interrupted", file=sys.stderr)
        return 130
    _print_frame(frame, args.format, args.columns)
    return 0


def _export(args: argparse.Namespace) -> int:
    written = export_parquet(_store_locations(args), args.directory, args.names or None)
    for name, path in written.items():
        print(f"{name:<20} {path}")
    return 0


def _projections(args: argparse.Namespace) -> int:
    print(f"events (table)\n    {EVENTS_DOC}")
    for projection in PROJECTIONS.values():
        print(f"\n{projection.name}: {projection.doc}")
        for r in projection.relations:
            print(f"  {r.name} ({r.kind})\n      {r.doc}")
    return 0


def _show(args: argparse.Namespace) -> int:
    """Read the relation in the query sandbox, as ``query`` reads it: the building connection has no
    memory limit (it holds the whole log), and only the sandbox counts the rows it hands back."""
    memory = _settings(args).query_memory  # every variable checked before the store is read

    def fetch() -> pl.DataFrame:
        with Projections(_store_locations(args), memory=memory) as projections:
            source: Projections | Snapshot = projections
            if args.as_of_position is not None or args.as_of_time is not None:
                source = projections.as_of(position=args.as_of_position, time=args.as_of_time)
            sql = source.select(args.name) + (f" LIMIT {args.limit}" if args.limit > 0 else "")
            return projections.sql(sql, timeout=args.timeout or None).pl()

    return _bounded_command(args, fetch)
