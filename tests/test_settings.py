from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import free_port_offset

from eventlab.errors import EventlabError
from eventlab.settings import PortInUse, Settings, SettingsError, ensure_ports_free, query_memory


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


@pytest.mark.parametrize(
    ("env", "variable", "message"),
    [
        ({"EVENTLAB_PARTITIONS": "abc"}, "EVENTLAB_PARTITIONS", "not a whole number: 'abc'"),
        ({"EVENTLAB_PARTITIONS": "0"}, "EVENTLAB_PARTITIONS", "must be between 1 and 1000, not 0"),
        ({"EVENTLAB_PARTITIONS": "1001"}, "EVENTLAB_PARTITIONS", "must be between 1 and 1000, not 1001"),
        ({"EVENTLAB_PARTITIONS": "2.5"}, "EVENTLAB_PARTITIONS", "not a whole number: '2.5'"),
        ({"EVENTLAB_HTTP_PORT_OFFSET": "100000"}, "EVENTLAB_HTTP_PORT_OFFSET", "ports at 108081 to 108086"),
        ({"EVENTLAB_HTTP_PORT_OFFSET": "-8081"}, "EVENTLAB_HTTP_PORT_OFFSET", "ports at 0 to 5"),
        ({"EVENTLAB_HTTP_PORT_OFFSET": "57450"}, "EVENTLAB_HTTP_PORT_OFFSET", "outside 1 to 65535"),
        ({"EVENTLAB_HTTP_PORT_OFFSET": "ten"}, "EVENTLAB_HTTP_PORT_OFFSET", "not a whole number: 'ten'"),
        # Python's parsers read other scripts' digits and underscores: the variable would mean what no one typed
        ({"EVENTLAB_PARTITIONS": "\u0663"}, "EVENTLAB_PARTITIONS", "not a whole number: '\u0663'"),
        ({"EVENTLAB_HTTP_PORT_OFFSET": "1_000"}, "EVENTLAB_HTTP_PORT_OFFSET", "not a whole number: '1_000'"),
        ({"EVENTLAB_SAGA_TIMEOUT_S": "\uff13"}, "EVENTLAB_SAGA_TIMEOUT_S", "not a number: '\uff13'"),
        ({"EVENTLAB_PARTITIONS": "9" * 5000}, "EVENTLAB_PARTITIONS", "(5,000 characters)"),
        # librdkafka took these, then waited 30 s for a broker at port 0 or at 'http'
        (
            {"EVENTLAB_BOOTSTRAP_SERVERS": "127.0.0.1:notaport"},
            "EVENTLAB_BOOTSTRAP_SERVERS",
            "'127.0.0.1:notaport' is not host:port",
        ),
        (
            {"EVENTLAB_BOOTSTRAP_SERVERS": "http://kafka:9092"},
            "EVENTLAB_BOOTSTRAP_SERVERS",
            "'http://kafka:9092' is not host:port",
        ),
        (
            {"EVENTLAB_BOOTSTRAP_SERVERS": "kafka:9092, ,"},
            "EVENTLAB_BOOTSTRAP_SERVERS",
            "'' is not host:port (a port from 1 to 65535) in 'kafka:9092, ,'",
        ),
        ({"EVENTLAB_BOOTSTRAP_SERVERS": "kafka:65536"}, "EVENTLAB_BOOTSTRAP_SERVERS", "'kafka:65536' is not host:port"),
        ({"EVENTLAB_OTLP_ENDPOINT": "http://[::1"}, "EVENTLAB_OTLP_ENDPOINT", "not an http(s) URL with a host"),
        ({"EVENTLAB_OTLP_ENDPOINT": "http://"}, "EVENTLAB_OTLP_ENDPOINT", "not an http(s) URL with a host"),
        ({"EVENTLAB_OTLP_ENDPOINT": "http://host:port"}, "EVENTLAB_OTLP_ENDPOINT", "not an http(s) URL"),
        ({"EVENTLAB_ZIPKIN_ENDPOINT": "https://exa mple.com"}, "EVENTLAB_ZIPKIN_ENDPOINT", "not an http(s) URL"),
        ({"EVENTLAB_ZIPKIN_ENDPOINT": "ftp://zipkin:9411"}, "EVENTLAB_ZIPKIN_ENDPOINT", "not an http(s) URL"),
        # Path.expanduser raised RuntimeError: "Could not determine home directory."
        ({"EVENTLAB_DATA_DIR": "~nosuchuser/x"}, "EVENTLAB_DATA_DIR", "cannot expand '~nosuchuser': no such user"),
        ({"EVENTLAB_STORE_URL": "~nosuchuser/x.db"}, "EVENTLAB_STORE_URL", "cannot expand '~nosuchuser'"),
        ({"EVENTLAB_ORDER_STORE_URL": "~nosuchuser/x.db"}, "EVENTLAB_ORDER_STORE_URL", "cannot expand '~nosuchuser'"),
    ],
)
def test_a_variable_eventlab_cannot_use_is_a_settings_error_naming_it(env, variable, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert isinstance(caught.value, EventlabError)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ") and message in str(caught.value)


def test_the_edges_of_every_range_are_accepted():
    assert Settings.from_env({"EVENTLAB_SAGA_TIMEOUT_S": " 2.5e1 "}).saga_timeout_s == 25.0
    assert Settings.from_env({"EVENTLAB_HTTP_PORT_OFFSET": "+10"}).http_port_offset == 10
    assert Settings.from_env({"EVENTLAB_PARTITIONS": "1"}).partitions == 1
    assert Settings.from_env({"EVENTLAB_PARTITIONS": " 1000 "}).partitions == 1000
    assert Settings.from_env({"EVENTLAB_HTTP_PORT_OFFSET": "-8080"}).port("user") == 1
    assert Settings.from_env({"EVENTLAB_HTTP_PORT_OFFSET": "57449"}).port("notification") == 65535
    for servers in ("kafka-1:9092,kafka-2:9093", "SASL_SSL://kafka.example.com:9094", "[::1]:9092", "localhost"):
        assert Settings.from_env({"EVENTLAB_BOOTSTRAP_SERVERS": servers}).bootstrap_servers == servers


def test_settings_built_in_code_are_checked_the_same_way():
    with pytest.raises(SettingsError, match="EVENTLAB_PARTITIONS: must be between 1 and 1000, not -3"):
        Settings(partitions=-3)
    with pytest.raises(SettingsError, match="EVENTLAB_PARTITIONS: not a whole number: '3'"):
        Settings.from_env({}, partitions="3")
    with pytest.raises(SettingsError, match="EVENTLAB_HTTP_PORT_OFFSET"):
        Settings(http_port_offset=60000)


def test_the_default_data_dir_honours_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings.from_env({}).data_dir == tmp_path / "xdg" / "eventlab"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings.from_env({}).data_dir == tmp_path / "home" / ".local" / "share" / "eventlab"


def test_a_port_in_use_is_named_with_its_service_and_the_way_out():
    # given: a program listening on what would be the order service's port
    settings = Settings(http_port_offset=free_port_offset())
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.port("order")))
        squatter.listen()
        # when / then
        with pytest.raises(PortInUse) as caught:
            ensure_ports_free(settings)
    assert (caught.value.service, caught.value.port) == ("order", settings.port("order"))
    assert "EVENTLAB_HTTP_PORT_OFFSET" in str(caught.value)
    ensure_ports_free(settings)  # free again once it stops listening


def test_a_service_given_a_store_of_its_own_writes_there_and_the_others_share_the_default(tmp_path):
    env = {
        "EVENTLAB_DATA_DIR": str(tmp_path),
        "EVENTLAB_ORDER_STORE_URL": str(tmp_path / "order.db"),
        "EVENTLAB_PAYMENT_STORE_URL": "postgresql://pay:secret@db:5432/shop?options=-csearch_path%3Dpayment",
    }
    settings = Settings.from_env(env)

    assert settings.store_url_of("order") == str(tmp_path / "order.db")
    assert settings.store_url_of("user") == ""
    assert settings.store_of("order").store_path == tmp_path / "order.db"
    assert "secret" not in repr(settings)
    assert Settings.from_env(settings.environ()) == settings  # a child process sees the same split


@pytest.mark.parametrize(
    ("service", "url", "message"),
    [
        ("order", "mysql://shop@db/shop", "EVENTLAB_ORDER_STORE_URL: 'mysql://shop@db/shop' is not a store"),
        ("warehouse", "/tmp/w.db", "EVENTLAB_WAREHOUSE_STORE_URL: no such service"),
        # libpq's key=value form was taken for a SQLite file, created under that name, password and all
        ("order", "host=db dbname=shop password=s3cret", "EVENTLAB_ORDER_STORE_URL: a PostgreSQL key=value string"),
    ],
)
def test_a_service_store_eventlab_cannot_use_is_refused_naming_its_variable(service, url, message):
    with pytest.raises(SettingsError) as refused:
        Settings(service_store_urls={service: url})

    assert str(refused.value).startswith(message) and "s3cret" not in str(refused.value)


def test_a_key_value_connection_string_as_the_store_is_refused_and_a_file_name_with_an_equals_sign_is_not():
    with pytest.raises(SettingsError, match="EVENTLAB_STORE_URL: a PostgreSQL key=value string"):
        Settings.from_env({"EVENTLAB_STORE_URL": "dbname=shop user=me"})
    assert Settings.from_env({"EVENTLAB_STORE_URL": "/srv/run=3/events.db"}).store_url == "/srv/run=3/events.db"


@pytest.mark.parametrize(
    "variable", ["EVENTLAB_ORDERS_STORE_URL", "EVENTLAB_order_STORE_URL", "EVENTLAB_SHOP_STORE_URL"]
)
def test_a_store_variable_naming_no_service_is_refused_not_ignored(variable):
    # given a typo in the name of a service's store variable (Order would silently share the default store,
    # and fixing the typo later would be refused because the shared store then holds Order's events)
    env = {variable: "/tmp/order.db"}
    # when the settings are read
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    # then the variable is named with the services there are
    assert refused.value.variable == variable
    assert "no such service" in str(refused.value) and "order" in str(refused.value)


def test_an_empty_or_kafka_store_variable_is_not_a_service_store():
    settings = Settings.from_env({"EVENTLAB_ORDERS_STORE_URL": "", "EVENTLAB_KAFKA_SSL_KEY_STORE_URL": "x"})
    assert settings.service_store_urls == {} and settings.kafka_config == {"ssl.key.store.url": "x"}


def test_spaces_around_a_value_are_not_part_of_it():
    # given values pasted with spaces around them (an .env file, a quoted compose value)
    env = {
        "EVENTLAB_DATA_DIR": " /srv/shop ",
        "EVENTLAB_STORE_URL": "  ",
        "EVENTLAB_ORDER_STORE_URL": " /srv/order.db",
        "EVENTLAB_PAYMENT_STORE_URL": " ",
        "EVENTLAB_BOOTSTRAP_SERVERS": "kafka:9092 ",
    }
    # when the settings are read
    settings = Settings.from_env(env)
    # then a blank value is no value, and no path starts in a directory named " " under the working directory
    assert settings.data_dir == Path("/srv/shop") and settings.store_path == Path("/srv/shop/events.db")
    assert settings.service_store_urls == {"order": "/srv/order.db"}
    assert settings.bootstrap_servers == "kafka:9092"


@pytest.mark.parametrize(
    "variable",
    [
        "EVENTLAB_BOOTSTRAP_SERVERS",  # librdkafka raised SystemError from the Producer's constructor
        "EVENTLAB_KAFKA_CLIENT_ID",
        "EVENTLAB_KAFKA_\udcff",  # a name that is not UTF-8: librdkafka crashed the process (SIGSEGV)
        "EVENTLAB_GROUP_INSTANCE",
        "EVENTLAB_STORE_URL",  # a PostgreSQL URL: libpq's UnicodeEncodeError traceback
        "EVENTLAB_ORDER_STORE_URL",
        # a number or a size: the parser's error showed the value ("not a number: 'secretpw\udcffhost'")
        "EVENTLAB_SAGA_TIMEOUT_S",
        "EVENTLAB_PARTITIONS",
        "EVENTLAB_QUERY_MEMORY",
        "EVENTLAB_TRACE_SAMPLE",
    ],
)
def test_a_value_that_is_not_utf8_is_refused_naming_the_variable_not_the_value(variable):
    # given a variable whose bytes are not UTF-8 (Python reads \xff as the lone surrogate \udcff)
    value = "postgresql://shop:s\udcffcret@db/shop" if "STORE_URL" in variable else "s\udcffcret:9092"
    # when the settings are read, then they are refused naming the variable, without the value (a password?)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})
    assert refused.value.variable == variable and "not UTF-8" in str(refused.value)
    assert "cret" not in str(refused.value)
    if variable == "EVENTLAB_QUERY_MEMORY":  # read alone too, for a sandbox made without settings
        with pytest.raises(SettingsError, match="not UTF-8") as refused:
            query_memory({variable: value})
        assert "cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("variable", "said"),
    [
        ("EVENTLAB_KAFKA_BOOTSTRAP_SERVERS", "use EVENTLAB_BOOTSTRAP_SERVERS"),  # won silently, errors named the other
        ("EVENTLAB_KAFKA_GROUP_ID", "delivery guarantees"),
        ("EVENTLAB_KAFKA_ENABLE_AUTO_OFFSET_STORE", "delivery guarantees"),  # offsets stored before handling
        ("EVENTLAB_KAFKA_ACKS", "delivery guarantees"),
        ("EVENTLAB_KAFKA_SESSION_TIMEOUT_MS", "use EVENTLAB_SESSION_TIMEOUT_MS"),
        # librdkafka's other names of those: the first pointed the shop at another cluster unseen
        ("EVENTLAB_KAFKA_METADATA_BROKER_LIST", "use EVENTLAB_BOOTSTRAP_SERVERS"),
        ("EVENTLAB_KAFKA_REQUEST_REQUIRED_ACKS", "delivery guarantees"),
        # and what the idempotent producer cannot take: the relay failed on it, again and again
        ("EVENTLAB_KAFKA_MAX_IN_FLIGHT", "delivery guarantees"),
        ("EVENTLAB_KAFKA_TRANSACTIONAL_ID", "delivery guarantees"),
    ],
)
def test_a_kafka_setting_eventlab_sets_itself_is_refused_naming_the_variable(variable, said):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: "1"})
    assert refused.value.variable == variable and said in str(refused.value)
    # and a setting eventlab leaves alone still goes to every client
    assert Settings.from_env({"EVENTLAB_KAFKA_CLIENT_ID": "me"}).kafka_config == {"client.id": "me"}


def test_a_file_name_that_is_not_utf8_is_a_file_name():
    # given a data directory and a SQLite store whose names hold bytes that are not UTF-8 (Linux allows it)
    settings = Settings.from_env({"EVENTLAB_DATA_DIR": "/srv/\udcff", "EVENTLAB_STORE_URL": "/srv/\udcff.db"})
    # then they are accepted as the files they name
    assert str(settings.data_dir) == "/srv/\udcff" and settings.store_url == "/srv/\udcff.db"


def test_the_query_memory_is_a_setting_read_with_the_one_size_parser():
    # given the variable in the forms the README shows, then the settings hold its bytes
    assert Settings.from_env({"EVENTLAB_QUERY_MEMORY": "512MiB"}).query_memory == 512 * 2**20
    assert Settings.from_env({"EVENTLAB_QUERY_MEMORY": " 8gb "}).query_memory == 8 * 10**9
    assert Settings.from_env({}).query_memory == 2 * 2**30
    assert Settings.from_env({"EVENTLAB_QUERY_MEMORY": "1024TiB"}).query_memory == 2**50  # the largest
    settings = Settings.from_env({"EVENTLAB_QUERY_MEMORY": "4GiB"})
    assert Settings.from_env(settings.environ()) == settings  # a child process sees the same limit
    # and sizes written with digits other than ASCII's, or out of bounds, are refused naming the variable
    for text in ("٢GiB", "２００MiB", "lots", "1MB", "2PiB"):
        with pytest.raises(SettingsError, match="^EVENTLAB_QUERY_MEMORY: "):
            Settings.from_env({"EVENTLAB_QUERY_MEMORY": text})
    with pytest.raises(SettingsError, match="^EVENTLAB_QUERY_MEMORY: must be from 64MiB"):
        Settings(query_memory=1000)


def test_the_largest_query_memory_can_be_written_as_1pib():
    # 1PiB, the bound the docstrings give, was refused as "not a size like 4GiB"
    assert Settings.from_env({"EVENTLAB_QUERY_MEMORY": "1PiB"}).query_memory == 2**50
    assert Settings.from_env({"EVENTLAB_QUERY_MEMORY": "1pb"}).query_memory == 10**15
    assert Settings.from_env({"EVENTLAB_QUERY_MEMORY": "0.5PiB"}).query_memory == 2**49
    with pytest.raises(SettingsError, match="^EVENTLAB_QUERY_MEMORY: must be from 64MiB to 1PiB, not '1.5PiB'"):
        Settings.from_env({"EVENTLAB_QUERY_MEMORY": "1.5PiB"})


@pytest.mark.parametrize("command", [["dlq", "list"], ["query", "SELECT 1"], ["show", "orders"]])
def test_a_bad_query_memory_stops_unrelated_commands_at_start(tmp_path, monkeypatch, capsys, command):
    from eventlab.cli import main
    from eventlab.store import open_store

    # given a shop's store, and a query memory that is not a size
    open_store(Settings(data_dir=tmp_path)).close()
    monkeypatch.setenv("EVENTLAB_QUERY_MEMORY", "lots")
    # when a command runs (one that queries nothing included)
    code = main([*command, "--data-dir", str(tmp_path)])
    # then it stops at start, in one line naming the variable
    assert code == 2
    assert capsys.readouterr().err == "eventlab: error: EVENTLAB_QUERY_MEMORY: not a size like 4GiB or 512MB: 'lots'\n"
