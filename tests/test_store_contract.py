"""The event store contract: every backend (memory, SQLite, PostgreSQL) passes these tests.

The fixtures come from tests/conftest.py (``store_backend``, ``shared_store_backend``) and
tests/store_contract.py (the backends). The multi-process tests run where several processes can
share a store: SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time

import pytest
from pydantic import ValidationError
from store_contract import added, append_many, append_own_streams, hold_lease

from eventlab.errors import ConcurrencyError, StoreError
from eventlab.events import MAX_ID_LENGTH, UserCreated
from eventlab.store import Append, NewEvent, StoreBusy
from eventlab.store.log import StoreLog

STOCK_P1 = ("stock", "P1")


@pytest.fixture
def store(store_backend):
    return store_backend.store


@pytest.fixture
def hold_write_lock(store_backend):
    return store_backend.hold_write_lock


def follow(store, writers):
    """Read the log by "position > last seen", as the relay does, until the writers are done and it is
    read to the end; return the positions seen, in the order seen."""
    seen: list[int] = []
    while any(process.is_alive() for process in writers) or store.head() > (seen[-1] if seen else 0):
        batch = store.read_records(after=seen[-1] if seen else 0, limit=50)
        seen += [record.position for record in batch]
        if not batch:
            time.sleep(0.001)
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    return seen


def test_appended_events_come_back_typed_and_in_order(store):
    stored = store.append([NewEvent(added(quantity=5), 1, {"correlation_id": "c-1"}), NewEvent(added(quantity=2), 2)])
    assert [e.position for e in stored] == [1, 2]
    events = store.read_stream("stock", "P001")
    assert [e.event for e in events] == [added(quantity=5), added(quantity=2)]
    assert [e.version for e in events] == [1, 2]
    assert events[0].metadata == {"correlation_id": "c-1"}
    assert events[0].event_id != events[1].event_id
    assert store.head() == 2


def test_a_taken_version_is_a_conflict(store):
    store.append([NewEvent(added(), 1)])
    with pytest.raises(ConcurrencyError):
        store.append([NewEvent(added(quantity=9), 1)])
    assert [e.event.quantity for e in store.read_stream("stock", "P001")] == [1]


def test_a_batch_with_a_conflict_writes_nothing(store):
    store.append([NewEvent(added("P002"), 1)])
    with pytest.raises(ConcurrencyError):
        store.append([NewEvent(added("P001"), 1), NewEvent(added("P002"), 1)])
    assert store.read_stream("stock", "P001") == []
    assert store.head() == 1


def test_streams_are_per_aggregate_type(store):
    store.append([NewEvent(added("X1"), 1), NewEvent(UserCreated(user_id="X1", name="X", email="x@y.z"), 1)])
    assert len(store.read_stream("stock", "X1")) == len(store.read_stream("user", "X1")) == 1


def test_read_all_follows_positions(store):
    for i in range(1, 6):
        store.append([NewEvent(added(f"P{i}"), 1)])
    assert [e.position for e in store.read_all(after=2)] == [3, 4, 5]
    assert [e.position for e in store.read_all(after=0, limit=2)] == [1, 2]


def test_a_processed_marker_makes_a_redelivery_a_no_op(store):
    first = store.append([NewEvent(added(), 1)], processed=("inventory", "evt-1"))
    again = store.append([NewEvent(added(), 2)], processed=("inventory", "evt-1"))
    assert len(first) == 1 and again == []
    assert store.is_processed("inventory", "evt-1")
    assert not store.is_processed("order", "evt-1")
    assert store.head() == 1


def test_the_marker_is_atomic_with_the_events(store):
    store.append([NewEvent(added(), 1)])
    with pytest.raises(ConcurrencyError):
        store.append([NewEvent(added(), 1)], processed=("inventory", "evt-2"))
    assert not store.is_processed("inventory", "evt-2")


def test_lag_counts_unprocessed_events_of_given_types(store):
    stored = store.append([NewEvent(added("P1"), 1), NewEvent(added("P2"), 1)])
    assert store.unprocessed("inventory", ["StockAdded"]) == 2
    store.append([], processed=("inventory", stored[0].event_id))
    assert store.unprocessed("inventory", ["StockAdded"]) == 1
    assert store.unprocessed("inventory", ["UserCreated"]) == 0


def test_correlated_events_form_a_saga(store):
    store.append([NewEvent(added("P1"), 1, {"correlation_id": "order-1"})])
    store.append([NewEvent(added("P2"), 1, {"correlation_id": "order-2"})])
    store.append([NewEvent(added("P3"), 1, {"correlation_id": "order-1"})])
    assert [e.aggregate_id for e in store.read_correlated("order-1")] == ["P1", "P3"]


def test_the_longest_ids_an_event_or_a_message_may_carry_are_stored_and_found(store):
    # ids are indexed (PostgreSQL keeps at most 2,704 bytes an entry): the longest allowed, in 4-byte
    # characters, must fit; one longer is refused before any store sees it (not a write failing for ever)
    longest = "\U0001f6d2" * MAX_ID_LENGTH
    stored = store.append([NewEvent(added(longest), 1, {"correlation_id": longest})], processed=("inventory", longest))
    assert store.read_stream("stock", longest)[0].event_id == stored[0].event_id
    assert store.is_processed("inventory", longest)
    assert [e.aggregate_id for e in store.read_correlated(longest)] == [longest]
    with pytest.raises(ValidationError, match="at most 255 characters"):
        added(longest + "x")


def test_checkpoints(store):
    assert store.checkpoint("relay") == 0
    store.set_checkpoint("relay", 7)
    store.set_checkpoint("relay", 9)
    assert store.checkpoint("relay") == 9


def test_a_forgotten_tracking_position_is_found_again_from_the_first_event(store):
    # given a user event, then stock events a consumer handled, its tracking position at the head
    store.append([NewEvent(UserCreated(user_id="U1", name="Ada", email="ada@example.com"), 1)])
    for stored in store.append([NewEvent(added(quantity=1), 1), NewEvent(added(quantity=2), 2)]):
        store.append([], processed=("order", stored.event_id))
    assert store.tracking_position("order", ["StockAdded"]) == 3
    # when it also subscribes to user events, the recorded position still hides the one before it
    assert store.tracking_position("order", ["StockAdded", "UserCreated"]) == 3
    # then, once forgotten, the position is found again from the first event: before the user event
    store.forget_tracking("order")
    assert store.tracking_position("order", ["StockAdded", "UserCreated"]) == 0


def test_an_advanced_checkpoint_never_moves_backwards(store):
    # given a checkpoint advanced to 9 (by the relay that holds the lease now)
    assert store.advance_checkpoint("relay", 5) == 5
    assert store.advance_checkpoint("relay", 9) == 9
    # when a relay that fell behind saves an older position, then the checkpoint stays at 9
    assert store.advance_checkpoint("relay", 7) == 9
    assert store.checkpoint("relay") == 9
    # and only a deliberate set (a rewind) moves it back
    store.set_checkpoint("relay", 3)
    assert store.advance_checkpoint("relay", 2) == 3 == store.checkpoint("relay")


def test_concurrent_writers_in_several_processes_lose_nothing(shared_store_backend):
    store = shared_store_backend.store
    # given four writer processes appending to one stream at once, retrying their conflicts
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=append_many, args=(shared_store_backend.reopen, w, 25)) for w in range(4)]
    for process in writers:
        process.start()
    # while a reader follows the log by "position > last seen", as the relay does
    seen = follow(store, writers)
    # then every version is there once, and the follower saw every event once, in log order
    events = store.read_stream("stock", "P-shared")
    assert [e.version for e in events] == list(range(1, 101))
    positions = [e.position for e in store.read_all()]
    assert positions == sorted(positions) and len(positions) == 100
    assert seen == positions


def test_a_follower_never_misses_an_event_that_commits_late(shared_store_backend):
    """The non-interleaving test: positions are handed out in commit order, so a reader that has read
    position n never sees a later commit below n (which it would skip forever)."""
    store = shared_store_backend.store
    # given four writer processes, each with its own connection and streams of its own, so that none
    # waits for another's stream: they append batches side by side, all starting at once
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [
        context.Process(target=append_own_streams, args=(shared_store_backend.reopen, w, 50, 5, start))
        for w in range(4)
    ]
    for process in writers:
        process.start()
    start.set()
    # when a reader follows the log by "position > last seen" while they write
    seen = follow(store, writers)
    # then it saw every event exactly once, in position order
    positions = [record.position for record in store.read_records()]
    assert len(positions) == 4 * 50 * 5 == len(set(positions))
    assert seen == positions == sorted(positions)


def test_appends_in_a_transaction_commit_together(store):
    with store.transaction():
        store.append([NewEvent(added("P1"), 1)], processed=("inventory", "e-1"))
        store.append([NewEvent(added("P2"), 1)], processed=("inventory", "e-2"))
        assert len(store.read_stream("stock", "P1")) == 1  # the transaction sees its own writes
    assert store.head() == 2 and store.is_processed("inventory", "e-2")


def test_a_failed_transaction_writes_nothing(store):
    with pytest.raises(RuntimeError), store.transaction():
        store.append([NewEvent(added("P1"), 1)], processed=("inventory", "e-1"))
        raise RuntimeError("handler bug")
    assert store.head() == 0 and not store.is_processed("inventory", "e-1")


def test_a_conflict_inside_a_transaction_undoes_only_that_append(store):
    with store.transaction():
        store.append([NewEvent(added("P1"), 1)])
        with pytest.raises(ConcurrencyError):
            store.append([NewEvent(added("P2"), 1), NewEvent(added("P1"), 1)], processed=("inventory", "e-3"))
        store.append([NewEvent(added("P3"), 1)])
    assert [e.aggregate_id for e in store.read_all()] == ["P1", "P3"]
    assert not store.is_processed("inventory", "e-3")


def inputs(store, count):
    """``count`` stored events a consumer will handle (users U1, U2, ...): their event ids."""
    users = [UserCreated(user_id=f"U{n}", name=f"User {n}", email=f"u{n}@shop.example") for n in range(1, count + 1)]
    return [stored.event_id for stored in store.append([NewEvent(user, 1) for user in users])]


def test_a_grouped_append_commits_a_whole_batch_at_once(store):
    # given three inputs handled by inventory, and a waiter for commits
    e1, e2, e3 = inputs(store, 3)
    seen = store.commits
    # when inventory appends their outcomes as one batch (the second decided nothing)
    results = store.append_batch(
        [
            Append([NewEvent(added("P1"), 1), NewEvent(added("P1"), 2)], ("inventory", e1), frozenset({STOCK_P1})),
            Append([], ("inventory", e2)),
            Append([NewEvent(added("P2"), 1)], ("inventory", e3)),
        ]
    )
    # then every outcome is stored, in batch order, at consecutive positions, in one commit
    assert [[(e.aggregate_id, e.version, e.position) for e in stored or []] for stored in results] == [
        [("P1", 1, 4), ("P1", 2, 5)],
        [],
        [("P2", 1, 6)],
    ]
    assert [e.event_id for e in store.read_all(after=3)] == [e.event_id for stored in results for e in stored or []]
    assert store.commits == seen + 1
    # and every input counts as handled: no lag, tracking at the head
    assert all(store.is_processed("inventory", event_id) for event_id in (e1, e2, e3))
    assert store.processed_count("inventory") == 3 and store.unprocessed("inventory", ["UserCreated"]) == 0
    assert store.tracking_position("inventory", ["UserCreated"]) == store.head() == 6


def test_a_grouped_append_refuses_only_a_conflict_a_redelivery_and_what_was_decided_after_them(store):
    # given five inputs; another writer took version 1 of stock P2; input 3 was handled already
    e1, e2, e3, e4, e5 = inputs(store, 5)
    store.append([NewEvent(added("P2", quantity=7), 1)])
    store.append([], processed=("inventory", e3))
    # when inventory appends a batch: 2 conflicts on P2, 3 is a redelivery, 5 read P2 after 2's decision
    results = store.append_batch(
        [
            Append([NewEvent(added("P1"), 1)], ("inventory", e1)),
            Append([NewEvent(added("P2"), 1)], ("inventory", e2)),
            Append([NewEvent(added("P3"), 1)], ("inventory", e3)),
            Append([NewEvent(added("P4"), 1)], ("inventory", e4)),
            Append([NewEvent(added("P5"), 1)], ("inventory", e5), frozenset({("stock", "P2")})),
        ]
    )
    # then only those three are refused (to be decided again), and the rest commit back to back
    assert [None if stored is None else [e.aggregate_id for e in stored] for stored in results] == [
        ["P1"],
        None,
        None,
        ["P4"],
        None,
    ]
    assert [(e.aggregate_id, e.position) for e in store.read_all(after=5)] == [("P2", 6), ("P1", 7), ("P4", 8)]
    assert [e.event.quantity for e in store.read_stream("stock", "P2")] == [7]
    assert store.read_stream("stock", "P3") == store.read_stream("stock", "P5") == []
    # and the markers say so: 1, 3 and 4 handled, 2 and 5 still to do
    assert [store.is_processed("inventory", event_id) for event_id in (e1, e2, e3, e4, e5)] == [
        True,
        False,
        True,
        True,
        False,
    ]
    assert store.processed_count("inventory") == 3 and store.unprocessed("inventory", ["UserCreated"]) == 2
    assert store.tracking_position("inventory", ["UserCreated"]) == 1  # input 2 (position 2) is not handled


def test_grouped_appends_never_interleave_with_another_writer(store):
    # given another thread appending one event at a time to streams of its own
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            store.append([NewEvent(added(f"W{n}"), 1)])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        # when batches of ten inputs are appended meanwhile
        batches = [
            store.append_batch(
                [Append([NewEvent(added(f"B{b}-{i}"), 1)], ("inventory", f"e-{b}-{i}")) for i in range(10)]
            )
            for b in range(20)
        ]
    finally:
        stop.set()
        writer.join(30)
    # then each batch's events sit at consecutive positions, in batch order
    for results in batches:
        positions = [e.position for stored in results for e in stored or []]
        assert len(positions) == 10 and positions == list(range(positions[0], positions[0] + 10))
        assert [e.aggregate_id for e in store.read_all(after=positions[0] - 1, limit=10)] == [
            e.aggregate_id for stored in results for e in stored or []
        ]
    assert store.processed_count("inventory") == 200


def test_records_are_rows_as_stored(store):
    [stored] = store.append([NewEvent(added(quantity=4), 1, {"source": "inventory"})])
    [record] = store.read_records()
    assert (record.position, record.event_id, record.event_type) == (1, stored.event_id, "StockAdded")
    assert json.loads(record.data) == stored.data and json.loads(record.metadata) == {"source": "inventory"}


def test_a_write_blocked_by_another_writer_is_a_store_error_and_writes_nothing(store, hold_write_lock):
    # given another writer holding the store's write lock for longer than the store waits
    with hold_write_lock():
        # when an append has to wait for it, then it fails as a (transient) store error
        with pytest.raises(StoreBusy) as caught:
            store.append([NewEvent(added(), 1)])
        assert isinstance(caught.value, StoreError) and caught.value.__cause__ is not None
        with pytest.raises(StoreBusy):
            store.set_checkpoint("relay", 1)
    # and once the lock is gone the store works again, with nothing half-written
    assert store.head() == 0 and store.checkpoint("relay") == 0
    store.append([NewEvent(added(), 1)])
    assert store.head() == 1


def test_the_projections_read_the_log_through_the_port(store):
    # given a store with a few events, one of them a redelivery that wrote nothing, and the relay's checkpoint
    for i in range(1, 4):
        store.append([NewEvent(added(f"P{i}", quantity=i), 1)])
    store.append([NewEvent(added("P1"), 2)], processed=("inventory", "e-1"))
    store.append([NewEvent(added("P1"), 3)], processed=("inventory", "e-1"))
    store.set_checkpoint("relay", 2)
    log = StoreLog(store)
    # when the projections' reader asks for the head and the rows, then it gets the log as stored
    records = store.read_records()
    assert log.head(2) == (4, records[-1].event_id, records[1].event_id)
    assert log.rows(1, 3).to_pylist() == [record._asdict() for record in records[1:3]]
    assert log.rows(0, 4).num_rows == 4 and log.checkpoints().to_pylist() == [{"name": "relay", "position": 2}]


def test_a_commit_wakes_a_waiter_in_the_same_process(store):
    seen = store.commits
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait_for_commit(seen, timeout=30)))
    waiter.start()
    store.append([NewEvent(added(), 1)])
    waiter.join(30)
    assert woke and woke[0] > seen
    assert store.wait_for_commit(store.commits, timeout=0) == store.commits  # nothing new: returns at once
    before = store.commits
    with store.transaction():  # and a transaction signals once, when it commits, not at each append inside
        store.append([NewEvent(added(), 2)])
        assert store.commits == before
    assert store.commits == before + 1


def test_a_lease_has_one_holder_at_a_time(store):
    # given two would-be relays of one store, and the first holding the lease
    active, standby = store.lease("relay"), store.lease("relay")
    assert active.acquire() and active.acquire()  # taking it again while held keeps it
    # then the second cannot take it, while a lease of another name is free
    assert not standby.acquire() and not standby.held()
    other = store.lease("deadlines")
    assert other.acquire()
    # when the holder releases it, then the standby takes it, and the first cannot any more
    active.release()
    assert not active.held()
    assert standby.acquire() and standby.held()
    assert not active.acquire()
    standby.release()
    other.release()


def test_a_lease_whose_holder_is_killed_is_free_again(shared_store_backend):
    store = shared_store_backend.store
    # given another process holding the relay's lease
    context = multiprocessing.get_context("spawn")
    holding = context.Event()
    holder = context.Process(target=hold_lease, args=(shared_store_backend.reopen, "relay", holding))
    holder.start()
    try:
        assert holding.wait(60)
        standby = store.lease("relay")
        assert not standby.acquire()
        # when that process is killed (SIGKILL: it cannot release anything)
        holder.kill()
        holder.join(30)
    finally:
        holder.kill()
    # then the standby gets the lease, within seconds
    deadline = time.monotonic() + 30
    while not standby.acquire():
        assert time.monotonic() < deadline, "the lease of a killed holder was never freed"
        time.sleep(0.05)
    assert standby.held()
    standby.release()
