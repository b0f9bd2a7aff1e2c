from __future__ import annotations

from pathlib import Path

from eventlab.settings import Settings


def test_settings_come_from_the_environment():
    settings = Settings.from_env(
        {
            "EVENTLAB_DATA_DIR": "/srv/shop",
            "EVENTLAB_BOOTSTRAP_SERVERS": "kafka-1:9092",
            "EVENTLAB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "EVENTLAB_KAFKA_SASL_PASSWORD": "hunter2",
            "EVENTLAB_HTTP_PORT_OFFSET": "100",
        }
    )
    assert settings.data_dir == Path("/srv/shop")
    assert not settings.embedded
    assert settings.kafka_config == {"security.protocol": "SASL_SSL", "sasl.password": "hunter2"}
    assert settings.port("order") == 8183
    assert "hunter2" not in repr(settings)


def test_no_variable_means_the_embedded_broker():
    settings = Settings.from_env({}, data_dir="/tmp/x")
    assert settings.embedded and settings.store_path == Path("/tmp/x/events.db")


def test_settings_survive_the_trip_to_a_child_process():
    settings = Settings.from_env(
        {"EVENTLAB_BOOTSTRAP_SERVERS": "k:9092", "EVENTLAB_KAFKA_SASL_USERNAME": "me"}, data_dir="/tmp/y", partitions=6
    )
    assert Settings.from_env(settings.environ()) == settings
