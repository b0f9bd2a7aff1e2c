"""Restart time on a big store: a shop stopped with N events stored (every one handled), started
again on a new embedded broker (which has forgotten every topic), until a new order completes.

    python benchmarks/restart.py                    # 1M events, a table
    python benchmarks/restart.py --events 200000 --json

The store is grown from a real run: the events and processed markers of a few hundred orders,
copied with new event ids and aggregate ids until there are ``--events`` rows. Only the public API
and ``sqlite3`` are used, so the same script measures any version of eventlab.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from saga import write_catalogue

from eventlab import Settings, Shop
from eventlab.demo import run_demo
from eventlab.tables import text_rows

_COLUMNS = "aggregate_type, aggregate_id, version, event_type, schema_version, data, metadata, recorded_at"


def preload(settings: Settings, events: int, catalogue: Path, orders: int = 200) -> int:
    """Run ``orders`` real sagas, then copy their events and markers until the store holds at least
    ``events`` rows, all handled and published; return the store's head. Whole copies only: a copy cut
    part way would leave orders in flight (overdue for the deadline sweeper, and their copied data
    naming the original ids)."""
    with Shop(settings) as shop:
        run_demo(shop, orders, catalogue=catalogue, timeout=300)
        shop.wait_idle(300)
    con = sqlite3.connect(settings.store_path, isolation_level=None)
    try:
        template = con.execute(f"SELECT event_id, {_COLUMNS} FROM events ORDER BY position").fetchall()
        markers = con.execute("SELECT consumer, event_id FROM processed").fetchall()
        by_event: dict[str, list[str]] = {}
        for consumer, event_id in markers:
            by_event.setdefault(event_id, []).append(consumer)
        head = len(template)
        copy = 0
        while head < events:
            copy += 1
            rows, marks = [], []
            for event_id, aggregate_type, aggregate_id, *rest in template:
                new_id = f"{copy:08x}{event_id[8:]}"
                rows.append((new_id, aggregate_type, f"{aggregate_id}~{copy}", *rest))
                marks += [(consumer, new_id) for consumer in by_event.get(event_id, [])]
            con.execute("BEGIN IMMEDIATE")
            con.executemany(f"INSERT INTO events (event_id, {_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
            con.executemany("INSERT INTO processed VALUES (?, ?)", marks)
            con.execute("COMMIT")
            head += len(rows)
        (head,) = con.execute("SELECT max(position) FROM events").fetchone()
        con.execute(
            "INSERT INTO checkpoints VALUES ('relay', ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (head,),
        )
    finally:
        con.close()
    return int(head)


def restart(settings: Settings) -> dict[str, float]:
    """Start the shop, then place one order and wait for it: seconds for each step."""
    started = time.perf_counter()
    with Shop(settings) as shop:
        up = time.perf_counter()
        order_id = shop.place_order("B00", {"BP00": 1})
        status = shop.wait(order_id, timeout=600).status
        done = time.perf_counter()
        republished = shop.relay.published if shop.relay is not None else 0
    return {
        "start_s": round(up - started, 2),
        "first_order_s": round(done - up, 2),
        "restart_s": round(done - started, 2),
        "republished": republished,  # the new order's own events included
        "status": status,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the store (default 1M)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eventlab-restart-") as tmp:
        root = Path(tmp)
        settings = Settings.from_env(data_dir=root / "data")
        began = time.perf_counter()
        head = preload(settings, args.events, write_catalogue(root))
        result: dict[str, object] = {
            "load_1m": round(os.getloadavg()[0], 2),
            "events": head,
            "preload_s": round(time.perf_counter() - began, 1),
        }
        result.update(restart(settings))
    print(json.dumps(result) if args.json else text_rows(result.items()))
    return 0 if result["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
