"""The invariant auditor: a healthy shop passes, and each invariant catches its own kind of corruption.

Corruptions are written the way a bug would write them: through the real store's ``append``
(a second charge, an oversold reservation) or with raw SQL into the SQLite file (a duplicated
event), and the checks that must fail are named exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from projection_story import START, ShopStory, standard_story, tell_healthy_story

from eventlab.cli import main
from eventlab.events import (
    EmailRequested,
    EmailSent,
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    OrderCreated,
    PaymentCompleted,
    PaymentRefunded,
    ReservationRejected,
    StockReleased,
    StockReserved,
)
from eventlab.projections import CHECKS, Projections, audit
from eventlab.projections.audit import MAILBOX_CHECKS
from eventlab.projections.sandbox import Sandbox

AFTER_STORY = START + timedelta(days=1, seconds=1)  # one second after the standard story's last event
LATER = START + timedelta(days=3)


def healthy_story(path: Path) -> ShopStory:
    """Every saga outcome, every saga finished, every email sent, everything published."""
    return tell_healthy_story(ShopStory(path))


def confirmed_order(path: Path, quantity: int, start: datetime = START) -> tuple[ShopStory, OrderCreated]:
    """A store where U1's order O1 of ``quantity`` P1 (10.00 each, 10 in stock) is reserved: waiting for Payment."""
    story = ShopStory(path, start=start)
    story.user("U1")
    story.product("P1", price_cents=1000, stock=10)
    order = story.place("O1", "U1", {"P1": quantity})
    story.reserve(order)
    return story, order


def violated(report) -> set[str]:
    return {name for name, result in report.items() if result.count}


#: The mailbox checks of a store with no mailbox file (the stories send no email): not run, never passed.
SKIPPED = {c.name: {"ok": None, "skipped": "no mailbox", "violations": []} for c in MAILBOX_CHECKS}


@pytest.fixture
def healthy(tmp_path: Path) -> ShopStory:
    return healthy_story(tmp_path / "events.db")


def test_a_healthy_shop_passes_every_check(healthy):
    before = hashlib.sha256(healthy.store.path.read_bytes()).hexdigest()
    report = audit(healthy.store.path, now=LATER)
    assert report.ok and list(report) == [check.name for check in (*CHECKS, *MAILBOX_CHECKS)]
    assert all(result.violations == () and result.count == 0 for result in report.values())
    assert report.as_dict() == {c.name: {"ok": True, "violations": []} for c in CHECKS} | SKIPPED
    assert "VIOLATED" not in report.table() and "ok" in repr(report) and "✅" in report._repr_html_()
    assert hashlib.sha256(healthy.store.path.read_bytes()).hexdigest() == before


def test_an_order_in_flight_is_fine_until_it_is_stuck(tmp_path):
    story = standard_story(tmp_path / "events.db")  # O5 is confirmed and waits for its payment
    assert audit(story.store.path, now=AFTER_STORY).ok
    report = audit(story.store.path, now=AFTER_STORY + timedelta(minutes=5), grace=timedelta(seconds=30))
    assert violated(report) == {"orders_terminal"}
    (stuck,) = report["orders_terminal"].violations
    assert stuck["order_id"] == "O5" and stuck["status"] == "confirmed"
    assert stuck["age_s"] == pytest.approx(300.58)  # created at 09:00:00.420 on day 2, now 09:05:01


def test_an_order_is_stuck_once_its_current_step_outlasts_the_grace(tmp_path):
    story = ShopStory(tmp_path / "events.db")
    story.user("U1")
    story.product("P1", price_cents=1000, stock=10)
    order = story.place("O1", "U1", {"P1": 1})
    story.now += timedelta(seconds=50)  # Inventory answers late, but before its deadline
    story.reserve(order)  # confirmed: now it waits for Payment, since the confirmation
    story.publish()
    confirmed = story.now
    grace = timedelta(seconds=30)
    assert audit(story.store.path, now=confirmed + timedelta(seconds=20), grace=grace).ok
    report = audit(story.store.path, now=confirmed + timedelta(seconds=40), grace=grace)
    assert violated(report) == {"orders_terminal"}
    (stuck,) = report["orders_terminal"].violations
    assert stuck["waiting_for"] == "Payment's answer (OrderConfirmed not answered)"
    assert stuck["step_age_s"] == pytest.approx(40, abs=0.1)


def test_cli_audit_gives_a_step_as_long_as_the_shop_does(tmp_path, monkeypatch, capsys):
    # an order confirmed 45 s ago, still waiting for Payment, whose deadline is twice the saga timeout
    story, _ = confirmed_order(tmp_path / "events.db", quantity=1, start=datetime.now(UTC) - timedelta(seconds=45))
    story.publish()
    monkeypatch.setenv("EVENTLAB_SAGA_TIMEOUT_S", "30")  # Payment may take 60 s: in flight
    assert main(["audit", "--data-dir", str(tmp_path)]) == 0
    monkeypatch.setenv("EVENTLAB_SAGA_TIMEOUT_S", "10")  # 20 s: stuck
    assert main(["audit", "--data-dir", str(tmp_path)]) == 1
    assert re.search(r"^orders_terminal +VIOLATED \(1\)$", capsys.readouterr().out, re.MULTILINE)


def test_stock_never_negative_catches_an_oversold_reservation(healthy):
    # a buggy Inventory reserving 9 of P2 with 4 available, through the real store
    healthy.write(StockReserved(product_id="P2", order_id="O9", quantity=9))
    healthy.publish()
    report = audit(healthy.store.path, now=LATER)
    assert violated(report) == {"stock_never_negative", "effects_of_placed_orders"}  # O9 was never placed either
    assert report["stock_never_negative"].violations == (
        {
            "product_id": "P2",
            "first_position": healthy.store.head(),
            "available": -5,
            "reserved": 9,
            "sold": 1,
            "negative_positions": 1,
        },
    )


def test_stock_conserved_catches_a_duplicated_event(healthy):
    with sqlite3.connect(healthy.store.path) as con:  # StockAdded of P1 delivered twice, written raw
        con.execute(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data,"
            " metadata, recorded_at) SELECT 'duplicate-1', aggregate_type, aggregate_id, 99, event_type,"
            " schema_version, data, metadata, recorded_at FROM events WHERE event_type = 'StockAdded'"
            " AND aggregate_id = 'P1'"
        )
    healthy.publish()
    report = audit(healthy.store.path, now=LATER)
    assert violated(report) == {"stock_conserved"}
    assert report["stock_conserved"].violations == (
        {
            "product_id": "P1",
            "order_id": None,
            "status": None,
            "problem": "initial stock 10 but available + reserved + sold = 20",
        },
    )


def test_stock_conserved_catches_units_left_reserved_by_a_completed_order(tmp_path):
    story, order = confirmed_order(tmp_path / "events.db", quantity=2)
    story.pay(order)
    story.write(OrderCompleted(order_id="O1", user_id="U1", total_cents=2000, lines=order.lines))  # no StockSold
    story.publish()
    report = audit(story.store.path, now=LATER)
    assert violated(report) == {"stock_conserved", "completed_orders_sold_lines"}
    assert report["stock_conserved"].violations == (
        {"product_id": "P1", "order_id": "O1", "status": "completed", "problem": "reserved 2, released 0, sold 0"},
    )


def test_stock_conserved_catches_a_release_of_units_already_sold(healthy):
    healthy.write(StockReleased(product_id="P1", order_id="O1", quantity=2))
    healthy.publish()
    report = audit(healthy.store.path, now=LATER)
    assert violated(report) == {"stock_conserved", "stock_never_negative"}  # reserved drops to -2 as well
    assert report["stock_never_negative"].violations[0]["reserved"] == -2
    problems = [(v["product_id"], v["order_id"], v["problem"]) for v in report["stock_conserved"].violations]
    # released units come out of "reserved", so the product's total still adds up: only the order's ledger shows it
    assert problems == [("P1", "O1", "reserved 2, released 2, sold 2")]


def test_no_double_charge_catches_a_second_successful_payment(healthy):
    healthy.write(PaymentCompleted(order_id="O1", amount_cents=2250, status="COMPLETED"))
    healthy.publish()
    report = audit(healthy.store.path, now=LATER)
    assert violated(report) == {"no_double_charge"}
    positions = [healthy.positions["O1:paid"], healthy.store.head()]
    assert report["no_double_charge"].violations == (
        {"order_id": "O1", "charges": 2, "charged_cents": 4500, "positions": positions},
    )


def test_a_second_payment_whose_data_repeats_its_order_id_is_not_let_through(healthy, audit_of):
    # given a second successful payment of O1 stored as JSON naming order O9 first and O1 last: the services
    # (pydantic) read the last value, the projections (DuckDB) the first, so no_double_charge saw O9 once
    healthy.write(PaymentCompleted(order_id="O1", amount_cents=2250, status="COMPLETED"))
    raw(
        healthy.store.path,
        f'UPDATE events SET data = \'{{"order_id": "O9", \' || substr(data, 2) WHERE position = {healthy.store.head()}',
    )
    healthy.publish()
    # then the audit is not green: it names the event whose readers disagree
    report = audit_of(healthy)
    [violation] = report["event_data_valid"].violations
    assert violation["position"] == healthy.store.head()
    assert violation["problem"].startswith("data repeats a key"), violation


def test_an_integer_beyond_64_bits_is_named_not_read_as_missing(healthy, audit_of):
    # given a stock addition whose quantity no 64-bit integer holds (the projections read it as NULL)
    [added, *_] = [r.position for r in healthy.store.read_records() if r.event_type == "StockAdded"]
    raw(healthy.store.path, copy_event(added, data="json_set(data, '$.quantity', json('100000000000000000000'))"))
    healthy.publish()
    report = audit_of(healthy)
    [violation] = report["event_data_valid"].violations
    assert violation["problem"] == "quantity: beyond 64-bit integers, which the projections hold", violation


def test_data_the_services_would_refuse_as_loose_is_named(healthy, audit_of):
    # given a stock addition whose quantity is the text "5": a lax reader would coerce it, the services refuse it
    [added, *_] = [r.position for r in healthy.store.read_records() if r.event_type == "StockAdded"]
    raw(healthy.store.path, copy_event(added, data="json_set(data, '$.quantity', '5')"))
    healthy.publish()
    report = audit_of(healthy)
    [violation] = report["event_data_valid"].violations
    assert violation["problem"] == "quantity: Input should be a valid integer", violation


def test_a_charge_for_an_order_nobody_placed_is_caught(healthy):
    # given a payment (as Payment would make for an OrderConfirmed forged on its topic) of an order never created
    healthy.write(PaymentCompleted(order_id="O-ghost", amount_cents=123_456, status="COMPLETED"))
    healthy.publish()
    report = audit(healthy.store.path, now=LATER)
    # then the audit names the order and where its events are; every other check still holds
    assert violated(report) == {"effects_of_placed_orders"}
    assert report["effects_of_placed_orders"].violations == (
        {"order_id": "O-ghost", "event_types": ["PaymentCompleted"], "events": 1, "positions": [healthy.store.head()]},
    )


def test_a_refund_or_an_email_that_contradicts_how_the_order_ended_is_caught(healthy):
    # given what Payment and Notification do for an OrderCancelled forged on its topic for the
    # completed O1, and for an OrderCompleted forged for the declined O3
    healthy.write(PaymentRefunded(order_id="O1", amount_cents=2250))
    first = healthy.store.head()
    healthy.write(EmailRequested(order_id="O1", kind="order_cancelled", to="u1@example.com", subject="cancelled"))
    healthy.write(EmailRequested(order_id="O3", kind="order_completed", to="u1@example.com", subject="paid"))
    healthy.publish()
    report = audit(healthy.store.path, now=LATER)
    # then the audit names both orders and what was done; money and stock still add up
    assert violated(report) == {"effects_match_outcome"}
    assert report["effects_match_outcome"].violations == (
        {
            "order_id": "O1",
            "status": "completed",
            "effects": ["PaymentRefunded", "EmailRequested order_cancelled"],
            "positions": [first, first + 1],
        },
        {
            "order_id": "O3",
            "status": "cancelled",
            "effects": ["EmailRequested order_completed"],
            "positions": [first + 2],
        },
    )


def test_a_charge_of_another_amount_than_the_orders_total_is_caught(tmp_path):
    # given what Payment does for an OrderConfirmed forged with a total of 1 cent before the real one:
    # it charges 1 cent, the gateway answers the real one as a repeat, and the order completes
    story, order = confirmed_order(tmp_path / "events.db", quantity=2)
    story.write(PaymentCompleted(order_id="O1", amount_cents=1, status="COMPLETED"))
    story.complete(order)
    story.publish()
    report = audit(story.store.path, now=LATER)
    # then the audit names the charge and the order's total; stock and the saga still add up
    assert violated(report) == {"charges_match_order_totals"}
    [charge] = report["charges_match_order_totals"].violations
    assert (charge["order_id"], charge["charged_cents"], charge["total_cents"]) == ("O1", 1, 2000)


def test_a_completed_order_inventory_rejected_is_caught(tmp_path):
    # given an order Inventory rejected that completed all the same (a ReservationConfirmed forged on
    # its topic reached Order first): confirmed, charged and completed, no unit reserved or sold
    story = ShopStory(tmp_path / "events.db")
    story.user("U1")
    story.product("P1", price_cents=1000, stock=1)
    order = story.place("O1", "U1", {"P1": 2})
    story.write(ReservationRejected(order_id="O1", product_id="P1", requested=2, available=1))
    story.write(OrderConfirmed(order_id="O1", user_id="U1", total_cents=2000))
    story.pay(order)
    story.write(OrderCompleted(order_id="O1", user_id="U1", total_cents=2000, lines=order.lines))
    story.publish()
    report = audit(story.store.path, now=LATER)
    # then the audit names the order and the units it never sold
    assert violated(report) == {"completed_orders_sold_lines"}
    [line] = report["completed_orders_sold_lines"].violations
    assert (line["order_id"], line["product_id"], line["ordered"], line["sold"]) == ("O1", "P1", 2, 0)


def test_a_completed_order_that_sold_fewer_units_than_placed_is_caught(healthy):
    # given O1 (P1 x2 + P2 x1), whose StockSold of P1 says 1 unit: rewritten, as by a bug
    with sqlite3.connect(healthy.store.path) as con:
        con.execute(
            "UPDATE events SET data = json_set(data, '$.quantity', 1)"
            " WHERE event_type = 'StockSold' AND json_extract(data, '$.product_id') = 'P1'"
        )
    con.close()
    report = audit(healthy.store.path, now=LATER)
    assert "completed_orders_sold_lines" in violated(report)
    assert [(v["product_id"], v["ordered"], v["sold"]) for v in report["completed_orders_sold_lines"].violations] == [
        ("P1", 2, 1)
    ]


def test_an_email_sent_elsewhere_than_requested_is_caught_in_the_log_and_the_mailbox(healthy, tmp_path):
    # given what Notification does for an EmailRequested forged for O1 to another address: it sends
    # that one (the mailbox says so too), and the customer's own is then taken as already sent
    healthy.write(EmailSent(order_id="O1", kind="order_completed", to="attacker@evil.example"))
    healthy.publish()
    mailbox = tmp_path / "mailbox.jsonl"
    sent = {"key": "O1/order_completed", "order_id": "O1", "kind": "order_completed", "subject": "re-enter your card"}
    mailbox.write_text(json.dumps({**sent, "to": "attacker@evil.example"}) + "\n")
    report = audit(healthy.store.path, now=LATER, mailbox=mailbox)
    # then both the log and the mailbox checks name it
    assert violated(report) == {"emails_sent_as_requested", "emails_backed_by_events"}
    [email] = report["emails_sent_as_requested"].violations
    assert (email["order_id"], email["sent_to"], email["requested_for"]) == (
        "O1",
        "attacker@evil.example",
        ["u1@example.com"],
    )
    assert report["emails_backed_by_events"].violations[0]["problem"].endswith("order, kind and address")


def test_failed_payment_without_release_is_caught(tmp_path):
    story, order = confirmed_order(tmp_path / "events.db", quantity=2)
    story.pay(order, approved=False)
    story.cancel(order, "payment_failed", "card declined", release=False)  # Inventory never compensated
    story.publish()
    report = audit(story.store.path, now=LATER)
    assert violated(report) == {"failed_payments_compensated", "stock_conserved"}
    (missing,) = report["failed_payments_compensated"].violations
    assert missing == {
        "order_id": "O1",
        "failed_position": story.positions["O1:paid"],
        "product_id": "P1",
        "reserved": 2,
        "released": 0,
        "problem": "released 0 of 2 reserved units",
    }


def test_failed_payment_without_cancellation_is_caught_once_settled(tmp_path):
    story, order = confirmed_order(tmp_path / "events.db", quantity=2)
    story.pay(order, approved=False)  # and then the order service never answers
    story.publish()
    just_after = story.now + timedelta(seconds=1)
    assert audit(story.store.path, now=just_after).ok  # still in flight
    report = audit(story.store.path, now=LATER)
    assert violated(report) == {"failed_payments_compensated", "orders_terminal"}
    problems = [(v["product_id"], v["problem"]) for v in report["failed_payments_compensated"].violations]
    assert problems == [(None, "the order was not cancelled"), ("P1", "released 0 of 2 reserved units")]


def test_a_payment_declined_after_its_order_timed_out_is_compensated(tmp_path):
    story, order = confirmed_order(tmp_path / "events.db", quantity=2)
    # the payment step times out while the gateway still answers: cancelled and released first ...
    story.cancel(order, "timeout", "no answer from Payment", release=True)
    story.pay(order, approved=False)  # ... and then the gateway declines
    story.publish()
    assert audit(story.store.path, now=LATER).ok


def test_all_events_published_catches_a_relay_that_fell_behind(healthy):
    head = healthy.store.head()
    healthy.store.set_checkpoint("relay", head - 5)
    assert audit(healthy.store.path, now=healthy.now + timedelta(seconds=1)).ok  # the relay is just busy
    report = audit(healthy.store.path, now=LATER)
    assert violated(report) == {"all_events_published"}
    (behind,) = report["all_events_published"].violations
    assert (
        behind["relay_checkpoint"],
        behind["last_position"],
        behind["unpublished"],
        behind["first_unpublished"],
    ) == (head - 5, head, 5, head - 4)
    with sqlite3.connect(healthy.store.path) as con:
        con.execute("DELETE FROM checkpoints")
    assert audit(healthy.store.path, now=LATER)["all_events_published"].violations[0]["unpublished"] == head


def test_the_audits_own_checks_run_without_the_ad_hoc_time_limit(healthy, monkeypatch):
    # given: every query the sandbox runs, with the time limit it gets
    limits = []
    run = Sandbox.run
    monkeypatch.setattr(
        Sandbox, "run", lambda self, sql, params, timeout: limits.append(timeout) or run(self, sql, params, timeout)
    )
    # when: a store is audited
    assert audit(healthy.store.path, now=LATER).ok
    # then: none of its checks can fail for want of time (a busy machine, a big log)
    assert limits and set(limits) == {None}


def test_audit_of_open_projections_catches_up_first(healthy):
    with Projections(healthy.store.path) as projections:
        healthy.write(PaymentCompleted(order_id="O1", amount_cents=2250, status="COMPLETED"))
        healthy.publish()
        report = audit(projections, now=LATER, limit=0)
        assert projections.checkpoint == healthy.store.head() == report.position
        assert violated(report) == {"no_double_charge"}
        assert report["no_double_charge"].count == 1 and report["no_double_charge"].violations == ()


def test_cli_audit_prints_json_and_fails_on_a_violation(healthy, capsys):
    data_dir = str(healthy.store.path.parent)
    assert main(["audit", "--data-dir", data_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {c.name: {"ok": True, "violations": []} for c in CHECKS} | SKIPPED

    healthy.write(PaymentCompleted(order_id="O1", amount_cents=2250, status="COMPLETED"))
    healthy.publish()
    assert main(["audit", "--data-dir", data_dir, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["no_double_charge"]["ok"] is False and result["stock_conserved"] == {"ok": True, "violations": []}
    assert result["no_double_charge"]["violations"][0]["order_id"] == "O1"
    assert main(["audit", "--data-dir", data_dir]) == 1
    assert re.search(r"^no_double_charge +VIOLATED \(1\)$", capsys.readouterr().out, re.MULTILINE)


def test_cli_audit_of_a_missing_store_is_an_error(tmp_path, capsys):
    assert main(["audit", "--data-dir", str(tmp_path / "nothing-here")]) == 2
    assert "no event store" in capsys.readouterr().err
    assert not (tmp_path / "nothing-here").exists()


# --- corruptions the audit used to pass (issue 8) -------------------------------------------------------
# Each is written with raw sqlite3, as a bug or a hand edit would; each is audited twice: with the store
# open in this process (read through sqlite3) and closed (attached by DuckDB's sqlite extension).


@pytest.fixture(params=["store open in this process", "store closed"])
def audit_of(request):
    def run(story: ShopStory, **kwargs):
        if request.param == "store closed":
            story.store.close()
        return audit(story.store.path, now=LATER, **kwargs)

    return run


def raw(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as con:
        for statement in statements:
            con.execute(statement)
    con.close()


def copy_event(position: int, copy: int = 1, **changes: str) -> str:
    """SQL that appends copy number ``copy`` of the event at ``position``, some columns replaced by SQL expressions."""
    columns = ["aggregate_type", "aggregate_id", "version", "event_type", "schema_version", "data", "metadata"]
    values = {"version": "version + 1000", **changes}
    selected = ", ".join(values.get(c, c) for c in columns)
    return (
        f"INSERT INTO events (event_id, {', '.join(columns)}, recorded_at)"
        f" SELECT 'copy-{copy}-' || position, {selected}, recorded_at FROM events WHERE position = {position}"
    )


def test_a_second_order_completed_is_caught(healthy, audit_of):
    # given O1's OrderCompleted stored twice (Inventory would sell its stock again on the next start)
    completed = healthy.positions["O1:completed"]
    raw(healthy.store.path, copy_event(completed))
    healthy.publish()
    # then the audit names the order and both positions
    report = audit_of(healthy)
    assert violated(report) == {"one_terminal_event_per_order"}
    assert report["one_terminal_event_per_order"].violations == (
        {
            "order_id": "O1",
            "terminal_events": 2,
            "event_types": ["OrderCompleted", "OrderCompleted"],
            "positions": [completed, healthy.store.head()],
        },
    )


def test_an_order_both_completed_and_cancelled_is_caught(healthy, audit_of):
    lines = healthy.store.read_stream("order", "O1")[0].event.lines
    order = OrderCancelled(order_id="O1", user_id="U1", reason="payment_failed", detail="late", lines=lines)
    [cancelled] = healthy.write(order)
    healthy.publish()
    report = audit_of(healthy)
    assert "one_terminal_event_per_order" in violated(report)
    (twice,) = report["one_terminal_event_per_order"].violations
    assert twice["event_types"] == ["OrderCompleted", "OrderCancelled"]
    assert twice["positions"] == [healthy.positions["O1:completed"], cancelled.position]


def test_a_relay_checkpoint_beyond_the_head_is_caught(healthy, audit_of):
    head = healthy.store.head()
    raw(healthy.store.path, f"UPDATE checkpoints SET position = {head + 7} WHERE name = 'relay'")
    report = audit_of(healthy)
    assert violated(report) == {"relay_checkpoint_within_log"}
    assert report["relay_checkpoint_within_log"].violations == ({"relay_checkpoint": head + 7, "last_position": head},)


def test_an_unknown_schema_version_is_caught(healthy, audit_of):
    # given U1's UserCreated (position 1) stored with a schema version no class declares
    raw(healthy.store.path, "UPDATE events SET schema_version = 7 WHERE position = 1")
    report = audit_of(healthy)
    assert violated(report) == {"known_schema_versions"}
    assert report["known_schema_versions"].violations == (
        {"event_type": "UserCreated", "schema_version": 7, "declared_version": 1, "events": 1, "positions": [1]},
    )


def test_an_unknown_event_type_is_caught(healthy, audit_of):
    completed = healthy.positions["O1:completed"]
    raw(healthy.store.path, copy_event(completed, event_type="'OrderTeleported'"))
    healthy.publish()
    report = audit_of(healthy)
    assert violated(report) == {"known_event_types"}
    assert report["known_event_types"].violations == (
        {"event_type": "OrderTeleported", "events": 1, "positions": [healthy.store.head()]},
    )


def test_events_whose_data_does_not_validate_are_caught(healthy, audit_of):
    # given a UserCreated with a field its class does not have, one without an email, and a
    # StockAdded stored in another product's stream than its data names
    raw(
        healthy.store.path,
        copy_event(1, data="""json_set(data, '$.admin', json('true'))""", aggregate_id="'U9'"),
        copy_event(1, copy=2, data="json_remove(json_set(data, '$.user_id', 'U8'), '$.email')", aggregate_id="'U8'"),
        "UPDATE events SET aggregate_id = 'P-elsewhere' WHERE event_type = 'StockAdded' AND aggregate_id = 'P1'",
    )
    healthy.publish()
    head = healthy.store.head()
    [stock_added] = [r.position for r in healthy.store.read_records() if r.aggregate_id == "P-elsewhere"]
    report = audit_of(healthy)
    assert violated(report) == {"event_data_valid"}
    problems = {v["position"]: (v["event_type"], v["problem"]) for v in report["event_data_valid"].violations}
    assert problems == {
        stock_added: ("StockAdded", "stored in stream stock:P-elsewhere but its data belongs to stock:P1"),
        head - 1: ("UserCreated", "admin: Extra inputs are not permitted"),
        head: ("UserCreated", "email: Field required"),
    }


def test_an_event_whose_data_is_not_json_is_named_and_the_other_projections_still_build(healthy, audit_of):
    # given a UserCreated whose data a broken writer stored as text that is not JSON
    raw(healthy.store.path, copy_event(1, data="'{not json'", aggregate_id="'U7'"))
    healthy.publish()
    # then the audit does not stop: it names that position, and every other check still runs
    report = audit_of(healthy)
    assert violated(report) == {"event_data_valid"}
    [violation] = report["event_data_valid"].violations
    assert violation["position"] == healthy.store.head() and violation["problem"].startswith("data: Invalid JSON")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("UPDATE eventlab SET value = '99'", "schema version 99, newer than this eventlab understands"),
        ("DROP TABLE processed", "table 'processed' is missing"),
        ("DROP TABLE events", "events"),
    ],
)
@pytest.mark.parametrize("open_in_process", [True, False])
def test_cli_audit_refuses_a_broken_or_newer_store(healthy, capsys, damage, message, open_in_process):
    if not open_in_process:
        healthy.store.close()
    raw(healthy.store.path, damage)
    assert main(["audit", "--data-dir", str(healthy.store.path.parent)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and str(healthy.store.path) in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_cli_audit_of_a_file_that_is_not_sqlite_is_an_error(tmp_path, capsys):
    (tmp_path / "events.db").write_text("order_id,status\nO1,completed\n" * 50)
    assert main(["audit", "--data-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "not a database" in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_order_events_stored_by_an_older_eventlab_pass_every_check(healthy, audit_of):
    # given the orders' events stored as schema version 1 (before they carried the email)
    raw(
        healthy.store.path,
        "UPDATE events SET schema_version = 1, data = json_remove(data, '$.email') WHERE aggregate_type = 'order'",
    )
    # then the audit reads them as the version they are: nothing violated
    assert violated(audit_of(healthy)) == set()


def test_without_a_mailbox_the_mailbox_checks_say_they_were_not_run(healthy, tmp_path):
    # given: a healthy shop, audited with no mailbox file and then with an empty one
    without = audit(healthy.store.path, now=LATER, mailbox=tmp_path / "nowhere.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with_empty = audit(healthy.store.path, now=LATER, mailbox=tmp_path / "empty.jsonl")
    # then: without one, the mailbox checks are skipped (said in every output), not passed on nothing
    assert without.skipped == [c.name for c in MAILBOX_CHECKS] and without.ok
    assert all(not without[c.name].ok and without[c.name].skipped == "no mailbox" for c in MAILBOX_CHECKS)
    assert "skipped: no mailbox" in without.table() and "skipped: no mailbox" in without._repr_html_()
    assert without.as_dict()[MAILBOX_CHECKS[0].name] == {"ok": None, "skipped": "no mailbox", "violations": []}
    # and an empty mailbox is a mailbox: its checks ran and hold
    assert with_empty.skipped == [] and all(with_empty[c.name].ok for c in MAILBOX_CHECKS)


def test_an_attached_store_is_checked_through_duckdb_and_never_opened_with_sqlite3(healthy, monkeypatch):
    # given a closed store that DuckDB's sqlite extension attaches (opening it with sqlite3 too, in the
    # same process, could crash it: two SQLite libraries on one WAL file)
    healthy.store.close()

    def sqlite3_beside_duckdb(path: Path) -> None:
        raise AssertionError(f"{path} opened with sqlite3 while DuckDB's SQLite has it attached")

    # (the module, not the function the package exports under the same name)
    monkeypatch.setattr(sys.modules["eventlab.projections.audit"], "verify_event_store", sqlite3_beside_duckdb)
    # when it is audited, then its schema is read from DuckDB's catalogue and every check holds
    with Projections(healthy.store.path, attach=True) as projections:
        assert projections.attached
        assert violated(audit(projections, now=LATER)) == set()
        # and the catalogue is a real one: it names the store's tables and its schema version
        columns, version = projections.attached_schema()
    assert {"events", "eventlab"} <= set(columns) and version is not None and int(version) >= 1
