"""The ``eventlab`` command line.

Everything it is given is checked before anything starts: options by typed converters
(:func:`positive_int`, :func:`probability`, ...), ``EVENTLAB_*`` variables by
:meth:`eventlab.settings.Settings.from_env`. A bad value is one line on stderr and exit status 2.
Each command is a :class:`Command` declared next to the code that runs it (``chaos``, ``doctor``,
``lab``; ``demo``, ``up`` and ``run`` here), registered by :func:`build_parser`; :func:`main` runs
its ``handler(args) -> exit status``.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

from eventlab.adapters.gateway import MAX_LATENCY_MS as MAX_GATEWAY_LATENCY_MS
from eventlab.arguments import LARGEST_INT64, directory, whole_number
from eventlab.errors import EventlabError
from eventlab.services import SERVICE_NAMES
from eventlab.settings import SERVICE_PORTS, Settings, ensure_ports_free
from eventlab.supervisor import PROCESS_NAMES

__all__ = [
    "Command",
    "build_parser",
    "gateway_latency",
    "main",
    "orders_per_second",
    "positive_float",
    "positive_int",
    "probability",
]

#: Exit status of a command whose output pipe was closed early (``eventlab show orders | head``),
#: as a shell reports a process killed by SIGPIPE.
BROKEN_PIPE = 128 + 13
#: Exit status of a command whose output could not be written (stdout closed, a full disk, text
#: its encoding cannot hold): ``EX_IOERR`` of sysexits.h, as 1 says an invariant is violated.
OUTPUT_ERROR = 74

EPILOG = """\
environment:
  EVENTLAB_DATA_DIR            where the event store lives (default $XDG_DATA_HOME/eventlab,
                               i.e. ~/.local/share/eventlab)
  EVENTLAB_STORE_URL           the event store: a SQLite file (default events.db in the data
                               directory) or postgresql://user:password@host:5432/dbname
  EVENTLAB_BOOTSTRAP_SERVERS   use this Kafka cluster instead of the embedded broker
  EVENTLAB_KAFKA_*             extra librdkafka settings, e.g. EVENTLAB_KAFKA_SECURITY_PROTOCOL=SASL_SSL
  EVENTLAB_PARTITIONS          partitions per topic (default 3, at most 1000)
  EVENTLAB_HTTP_PORT_OFFSET    added to the service ports 8081-8086

exit status:
  0 done; 1 what the command's help says (audit, demo: an invariant is violated); 2 a bad option
  or variable; 74 the output could not be written; 130 interrupted; 141 the output pipe was closed

examples:
  eventlab demo --orders 500 --payment-failure-rate 0.2 --json
  eventlab up --processes
  eventlab audit
"""


class _Parser(argparse.ArgumentParser):
    """A parser whose errors are one line: what is wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value


#: A whole number of at least 1 (an argparse ``type``).
positive_int = whole_number(1)


def probability(text: str) -> float:
    """A number from 0 to 1 (an argparse ``type``)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"not a probability from 0 to 1: {text!r}")
    return value


def gateway_latency(text: str) -> float:
    """Milliseconds from 0 to :data:`MAX_GATEWAY_LATENCY_MS` (an argparse ``type``): ``1e308`` made
    every charge fail on a time beyond the platform's, ``1e12`` blocked Payment for 31 years."""
    value = _number(text)
    if not (math.isfinite(value) and 0 <= value <= MAX_GATEWAY_LATENCY_MS):
        raise argparse.ArgumentTypeError(f"not a number of milliseconds from 0 to {MAX_GATEWAY_LATENCY_MS:,}: {text!r}")
    return value


#: The slowest and the fastest ``demo --rate``, orders per second, as ``chaos --rate`` takes: a
#: slower rate made the wait between two orders too long for time.sleep (``1e-300``: OverflowError).
RATES = (0.01, 1e9)


def orders_per_second(text: str) -> float:
    """A number of orders per second within :data:`RATES` (an argparse ``type``)."""
    value = _number(text)
    if not RATES[0] <= value <= RATES[1]:  # NaN compares false both ways
        raise argparse.ArgumentTypeError(
            f"not a number of orders per second from {RATES[0]:g} to {RATES[1]:,.0f}: {text!r}"
        )
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (an argparse ``type``)."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a number above 0: {text!r}")
    return value


@dataclass(frozen=True)
class Command:
    """One ``eventlab`` sub-command, declared next to the code that runs it.

    :func:`build_parser` registers each: ``options`` adds its arguments, ``handler(args)`` runs it and
    returns the exit status. ``epilog`` (examples) is printed as written, with ``description``.

    Example:
        >>> hello = Command("hello", "say hello", "Say hello.", handler=lambda args: 0)
        >>> parser = _Parser(prog="eventlab")
        >>> hello.register(parser.add_subparsers(dest="command"), parents=[])
        >>> parser.parse_args(["hello"]).handler(None)
        0
    """

    name: str
    help: str
    description: str
    handler: Callable[[argparse.Namespace], int]
    options: Callable[[argparse.ArgumentParser], object] | None = None
    epilog: str | None = None

    def register(
        self, commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: Sequence[argparse.ArgumentParser]
    ) -> None:
        """Add this command to ``commands`` (from ``add_subparsers``), with the options of ``parents``."""
        parser = commands.add_parser(
            self.name,
            parents=list(parents),
            help=self.help,
            description=self.description,
            epilog=self.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter if self.epilog else argparse.HelpFormatter,
        )
        if self.options:
            self.options(parser)
        parser.set_defaults(handler=self.handler)


def _shop_options() -> argparse.ArgumentParser:
    parser = _Parser(add_help=False)
    parser.add_argument(
        "--payment-failure-rate",
        type=probability,
        default=0.1,
        metavar="P",
        help="share of payments the simulated gateway declines, 0 to 1 (default 0.1)",
    )
    parser.add_argument(
        "--gateway-latency-ms",
        type=gateway_latency,
        default=0.0,
        metavar="MS",
        help=f"simulated gateway latency, 0 to {MAX_GATEWAY_LATENCY_MS:,} (default 0)",
    )
    parser.add_argument(
        "--seed",
        type=whole_number(-LARGEST_INT64 - 1, LARGEST_INT64),  # in the demo's order ids, at most 255 characters
        default=0,
        help="seed for orders and gateway declines, a 64-bit whole number (default 0)",
    )
    return parser


def _demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--orders", type=positive_int, default=100, help="orders to place (default 100)")
    demo.add_argument(
        "--rate",
        type=orders_per_second,
        help=f"orders per second, {RATES[0]:g} to {RATES[1]:,.0f} (default: as fast as possible)",
    )
    demo.add_argument(
        "--timeout",
        type=positive_float,
        default=120.0,
        metavar="SECONDS",
        help="longest wait for the shop to settle: the catalogue stocked, earlier orders before one "
        "that competes for scarce stock, every saga at the end (default 120)",
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _replicas(text: str) -> dict[str, int]:
    """``inventory=3,order=2`` (an argparse ``type``; see :func:`eventlab.supervisor.parse_replicas`)."""
    from eventlab.supervisor import parse_replicas

    try:
        return parse_replicas(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _up_options(up: argparse.ArgumentParser) -> None:
    up.add_argument("--processes", action="store_true", help="one supervised OS process per service")
    up.add_argument(
        "--replicas",
        type=_replicas,
        metavar="NAME=N,...",
        help="with --processes: N processes of a service (1-10), sharing its partitions, e.g. inventory=3,order=2; "
        "replica k listens on the service's port + 100*k (inventory: 8085, 8185, 8285) and says so in /health; "
        "relay=2 adds a standby relay that takes over when the active one dies",
    )


def _run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("service", choices=PROCESS_NAMES)


def build_parser() -> argparse.ArgumentParser:
    """The ``eventlab`` parser with every command registered (nothing is imported that starts anything)."""
    from eventlab import chaos, doctor, lab
    from eventlab.dlq import add_commands as add_dlq_commands
    from eventlab.projections.cli import add_commands as add_projection_commands
    from eventlab.tracing import waterfall

    common = _Parser(add_help=False)
    common.add_argument("--data-dir", type=directory, metavar="DIR", help="event store directory (EVENTLAB_DATA_DIR)")
    common.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    shop = _shop_options()
    parser = _Parser(
        prog="eventlab",
        description="An event-sourced online shop on Kafka: six services, an event store, an order saga.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # every command's parser is a _Parser (one-line errors), seen by the registrations as the ArgumentParser it is
    commands: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for command in (DEMO, UP, RUN):
        command.register(commands, [common, shop])
    add_projection_commands(commands, [common])
    add_dlq_commands(commands, [common])
    for command in (chaos.COMMAND, doctor.COMMAND, lab.COMMAND, waterfall.COMMAND):
        command.register(commands, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``eventlab`` command; return its exit status (2 for anything it was given wrongly)."""
    try:
        args = build_parser().parse_args(argv)  # imports each command's libraries (DuckDB, polars, ...)
    except KeyboardInterrupt:
        return 130
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    handler: Callable[[argparse.Namespace], int] = args.handler  # set by each command's registration
    stdout = sys.stdout
    if stdout is None:  # started with stdout closed (`eventlab audit >&-`): print() would drop every line
        print("eventlab: error: cannot write the output: stdout is closed", file=sys.stderr)
        return OUTPUT_ERROR
    sys.stdout = cast(TextIO, _Output(stdout))
    try:
        if args.command != "doctor":  # the doctor reports a bad variable as a failed check
            Settings.from_env()  # a bad variable stops every other command, also one that would not read it
        status = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    except _OutputFailed as exc:
        print(f"eventlab: error: cannot write the output: {exc}", file=sys.stderr)
        if isinstance(exc.__cause__, OSError):
            _silence_stdout()  # what is left in its buffer would fail again at exit
        return OUTPUT_ERROR
    except EventlabError as exc:
        print(f"eventlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout = stdout


class _OutputFailed(Exception):
    """Writing to stdout failed (raised by :class:`_Output`): not the command's own error."""


class _Output:
    """``sys.stdout`` while a command runs: a write that fails, for a full disk or a character its
    encoding lacks, raises :class:`_OutputFailed` saying why; a closed pipe stays a ``BrokenPipeError``."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except (OSError, UnicodeEncodeError) as exc:
            raise _OutputFailed(_output_problem(exc)) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _OutputFailed(_output_problem(exc)) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _output_problem(exc: OSError | UnicodeEncodeError) -> str:
    """Why stdout could not take the output, in a few words."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    hint = "" if codecs.lookup(exc.encoding).name == "utf-8" else " (use a UTF-8 locale, or PYTHONIOENCODING=utf-8)"
    return f"its encoding {exc.encoding} cannot hold {exc.object[exc.start]!r}{hint}"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit cannot fail again
    (the recipe of Python's ``signal`` documentation)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (captured by a test): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _gateway_args(args: argparse.Namespace) -> list[str]:
    return [
        "--payment-failure-rate",
        str(args.payment_failure_rate),
        "--gateway-latency-ms",
        str(args.gateway_latency_ms),
        "--seed",
        str(args.seed),
    ]


def _run_one(args: argparse.Namespace) -> int:
    from eventlab.adapters import SimulatedGateway
    from eventlab.supervisor import run_one

    settings = Settings.from_env(data_dir=args.data_dir)
    gateway = SimulatedGateway(
        args.payment_failure_rate, args.gateway_latency_ms, args.seed, settings.data_dir / "gateway.jsonl"
    )
    return run_one(args.service, settings, gateway)


def _up(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir)
    if args.replicas and not args.processes:
        raise EventlabError("--replicas needs --processes (in one process every service runs once)")
    ensure_ports_free(settings)  # before anything is made (the supervisor checks its replicas' too)
    with _alone_on(settings.data_dir):
        if args.processes:
            from eventlab.supervisor import supervise

            return supervise(settings, _gateway_args(args), replicas=args.replicas)
        return _up_in_threads(settings, args)


@contextlib.contextmanager
def _alone_on(data_dir: Path) -> Iterator[None]:
    """Hold ``<data_dir>/shop.lease`` while a shop runs there: a second one on the same directory
    would run a broker and a relay of its own over the same store, and strand what the first had
    published to its broker (orders left waiting for an answer)."""
    from eventlab.store.sqlite import FileLease, make_directory

    make_directory(data_dir, "the data directory")
    lease = FileLease("shop", data_dir / "shop.lease")
    if not lease.acquire():
        raise EventlabError(
            f"another eventlab up is running on {data_dir}: stop it, or give this one another --data-dir"
        )
    try:
        yield
    finally:
        lease.release()


def _up_in_threads(settings: Settings, args: argparse.Namespace) -> int:
    from eventlab.shop import Shop
    from eventlab.supervisor import stop_on_signals

    shop = Shop(
        settings,
        payment_failure_rate=args.payment_failure_rate,
        gateway_latency_ms=args.gateway_latency_ms,
        seed=args.seed,
        http=True,
    )
    try:
        shop.start()  # a port taken since the check above is the same PortInUse, the shop stopped
        print(f"eventlab: {shop!r}", flush=True)
        for name in SERVICE_NAMES:
            print(f"  {name:<13} {settings.url(name)}", flush=True)
        stop_on_signals().wait()
    finally:
        shop.stop()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from eventlab.adapters.mailer import MAILBOX
    from eventlab.demo import ProgressPrinter, fresh_data_dir, invariants, run_demo
    from eventlab.projections.sources import store_locations
    from eventlab.shop import Shop

    settings = Settings.from_env(data_dir=args.data_dir)  # every variable checked before anything is removed
    if args.data_dir is None and not os.environ.get("EVENTLAB_DATA_DIR", "").strip():
        settings = Settings.from_env(data_dir=fresh_data_dir())  # reproducible: no earlier run's stock sold
    shop = Shop(
        settings,
        payment_failure_rate=args.payment_failure_rate,
        gateway_latency_ms=args.gateway_latency_ms,
        seed=args.seed,
    )
    mailbox = settings.data_dir / MAILBOX
    with shop:
        report = run_demo(
            shop, args.orders, seed=args.seed, rate=args.rate, timeout=args.timeout, progress=ProgressPrinter()
        )
        in_memory = any(url == "memory://" for url in (settings.store_url, *settings.service_store_urls.values()))
        if in_memory:  # gone once the shop stops
            report.invariants = invariants(shop.stores, mailbox)
    if not in_memory:
        report.invariants = invariants(store_locations(settings), mailbox)
    print(json.dumps(report.as_dict()) if args.json else report.table())
    return 0 if report.ok else 1


DEMO = Command(
    "demo",
    help="run the shop, place orders, report",
    description="Start the shop, seed users and products from data/, place orders, wait for every "
    "saga, print a summary and every check of 'eventlab audit'. The same --seed gives the same "
    "counts: without --data-dir (or EVENTLAB_DATA_DIR) each run starts from an empty store of its "
    "own, $XDG_DATA_HOME/eventlab/demo (~/.local/share/eventlab/demo), kept until the next demo. "
    "Exit status 0 only if no saga is stuck and every invariant holds.",
    handler=_demo,
    options=_demo_options,
)
UP = Command(
    "up",
    help="run the shop until interrupted",
    description="Run the broker (unless external) and the six services with their HTTP "
    f"endpoints on ports {min(SERVICE_PORTS.values())}-{max(SERVICE_PORTS.values())} "
    "(plus EVENTLAB_HTTP_PORT_OFFSET) until Ctrl-C.",
    handler=_up,
    options=_up_options,
)
RUN = Command(
    "run",
    help="run one service against a running broker",
    description="Run one service (or the outbox relay) in this process; needs "
    "EVENTLAB_BOOTSTRAP_SERVERS. 'eventlab up --processes' starts them all.",
    handler=_run_one,
    options=_run_options,
)
