"""Commands: imperative requests that may be rejected, validated at the boundary.

:func:`parse` turns any mapping (an HTTP body, keyword arguments) into a command or raises
:class:`~eventlab.errors.InvalidCommand` naming the offending field.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from eventlab.errors import InvalidCommand
from eventlab.events import MAX_PRICE_CENTS, MAX_STOCK, distinct_products

__all__ = [
    "MAX_LINES",
    "MAX_QUANTITY",
    "CreateProduct",
    "LineRequest",
    "PlaceOrder",
    "RegisterUser",
    "parse",
    "printable",
    "valid_id",
]

MAX_QUANTITY = 1_000
MAX_LINES = 50

Id = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_ID = TypeAdapter(Annotated[str, Id])


def valid_id(field: str, value: Any) -> str:
    """``value`` if it is an id a command accepts, else :class:`InvalidCommand` naming ``field``."""
    try:
        return _ID.validate_python(value, strict=True)
    except ValidationError as exc:
        raise InvalidCommand(field, f"{value!r:.80} is not a valid id: {exc.errors()[0]['msg']}") from None


#: Unicode categories no name or address needs: controls (NUL, ESC, newlines), format characters
#: (bidi overrides such as U+202E, zero-width spaces, BOM), lone surrogates, line/paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Format characters that real names need: ZWNJ and ZWJ join letters in Persian, Indic scripts and emoji.
_JOINERS = frozenset("\u200c\u200d")


def printable(text: str) -> str:
    r"""``text`` unchanged, or ValueError naming the first control or format character in it.

    Such characters are invisible or reorder what a person reads (``"evil\u202egnp.exe"`` shows as
    ``evilexe.png``), and break logs, terminals and e-mail headers downstream.
    """
    for index, char in enumerate(text):
        if unicodedata.category(char) in _UNPRINTABLE and char not in _JOINERS:
            name = unicodedata.name(char, "control character")
            raise ValueError(
                f"contains U+{ord(char):04X} ({name}) at index {index}: control and format characters are not allowed"
            )
    return text


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        return printable(value) if isinstance(value, str) else value


class RegisterUser(Command):
    """Register a customer."""

    user_id: str = Id
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class CreateProduct(Command):
    """Add a product to the catalogue with its price (cents) and initial stock."""

    product_id: str = Id
    name: str = Field(min_length=1, max_length=200)
    price_cents: int = Field(ge=0, le=MAX_PRICE_CENTS, strict=True)
    initial_stock: int = Field(default=0, ge=0, le=MAX_STOCK, strict=True)


class LineRequest(Command):
    product_id: str = Id
    quantity: int = Field(gt=0, le=MAX_QUANTITY, strict=True)


class PlaceOrder(Command):
    """Order some products for a user; prices come from the catalogue.

    ``order_id`` is optional: the service makes one when it is left out. A client that sends its own
    (a fresh UUID per order) can retry safely: the same id with the same user and lines is the same
    order, placed once.
    """

    order_id: Annotated[str, Id] | None = None
    user_id: str = Id
    lines: tuple[LineRequest, ...] = Field(min_length=1, max_length=MAX_LINES)

    @field_validator("lines", mode="before")
    @classmethod
    def _not_too_many(cls, lines: Any) -> Any:
        """Count the lines before validating any: 32,000 bad items in a 64 KiB body would otherwise
        cost ~0.5 s of CPU to describe, all but the first error thrown away."""
        if isinstance(lines, list | tuple) and len(lines) > MAX_LINES:
            raise ValueError(f"at most {MAX_LINES} lines, not {len(lines)}")
        return lines

    _distinct_products = field_validator("lines")(distinct_products)


C = TypeVar("C", bound=Command)


def parse(command: type[C], data: Mapping[str, Any] | Any) -> C:
    """Validate ``data`` as ``command``; raise :class:`InvalidCommand` naming the first bad field."""
    if not isinstance(data, Mapping):
        raise InvalidCommand("body", "expected a JSON object")
    try:
        return command.model_validate(dict(data))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        raise InvalidCommand(field, error["msg"].removeprefix("Value error, ")) from None
