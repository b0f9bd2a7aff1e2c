"""The Python API refuses bad arguments with an error that names them, and writes nothing."""

from __future__ import annotations

import pytest

from eventlab.errors import InvalidCommand


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
