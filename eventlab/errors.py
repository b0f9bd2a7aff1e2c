"""One error hierarchy for everything eventlab raises on purpose."""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "BrokerError",
    "ConcurrencyError",
    "EventlabError",
    "InvalidCommand",
    "NotFound",
    "SagaTimeout",
    "StoreError",
    "Unavailable",
]


class EventlabError(Exception):
    """Root of every error eventlab raises deliberately."""


class InvalidCommand(EventlabError):
    """A command was rejected; ``field`` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(InvalidCommand):
    """A command refers to something that does not exist (an unknown user, product or order)."""


class AlreadyExists(InvalidCommand):
    """A command would create something that already exists."""


class ConcurrencyError(EventlabError):
    """Another writer appended to the same stream first; reload and decide again."""


class StoreError(EventlabError):
    """The event store cannot be used (missing, not an event store, or a database error)."""


class Unavailable(EventlabError):
    """A dependency a handler needs is down (a payment gateway): the message is fine, so the
    service holds it and tries it again later, never dead-letters it."""


class BrokerError(EventlabError):
    """The Kafka broker cannot be started or reached; ``code`` is the librdkafka error code if any,
    ``topic`` the topic a failed delivery was for."""

    def __init__(self, message: str, code: int | None = None, topic: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.topic = topic


class SagaTimeout(EventlabError, TimeoutError):
    """An order's saga did not reach a terminal state in time."""
