"""Adapters at the edge: the outside systems the services call (a payment gateway, a mailer).

They stand for systems eventlab does not own, so they keep their own durable state in the data
directory (never in the event store) and make every call idempotent under a key.
"""

from eventlab.adapters.gateway import SimulatedGateway
from eventlab.adapters.journal import Journal
from eventlab.adapters.mailer import FileMailer

__all__ = ["FileMailer", "Journal", "SimulatedGateway"]
