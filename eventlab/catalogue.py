"""The demo's users and products, read from the CSV files in ``data/``.

Every row is checked as the command it becomes; a bad one raises
:class:`~eventlab.errors.InvalidCommand` naming the field, with the file and line in the message.
"""

from __future__ import annotations

import csv
import os
from importlib import resources
from pathlib import Path
from typing import Any

from eventlab.commands import Command, CreateProduct, RegisterUser, parse
from eventlab.errors import InvalidCommand

__all__ = ["data_dir", "load_products", "load_users"]


def data_dir() -> Path:
    """``data/`` of a source checkout, or the copy packaged inside the wheel."""
    checkout = Path(__file__).resolve().parents[1] / "data"
    if (checkout / "products.csv").is_file():
        return checkout
    return Path(str(resources.files("eventlab") / "data"))


def load_users(directory: Path | None = None) -> list[dict[str, Any]]:
    """Rows of ``users.csv``: user_id, name, email."""
    return _load(RegisterUser, directory, "users.csv")


def load_products(directory: Path | None = None) -> list[dict[str, Any]]:
    """Rows of ``products.csv`` with ``price_cents`` and ``initial_stock`` as integers."""
    return _load(CreateProduct, directory, "products.csv", whole_numbers=("price_cents", "initial_stock"))


def _load(
    command: type[Command], directory: Path | None, name: str, whole_numbers: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The rows of ``directory/name``, each checked as ``command``."""
    if directory is not None and not isinstance(directory, str | os.PathLike):
        raise InvalidCommand("directory", f"expected the path of a directory, not {directory!r:.80}")
    path = Path(directory or data_dir()) / name
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidCommand("directory", f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    checked = []
    for line, row in rows:
        try:
            checked.append(parse(command, {k: _whole(v) if k in whole_numbers else v for k, v in row.items()}))
        except InvalidCommand as exc:
            raise InvalidCommand(exc.field, f"{path}, line {line}: {exc.message}") from None
    return [each.model_dump() for each in checked]


def _whole(text: str) -> int | str:
    """``text`` as an integer if it is one (else unchanged, for the command to refuse)."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return text
