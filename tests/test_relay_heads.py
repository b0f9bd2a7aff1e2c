"""One watcher wakes the relays of several SQLite stores written by other processes (which SQLite
does not signal): the relay process of a shop with a store per service polls once, not per store."""

from __future__ import annotations

import threading

from eventlab.events import StockAdded
from eventlab.kafka.relay import watch_heads
from eventlab.store import NewEvent, SqliteEventStore


def test_the_heads_watcher_wakes_the_waiters_of_the_store_another_process_wrote_and_no_other(tmp_path):
    # given two SQLite stores, each open twice: the relay's objects, and a writer's as another process has
    relays = [SqliteEventStore(tmp_path / f"{name}.db") for name in ("order", "inventory")]
    writers = [SqliteEventStore(tmp_path / f"{name}.db") for name in ("order", "inventory")]
    stop = threading.Event()
    watcher = threading.Thread(target=watch_heads, args=(relays, stop, 0.001), daemon=True)
    try:
        # the other process's commit alone never reaches the relay's object
        before = relays[1].commits
        writers[1].append([NewEvent(StockAdded(product_id="P1", quantity=1), 1)])
        assert relays[1].wait_for_commit(before, 0.05) == before
        # when the watcher runs (its first look wakes every store once) and the writer appends to one store
        counts = [store.commits for store in relays]
        watcher.start()
        seen = [store.wait_for_commit(count, 10) for store, count in zip(relays, counts, strict=True)]
        writers[1].append([NewEvent(StockAdded(product_id="P1", quantity=2), 2)])
        # then the waiter on that store is woken, and the other store's waiters are not
        assert relays[1].wait_for_commit(seen[1], 10) > seen[1]
        assert relays[0].commits == seen[0]
    finally:
        stop.set()
        if watcher.ident is not None:
            watcher.join(10)
        for store in relays + writers:
            store.close()
