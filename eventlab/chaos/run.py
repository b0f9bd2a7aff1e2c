"""``eventlab chaos``: run the shop as processes, break it on a seed, and prove nothing was lost."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, TextIO

from eventlab.adapters import SimulatedGateway
from eventlab.bootstrap import build_services
from eventlab.catalogue import load_products, load_users
from eventlab.cli import Command, positive_int, probability
from eventlab.errors import EventlabError
from eventlab.events import EVENT_TYPES, TOPICS
from eventlab.ids import new_id
from eventlab.kafka.clients import ALL_TOPICS
from eventlab.kafka.relay import unpublished
from eventlab.resilience import wait_until
from eventlab.services import SERVICE_NAMES
from eventlab.settings import Settings, service_store_variable
from eventlab.store.sqlite import SqliteEventStore
from eventlab.supervisor import Supervisor

from .inject import POISON_KINDS, DeadLetterCollector, Duplicator, PoisonMaker, http_json, place_order
from .report import ChaosReport, Kill, Observations, build_report

__all__ = ["COMMAND", "ChaosConfig", "ChaosError", "run_chaos"]

_PROGRESS_EVERY = 5.0


class ChaosError(EventlabError):
    """The chaos run could not set the shop up (not: the shop failed the test — that is the report)."""


@dataclass(frozen=True)
class ChaosConfig:
    """What to inject. Every choice (targets, times, topics, copies) comes from ``seed``.

    ``eventlab chaos`` fills each field from the option of the same name (``--pause`` is ``pause_s``).

    Example:
        >>> ChaosConfig(orders=60, rate=20, kill_every=1.0).window_s
        3.0
    """

    orders: int = 500
    rate: float = 50.0
    kill_every: float = 5.0
    duplicates: float = 0.05
    poison: int = 2
    poison_kinds: tuple[str, ...] = POISON_KINDS
    pause_s: float = 3.0
    payment_failure_rate: float = 0.2
    seed: int = 0
    timeout: float = 120.0
    max_gap_s: float | None = None

    @property
    def window_s(self) -> float:
        """How long orders are placed, and faults injected: ``orders / rate`` seconds."""
        return self.orders / self.rate


class _Progress:
    """Lines on stderr, at least every few seconds, so a long run is never silent."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, text: str, *, force: bool = True) -> None:
        now = time.monotonic()
        if self.stream is None or (not force and now - self.last < _PROGRESS_EVERY):
            return
        self.last = now
        print(f"chaos +{now - self.started:5.1f}s  {text}", file=self.stream, flush=True)


def _consumers_by_topic(accepted: Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Which services consume each topic (from ``accepted``: service -> event types), and the event
    type published on each topic."""
    consumers: dict[str, list[str]] = {}
    for service, types in accepted.items():
        for name in types:
            consumers.setdefault(EVENT_TYPES[name].topic, []).append(service)
    return consumers, {cls.topic: name for name, cls in EVENT_TYPES.items()}


class _Shop:
    """The supervised shop as the chaos run sees it: ports, a read-only view of its store."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.settings = supervisor.settings
        self.store = SqliteEventStore(self.settings.store_path)
        self.accepted = {
            name: [cls.__name__ for cls in service.subscriptions]
            for name, service in build_services(self.settings, SimulatedGateway()).items()
            if service.subscriptions
        }
        self.seen = 0
        self.created: set[str] = set()
        self.ended: set[str] = set()

    def collect(self) -> None:
        """Follow the store: which orders exist and which have ended."""
        for record in self.store.read_records(after=self.seen):
            self.seen = record.position
            if record.event_type == "OrderCreated":
                self.created.add(record.aggregate_id)
            elif record.event_type in ("OrderCompleted", "OrderCancelled"):
                self.ended.add(record.aggregate_id)

    def idle(self) -> bool:
        """Everything stored is published and handled (or dead-lettered) by every consuming service,
        as the services' own lag counts it."""
        if unpublished(self.store):
            return False
        return not any(self.store.pending(name, types) for name, types in self.accepted.items())

    def wait_healthy(self, timeout: float, progress: _Progress) -> None:
        """Wait until every service answers ``/health`` (ready or not), all within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        for name in SERVICE_NAMES:
            self._wait_answers(name, deadline - time.monotonic(), timeout, progress)
        progress("every service answers /health")

    def _wait_answers(self, name: str, within: float, timeout: float, progress: _Progress) -> None:
        def answers() -> bool:
            try:
                if http_json(self.settings.url(name), "GET", "/health", timeout=2)[0] in (200, 503):
                    return True
            except OSError:  # not listening yet
                pass
            progress(f"waiting for the {name} service to answer /health", force=False)
            return False

        wait_until(
            answers,
            within,
            interval=0.2,
            timeout_error=lambda _: ChaosError(
                f"the {name} service did not answer at {self.settings.url(name)} in {timeout} s"
            ),
        )

    def seed(self, stock: int, timeout: float, progress: _Progress) -> tuple[list[str], list[str]]:
        """Register the demo's users and products (with ``stock`` units each) over HTTP; wait until stocked."""
        users = load_users()
        products = load_products()
        for row in users:
            self._create("user", "/users", row)
        for row in products:
            self._create("product", "/products", {**row, "initial_stock": max(row["initial_stock"], stock)})
        # stocked by Inventory, and known to Order (its own copy of the users and prices)
        wanted = {("StockAdded", row["product_id"]) for row in products}
        wanted |= {("PriceRecorded", row["product_id"]) for row in products}
        wanted |= {("CustomerRecorded", row["user_id"]) for row in users}

        def stocked() -> set[tuple[str, str]]:
            found = wanted & {(r.event_type, r.aggregate_id) for r in self.store.read_records()}
            if found != wanted:
                progress(f"waiting for inventory and order: {len(found)}/{len(wanted)} recorded", force=False)
            return found

        wait_until(
            stocked,
            timeout,
            until=lambda found: found == wanted,
            interval=0.2,
            timeout_error=lambda found: ChaosError(
                f"inventory and order recorded {len(found)}/{len(wanted)} users and products in {timeout} s"
            ),
        )
        progress(f"seeded {len(users)} users and {len(products)} products ({stock}+ units each)")
        return [row["user_id"] for row in users], [row["product_id"] for row in products]

    def _create(self, service: str, path: str, body: dict[str, Any]) -> None:
        status, answer = http_json(self.settings.url(service), "POST", path, body)
        if status not in (201, 409):
            raise ChaosError(f"POST {path} on {service}: HTTP {status} {answer}")

    def settle(self, orders: set[str], timeout: float, progress: _Progress, what: str) -> bool:
        """Wait up to ``timeout`` s until ``orders`` and every stored order are terminal and the shop is
        idle; False if it is not by then."""

        def settled() -> bool:
            self.collect()
            if len(orders & self.ended) == len(orders) and self.created <= self.ended and self.idle():
                return True
            progress(f"{what}: {len(orders & self.ended)}/{len(orders)} terminal", force=False)
            return False

        try:
            wait_until(settled, timeout, interval=0.1)
        except TimeoutError:
            progress(f"{what}: gave up waiting, {len(orders & self.ended)}/{len(orders)} terminal")
            return False
        progress(f"{what}: all {len(orders)} terminal, shop idle")
        return True


def run_chaos(settings: Settings, config: ChaosConfig, progress_stream: TextIO | None = None) -> ChaosReport:
    """Run the shop as supervised processes in ``settings.data_dir`` (which must hold no store yet),
    inject what ``config`` says, wait for every saga, stop the shop and return the report.

    Progress lines go to ``progress_stream`` (none when None), at least every few seconds.
    """
    if settings.store_backend != "sqlite":
        raise ChaosError(
            f"chaos judges the run from a SQLite store, not {settings.store_backend}: unset EVENTLAB_STORE_URL"
        )
    if settings.service_store_urls:
        variables = ", ".join(service_store_variable(name) for name in settings.service_store_urls)
        raise ChaosError(f"chaos judges the run from one SQLite store, not a store per service: unset {variables}")
    if settings.store_path.exists():
        raise ChaosError(f"{settings.data_dir} already holds an event store: chaos needs a fresh data dir")
    progress = _Progress(progress_stream)
    master = random.Random(config.seed)
    rngs = {name: random.Random(master.getrandbits(64)) for name in ("orders", "kills", "poison", "copies", "pause")}
    observed = Observations(config=asdict(config), started_at=time.time())
    extra = ["--payment-failure-rate", str(config.payment_failure_rate), "--seed", str(config.seed)]
    progress(f"starting the shop in {settings.data_dir} ({'external' if not settings.embedded else 'embedded'} broker)")
    supervisor = Supervisor(settings, extra)
    stop_supervising = threading.Event()
    supervising = threading.Thread(target=supervisor.run, args=(stop_supervising,), name="chaos-supervisor")
    readers: list[DeadLetterCollector | Duplicator] = []
    shop: _Shop | None = None
    try:
        supervisor.start()
        supervising.start()
        shop = _Shop(supervisor)
        shop.wait_healthy(90, progress)
        users, products = shop.seed(3 * config.orders + 10, 90, progress)
        warmup, why = place_order(
            shop.settings.url("order"), _order(rngs["orders"], users, products), time.monotonic() + 30
        )
        if warmup is None:
            raise ChaosError(f"the warm-up order was not accepted: {why}")
        observed.warmup.append(warmup)
        if not shop.settle({warmup}, 90, progress, "warm-up order"):
            raise ChaosError("the warm-up order did not finish: the shop does not work even without chaos")
        collector = DeadLetterCollector(supervisor.settings, ALL_TOPICS)
        duplicator = Duplicator(supervisor.settings, TOPICS, config.duplicates, rngs["copies"], observed.started_at)
        readers += [collector, duplicator]
        for reader in readers:
            reader.start()
        poison = PoisonMaker(supervisor.settings, rngs["poison"], *_consumers_by_topic(shop.accepted))
        try:
            _inject(shop, config, rngs, users, products, poison, observed, progress)
        finally:
            poison.close()
        duplicator.stop.set()
        duplicator.join(30)
        observed.duplicates_sent = duplicator.sent
        shop.settle(set(observed.placed), config.timeout, progress, "waiting for the sagas")
        _await_dead_letters(collector, observed, min(10.0, config.timeout), progress)
        observed.notes += [f"{reader.name} failed: {reader.error}" for reader in readers if reader.error is not None]
    finally:
        for reader in readers:
            reader.stop.set()
        for reader in readers:
            reader.join(30)
        progress("stopping the shop")
        observed.restarts = dict(supervisor.restarts)
        if shop is not None:
            shop.store.close()
        stop_supervising.set()
        if supervising.is_alive():
            supervising.join()
        supervisor.stop()
    observed.elapsed_s = time.time() - observed.started_at
    progress("auditing the event store")
    report = build_report(
        observed, settings.store_path, settings.data_dir / "mailbox.jsonl", max_gap_s=config.max_gap_s
    )
    return report


def _order(rng: random.Random, users: Sequence[str], products: Sequence[str]) -> dict[str, Any]:
    lines = [{"product_id": pid, "quantity": rng.randint(1, 3)} for pid in rng.sample(products, rng.choice((1, 2, 3)))]
    return {"order_id": new_id(), "user_id": rng.choice(users), "lines": lines}


def _schedule(config: ChaosConfig, rngs: dict[str, random.Random]) -> list[tuple[float, str]]:
    """(seconds after the start, action) for every fault, sorted: kills every ``kill_every`` s,
    ``poison`` messages of each kind and one broker pause at random times inside the window."""
    window = config.window_s
    plan: list[tuple[float, str]] = []
    if config.kill_every > 0:
        plan += [(config.kill_every * i, "kill") for i in range(1, int(window / config.kill_every) + 1)]
        plan = [(t, a) for t, a in plan if t < window]
    plan += [
        (rngs["poison"].uniform(0.05, 0.95) * window, f"poison:{k}")
        for k in config.poison_kinds
        for _ in range(config.poison)
    ]
    if config.pause_s > 0:
        plan.append((rngs["pause"].uniform(0.3, 0.7) * window, "pause"))
    return sorted(plan)


def _inject(
    shop: _Shop,
    config: ChaosConfig,
    rngs: dict[str, random.Random],
    users: Sequence[str],
    products: Sequence[str],
    poison: PoisonMaker,
    observed: Observations,
    progress: _Progress,
) -> None:
    """Place the orders at the configured rate while the faults of :func:`_schedule` happen."""
    plan = _schedule(config, rngs)
    orders = [_order(rngs["orders"], users, products) for _ in range(config.orders)]
    deadline = time.monotonic() + config.window_s + config.timeout
    started = time.monotonic()
    pauses: list[threading.Thread] = []
    deck: list[str] = []
    futures: list[Future[tuple[str | None, str]]] = []
    progress(f"placing {config.orders} orders at {config.rate:g}/s with {len(plan)} faults planned")
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="chaos-order") as pool:
        timeline = sorted([(i / config.rate, "order") for i in range(config.orders)] + plan, key=lambda x: x[0])
        for at, action in timeline:
            time.sleep(max(0.0, started + at - time.monotonic()))
            if action == "order":
                futures.append(pool.submit(place_order, shop.settings.url("order"), orders[len(futures)], deadline))
            elif action == "kill":
                _kill(shop.supervisor, rngs["kills"], deck, observed, progress)
            elif action == "pause":
                pauses.append(_pause(shop.supervisor, config.pause_s, observed, progress))
            else:
                sent = poison.send(kind := action.split(":", 1)[1])
                if sent is None:
                    observed.notes.append(f"a {kind} poison message was refused by the broker (not counted)")
                else:
                    observed.poison.append(sent)
            shop.collect()
            done = sum(f.done() for f in futures)
            progress(
                f"placed {done}/{config.orders}, terminal {len(shop.ended)}, kills {len(observed.kills)}, "
                f"poison {len(observed.poison)}",
                force=False,
            )

        def placed() -> bool:
            if all(f.done() for f in futures):
                return True
            progress(f"placed {sum(f.done() for f in futures)}/{config.orders}, the rest retrying", force=False)
            return False

        # requests retrying while the order service restarts; each gives up at its own deadline
        wait_until(placed, math.inf, interval=0.2)
    for thread in pauses:
        thread.join()
    refused: Counter[str] = Counter()
    for future in futures:
        order_id, why = future.result()
        if order_id is None:
            refused[why] += 1
        else:
            observed.placed.append(order_id)
    observed.rejected = sum(refused.values())
    observed.notes += [f"{n} orders not placed: {why}" for why, n in refused.most_common()]
    progress(f"placed {len(observed.placed)} orders ({observed.rejected} not accepted)")


def _kill(
    supervisor: Supervisor, rng: random.Random, deck: list[str], observed: Observations, progress: _Progress
) -> None:
    """``kill -9`` the next process of ``deck``, a seeded shuffle of all of them dealt again when
    empty: every process is hit once before any is hit twice."""
    pids = supervisor.pids()
    if not deck:
        deck.extend(rng.sample(sorted(pids), len(pids)))
    name = deck.pop()
    try:
        os.kill(pids[name], signal.SIGKILL)
    except ProcessLookupError:
        progress(f"kill -9 {name}: already dead (being restarted), skipped")
        return
    observed.kills.append(Kill(time.time(), name, pids[name]))
    progress(f"kill -9 {name} (pid {pids[name]})")


def _pause(supervisor: Supervisor, seconds: float, observed: Observations, progress: _Progress) -> threading.Thread:
    """SIGSTOP the embedded broker for ``seconds`` (in a thread), then SIGCONT — always."""
    pid = supervisor.broker_pid
    at = time.time() - observed.started_at

    def pause() -> None:
        if pid is None:
            observed.broker_pause = {"skipped": "external broker"}
            progress("broker pause skipped: the broker is external")
            return
        progress(f"SIGSTOP broker (pid {pid}) for {seconds:g} s")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        observed.broker_pause = {"at_s": round(at, 3), "seconds": seconds}
        progress("SIGCONT broker")

    thread = threading.Thread(target=pause, name="chaos-pause", daemon=False)
    thread.start()
    return thread


def _await_dead_letters(
    collector: DeadLetterCollector, observed: Observations, timeout: float, progress: _Progress
) -> None:
    """Give dead letters up to ``timeout`` s to arrive: until each expected one is seen and the
    topics stay quiet for 2 s (a late second copy still counts)."""
    expected = {(p.chaos_id, c) for p in observed.poison for c in p.consumers}

    def quiet() -> bool:
        seen = {(d.chaos_id, d.consumer) for d in collector.seen}
        if expected <= seen and time.monotonic() - collector.last_seen > 2:
            return True
        progress(f"dead letters: {len(expected & seen)}/{len(expected)} found", force=False)
        return False

    with contextlib.suppress(TimeoutError):  # what has arrived by then is what the report judges
        wait_until(quiet, timeout, interval=0.2)
    observed.dead_letters = list(collector.seen)
    progress(f"dead letters: {len(collector.seen)} copies of tagged messages found")


# --- command line -----------------------------------------------------------------------------

DESCRIPTION = """\
Run the shop as one supervised OS process per service (embedded broker, or
EVENTLAB_BOOTSTRAP_SERVERS) in a fresh data dir, place orders over HTTP and break
things while they flow — all choices drawn from --seed:

  kill -9      a random service process or the relay, every --kill-every seconds
  duplicates   exact copies (same partition, key, value, headers) of a share of real messages
  poison       --poison messages of each kind, tagged with a chaos_id header: garbage bytes,
               unknown ce_type, missing CloudEvents headers, schema-invalid data,
               a 100,000-deep JSON array, a ~1 MB body
  pause        SIGSTOP of the embedded broker for --pause seconds, then SIGCONT

Then wait for every saga, stop the shop and report from the event store, the audit, the
mailbox and the dead-letter topics: placed, terminal, lost, stuck, double charges,
oversell, duplicate emails, poison sent vs dead-lettered (exactly once per consuming
service), the longest consumer gap after a kill, saga p50/p99.

The run's data (event store, mailbox, broker log) goes to a temporary directory that is
removed afterwards, or to --data-dir (which must not hold an event store yet) to keep it.

exit status: 0 when nothing was lost or stuck, every invariant holds, no email went out
twice and every poison message was dead-lettered exactly once; 1 otherwise; 2 when the
shop could not be set up.
"""

EXAMPLES = """\
examples:
  eventlab chaos --orders 200 --rate 20 --kill-every 3
  eventlab chaos --orders 2000 --rate 50 --kill-every 5 --duplicates 0.05 --payment-failure-rate 0.2 --seed 7 --json
"""


def _options(chaos: argparse.ArgumentParser) -> None:
    number = _bounded(float, 0)
    chaos.add_argument("--orders", type=positive_int, default=500, metavar="N", help="orders to place (500)")
    chaos.add_argument("--rate", type=_bounded(float, 0.01), default=50.0, metavar="R", help="orders per second (50)")
    chaos.add_argument("--kill-every", type=number, default=5.0, metavar="K", help="seconds between kills; 0: none (5)")
    chaos.add_argument(
        "--duplicates", type=probability, default=0.05, metavar="P", help="share of messages copied (0.05)"
    )
    chaos.add_argument("--poison", type=_bounded(int, 0), default=2, metavar="N", help="poison messages per kind (2)")
    chaos.add_argument(
        "--poison-kinds",
        type=_kinds,
        default=POISON_KINDS,
        metavar="K,K",
        help=f"only these poison kinds (default all: {','.join(POISON_KINDS)})",
    )
    chaos.add_argument(
        "--pause", dest="pause_s", type=number, default=3.0, metavar="S", help="broker pause in seconds; 0: none (3)"
    )
    chaos.add_argument(
        "--payment-failure-rate", type=probability, default=0.2, metavar="P", help="share of payments declined (0.2)"
    )
    chaos.add_argument("--seed", type=int, default=0, help="drives every random choice (0)")
    chaos.add_argument(
        "--timeout", type=number, default=120.0, metavar="S", help="wait for the sagas at most S s (120)"
    )
    chaos.add_argument(
        "--max-gap",
        dest="max_gap_s",
        type=number,
        metavar="S",
        help="also fail if a consumer is silent longer than S s after a kill",
    )
    chaos.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


#: The largest time, rate or count chaos takes: 1e300 s is finite, yet too long for ``time.sleep``.
_LARGEST = 1e9


def _bounded(kind: Callable[[str], Any], low: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= _LARGEST:  # inf, nan, 1e400 or 10**400: a pause or wait without end
            raise argparse.ArgumentTypeError(f"must be a finite number from {low:g} to {_LARGEST:,.0f}: {text!r}")
        return value

    return parse


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in POISON_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown poison kind {unknown[0]!r} (known: {', '.join(POISON_KINDS)})")
    return kinds


def _handle(args: argparse.Namespace) -> int:
    config = ChaosConfig(**{field.name: getattr(args, field.name) for field in fields(ChaosConfig)})
    with tempfile.TemporaryDirectory(prefix="eventlab-chaos-") as scratch:
        settings = Settings.from_env(data_dir=args.data_dir or scratch)
        report = run_chaos(settings, config, sys.stderr)
    print(json.dumps(report.as_dict()) if args.json else report.table())
    return 0 if report.ok else 1


COMMAND = Command(
    "chaos",
    help="break the running shop on a seed and prove nothing is lost",
    description=DESCRIPTION,
    handler=_handle,
    options=_options,
    epilog=EXAMPLES,
)
