"""Dead letters: recorded whole in the event store, copied to ``<topic>.dlq``, listed, shown, replayed.

A message a service cannot handle (or a stored event the relay cannot decode) is first recorded in
the store's ``dead_letters`` table — full body, headers, reason, where it came from — once per
source message. Only then is a copy produced to ``<topic>.dlq`` with the ``dlq_*`` headers, its
delivery report checked, and the record marked published. The store is the durable truth: the copy
is for people watching Kafka, cut to :data:`BODY_LIMIT` so any broker accepts it
(``dlq_truncated=1`` says so), and the embedded broker forgets it on restart anyway.

``eventlab dlq list|show|replay`` (and :class:`DeadLetters` in Python) read those records; a replay
produces the original bytes and headers to the original topic again, after a fix, for the consumer
whose dead letter it is (a ``dlq_replay_for`` header: the topic's other consumers skip it).
Consumers are idempotent, so replaying something already handled is harmless.

Where services have stores of their own (``EVENTLAB_<SERVICE>_STORE_URL``), each service's dead
letters, and those of the relay of its store, are in that store, and ids are numbered per store:
:class:`DeadLetters` reads every store of a :class:`~eventlab.store.ShopStores`, and a store is
named by the services that write to it (``order``; ``user+product`` for a store two share).

Example:
    >>> letters = DeadLetters(shop.stores, settings)  # doctest: +SKIP
    >>> [letter.reason for letter in letters.find(topic="order.lifecycle.created")]  # doctest: +SKIP
    ['value is not JSON: Expecting value: line 1 column 1 (char 0)']
    >>> letters.replay([1])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from eventlab.arguments import LARGEST_INT64, seconds, utf8_text, whole_number
from eventlab.errors import BrokerError, EventlabError
from eventlab.kafka.clients import (
    MISSING_TOPIC,
    REPLAY_FOR,
    STORE_TOPIC,
    dead_letter_topic,
    discard,
    ensure_topics,
    make_dead_letter_producer,
    make_producer,
    produce_and_wait,
)
from eventlab.kafka.cloudevents import UndecodableMessage, record_topic, to_message
from eventlab.settings import SERVICE_PORTS, Settings
from eventlab.store import ShopStores, open_stores, store_identity
from eventlab.store.base import DeadLetter, EventStore, Headers

__all__ = [
    "BODY_LIMIT",
    "AmbiguousDeadLetter",
    "BrokerUnreachable",
    "DeadLetterPublisher",
    "DeadLetters",
    "Located",
    "Replayed",
    "add_commands",
    "dead_letter_copy",
    "printable",
]

log = logging.getLogger(__name__)

#: The most body bytes a ``.dlq`` copy carries: far below any broker's limit (Apache Kafka's
#: default ``message.max.bytes`` is 1 MB), so the copy can always be written.
BODY_LIMIT = 64 * 1024
#: The most bytes of original headers a copy carries (a huge header would break the limit too).
HEADERS_LIMIT = 64 * 1024
#: The most bytes of the original key a copy carries.
KEY_LIMIT = 1024
#: The longest reason kept in a ``dlq_reason`` header.
REASON_LIMIT = 1000
#: Client-side size limit for a replay: the original message, whatever its size (the broker decides).
REPLAY_MAX_BYTES = 64 * 1024 * 1024


def dead_letter_copy(letter: DeadLetter) -> tuple[str, bytes | None, bytes | None, Headers]:
    """Topic, key, value and headers of the ``.dlq`` copy of ``letter``.

    Headers: the original ones (but any ``dlq_*``), then ``dlq_reason``, ``dlq_topic``, ``dlq_partition``,
    ``dlq_offset``, ``dlq_consumer``, ``dlq_id``, and ``dlq_truncated=1`` when the body, key or
    headers had to be cut to fit (the record in the store keeps them whole).
    """
    truncated = False
    value = letter.value
    if value is not None and len(value) > BODY_LIMIT:
        value, truncated = value[:BODY_LIMIT], True
    key = letter.key
    if key is not None and len(key) > KEY_LIMIT:
        key, truncated = key[:KEY_LIMIT], True
    headers: Headers = []
    budget = HEADERS_LIMIT
    for name, raw in letter.headers:
        if name.startswith("dlq_"):
            continue
        size = len(name.encode()) + len(raw or b"")
        if size > budget:
            truncated = True
            continue
        budget -= size
        headers.append((name, raw))
    headers += [
        ("dlq_reason", letter.reason[:REASON_LIMIT].encode("utf-8", "replace")),
        ("dlq_topic", letter.topic.encode()),
        ("dlq_partition", str(letter.partition).encode()),
        ("dlq_offset", str(letter.offset).encode()),
        ("dlq_consumer", letter.consumer.encode()),
        ("dlq_id", str(letter.id).encode()),
    ]
    if truncated:
        headers.append(("dlq_truncated", b"1"))
    return dead_letter_topic(letter.topic), key, value, headers


class BrokerUnreachable(BrokerError):
    """A replay stopped at the first dead letter the broker did not acknowledge in time: the rest
    would each wait as long. ``outcomes`` are the replays done before it; ``left`` the dead letters
    not replayed (that one included), all still recorded."""

    def __init__(self, servers: str, letter: int, timeout: float, left: int, outcomes: list[Replayed]) -> None:
        super().__init__(
            f"the broker at {servers} did not acknowledge dead letter {letter} within {timeout:g} s: is it running "
            f"(EVENTLAB_BOOTSTRAP_SERVERS)? Replay stopped; nothing is lost: the {left} dead "
            f"{'letter' if left == 1 else 'letters'} not replayed stay recorded (eventlab dlq list)"
        )
        self.outcomes = outcomes
        self.left = left


#: librdkafka errors that say the broker did not answer (not that it refused the message).
_UNANSWERED = frozenset(
    {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}
)


#: Seconds the broker has to answer a metadata request after a dead letter was not acknowledged
#: (at most the replay's ``--timeout``).
_METADATA_TIMEOUT = 5.0


def _refusing(producer: Producer, topic: str, timeout: float) -> str | None:
    """Why the broker did not acknowledge a message to ``topic``, when it answers a metadata request
    (None when it does not: it is down, or the address is wrong). A running broker may keep refusing a
    message retriably (no such topic with auto-creation off, no leader, too few in-sync replicas): librdkafka
    retries without a word until the wait ends."""
    try:
        metadata = producer.list_topics(
            timeout=min(timeout, _METADATA_TIMEOUT)
        )  # all topics: asking for one may create it
    except KafkaException:
        return None
    if topic not in metadata.topics:
        reason = f"does topic {topic} exist?"
    else:
        reason = f"topic {topic} exists: do its partitions have a leader and enough in-sync replicas?"
    return f"the broker answers but kept refusing it: {reason}"


class DeadLetterPublisher:
    """Produces the ``.dlq`` copy of recorded dead letters and marks them published once acknowledged.

    The producer is created on first use and thrown away after a failed delivery (an idempotent
    producer can be left in an error state by a timed-out message).
    """

    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        producer_factory: Callable[[Settings], Producer] = make_dead_letter_producer,
    ) -> None:
        self.store = store
        self.settings = settings
        self._producer_factory = producer_factory
        self._producer: Producer | None = None

    def __repr__(self) -> str:
        return f"<DeadLetterPublisher {self.settings.bootstrap_servers or 'embedded'}>"

    def publish(self, letter: DeadLetter) -> bool:
        """Copy ``letter`` to its ``.dlq`` topic unless already done; True if a copy was produced.

        Raises :class:`BrokerError` if the broker did not acknowledge it (the record stays
        unpublished, so a retry or the next start produces it), :class:`StoreError` if the mark
        could not be written (then a retry produces a second copy, never none).
        """
        if letter.published:
            return False
        topic, key, value, headers = dead_letter_copy(letter)
        if self._producer is None:
            self._producer = self._producer_factory(self.settings)
        try:
            produce_and_wait(self._producer, topic, value, key, headers)
        except BrokerError as exc:
            self._discard()
            if exc.code in MISSING_TOPIC:
                self._create_again(topic)
            raise
        self.store.mark_dead_letter_published(letter.id)
        return True

    def _create_again(self, topic: str) -> None:
        """Create ``topic``, deleted under the running shop, for the next try (which, if this fails, finds
        it missing again)."""
        try:
            created = ensure_topics(self.settings, [topic], timeout=_METADATA_TIMEOUT)
        except BrokerError as exc:
            log.warning("dead-letter topic %s was deleted and cannot be created again yet: %s", topic, exc)
            return
        if created:
            log.warning("dead-letter topic %s was deleted: created it again", topic)

    def publish_unpublished(self, consumer: str | None = None) -> int:
        """Publish the records a kill left unpublished (of ``consumer``, or all); return how many."""
        letters = self.store.dead_letters(consumer=consumer, unpublished=True)
        return sum(self.publish(letter) for letter in letters)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None

    def _discard(self) -> None:
        if self._producer is not None:
            discard(self._producer)
            self._producer = None


class AmbiguousDeadLetter(EventlabError):
    """A dead letter id that several stores have (ids are numbered per store): say which store."""


@dataclass(frozen=True, slots=True)
class Located:
    """A dead letter and the store it is recorded in: ``store`` names the services that write to
    that store (``order``, or ``user+product+payment`` for a shared one), ``store_name`` is the
    store's file or URL (without its password)."""

    store: str
    store_name: str
    letter: DeadLetter


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay did with one dead letter: ``topic`` it went to, or ``error`` saying why not;
    ``store`` the store it came from where the shop has several (as :attr:`Located.store`), else None."""

    id: int
    topic: str | None
    error: str | None = None
    store: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class DeadLetters:
    """The typed API behind ``eventlab dlq``: list, show and replay recorded dead letters.

    ``stores`` is one event store, or a shop's stores (``shop.stores``), each of which holds the
    dead letters of the services writing to it and of its relay. Ids are numbered per store, so
    where services have stores of their own, ``service=`` says whose store an id is in; an id
    that only one store has needs no ``service``. ``settings`` must point at a running broker
    for :meth:`replay` only.

    Example:
        >>> letters = DeadLetters(shop.stores, shop.kafka_settings)  # doctest: +SKIP
        >>> letters.counts()  # doctest: +SKIP
        {'inventory': 2, 'relay': 1}
        >>> letters.get(1, service="inventory").reason  # doctest: +SKIP
        'missing header ce_specversion'
    """

    def __init__(self, stores: EventStore | ShopStores, settings: Settings | None = None) -> None:
        self.stores = stores if isinstance(stores, ShopStores) else ShopStores.one(stores)
        self.settings = settings
        self._producer: Producer | None = None

    def __repr__(self) -> str:
        return f"<DeadLetters {sum(self.counts().values())} recorded>"

    @property
    def split(self) -> bool:
        """Whether the dead letters are in several stores (services with stores of their own)."""
        return self.stores.split

    def find(
        self, topic: str | None = None, consumer: str | None = None, service: str | None = None
    ) -> list[DeadLetter]:
        """Every recorded dead letter (of ``topic``/``consumer``, in ``service``'s store), oldest first."""
        return [found.letter for found in self.located(topic, consumer, service)]

    def located(
        self, topic: str | None = None, consumer: str | None = None, service: str | None = None
    ) -> list[Located]:
        """:meth:`find` with the store of each: every store's (or ``service``'s store's), oldest first."""
        return [found for _, found in self._find(topic, consumer, service)]

    def get(self, dead_letter_id: int, service: str | None = None) -> DeadLetter:
        """One dead letter by id (in ``service``'s store); :class:`EventlabError` if there is none,
        :class:`AmbiguousDeadLetter` if ``service`` is not given and several stores have that id."""
        return self.locate(dead_letter_id, service).letter

    def locate(self, dead_letter_id: int, service: str | None = None) -> Located:
        """:meth:`get` with the store the dead letter is in."""
        return self._locate(dead_letter_id, service)[1]

    def counts(self) -> dict[str, int]:
        """Dead letters per consumer (a store's relay: ``relay``), every store's added up."""
        if not self.split:
            return next(iter(self.stores)).dead_letter_counts()
        total: Counter[str] = Counter()
        for store in self.stores:
            total.update(store.dead_letter_counts())
        return dict(total)

    def replay(
        self,
        ids: Iterable[int] | None = None,
        *,
        topic: str | None = None,
        service: str | None = None,
        timeout: float = 15.0,
    ) -> list[Replayed]:
        """Produce dead letters (``ids``, or all of ``topic``, or all; in ``service``'s store, else in
        every store) again, each with a checked delivery, and record the replay in its store. A
        message goes back to its topic for the consumer that dead-lettered it (:data:`REPLAY_FOR`).
        A stored event the relay could not decode is published as the relay would now, for every
        consumer, if it can be decoded now (after a fix); else it is reported, not sent. Every id is
        looked up before anything is sent (see :meth:`get`).

        A dead letter the broker does not acknowledge within ``timeout`` seconds stops the replay there
        with :class:`BrokerUnreachable`, instead of the same wait for each of the rest, when the broker
        then does not answer a metadata request either (it is down, or ``EVENTLAB_BOOTSTRAP_SERVERS``
        names the wrong address); when it answers (it kept refusing that letter: no such topic, no
        leader), that letter is reported not replayed and the replay goes on."""
        if ids is None:
            chosen = self._find(topic, None, service)
        else:
            chosen = [pair for pair in (self._locate(i, service) for i in ids) if topic in (None, pair[1].letter.topic)]
        outcomes: list[Replayed] = []
        for done, (store, found) in enumerate(chosen):
            outcome = self._replay_one(store, found, timeout)
            if outcome is None:
                servers = self.settings.bootstrap_servers if self.settings else "?"
                raise BrokerUnreachable(servers, found.letter.id, timeout, len(chosen) - done, outcomes)
            outcomes.append(outcome)
        return outcomes

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None

    def _chosen(self, service: str | None) -> list[EventStore]:
        if service is None:
            return list(self.stores)
        if service not in SERVICE_PORTS:
            raise EventlabError(f"no service {service!r}: one of {', '.join(SERVICE_PORTS)}")
        return [self.stores.of(service)]

    def _find(self, topic: str | None, consumer: str | None, service: str | None) -> list[tuple[EventStore, Located]]:
        found = [
            (store, self._located(store, letter))
            for store in self._chosen(service)
            for letter in store.dead_letters(topic=topic, consumer=consumer)
        ]
        if self.split and service is None:  # each store's are in id order already
            found.sort(key=lambda pair: pair[1].letter.recorded_at)
        return found

    def _locate(self, dead_letter_id: int, service: str | None) -> tuple[EventStore, Located]:
        found = [
            (store, self._located(store, letter))
            for store in self._chosen(service)
            for letter in store.dead_letters(ids=[dead_letter_id])
        ]
        if len(found) > 1:
            stores = [located.store for _, located in found]
            choices = " or ".join(f"--service {store.split('+')[0]}" for store in stores)
            raise AmbiguousDeadLetter(
                f"dead letter {dead_letter_id} is in {len(found)} stores ({', '.join(stores)}): say which with {choices}"
            )
        if not found:
            where = f" in the store of {service}" if self.split and service else " in any store" if self.split else ""
            raise EventlabError(f"no dead letter {dead_letter_id}{where}")
        return found[0]

    def _located(self, store: EventStore, letter: DeadLetter) -> Located:
        return Located("+".join(self.stores.services_of(store)), self.stores.name_of(store), letter)

    def _replay_one(self, store: EventStore, found: Located, timeout: float) -> Replayed | None:
        """Replay one dead letter: what happened, or None when the broker did not answer in time."""
        letter, shown = found.letter, found.store if self.split else None
        try:
            topic, key, value, headers = self._original(store, letter)
        except UndecodableMessage as exc:
            return Replayed(letter.id, None, f"stored event #{letter.offset} still cannot be published: {exc}", shown)
        if self._producer is None:
            if self.settings is None or self.settings.embedded:
                raise BrokerError(
                    "replay needs a running broker: set EVENTLAB_BOOTSTRAP_SERVERS (the address 'eventlab up' prints)"
                )
            self._producer = make_producer(self.settings, **{"message.max.bytes": REPLAY_MAX_BYTES})
        try:
            produce_and_wait(self._producer, topic, value, key, headers, timeout)
        except BrokerError as exc:
            refused = None if exc.code is None or exc.code in _UNANSWERED else str(exc)  # None: no answer in time
        else:
            store.mark_dead_letter_replayed(letter.id)
            return Replayed(letter.id, topic, None, shown)
        # Asked outside the handler: a KafkaException raised inside it kept the BrokerError alive after
        # gc.collect(), with its frames and so the producer (the release test caught it).
        refusing = _refusing(self._producer, topic, timeout) if refused is None else None
        discard(self._producer)
        self._producer = None
        if refused is None and refusing is None:
            return None
        return Replayed(letter.id, topic, refused or f"not acknowledged within {timeout:g} s ({refusing})", shown)

    @staticmethod
    def _original(store: EventStore, letter: DeadLetter) -> tuple[str, bytes | None, bytes | None, Headers]:
        if letter.topic != STORE_TOPIC:
            original = [(name, raw) for name, raw in letter.headers if not name.startswith("dlq_")]
            return letter.topic, letter.key, letter.value, [*original, (REPLAY_FOR, letter.consumer.encode())]
        records = store.read_records(after=letter.offset - 1, limit=1)
        if not records or records[0].position != letter.offset:
            raise UndecodableMessage("it is no longer in the store")
        topic = record_topic(records[0])
        key, value, headers = to_message(records[0])
        return topic, key.encode(), value, [(name, raw) for name, raw in headers]


def printable(data: bytes | None, limit: int | None = 2000) -> str:
    """``data`` made safe for a terminal: UTF-8 text with control characters and invalid bytes
    escaped (``\\x1b``, ``\\xff``), cut after ``limit`` characters with a note of what was left out."""
    if data is None:
        return "(none)"
    text = data.decode("utf-8", "backslashreplace")
    escaped = "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode() for c in text)
    if limit is not None and len(escaped) > limit:
        return f"{escaped[:limit]}… ({len(data):,} bytes in all; --full FILE writes them)"
    return escaped


# --- command line ------------------------------------------------------------------------------

_EPILOG = """\
examples:
  eventlab dlq list
  eventlab dlq list --topic order.lifecycle.created --json
  eventlab dlq show 3
  eventlab dlq show 3 --full body.bin
  EVENTLAB_BOOTSTRAP_SERVERS=127.0.0.1:9092 eventlab dlq replay 3 4
  EVENTLAB_BOOTSTRAP_SERVERS=127.0.0.1:9092 eventlab dlq replay --all --topic order.lifecycle.created

a store per service (EVENTLAB_<SERVICE>_STORE_URL): each service's dead letters, and those of its
store's relay, are in its store, numbered per store. 'list' shows every store's, each with its store
(the services writing to it); --service NAME picks NAME's store. An ID that several stores have
needs --service; 'replay --all' without it replays every store's:
  eventlab dlq list --service order
  eventlab dlq show 3 --service notification
  EVENTLAB_BOOTSTRAP_SERVERS=127.0.0.1:9092 eventlab dlq replay 3 --service order
"""


Parser = argparse.ArgumentParser
_ID = whole_number(1, LARGEST_INT64)  # a dead letter's id, as an argparse ``type``
_REPLAY_TIMEOUT = seconds(0.1, 3600)

_SERVICE_HELP = (
    "only the dead letters in the store of service NAME (its own with EVENTLAB_<NAME>_STORE_URL, "
    "else the shared one), its relay's included"
)
_SERVICE_ID_HELP = (
    "look IDs up in the store of service NAME only (its own with EVENTLAB_<NAME>_STORE_URL, else the "
    "shared one): needed where several stores have an ID"
)


def add_commands(subparsers: argparse._SubParsersAction[Parser], parents: Sequence[Parser]) -> None:
    """Register ``eventlab dlq list|show|replay`` on ``subparsers``; ``parents`` give ``--data-dir``."""
    parents = list(parents)
    dlq = subparsers.add_parser(
        "dlq",
        help="list, show and replay dead letters",
        description="Dead letters are messages a service could not handle and stored events the relay "
        "could not decode. Each is recorded whole in the event store (the durable truth) and copied to "
        "<topic>.dlq. These commands read the store's records: every store's where services have "
        "stores of their own.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    def action(name: str, handler: Callable[[argparse.Namespace], int], summary: str, description: str) -> Parser:
        parser = actions.add_parser(name, parents=parents, help=summary, description=description)
        parser.set_defaults(handler=handler)
        return parser

    listing = action(
        "list",
        _list,
        "dead letters with reason, consumer and where they came from",
        "One line per dead letter, oldest first: id, recorded time, consumer, original "
        "topic[partition]@offset (a stored event: store@position), size, replays, reason. Where "
        "services have stores of their own, every store's, each with a 'store' column: the services "
        "that write to it (ids are numbered per store).",
    )
    listing.add_argument(
        "--topic", type=utf8_text, metavar="T", help="only dead letters from topic T ('store' for the relay's)"
    )
    listing.add_argument(
        "--consumer", type=utf8_text, metavar="NAME", help="only those of this consumer (a service or 'relay')"
    )
    listing.add_argument("--service", choices=SERVICE_PORTS, metavar="NAME", help=_SERVICE_HELP)
    listing.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    show = action(
        "show",
        _show,
        "one dead letter: headers and body",
        "Print one dead letter's record, headers and body. Control characters and bytes that "
        "are not UTF-8 are escaped and a long body is cut; --full writes the exact bytes to a file.",
    )
    show.add_argument("id", type=_ID, help="the dead letter's id (see 'eventlab dlq list')")
    show.add_argument("--full", type=Path, metavar="FILE", help="write the whole body, raw bytes, to FILE")
    show.add_argument(
        "--limit",
        type=whole_number(0, LARGEST_INT64),
        default=2000,
        metavar="N",
        help="characters of body to print (2000)",
    )
    show.add_argument("--service", choices=SERVICE_PORTS, metavar="NAME", help=_SERVICE_ID_HELP)
    replay = action(
        "replay",
        _replay,
        "produce dead letters to their original topic again, after a fix",
        "Produce each selected dead letter's original key, body and headers (minus dlq_*) "
        "to its original topic, wait for the broker's acknowledgement and record the replay. A stored "
        "event the relay could not decode is published as the relay would now, if it decodes now. "
        "Consumers are idempotent: replaying something already handled changes nothing. Needs "
        "EVENTLAB_BOOTSTRAP_SERVERS pointing at the running shop's broker. Exit status 1 if any failed.",
    )
    replay.add_argument("ids", type=_ID, nargs="*", default=[], metavar="ID", help="dead letters to replay")
    replay.add_argument("--all", action="store_true", help="every dead letter (of --topic) instead of IDs")
    replay.add_argument("--topic", type=utf8_text, metavar="T", help="with --all: only dead letters from topic T")
    replay.add_argument(
        "--service",
        choices=SERVICE_PORTS,
        metavar="NAME",
        help=f"{_SERVICE_ID_HELP}; with --all: only that store's (default: every store's)",
    )
    replay.add_argument(
        "--timeout",
        type=_REPLAY_TIMEOUT,
        default=15.0,
        metavar="SECONDS",
        help="how long the broker may take to acknowledge one dead letter; the first it does not stops "
        "the replay, the rest left recorded, unless the broker still answers (then that one is reported "
        "not replayed and the rest go on) (default 15)",
    )


def _with_letters(args: argparse.Namespace, action: Callable[[DeadLetters], int]) -> int:
    settings = Settings.from_env(data_dir=args.data_dir)
    stores = open_stores(settings, create=False)  # a store that is not there: StoreError naming it
    letters = DeadLetters(stores, settings)
    try:
        return action(letters)
    finally:
        letters.close()
        stores.close()


def _summary(found: Located, split: bool) -> dict[str, Any]:
    """A dead letter's fields for ``list --json`` and ``show``; its store where there are several."""
    letter = found.letter
    where = {"store": found.store, "store_name": found.store_name} if split else {}
    return {
        "id": letter.id,
        **where,
        "recorded_at": letter.recorded_at.isoformat(),
        "consumer": letter.consumer,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "event_id": letter.event_id,
        "bytes": len(letter.value or b""),
        "published": letter.published,
        "replays": letter.replays,
        "reason": letter.reason,
    }


def _list(args: argparse.Namespace) -> int:
    def run(letters: DeadLetters) -> int:
        found = letters.located(topic=args.topic, consumer=args.consumer, service=args.service)
        if args.json:
            for each in found:
                print(json.dumps(_summary(each, letters.split)))
            return 0
        if not found:
            print("no dead letters")
            return 0
        rows = []
        for each in found:
            letter = each.letter
            where = f"{letter.topic}[{letter.partition}]@{letter.offset}"
            if letter.topic == STORE_TOPIC:
                where = f"{letter.topic}@{letter.offset}"
            rows.append((each, where))
        width = max(len(where) for _, where in rows)
        stores = max(len("store"), *(len(each.store) for each in found))
        store_head = f"{'store':<{stores}}  " if letters.split else ""
        head = f"{'id':>5}  {'recorded (UTC)':<19}  {'consumer':<12}  {store_head}{'from':<{width}}  {'bytes':>9}  replays  "
        room = max(20, shutil.get_terminal_size((120, 24)).columns - len(head) - 1)
        print(f"{head}reason")
        for each, where in rows:
            letter = each.letter
            store = f"{each.store:<{stores}}  " if letters.split else ""
            reason = printable(letter.reason.encode(), None).replace("\n", " ")
            reason = reason if len(reason) <= room else reason[: room - 1] + "…"
            print(
                f"{letter.id:>5}  {letter.recorded_at:%Y-%m-%d %H:%M:%S}  {letter.consumer:<12}  {store}"
                f"{where:<{width}}  {len(letter.value or b''):>9,}  {letter.replays:>7}  {reason}"
            )
        return 0

    return _with_letters(args, run)


#: What SQLite adds to a store's name for the files it keeps beside it ("": the store itself).
_SQLITE_FILES = ("", "-wal", "-shm", "-journal")


def _store_file_at(target: Path, settings: Settings) -> Path | None:
    """The SQLite store file of the shop that ``target`` is, or one SQLite keeps beside it (``-wal``,
    ``-shm``, ``-journal``), found by resolved path; None when it is none of them."""
    real = os.path.realpath(target)
    for service in SERVICE_PORTS:
        own = settings.store_of(service)
        if own.store_backend == "sqlite" and real in {store_identity(own) + suffix for suffix in _SQLITE_FILES}:
            return own.store_path
    return None


def _show(args: argparse.Namespace) -> int:
    if args.full is not None:
        store = _store_file_at(args.full, Settings.from_env(data_dir=args.data_dir))
        if store is not None:  # the body would overwrite the store being read (970 KB became 30 bytes)
            raise EventlabError(
                f"--full {args.full}: that is the event store {store} or a file SQLite keeps beside it: "
                "write the body to another file"
            )

    def run(letters: DeadLetters) -> int:
        found = letters.locate(args.id, args.service)
        letter = found.letter
        for name, value in _summary(found, letters.split).items():
            print(f"{name:<12} {printable(str(value).encode(), 400)}")
        print(f"{'key':<12} {printable(letter.key, 200)}")
        print("headers:")
        for name, raw in letter.headers:
            print(f"  {printable(name.encode(), 100)}: {printable(raw, 400)}")
        print("body:")
        print(printable(letter.value, args.limit))
        if args.full is not None:
            try:
                args.full.write_bytes(letter.value or b"")
            except OSError as exc:
                raise EventlabError(f"--full {args.full}: {exc.strerror or exc}") from exc
            print(f"wrote {len(letter.value or b''):,} bytes to {args.full}", file=sys.stderr)
        return 0

    return _with_letters(args, run)


def _replay(args: argparse.Namespace) -> int:
    if bool(args.ids) == args.all:
        both = ", not both" if args.all else ""
        raise EventlabError(f"give dead letter IDs or --all{both} (see 'eventlab dlq list')")
    if args.topic and not args.all:
        raise EventlabError("--topic goes with --all")

    def run(letters: DeadLetters) -> int:
        stopped = None
        try:
            outcomes = letters.replay(
                None if args.all else args.ids, topic=args.topic, service=args.service, timeout=args.timeout
            )
        except BrokerUnreachable as exc:
            stopped, outcomes = exc, exc.outcomes
        for outcome in outcomes:
            store = "" if outcome.store is None else f" (store: {outcome.store})"
            if outcome.ok:
                print(f"replayed {outcome.id}{store} to {outcome.topic}")
            else:
                print(f"not replayed {outcome.id}{store}: {outcome.error}", file=sys.stderr)
        if stopped is not None:
            print(f"eventlab: {stopped}", file=sys.stderr)
            return 1
        if not outcomes:
            print("nothing to replay")
        return 0 if all(outcome.ok for outcome in outcomes) else 1

    return _with_letters(args, run)
