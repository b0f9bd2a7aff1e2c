"""The shop's six services. Each module holds a pure core (state, ``evolve``, ``decide``);
:mod:`.runtime` is what they share (load, decide, append over the event store port). The Kafka
loop they all run in is :mod:`eventlab.kafka.loop`; :mod:`eventlab.bootstrap` wires them."""

from __future__ import annotations

__all__ = ["SERVICE_NAMES"]

#: In start-up order; each answers HTTP on its seed port (see :data:`eventlab.settings.SERVICE_PORTS`).
SERVICE_NAMES: tuple[str, ...] = ("user", "product", "order", "payment", "inventory", "notification")
