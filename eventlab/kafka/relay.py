"""The transactional outbox relay: publishes stored events to Kafka in position order.

Services never write to Kafka and the database side by side (the seed's ``saveAndPublishEvent``
can lose or invent events on a crash). They append to the event store; this relay reads the store
after its checkpoint, produces each event (key = aggregate id, CloudEvents headers), waits for the
broker's acknowledgements and only then advances the checkpoint. Delivery is at-least-once;
consumers are idempotent.

One relay publishes per store: :meth:`Relay.run` holds the store's relay lease
(:meth:`~eventlab.store.base.EventStore.lease`) while it publishes, and a second relay waits as a
standby until the holder is gone. The lease fences publishing: the holder checks it before each
batch and before each checkpoint it saves, and a relay that lost it stops at once; the checkpoint
only ever moves forward (:meth:`~eventlab.store.base.EventStore.advance_checkpoint`), so a relay
that fell behind cannot undo a newer holder's progress.

The checkpoint is kept in memory and written to the store when the relay runs out of work, at
most every :attr:`Relay.save_every` seconds while it is busy, and when it closes: a relay that dies
republishes at most that much, which consumers skip. Between batches the relay waits for the
store's next commit (:meth:`~eventlab.store.base.EventStore.wait_for_commit`), not a fixed sleep.
Only PostgreSQL signals other processes' commits, so the wait ends after :attr:`Relay.idle_wait`
anyway: :data:`IDLE_WAIT` where other processes write to SQLite (a service per process), longer
(:data:`IDLE_WAIT_IN_PROCESS`) where every commit wakes the relay (the in-process shop, PostgreSQL).
Where one process runs a relay per SQLite store, one :func:`watch_heads` thread reads every store's
head each :data:`IDLE_WAIT` and wakes the relay whose store moved, instead of each relay waking itself.

A topic deleted under a running shop takes its unread messages with it. The relay that publishes to
it (each event type is written by one store) finds it missing at its next delivery there. It waits
until the consumers reading it let go of it (else they would go on at their old offsets in the new
topic, skipping what lies below), creates it again and publishes again what some consumer has not
handled, as for a new embedded broker (:func:`rewind`); consumers skip what they already handled.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, Producer

from eventlab.dlq import DeadLetterPublisher
from eventlab.errors import BrokerError, StoreError
from eventlab.events import EVENT_TYPES
from eventlab.kafka.broker import crowded_partition
from eventlab.kafka.clients import (
    MISSING_TOPIC,
    STORE_TOPIC,
    Deliveries,
    ensure_topics,
    group_id,
    make_producer,
    reading,
)
from eventlab.kafka.cloudevents import UndecodableMessage, record_topic, to_message
from eventlab.metrics import relay_histogram
from eventlab.restarts import Backoff
from eventlab.settings import Settings
from eventlab.store.base import RELAY_CONSUMER, DeadLetter, EventRecord, EventStore, Lease

if TYPE_CHECKING:
    from eventlab.tracing.spans import Tracing

__all__ = [
    "IDLE_WAIT",
    "IDLE_WAIT_IN_PROCESS",
    "Relay",
    "catch_up_subscriptions",
    "rewind",
    "unpublished",
    "watch_heads",
]

log = logging.getLogger(__name__)

#: Seconds an idle relay waits for a commit before it reads the store again: a commit in another
#: process is not signalled, so this is how late its events can go out.
IDLE_WAIT = 0.005
#: The same where every writer shares the relay's store object, so every commit wakes the relay at
#: once: the wait only bounds how late an outside writer's events go out (an idle relay reads the
#: store 4 times a second instead of 200).
IDLE_WAIT_IN_PROCESS = 0.25


class _LeaseLost(StoreError):
    """This relay no longer holds the store's relay lease: it must stop publishing."""


class Relay:
    """Publishes every stored event exactly in position order, at least once.

    Example:
        >>> relay = Relay(store, settings)  # doctest: +SKIP
        >>> relay.publish_pending()  # doctest: +SKIP
        12
    """

    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        batch_size: int = 2000,
        save_every: float = 0.5,
        *,
        tracing: Tracing | None = None,
        traced_topics: Collection[str] | None = None,
        consumers: Mapping[str, Iterable[str]] | None = None,
        idle_wait: float = IDLE_WAIT,
        markers: Mapping[str, EventStore] | None = None,
        partition_warning: int | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        #: Seconds :meth:`run` waits for a commit when idle, by default (see :data:`IDLE_WAIT`).
        self.idle_wait = idle_wait
        self.batch_size = batch_size
        self.save_every = save_every
        self.published = 0
        self._position: int | None = None  # published up to here (None: read the store's checkpoint)
        self._saved: int | None = None  # the checkpoint as the store has it
        self._saved_at = 0.0
        #: Consecutive failed attempts (0 once a batch goes through), and all of them since start.
        self.failures = 0
        self.failures_total = 0
        self.last_error: str | None = None
        self.min_backoff = 0.1
        self.max_backoff = 5.0
        self.dead_lettered = 0
        self._producer: Producer | None = None
        self._dead_letters = DeadLetterPublisher(store, settings)  # its producer is made when first needed
        #: Seconds from producing a batch to its last acknowledgement (``eventlab_relay_publish_seconds``).
        self.publish_seconds = relay_histogram()
        #: A ``PRODUCER`` span per published event when tracing is on (None: off, and no cost), for
        #: the events to ``traced_topics`` when given (those a service consumes: the hops of a trace).
        self.tracing = tracing
        #: Whether this relay holds the store's relay lease (in :meth:`run`), and how long it waited for it.
        self.active = False
        self.took_over_after: float | None = None
        #: Seconds between a standby's tries of the lease, and between the holder's checks that it still has it.
        self.lease_poll = 0.2
        self.lease_check = 1.0
        self._lease: Lease | None = None  # while :meth:`run` holds it: checked before each batch and save
        self.traced_topics = traced_topics
        #: Each consumer's subscribed event types: once it holds the lease, the relay first goes back
        #: for what a consumer subscribed to since it last ran (:func:`catch_up_subscriptions`).
        self.consumers = consumers
        #: The store that keeps each consumer's processed markers (this relay's store unless the consumer
        #: has a store of its own).
        self.markers = markers
        self._caught_up = consumers is None
        #: Messages in one partition past which the broker struggles (the wiring gives the embedded
        #: broker's :attr:`~eventlab.kafka.broker.EmbeddedBroker.PARTITION_WARNING`; None: no limit, as
        #: on Apache Kafka): then the relay warns once and :meth:`problems` says so.
        self.partition_warning = partition_warning
        #: Messages in each partition (``topic-N``) this relay published to, as its deliveries last told.
        self.partition_sizes: dict[str, int] = {}
        self._warned = False
        self._missing: set[str] = set()  # topics a delivery found deleted, until created again
        #: Seconds a relay waits for the consumers of a deleted topic to let go of it before creating it again.
        self.release_wait = 30.0

    def __repr__(self) -> str:
        return f"<Relay published={self.published} position={self._position} saved={self._saved}>"

    @property
    def position(self) -> int:
        """Published (and acknowledged) up to this store position. Only reads: other threads (health,
        the shop's idle check) ask it while the relay's own thread moves it."""
        position = self._position
        return self.store.checkpoint(RELAY_CONSUMER) if position is None else position

    def _resume(self) -> int:
        """The position to publish after, from the store's checkpoint when not known yet (the relay's thread only)."""
        if self._position is None:
            self._position = self._saved = self.store.checkpoint(RELAY_CONSUMER)
            self._saved_at = time.monotonic()
        return self._position

    def save_checkpoint(self) -> None:
        """Write the position to the store if it moved since the last write (never backwards).

        Raises :class:`~eventlab.errors.StoreError` when the relay runs under a lease it lost.
        """
        if self._position is not None and self._position != self._saved:
            self._fence()
            self.store.advance_checkpoint(RELAY_CONSUMER, self._position)
            self._saved, self._saved_at = self._position, time.monotonic()

    def _fence(self) -> None:
        """Raise :class:`_LeaseLost` unless this relay still holds the lease it runs under (if any)."""
        if self._lease is not None and not self._lease.held():
            raise _LeaseLost(f"relay lost the lease of {self.store}")

    def publish_pending(self) -> int:
        """Publish one batch of unpublished events; return how many were published.

        A stored event that cannot be published as a consumer would read it (unknown type, data
        that does not validate, bad JSON), or at all (larger than the producer takes), is recorded
        as a dead letter (consumer ``relay``, topic ``store``, offset = its position) and copied to
        ``store.dlq``, never silently skipped nor retried for ever; the checkpoint moves past the
        batch only once every message and copy is acknowledged.
        """
        after = self._resume()
        events = self.store.read_records(after=after, limit=self.batch_size)
        if not events:
            self.save_checkpoint()  # idle: the store says everything is published
            return 0
        self._fence()  # a relay that lost the lease publishes nothing more
        if self._producer is None:
            self._producer = make_producer(self.settings)
        started = time.perf_counter()
        out = Deliveries(self._producer)
        spans = self.tracing.publishing(self.traced_topics) if self.tracing is not None else None
        undecodable: list[tuple[EventRecord, str]] = []
        for stored in events:
            try:
                topic = record_topic(stored)
                key, value, headers = to_message(stored)
            except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it becomes a dead letter
                reason = str(exc) if isinstance(exc, UndecodableMessage) else f"{type(exc).__name__}: {exc}"
                undecodable.append((stored, reason))
                continue
            if spans is not None:
                headers = spans.start(topic, key, stored.event_id, headers)
            try:
                out.send(topic, value, key, list(headers))
            except BrokerError as exc:
                if exc.code != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                undecodable.append((stored, f"cannot be published: {len(value)} bytes: {exc}"))
        letters = [self._record_dead_letter(stored, reason) for stored, reason in undecodable]
        try:
            out.confirm(30)
        except BrokerError as exc:
            if spans is not None:
                spans.end(str(exc))
            raise BrokerError(f"relay could not publish events after position {after}: {exc}", exc.code) from exc
        self.publish_seconds.observe(time.perf_counter() - started)
        if spans is not None:
            spans.end()
        if self.partition_warning is not None:
            self._watch_partitions(out.ends)
        for letter in letters:
            if self._dead_letters.publish(letter):
                self.dead_lettered += 1
                log.warning("relay: stored event #%d dead-lettered as #%d: %s", letter.offset, letter.id, letter.reason)
        self._position = events[-1].position
        if time.monotonic() - self._saved_at >= self.save_every:
            self.save_checkpoint()
        self.published += len(events) - len(letters)
        return len(events) - len(letters)

    def _watch_partitions(self, ends: Mapping[tuple[str, int], int]) -> None:
        """Note each partition's size from a batch's deliveries; warn the first time one passes
        :attr:`partition_warning` (once per relay: :meth:`problems` keeps saying it)."""
        sizes = dict(self.partition_sizes)  # a new dict: health reads the old one from another thread
        for (topic, partition), end in ends.items():
            sizes[f"{topic}-{partition}"] = end
        self.partition_sizes = sizes
        if not self._warned and (crowded := self._crowded()):
            self._warned = True
            log.warning("relay: %s", crowded)

    def _crowded(self) -> str | None:
        """What to tell about the partitions past :attr:`partition_warning` (None: none is)."""
        level = self.partition_warning
        if level is None:
            return None
        over = {name: size for name, size in self.partition_sizes.items() if size >= level}
        if not over:
            return None
        fullest = max(over, key=over.__getitem__)
        more = f" ({len(over) - 1} more partitions past {level:,})" if len(over) > 1 else ""
        return crowded_partition(fullest, over[fullest]) + more

    def _record_dead_letter(self, stored: EventRecord, reason: str) -> DeadLetter:
        headers: list[tuple[str, bytes | None]] = [
            ("ce_id", stored.event_id.encode()),
            ("ce_type", stored.event_type.encode()),
            ("ce_subject", stored.aggregate_id.encode()),
            ("ce_dataschemaversion", str(stored.schema_version).encode()),
            ("eventlab_metadata", stored.metadata.encode("utf-8", "replace")),
            ("eventlab_recorded_at", stored.recorded_at.encode()),
        ]
        return self.store.record_dead_letter(
            RELAY_CONSUMER,
            STORE_TOPIC,
            0,
            stored.position,
            stored.aggregate_id.encode(),
            stored.data.encode("utf-8", "replace"),
            headers,
            reason,
            event_id=stored.event_id,
        )

    def run(self, stop: threading.Event, idle_wait: float | None = None) -> None:
        """Publish until ``stop`` is set, while this relay holds the store's relay lease; when idle,
        wait for a commit, at most ``idle_wait`` seconds (default :attr:`idle_wait`).

        One relay publishes per store: the others (standbys, e.g. ``--replicas relay=2``) try the
        lease every :attr:`lease_poll` seconds and the first to get it once the holder is gone
        (stopped, or killed: see :meth:`~eventlab.store.base.EventStore.lease`) goes on from the
        saved checkpoint; what it republishes, consumers skip. The holder checks that it still holds
        the lease before each batch and each checkpoint it saves, and at least every
        :attr:`lease_check` seconds (idle too); once lost, it drops its producer and stands by again.
        """
        lease = self.store.lease(RELAY_CONSUMER)
        self._lease = lease
        try:
            while not stop.is_set():
                if self._take_lease(lease, stop):
                    self._publish_while_held(lease, stop, self.idle_wait if idle_wait is None else idle_wait)
        finally:
            self.close()  # the last checkpoint, written while still holding the lease
            self._lease = None
            lease.release()

    def _take_lease(self, lease: Lease, stop: threading.Event) -> bool:
        """Wait until this relay holds ``lease`` (True) or ``stop`` is set (False)."""
        waiting_since = time.monotonic()
        announced = False
        while not stop.is_set():
            try:
                if lease.acquire():
                    self.active = True
                    self._position = None  # go on from the checkpoint the last holder saved
                    self._caught_up = self.consumers is None
                    self.took_over_after = time.monotonic() - waiting_since
                    # a takeover is news; the first relay of a shop taking a free lease is not
                    (log.warning if announced else log.info)("relay: holds the lease of %s, publishing", self.store)
                    return True
            except StoreError as exc:
                log.warning("relay: cannot try the lease: %s", exc)
            if not announced:
                announced = True
                log.info("relay: standby, another relay holds the lease of %s", self.store)
            stop.wait(self.lease_poll)
        return False

    def _publish_while_held(self, lease: Lease, stop: threading.Event, idle_wait: float) -> None:
        """Publish until ``stop`` is set or the lease is lost. Any failure — the broker, the store,
        or a bug — is logged and retried after an exponential backoff (0.1 s doubling to
        :attr:`max_backoff`); the consecutive failures show in :meth:`health` until a batch goes
        through again."""
        backoff = self._backoff()
        commits = self.store.commits
        checked = time.monotonic()
        while not stop.is_set():
            try:
                if time.monotonic() - checked >= self.lease_check:  # idle or not: a lost lease shows
                    checked = time.monotonic()
                    self._fence()
                if not self._caught_up:
                    self._catch_up()
                if self._missing:
                    self._restore_topics(stop)
                if self.publish_pending() == 0:
                    # woken by a commit it is told of; any other is seen after idle_wait
                    commits = self.store.wait_for_commit(commits, idle_wait)
            except _LeaseLost:
                self._stand_by()
                return
            except (BrokerError, StoreError) as exc:
                delay = self._failed(exc, backoff)
                log.warning("relay: %s; retry %d in %.1f s", exc, self.failures, delay)
                if isinstance(exc, BrokerError) and exc.code in MISSING_TOPIC and exc.topic is not None:
                    self._missing.add(exc.topic)  # restored before the next try, until that succeeds
            except Exception as exc:  # a bug must not end the relay thread for good: log it whole, retry
                delay = self._failed(exc, backoff)
                log.exception("relay: unexpected %s; retry %d in %.1f s", type(exc).__name__, self.failures, delay)
            else:
                if self.failures:
                    self.failures, self.last_error, backoff = 0, None, self._backoff()
                continue
            stop.wait(delay)

    def _restore_topics(self, stop: threading.Event) -> None:
        """Topics this relay publishes to were deleted: once their consumers let go of them (at most
        :attr:`release_wait` s), create them again (unless someone did), then publish again what some
        consumer has not handled (their unread messages among it), with a new producer (the old one
        remembers them as unknown). Raises as a batch does: retried, then."""
        missing = sorted(self._missing)
        readers = {  # the consumers that lost messages with the topics (the others skip what comes again)
            name: types
            for name, types in (self.consumers or {}).items()
            if any(EVENT_TYPES[kind].topic in missing for kind in types)
        }
        groups = [group_id(name) for name in readers]
        deadline = time.monotonic() + self.release_wait
        while (holding := reading(self.settings, groups, missing)) and time.monotonic() < deadline:
            if stop.wait(1.0):
                return
        if holding:
            log.warning(
                "relay: %s still hold partitions of the deleted %s: they may skip what is republished", holding, missing
            )
        ensure_topics(self.settings, missing)
        self._fence()  # only the lease holder moves the checkpoint back
        position = rewind(self.store, readers if self.consumers is not None else None, self.markers)
        self._position, self._saved = None, None
        self._drop_producer()
        self._missing.clear()
        log.warning(
            "relay: topics %s were deleted: created again; publishing again from position %d", missing, position
        )

    def abandon_broker(self) -> None:
        """Drop what the producer queues, from another thread: a batch waiting for the broker's
        acknowledgements (up to 30 s) fails at once, and none of it counts as published. For a
        relay being stopped because its broker is gone."""
        producer = self._producer
        if producer is not None:
            producer.purge()

    def _drop_producer(self) -> None:
        """Drop the producer and what it still queues (nothing of it was acknowledged)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.purge()
            producer.flush(1)

    def _catch_up(self) -> None:
        """Go back for the events of types a consumer subscribed to since it last ran (once per lease)."""
        assert self.consumers is not None
        if catch_up_subscriptions(self.store, self.consumers, self.markers) is not None:
            self._position, self._saved = None, None  # read the checkpoint it moved
        self._caught_up = True

    def _stand_by(self) -> None:
        """After losing the lease: drop the producer and what it still queues, forget the position
        (the next holder's checkpoint is the one that counts)."""
        log.warning("relay: lost the lease of %s; standing by", self.store)
        self._drop_producer()  # not yet sent: never sent by a relay without the lease
        self.active, self._position, self._saved = False, None, None

    def _backoff(self) -> Backoff:
        """Doubling from :attr:`min_backoff` to :attr:`max_backoff` while failures follow each other."""
        return Backoff(initial=self.min_backoff, maximum=self.max_backoff, reset_after=math.inf)

    def _failed(self, exc: Exception, backoff: Backoff) -> float:
        """Count a failed attempt; return how long to wait before the next."""
        self.failures += 1
        self.failures_total += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        return backoff.died()

    def problems(self) -> list[str]:
        """What keeps the relay from publishing right now, or soon will (empty when healthy)."""
        found = [f"relay: {self.failures} consecutive failures, the last: {self.last_error}"] if self.failures else []
        if crowded := self._crowded():
            found.append(f"relay: {crowded}")
        return found

    def health(self) -> dict[str, object]:
        """Published so far, still unpublished, consecutive failures, and ``problems`` (empty when healthy)."""
        problems = self.problems()
        try:
            pending: int | None = self.store.head() - self.position
        except StoreError as exc:
            pending = None
            problems.append(f"relay: cannot read the store: {exc}")
        return {
            "lease": "active" if self.active else "standby",
            "published": self.published,
            "unpublished": pending,
            "relay_failures": self.failures,
            "relay_failures_total": self.failures_total,
            "problems": problems,
        }

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None
        self._dead_letters.close()
        try:
            self.save_checkpoint()
        except StoreError as exc:  # the next start republishes from the last saved one: consumers skip it
            log.warning("relay: cannot save its checkpoint on close: %s", exc)


def watch_heads(stores: Sequence[EventStore], stop: threading.Event, interval: float = IDLE_WAIT) -> None:
    """Until ``stop``: every ``interval`` s read each store's head and wake its waiters (the relay's
    :meth:`~eventlab.store.base.EventStore.wait_for_commit`) when it moved, for stores that other
    processes write and that do not signal it (SQLite). A thread's wake-up costs ~50 µs of CPU and
    a head read ~5: one watcher for six stores wakes 200 times a second, not six relays 1,200 times.
    A missed wake-up only delays: each relay still reads its store after its own (longer) idle wait.
    """
    heads = [-1] * len(stores)
    failing: set[int] = set()  # logged once until the store answers again (the relay logs its own retries)
    while not stop.wait(interval):
        for index, store in enumerate(stores):
            try:
                head = store.head()
            except StoreError as exc:
                if index not in failing:
                    failing.add(index)
                    log.warning("relay: cannot read the head of %s: %s", store, exc)
                continue
            failing.discard(index)
            if head != heads[index]:
                heads[index] = head
                store.committed_elsewhere()


def rewind(
    store: EventStore,
    consumers: Mapping[str, Iterable[str]] | None = None,
    markers: Mapping[str, EventStore] | None = None,
) -> int:
    """Move the relay's checkpoint back so that what the broker forgot is published again; return it.

    With ``consumers`` (each consumer's subscribed event types), back to the lowest
    :meth:`~eventlab.store.base.EventStore.tracking_position`: only what some consumer has not
    handled yet is republished. Without, back to the first event. ``markers``: the store that
    keeps a consumer's processed markers where it is not ``store`` (a service with a store of its
    own; see :meth:`~eventlab.store.base.EventStore.tracking_position_across`).
    """
    if consumers is None:
        position = 0
    else:
        tracked = [_tracking(store, name, types, markers) for name, types in consumers.items()]
        position = min([store.checkpoint(RELAY_CONSUMER), *tracked])
    store.set_checkpoint(RELAY_CONSUMER, position)
    log.info("relay rewound to position %d of %d", position, store.head())
    return position


def catch_up_subscriptions(
    store: EventStore, consumers: Mapping[str, Iterable[str]], markers: Mapping[str, EventStore] | None = None
) -> int | None:
    """Publish again what a consumer newly subscribed to; return the relay's new checkpoint (None: nothing new).

    A consumer's tracking position covers the event types it was subscribed to when it was recorded.
    An upgrade can add types (Order keeps its own copies from ``UserCreated`` and ``ProductCreated``
    since it owns its data): their older events lie behind that position, never handled by the
    consumer, and the broker may not hold them any more (an embedded broker starts empty, Apache
    Kafka's retention drops them). So for each consumer subscribed to a type it has no record of,
    its tracking position is forgotten, the relay's checkpoint goes back to the first event it has
    not handled (its normal consumer path then handles them, skipping what it did), and the types
    are recorded (checkpoint ``subscribed:<consumer>:<type>``, the next position at the time).

    In that order, so a crash part-way repeats the step, never skips it. Once every type is
    recorded, this is a few checkpoint reads per start. ``markers`` as for :func:`rewind`.
    """
    new = {
        name: set(types)
        for name, types in consumers.items()
        if any(not store.checkpoint(_subscribed(name, kind)) for kind in types)
    }
    if not new:
        return None
    for name in new:
        store.forget_tracking_across(name, _markers(store, name, markers))
    tracked = [_tracking(store, name, types, markers) for name, types in new.items()]
    published = store.checkpoint(RELAY_CONSUMER)
    position = min([published, *tracked])
    store.set_checkpoint(RELAY_CONSUMER, position)
    since = store.head() + 1
    for name, types in new.items():
        for kind in types:
            if not store.checkpoint(_subscribed(name, kind)):
                store.set_checkpoint(_subscribed(name, kind), since)
    log.log(
        logging.WARNING if position < published else logging.INFO,  # a new shop's first start: nothing to say
        "relay: %s subscribed to event types new to them; publishing again from position %d (was %d)",
        ", ".join(sorted(new)),
        position,
        published,
    )
    return position


def _markers(store: EventStore, consumer: str, markers: Mapping[str, EventStore] | None) -> EventStore:
    """The store that keeps ``consumer``'s processed markers (``store`` unless ``markers`` names another)."""
    return store if markers is None else markers.get(consumer, store)


def _tracking(store: EventStore, consumer: str, types: Iterable[str], markers: Mapping[str, EventStore] | None) -> int:
    """``consumer``'s tracking position on ``store``, its markers where ``markers`` says."""
    return store.tracking_position_across(consumer, types, _markers(store, consumer, markers))


def _subscribed(consumer: str, event_type: str) -> str:
    """The checkpoint that records that ``consumer`` is subscribed to ``event_type``."""
    return f"subscribed:{consumer}:{event_type}"


def unpublished(store: EventStore) -> int:
    """How many stored events the relay has not published yet."""
    return store.head() - store.checkpoint(RELAY_CONSUMER)
