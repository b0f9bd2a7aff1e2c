"""An event store in this process's memory: the port's contract without a database, for fast unit tests.

It passes the same contract suite as the SQLite and PostgreSQL stores (``tests/test_store_contract.py``)
except what needs a second process: its data lives and dies with this one object. The product, the
notebooks and the integration tests run on a real database; ``EVENTLAB_STORE_URL=memory://`` exists
for tests and experiments that want the contract and nothing else.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime

from eventlab.errors import ConcurrencyError
from eventlab.ids import new_id
from eventlab.store.base import (
    RELAY_CONSUMER,
    DeadLetter,
    DeadLetterQuery,
    EventRecord,
    EventStore,
    Lease,
    NewEvent,
    SourceMessage,
    StoreBusy,
    StoredEvent,
)

__all__ = ["MemoryEventStore"]

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _State:
    """Everything the store holds."""

    records: list[EventRecord] = field(default_factory=list)
    streams: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)  # version -> index
    processed: set[tuple[str, str]] = field(default_factory=set)
    checkpoints: dict[str, int] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)


class MemoryEventStore(EventStore):
    """Events in a list; one thread at a time, reads included (:attr:`lock`), so nobody sees a
    transaction before it commits.

    Example:
        >>> from eventlab.events import StockAdded
        >>> store = MemoryEventStore()
        >>> store.append([NewEvent(StockAdded(product_id="P1", quantity=3), 1)])[0].position
        1
        >>> store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 1)])
        Traceback (most recent call last):
        ...
        eventlab.errors.ConcurrencyError: stream version already taken: stock P1 version 1
    """

    def __init__(
        self, *, clock: Clock = _utcnow, id_factory: Callable[[], str] = new_id, busy_timeout: float = 30.0
    ) -> None:
        super().__init__()
        self._clock = clock
        self._new_id = id_factory
        self._busy_timeout = busy_timeout
        self._state = _State()
        #: Held by every call and every transaction; another thread holding it plays another writer.
        self.lock = threading.RLock()
        #: What undoes the open transaction's writes, newest last (None: no transaction open).
        self._undo: list[Callable[[], None]] | None = None
        #: Lease name -> its holder (leases are not data: a transaction does not undo them).
        self._leases: dict[str, Lease] = {}

    def __repr__(self) -> str:
        return f"MemoryEventStore({len(self._state.records)} events)"

    @contextmanager
    def _locked(self) -> Iterator[_State]:
        """The lock, waited for at most the busy timeout, as another backend waits for its database."""
        if not self.lock.acquire(timeout=self._busy_timeout):
            raise StoreBusy(
                f"memory store: locked by another thread for over {self._busy_timeout:g} s; retry later"
            ) from TimeoutError(self._busy_timeout)
        try:
            yield self._state
        finally:
            self.lock.release()

    def _did(self, undo: Callable[[], None]) -> None:
        """Note how to undo a write, if a transaction is open."""
        if self._undo is not None:
            self._undo.append(undo)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._locked():
            if self._undo is not None:  # nested: part of the outer transaction
                yield
                return
            self._undo = []
            try:
                yield
            except BaseException:
                for undo in reversed(self._undo):
                    undo()
                raise
            finally:
                self._undo = None
        self._committed()

    def append(self, events: Sequence[NewEvent], *, processed: tuple[str, str] | None = None) -> list[StoredEvent]:
        recorded_at = self._clock().astimezone(UTC)
        stored_at = recorded_at.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        with self._locked() as state:
            if processed is not None and processed in state.processed:
                return []
            wanted = [(new.event.aggregate_type, new.event.aggregate_id, new.version) for new in events]
            for kind, key, version in wanted:  # check everything before writing anything: a conflict writes nothing
                if version in state.streams.get((kind, key), {}) or wanted.count((kind, key, version)) > 1:
                    raise ConcurrencyError(f"stream version already taken: {kind} {key} version {version}")
            if processed is not None:
                state.processed.add(processed)
                self._did(lambda: state.processed.discard(processed))
            stored, before = [], len(state.records)
            for new in events:
                record = EventRecord(
                    len(state.records) + 1,
                    self._new_id(),
                    new.event.aggregate_type,
                    new.event.aggregate_id,
                    new.version,
                    new.event.event_type,
                    new.event.schema_version,
                    new.event.model_dump_json(),
                    json.dumps(new.metadata, separators=(",", ":")),
                    stored_at,
                )
                stream = state.streams.setdefault((record.aggregate_type, record.aggregate_id), {})
                stream[record.version] = len(state.records)
                state.records.append(record)
                stored.append(replace(record.decoded(), recorded_at=recorded_at))
            self._did(lambda: self._truncate(before))
            committed = self._undo is None  # not inside a transaction: this append is the commit
        if committed and stored:
            self._committed()
        return stored

    def _truncate(self, length: int) -> None:
        """Forget the events after the first ``length``."""
        state = self._state
        for record in state.records[length:]:
            del state.streams[(record.aggregate_type, record.aggregate_id)][record.version]
        del state.records[length:]

    def read_stream(self, aggregate_type: str, aggregate_id: str, after_version: int = 0) -> list[StoredEvent]:
        with self._locked() as state:
            stream = state.streams.get((aggregate_type, aggregate_id), {})
            return [state.records[stream[v]].decoded() for v in sorted(stream) if v > after_version]

    def read_all(self, after: int = 0, limit: int | None = None) -> list[StoredEvent]:
        return [record.decoded() for record in self.read_records(after, limit)]

    def read_records(self, after: int = 0, limit: int | None = None) -> list[EventRecord]:
        with self._locked() as state:
            records = state.records[max(after, 0) :]  # position n is records[n - 1]
        return records if limit is None else records[:limit]

    def read_correlated(self, correlation_id: str) -> list[StoredEvent]:
        return [e for e in self.read_all() if e.correlation_id == correlation_id]

    def head(self) -> int:
        with self._locked() as state:
            return len(state.records)

    def is_processed(self, consumer: str, event_id: str) -> bool:
        with self._locked() as state:
            return (consumer, event_id) in state.processed

    def unprocessed(self, consumer: str, event_types: Iterable[str]) -> int:
        return self._unhandled(consumer, event_types, ())

    def pending(self, consumer: str, event_types: Iterable[str]) -> int:
        return self._unhandled(consumer, event_types, (consumer, RELAY_CONSUMER))

    def _unhandled(self, consumer: str, event_types: Iterable[str], dead_letters_of: Sequence[str]) -> int:
        """Events of ``event_types`` without ``consumer``'s marker, nor dead-lettered by ``dead_letters_of``."""
        types = set(event_types)
        with self._locked() as state:
            dead = {d.event_id for d in state.dead_letters if d.consumer in dead_letters_of}
            return sum(
                1
                for r in state.records
                if r.event_type in types and (consumer, r.event_id) not in state.processed and r.event_id not in dead
            )

    def processed_count(self, consumer: str) -> int:
        with self._locked() as state:
            return sum(1 for who, _ in state.processed if who == consumer)

    def stream_ages(
        self, event_types: Sequence[str], after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, float]]:
        ages: list[tuple[int, str, float]] = []
        with self._locked() as state:
            for record in state.records[max(after, 0) :]:
                stream = state.streams[(record.aggregate_type, record.aggregate_id)]
                if record.event_type in event_types and 1 in stream and len(ages) < limit:
                    first = state.records[stream[1]]
                    age = datetime.fromisoformat(record.recorded_at) - datetime.fromisoformat(first.recorded_at)
                    ages.append((record.position, record.event_type, age.total_seconds()))
        return ages

    def checkpoint(self, name: str) -> int:
        with self._locked() as state:
            return state.checkpoints.get(name, 0)

    def set_checkpoint(self, name: str, position: int) -> None:
        self._record_checkpoint(name, lambda _before: position)

    def advance_checkpoint(self, name: str, position: int) -> int:
        return self._record_checkpoint(name, lambda before: max(before or 0, position))

    def _record_checkpoint(self, name: str, new: Callable[[int | None], int]) -> int:
        """Set checkpoint ``name`` to ``new(its value)``, undone with the transaction; return it."""
        with self._locked() as state:
            before = state.checkpoints.get(name)
            state.checkpoints[name] = recorded = new(before)

            def undo() -> None:
                if before is None:
                    del state.checkpoints[name]
                else:
                    state.checkpoints[name] = before

            self._did(undo)
            return recorded

    # --- dead letters ----------------------------------------------------------------------

    def _record_dead_letter(self, message: SourceMessage, reason: str, event_id: str | None) -> DeadLetter:
        source = (message.consumer, message.topic, message.partition, message.offset, message.digest)
        with self._locked() as state:
            for known in state.dead_letters:
                if (known.consumer, known.topic, known.partition, known.offset, known.digest) == source:
                    return known
            letter = DeadLetter(
                **{f.name: getattr(message, f.name) for f in fields(SourceMessage)},
                id=len(state.dead_letters) + 1,
                reason=reason,
                event_id=event_id,
                recorded_at=self._clock().astimezone(UTC),
            )
            self._set_dead_letters([*state.dead_letters, letter])
            return letter

    def _dead_letters(self, query: DeadLetterQuery) -> list[DeadLetter]:
        with self._locked() as state:
            return [
                d
                for d in state.dead_letters
                if (query.ids is None or d.id in query.ids)
                and query.topic in (None, d.topic)
                and query.consumer in (None, d.consumer)
                and not (query.unpublished and d.published)
            ]

    def mark_dead_letter_published(self, dead_letter_id: int) -> None:
        self._stamp(dead_letter_id, lambda d, now: d if d.published else replace(d, published_at=now))

    def mark_dead_letter_replayed(self, dead_letter_id: int) -> None:
        self._stamp(dead_letter_id, lambda d, now: replace(d, replayed_at=now, replays=d.replays + 1))

    def _stamp(self, dead_letter_id: int, change: Callable[[DeadLetter, datetime], DeadLetter]) -> None:
        with self._locked() as state:
            now = self._clock().astimezone(UTC)
            self._set_dead_letters([change(d, now) if d.id == dead_letter_id else d for d in state.dead_letters])

    def _set_dead_letters(self, letters: list[DeadLetter]) -> None:
        before, self._state.dead_letters = self._state.dead_letters, letters
        self._did(lambda: setattr(self._state, "dead_letters", before))

    def dead_letter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for letter in self._dead_letters(DeadLetterQuery()):
            counts[letter.consumer] = counts.get(letter.consumer, 0) + 1
        return dict(sorted(counts.items()))

    def lease(self, name: str) -> Lease:
        return _MemoryLease(name, self)

    def close(self) -> None:
        """Nothing to release: the events stay readable until the store is dropped."""


class _MemoryLease(Lease):
    """A lease among the threads of this process: the holder is noted in the store."""

    def __init__(self, name: str, store: MemoryEventStore) -> None:
        super().__init__(name)
        self._store = store

    def acquire(self) -> bool:
        with self._store.lock:
            return self._store._leases.setdefault(self.name, self) is self

    def held(self) -> bool:
        return self._store._leases.get(self.name) is self

    def release(self) -> None:
        with self._store.lock:
            if self.held():
                del self._store._leases[self.name]
