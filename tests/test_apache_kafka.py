"""What Apache Kafka does differently from the embedded broker, and eventlab's answer to it.

Apache Kafka keeps its topics: a cluster whose topics were created for fewer partitions than
``EVENTLAB_PARTITIONS`` now asks for (e.g. more instances of a service) would leave the extra
instances idle, where the embedded broker always starts empty.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from confluent_kafka.admin import AdminClient

from eventlab.events import OrderCreated, StockReserved
from eventlab.kafka import dead_letter_topic, ensure_topics
from eventlab.settings import Settings

pytestmark = pytest.mark.integration


def partitions(settings, topics):
    metadata = AdminClient({"bootstrap.servers": settings.bootstrap_servers}).list_topics(timeout=10)
    return {name: len(metadata.topics[name].partitions) for name in topics}


def test_topics_kept_from_a_smaller_setup_get_the_partitions_asked_for(apache_kafka_factory, tmp_path):
    # given a cluster whose topics were created when one instance per service was enough
    broker = apache_kafka_factory()
    one = Settings(data_dir=tmp_path, bootstrap_servers=broker.bootstrap_servers, partitions=1)
    topics = [OrderCreated.topic, StockReserved.topic]
    assert ensure_topics(one, topics) == topics
    # when eventlab starts again asking for three partitions (three instances of a service)
    three = replace(one, partitions=3)
    created = ensure_topics(three, [*topics, dead_letter_topic(OrderCreated.topic)])
    # then only the missing topic is created, and every topic has three partitions
    assert created == [dead_letter_topic(OrderCreated.topic)]
    assert partitions(three, [*topics, *created]) == dict.fromkeys([*topics, *created], 3)
    # and asking for fewer never shrinks a topic (Kafka cannot), nor fails
    assert ensure_topics(one, topics) == []
    assert partitions(one, topics) == dict.fromkeys(topics, 3)
