"""The notebooks' self-checking exercises (eventlab.exercises, notebooks/solutions/).

- Every notebook has exercises, each answer cell followed by its check cell, and a worked answer
  for each in notebooks/solutions/; the committed notebooks keep the placeholders, and their
  saved check outputs say "not yet" (``pytest --nbval`` runs them that way and compares).
- Each notebook, with its worked answers put in place of the placeholders, runs to the end in
  one kernel and every check cell prints ✓.
- Each check, given a wrong answer, raises an AssertionError saying what is wrong; given the
  placeholder it prints a hint and raises nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from eventlab import Shop
from eventlab.events import UserCreated
from eventlab.exercises import (
    WrongAnswer,
    check_cancelled_for_stock,
    check_compensation_cause,
    check_conflict,
    check_first_order,
    check_fold,
    check_lost_revenue_query,
    check_order_message,
    check_outage_nothing_lost,
    check_payment_parent,
    check_stock_when_declined,
)
from eventlab.projections import Projections
from eventlab.services import order
from eventlab.store import NewEvent
from eventlab.workshop import read_topic, run_order, sequential_ids

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))
BLOCK = re.compile(r"^# %% (\w+)\s*$", re.MULTILINE)


def solutions(name: str) -> dict[str, str]:
    """The ``# %% <exercise>`` blocks of ``notebooks/solutions/<name>.py``, by exercise name."""
    parts = BLOCK.split((SOLUTIONS / f"{name}.py").read_text())
    return {parts[i]: parts[i + 1].strip() + "\n" for i in range(1, len(parts), 2)}


def load(name: str) -> dict[str, Any]:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


def tagged(nb: dict[str, Any], role: str) -> list[tuple[int, str]]:
    """(cell index, exercise name) of the cells whose metadata ``eventlab.<role>`` names an exercise."""
    return [
        (i, cell["metadata"]["eventlab"][role])
        for i, cell in enumerate(nb["cells"])
        if role in cell.get("metadata", {}).get("eventlab", {})
    ]


def stdout(cell: dict[str, Any]) -> str:
    return "".join(
        "".join(o["text"]) for o in cell.get("outputs", []) if o["output_type"] == "stream" and o["name"] == "stdout"
    )


# --- the notebooks as committed ----------------------------------------------------------------


def test_every_notebook_has_a_solution_file():
    assert len(NAMES) == 8
    assert sorted(p.stem for p in SOLUTIONS.glob("*.py")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_holds_placeholders_and_its_checks_say_not_yet(name):
    # given the notebook as committed (and as run by pytest --nbval)
    nb = load(name)
    exercises, checks = tagged(nb, "exercise"), tagged(nb, "check")

    # then it has exercises, each answer cell right before its check cell, each with a worked answer
    assert 1 <= len(exercises) <= 2
    assert [(i + 1, e) for i, e in exercises] == checks
    assert sorted(e for _, e in exercises) == sorted(solutions(name))
    for (i, _), (j, _) in zip(exercises, checks, strict=True):
        assert "= None  # your turn" in "".join(nb["cells"][i]["source"])
        # and the saved output of the check is the "not yet" hint
        assert stdout(nb["cells"][j]).startswith("not yet — "), stdout(nb["cells"][j])
    # and the exercises come after everything the notebook teaches: only the link on and clean-up follow
    assert all("your turn" not in "".join(c["source"]) for c in nb["cells"][checks[-1][0] + 1 :])


# --- the notebooks with their worked answers ---------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_notebook_with_its_solutions_passes_every_check(name, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # given the notebook with each placeholder cell replaced by its worked answer
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    answers = solutions(name)
    for i, exercise in tagged(notebook, "exercise"):
        notebook.cells[i].source = answers[exercise]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    # when it runs from top to bottom in one kernel
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()

    # then every check cell printed ✓
    for i, exercise in tagged(notebook, "check"):
        printed = stdout(notebook.cells[i])
        assert printed.startswith("✓ "), f"{name} {exercise}: {printed!r}"


# --- each check: placeholder and wrong answers --------------------------------------------------

CHECKS = {
    "first_order": lambda answer: check_first_order(None, answer),
    "fold": lambda answer: check_fold(None, "order-002", answer),
    "conflict": lambda answer: check_conflict(None, answer),
    "cancelled_for_stock": lambda answer: check_cancelled_for_stock(None, answer),
    "compensation_cause": lambda answer: check_compensation_cause(None, "order-003", answer),
    "order_message (order)": lambda answer: check_order_message(None, answer, None),
    "order_message (record)": lambda answer: check_order_message(None, "order-004", answer),
    "lost_revenue_query": lambda answer: check_lost_revenue_query(None, answer),
    "stock_when_declined": lambda answer: check_stock_when_declined(None, None, "order-004", "P001", answer),
    "outage_nothing_lost": lambda answer: check_outage_nothing_lost(None, answer),
    "payment_parent": lambda answer: check_payment_parent([], answer),
}


@pytest.mark.parametrize("placeholder", [None, ...], ids=["None", "Ellipsis"])
@pytest.mark.parametrize("check", CHECKS)
def test_a_placeholder_gets_a_hint_not_an_error(check, placeholder, capsys):
    # when a check is run before the attendee answered, then it only prints a hint
    assert CHECKS[check](placeholder) is None
    printed = capsys.readouterr().out
    assert printed.startswith("not yet — ") and len(printed) > 40


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A shop that ran one order of each kind the exercises ask about."""
    with Shop(data_dir=tmp_path_factory.mktemp("exercises"), seed=13, id_factory=sequential_ids("order")) as shop:
        shop.seed_catalogue()
        run_order(shop, "U002", {"P002": 1, "P005": 1})  # order-001: the answer to notebook 1's task
        run_order(shop, "U002", {"P002": 2})  # order-002: the same customer, other lines
        run_order(shop, "U003", {"P004": 1000})  # order-003: out of stock
        shop.gateway.failure_rate = 1.0
        run_order(shop, "U004", {"P001": 2})  # order-004: declined, stock released
        shop.gateway.failure_rate = 0.0
        shop.gateway.available.clear()
        run_order(shop, "U005", {"P003": 1})  # order-005: gateway down
        shop.gateway.available.set()
        yield shop


@pytest.fixture(scope="module")
def projections(shop):
    with Projections(shop.store) as projections:
        yield projections


def wrong(check, *args) -> str:
    with pytest.raises(AssertionError) as caught:
        check(*args)
    assert isinstance(caught.value, WrongAnswer)
    return str(caught.value)


@pytest.mark.integration
def test_first_order_names_the_wrong_customer_lines_or_id(shop, capsys):
    assert "placed by U003; place one for customer U002" in wrong(check_first_order, shop, "order-003")
    assert "has the lines {'P002': 2}" in wrong(check_first_order, shop, "order-002")
    assert "there is no order 'order-999'" in wrong(check_first_order, shop, "order-999")
    assert "should be an order id" in wrong(check_first_order, shop, 1)
    check_first_order(shop, "order-001")
    assert capsys.readouterr().out.startswith("✓ order-001 completed")


@pytest.mark.integration
def test_fold_names_an_unfinished_fold_and_the_wrong_stream(shop):
    stream = shop.store.read_stream("order", "order-004")
    first = order.evolve(None, stream[0].event)
    message = wrong(check_fold, shop, "order-004", first)
    assert "differs in status" in message and f"as of version 1 of {len(stream)}: fold every event" in message
    assert "that is the state of order-001" in wrong(
        check_fold, shop, "order-004", order.evolve(None, shop.store.read_stream("order", "order-001")[0].event)
    )
    assert "should be the state order.evolve returns" in wrong(check_fold, shop, "order-004", list(stream))


@pytest.mark.integration
def test_conflict_tells_a_successful_append_from_another_error(shop):
    # a successful append (a version that was free), of a fact no invariant counts: stock added by hand would
    # break the audit's stock conservation, which test_outage_needs_orders_that_met_it_and_the_gateway_back checks
    appended = shop.store.append([NewEvent(UserCreated(user_id="U-free", name="Free", email="free@example.com"), 1)])
    assert "the version you chose was free" in wrong(check_conflict, shop, appended)
    assert "that is a ValueError (bad), not a ConcurrencyError" in wrong(check_conflict, shop, ValueError("bad"))
    assert "should be the error you caught" in wrong(check_conflict, shop, "ConcurrencyError")


@pytest.mark.integration
def test_cancelled_for_stock_explains_completed_and_declined_orders(shop):
    assert "order-001 completed: Inventory had enough" in wrong(check_cancelled_for_stock, shop, "order-001")
    assert "because of payment_failed, not lack of stock" in wrong(check_cancelled_for_stock, shop, "order-004")


@pytest.mark.integration
def test_compensation_cause_follows_the_causation_id(shop, capsys):
    events = {e.event_type: e for e in shop.order("order-004").events}
    assert "the compensation itself" in wrong(check_compensation_cause, shop, "order-004", events["StockReleased"])
    message = wrong(check_compensation_cause, shop, "order-004", events["PaymentCompleted"])
    assert "that is PaymentCompleted (written by payment); it caused OrderCancelled" in message
    assert "is not the id of an event" in wrong(check_compensation_cause, shop, "order-004", "nope")
    assert "should be a StoredEvent (or its event_id), not int" in wrong(check_compensation_cause, shop, "order-004", 4)
    check_compensation_cause(shop, "order-004", events["OrderCancelled"].event_id)
    assert capsys.readouterr().out.startswith("✓ OrderCancelled (payment_failed) by order caused StockReleased")


@pytest.mark.integration
def test_order_message_needs_the_real_message_of_that_order(shop):
    records = read_topic(shop, ["order.lifecycle.created", "order.lifecycle.completed"], max_messages=7)
    mine = {(r.topic, r.key): r for r in records}
    created = mine[("order.lifecycle.created", "order-001")]
    assert "keyed 'order-002'" in wrong(
        check_order_message, shop, "order-001", mine[("order.lifecycle.created", "order-002")]
    )
    message = wrong(check_order_message, shop, "order-001", mine[("order.lifecycle.completed", "order-001")])
    assert "that is a OrderCompleted from order.lifecycle.completed" in message
    forged = dataclasses.replace(created, offset=created.offset + 100)
    assert "Kafka has no such message at offset" in wrong(check_order_message, shop, "order-001", forged)
    assert "should be a Record" in wrong(check_order_message, shop, "order-001", created.value)


@pytest.mark.integration
def test_lost_revenue_query_names_what_is_missing_or_out_of_order(projections):
    def query(sql):
        return wrong(check_lost_revenue_query, projections, sql)

    assert "the query did not run" in query("SELEC 1")
    assert "missing column(s) lost_cents" in query("SELECT cancel_reason, count(*) AS orders FROM orders GROUP BY 1")
    full = "SELECT cancel_reason, count(*) AS orders, sum(total_cents) AS lost_cents FROM orders"
    assert "keep only status = 'cancelled'" in query(f"{full} GROUP BY 1")
    assert "sum(total_cents)" in query(
        "SELECT cancel_reason, count(*) AS orders, max(total_cents) AS lost_cents FROM orders "
        "WHERE status = 'cancelled' GROUP BY 1"
    )
    assert "biggest loss first" in query(f"{full} WHERE status = 'cancelled' GROUP BY 1 ORDER BY lost_cents")


@pytest.mark.integration
def test_stock_when_declined_tells_now_from_then(shop, projections, capsys):
    now = projections.pl("inventory").filter(product_id="P001").row(0, named=True)
    assert "after the compensation released the stock" in wrong(
        check_stock_when_declined, shop, projections, "order-004", "P001", now
    )
    assert "it was different" in wrong(check_stock_when_declined, shop, projections, "order-004", "P001", (1, 2, 3))
    assert "should hold available, reserved and sold" in wrong(
        check_stock_when_declined, shop, projections, "order-004", "P001", ("77", "two", "1")
    )
    then = (now["available"] - 2, 2, now["sold"])  # two P001 held for order-004
    check_stock_when_declined(shop, projections, "order-004", "P001", then)
    assert capsys.readouterr().out.startswith("✓ as of position")


@pytest.mark.integration
def test_outage_needs_orders_that_met_it_and_the_gateway_back(shop, capsys):
    assert "none of these orders met a broken gateway" in wrong(
        check_outage_nothing_lost, shop, ["order-001", "order-004"]
    )
    assert "should be a list of order ids" in wrong(check_outage_nothing_lost, shop, "order-005")
    shop.gateway.available.clear()
    try:
        assert "the gateway is still down" in wrong(check_outage_nothing_lost, shop, ["order-005"])
    finally:
        shop.gateway.available.set()
    check_outage_nothing_lost(shop, ["order-005"])
    assert capsys.readouterr().out.startswith("✓ 1 of 1 orders met the outage")


def test_payment_parent_names_the_span_that_is_not_the_parent(capsys):
    from eventlab.tracing.waterfall import SpanRecord

    # given a producer span and Payment's handler span under it
    publish = SpanRecord("t", "p1", "o1", "publish order.lifecycle.confirmed", "PRODUCER", "relay", 1, 2)
    charge = SpanRecord("t", "c1", "h1", "gateway charge", "CLIENT", "payment", 4, 5)
    handler = SpanRecord("t", "h1", "p1", "process order.lifecycle.confirmed", "CONSUMER", "payment", 3, 6)
    spans = [publish, handler, charge]
    # then another span is named as wrong, a non-span as the wrong kind, and the producer passes
    assert "is not the parent of Payment's" in wrong(check_payment_parent, spans, charge)
    assert "should be a SpanRecord" in wrong(check_payment_parent, spans, "p1")
    check_payment_parent(spans, publish)
    assert capsys.readouterr().out.startswith("✓ relay's 'publish order.lifecycle.confirmed'")
