"""The messaging adapter: the embedded broker, client factories and checked delivery (:mod:`.clients`),
the CloudEvents codec, the consuming loop every service runs (:mod:`.loop`) and the outbox relay
(:mod:`.relay`). Nothing in ``eventlab.services`` imports from here."""

from __future__ import annotations

from eventlab.kafka.broker import EmbeddedBroker
from eventlab.kafka.clients import ALL_TOPICS, dead_letter_topic, ensure_topics, make_consumer, make_producer
from eventlab.kafka.cloudevents import Message, UndecodableMessage, from_message, to_message

__all__ = [
    "ALL_TOPICS",
    "EmbeddedBroker",
    "Message",
    "UndecodableMessage",
    "dead_letter_topic",
    "ensure_topics",
    "from_message",
    "make_consumer",
    "make_producer",
    "to_message",
]
