"""Seeding a catalogue of one's own: every row is checked before any is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import unique

from eventlab.catalogue import load_products, load_users
from eventlab.errors import InvalidCommand


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
