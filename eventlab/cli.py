"""The ``eventlab`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from eventlab.errors import EventlabError
from eventlab.settings import SERVICE_PORTS, Settings

__all__ = ["main", "build_parser"]

EPILOG = """\
environment:
  EVENTLAB_DATA_DIR            where the event store lives (default ~/.local/share/eventlab)
  EVENTLAB_BOOTSTRAP_SERVERS   use this Kafka cluster instead of the embedded broker
  EVENTLAB_KAFKA_*             extra librdkafka settings, e.g. EVENTLAB_KAFKA_SECURITY_PROTOCOL=SASL_SSL
  EVENTLAB_HTTP_PORT_OFFSET    added to the service ports 8081-8086

examples:
  eventlab demo --orders 500 --payment-failure-rate 0.2 --json
  eventlab up --processes
  eventlab audit
"""


def _shop_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--payment-failure-rate",
        type=float,
        default=0.1,
        metavar="P",
        help="share of payments the simulated gateway declines (default 0.1)",
    )
    parser.add_argument(
        "--gateway-latency-ms", type=float, default=0.0, metavar="MS", help="simulated gateway latency (default 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for orders and gateway declines (default 0)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, metavar="DIR", help="event store directory (EVENTLAB_DATA_DIR)")
    common.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    shop = _shop_options()
    parser = argparse.ArgumentParser(
        prog="eventlab",
        description="An event-sourced online shop on Kafka: six services, an event store, an order saga.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        parents=[common, shop],
        help="run the shop, place orders, report",
        description="Start the shop, seed users and products from data/, place orders, "
        "wait for every saga, print a summary and the invariant checks. Exit status 0 only "
        "if no saga is stuck and every invariant holds.",
    )
    demo.add_argument("--orders", type=int, default=100, help="orders to place (default 100)")
    demo.add_argument("--rate", type=float, help="orders per second (default: as fast as possible)")
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the sagas (default 120)")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    up = commands.add_parser(
        "up",
        parents=[common, shop],
        help="run the shop until interrupted",
        description="Run the broker (unless external) and the six services with their HTTP "
        f"endpoints on ports {min(SERVICE_PORTS.values())}-{max(SERVICE_PORTS.values())} "
        "until Ctrl-C.",
    )
    up.add_argument("--processes", action="store_true", help="one supervised OS process per service")

    run = commands.add_parser(
        "run",
        parents=[common, shop],
        help="run one service against a running broker",
        description="Run one service (or the outbox relay) in this process; needs "
        "EVENTLAB_BOOTSTRAP_SERVERS. 'eventlab up --processes' starts them all.",
    )
    run.add_argument("service", choices=("relay", *SERVICE_PORTS))

    from eventlab.projections.cli import add_commands  # noqa: PLC0415

    add_commands(commands, [common])
    from eventlab.dlq import add_commands as add_dlq_commands  # noqa: PLC0415

    add_dlq_commands(commands, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        return args.handler(args) if hasattr(args, "handler") else _run(args)
    except EventlabError as exc:
        print(f"eventlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir)
    if args.command == "run":
        from eventlab.adapters import SimulatedGateway  # noqa: PLC0415
        from eventlab.supervisor import run_one  # noqa: PLC0415

        gateway = SimulatedGateway(
            args.payment_failure_rate, args.gateway_latency_ms, args.seed, settings.data_dir / "gateway.jsonl"
        )
        return run_one(args.service, settings, gateway)
    if args.command == "up" and args.processes:
        from eventlab.supervisor import supervise  # noqa: PLC0415

        passed = [
            "--payment-failure-rate",
            str(args.payment_failure_rate),
            "--gateway-latency-ms",
            str(args.gateway_latency_ms),
            "--seed",
            str(args.seed),
        ]
        return supervise(settings, passed)

    from eventlab.demo import ProgressPrinter, invariants, run_demo  # noqa: PLC0415
    from eventlab.shop import Shop  # noqa: PLC0415
    from eventlab.supervisor import stop_on_signals  # noqa: PLC0415

    shop = Shop(
        settings,
        payment_failure_rate=args.payment_failure_rate,
        gateway_latency_ms=args.gateway_latency_ms,
        seed=args.seed,
        http=args.command == "up",
    )
    with shop:
        if args.command == "up":
            print(f"eventlab: {shop!r}", flush=True)
            for name in SERVICE_PORTS:
                print(f"  {name:<13} http://127.0.0.1:{settings.port(name)}", flush=True)
            stop_on_signals().wait()
            return 0
        report = run_demo(
            shop, args.orders, seed=args.seed, rate=args.rate, timeout=args.timeout, progress=ProgressPrinter()
        )
    report.invariants = invariants(settings.store_path)
    print(json.dumps(report.as_dict()) if args.json else report.table())
    return 0 if report.ok else 1
