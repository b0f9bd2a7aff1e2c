"""The shop's six services. Each module holds a pure core (state, ``evolve``, ``decide``);
:mod:`.loop` is the one thin Kafka loop they all run in."""

from __future__ import annotations

__all__ = ["SERVICE_NAMES"]

#: In start-up order; each answers HTTP on its seed port (see :data:`eventlab.settings.SERVICE_PORTS`).
SERVICE_NAMES: tuple[str, ...] = ("user", "product", "order", "payment", "inventory", "notification")
