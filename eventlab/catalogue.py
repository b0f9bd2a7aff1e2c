"""The demo's users and products, read from the CSV files in ``data/``."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["data_dir", "load_products", "load_users"]


def data_dir() -> Path:
    """``data/`` of a source checkout, or the copy packaged inside the wheel."""
    checkout = Path(__file__).resolve().parents[1] / "data"
    if (checkout / "products.csv").is_file():
        return checkout
    return Path(str(resources.files("eventlab") / "data"))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def load_users(directory: Path | None = None) -> list[dict[str, Any]]:
    """Rows of ``users.csv``: user_id, name, email."""
    return _rows((directory or data_dir()) / "users.csv")


def load_products(directory: Path | None = None) -> list[dict[str, Any]]:
    """Rows of ``products.csv`` with ``price_cents`` and ``initial_stock`` as integers."""
    rows = _rows((directory or data_dir()) / "products.csv")
    return [{**row, "price_cents": int(row["price_cents"]), "initial_stock": int(row["initial_stock"])} for row in rows]
