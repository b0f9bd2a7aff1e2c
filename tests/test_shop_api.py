"""The Python API refuses bad arguments with an error that names them, and writes nothing."""

from __future__ import annotations

import pytest
from conftest import unique

from eventlab.errors import InvalidCommand, NotFound


@pytest.mark.parametrize("lines", [None, 5, "P001"])
def test_order_lines_that_are_neither_a_mapping_nor_a_list_are_refused_naming_lines(shop, customer, lines):
    head = shop.store.head()
    with pytest.raises(InvalidCommand) as error:
        shop.place_order(customer, lines)
    assert error.value.field == "lines"
    assert shop.store.head() == head


def test_order_lines_may_come_from_a_generator(shop, customer, make_product):
    product_id = make_product(stock=5)
    order_id = shop.place_order(customer, ({"product_id": product_id, "quantity": q} for q in [2]))
    assert shop.order(order_id).lines[0].quantity == 2


def test_an_order_placed_twice_under_the_callers_id_is_one_saga(shop, customer, make_product):
    # given an order placed under an id of the caller's choosing
    product_id = make_product(stock=5)
    order_id = unique("mine-")
    assert shop.place_order(customer, {product_id: 1}, order_id=order_id) == order_id
    # when it is placed again, then the same id comes back and the saga runs once
    assert shop.place_order(customer, {product_id: 1}, order_id=order_id) == order_id
    order = shop.wait(order_id)
    assert [e.event_type for e in order.events].count("OrderCreated") == 1 and order.status == "completed"
    # and the id is checked like any: one that is not an id is refused naming it
    with pytest.raises(InvalidCommand) as error:
        shop.place_order(customer, {product_id: 1}, order_id="no spaces")
    assert error.value.field == "order_id"


@pytest.mark.parametrize("timeout", [None, -1, float("nan"), float("inf"), "5", True])
def test_a_wait_whose_timeout_is_not_a_number_of_seconds_is_refused_naming_it(shop, timeout):
    with pytest.raises(ValueError, match="timeout"):
        shop.wait("any-order", timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        shop.wait_idle(timeout=timeout)


def test_redelivering_what_is_not_a_stored_event_says_what_it_takes(shop, customer, make_product):
    order = shop.order(shop.place_order(customer, {make_product(stock=5): 1}))
    with pytest.raises(
        TypeError, match=r"one stored event, e\.g\. shop\.order\(order_id\)\.events\[0\], not OrderView"
    ):
        shop.faults.redeliver(order)


def test_an_unknown_order_id_is_quoted_and_shortened_in_the_error(shop):
    with pytest.raises(NotFound) as error:
        shop.order("x" * 100_000)
    assert error.value.field == "order_id"
    assert len(str(error.value)) < 200
    assert "unknown order 'xxx" in str(error.value)
