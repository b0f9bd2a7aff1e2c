"""Product service (port 8082): the catalogue -> ``ProductCreated`` on ``product.catalog.created``."""

from __future__ import annotations

from dataclasses import dataclass

from eventlab.commands import CreateProduct
from eventlab.errors import AlreadyExists
from eventlab.events import Event, ProductCreated
from eventlab.services.runtime import Service

__all__ = ["SERVICE", "Product", "create", "evolve"]


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    name: str
    price_cents: int
    initial_stock: int


def evolve(state: Product | None, event: Event) -> Product | None:
    match event:
        case ProductCreated():
            return Product(event.product_id, event.name, event.price_cents, event.initial_stock)
    return state


def create(command: CreateProduct, state: Product | None) -> list[Event]:
    """Decide on a new product; its initial stock goes to Inventory through the event.

    A repeat (the same id, name, price and initial stock) decides nothing; the same id with anything
    else is refused.
    """
    if state is not None:
        if state != Product(**command.model_dump()):
            raise AlreadyExists("product_id", f"product {command.product_id} already exists with other details")
        return []
    return [ProductCreated(**command.model_dump())]


SERVICE = Service(name="product", evolvers={"product": evolve})
