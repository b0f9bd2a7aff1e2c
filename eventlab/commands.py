"""Commands: imperative requests that may be rejected, validated at the boundary.

:func:`parse` turns any mapping (an HTTP body, keyword arguments) into a command or raises
:class:`~eventlab.errors.InvalidCommand` naming the offending field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eventlab.errors import InvalidCommand

__all__ = ["RegisterUser", "CreateProduct", "PlaceOrder", "LineRequest", "parse", "MAX_QUANTITY", "MAX_LINES"]

MAX_QUANTITY = 1_000
MAX_LINES = 50
MAX_PRICE_CENTS = 100_000_000
MAX_STOCK = 1_000_000

Id = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


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
    """Order some products for a user; prices come from the catalogue."""

    user_id: str = Id
    lines: tuple[LineRequest, ...] = Field(min_length=1, max_length=MAX_LINES)

    @field_validator("lines")
    @classmethod
    def _distinct_products(cls, lines: tuple[LineRequest, ...]) -> tuple[LineRequest, ...]:
        seen: set[str] = set()
        for line in lines:
            if line.product_id in seen:
                raise ValueError(f"product {line.product_id} appears twice; put the quantity on one line")
            seen.add(line.product_id)
        return lines


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
        raise InvalidCommand(field, error["msg"]) from None
