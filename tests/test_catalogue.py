"""Seeding a catalogue of one's own: every row is checked before any is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ordering, unique

from eventlab.catalogue import load_products, load_users
from eventlab.errors import InvalidCommand
from eventlab.store import SqliteEventStore


def catalogue(directory: Path, users: list[str], products: list[str]) -> Path:
    directory.mkdir()
    (directory / "users.csv").write_text("\n".join(["user_id,name,email", *users]) + "\n")
    (directory / "products.csv").write_text("\n".join(["product_id,name,price_cents,initial_stock", *products]) + "\n")
    return directory


def test_a_bad_row_names_its_file_line_and_field(tmp_path):
    directory = catalogue(tmp_path / "c", ["U1,Ada,ada@example.com", "U 2,Bob,bob@example.com"], ["P1,Lamp,12.5,3"])
    with pytest.raises(InvalidCommand, match=r"users\.csv, line 3: ") as error:
        load_users(directory)
    assert error.value.field == "user_id"
    with pytest.raises(InvalidCommand, match=r"products\.csv, line 2: ") as error:
        load_products(directory)
    assert error.value.field == "price_cents"


@pytest.mark.parametrize("directory", [Path("/no/such/catalogue"), 5])
def test_a_directory_that_is_not_one_is_refused_naming_it(directory):
    with pytest.raises(InvalidCommand) as error:
        load_users(directory)
    assert error.value.field == "directory"


def test_a_catalogue_with_a_bad_row_writes_nothing(shop, tmp_path):
    # given a catalogue whose first user and product are good, and whose last product is not
    user_id, product_id = unique("U"), unique("P")
    rows = [f"{product_id},Lamp,1250,3", f"{unique('P')},Desk,-1,3"]
    directory = catalogue(tmp_path / "c", [f"{user_id},Ada,ada@example.com"], rows)
    # when it is seeded, then it is refused naming the line and the field, and nothing is written
    with pytest.raises(InvalidCommand, match=r"products\.csv, line 3: ") as error:
        shop.seed_catalogue(directory, timeout=30)
    assert error.value.field == "price_cents"
    assert not shop.store.read_stream("user", user_id)
    assert not shop.store.read_stream("product", product_id)


def test_seeding_again_creates_only_what_is_new_and_leaves_a_taken_id_as_it_is(tmp_path):
    # given a store where U1, P1 and P2 exist
    store = SqliteEventStore(tmp_path / "events.db")
    commands = ordering(store)
    head = store.head()
    # when a catalogue is seeded with them (P2 at another price) and one new user and product
    users = [
        {"user_id": "U1", "name": "Ada", "email": "a@example.com"},
        {"user_id": "U3", "name": "Cy", "email": "c@example.com"},
    ]
    products = [
        {"product_id": "P1", "name": "Pen", "price_cents": 250, "initial_stock": 0},
        {"product_id": "P2", "name": "Pen", "price_cents": 999, "initial_stock": 0},
        {"product_id": "P3", "name": "Ink", "price_cents": 120, "initial_stock": 4},
    ]
    # then only the new ones are created and counted, and P2 keeps its price
    assert commands.seed(users, products) == (1, 1)
    assert [(e.aggregate_type, e.aggregate_id) for e in store.read_all(after=head)] == [
        ("user", "U3"),
        ("product", "P3"),
    ]
    assert [e.event.price_cents for e in store.read_stream("product", "P2")] == [250]
    # and seeding the same again creates nothing
    assert commands.seed(users, products) == (0, 0)
    store.close()
