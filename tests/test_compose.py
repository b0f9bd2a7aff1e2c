"""compose.yaml runs the whole shop: the relay and the six services, each ``eventlab run NAME`` in
the image the Dockerfile builds, on its seed port, against the compose Kafka and PostgreSQL.

No Docker engine runs here, so the file is checked as it is written, and then its very commands
and environment run as processes against the tests' Apache Kafka and PostgreSQL, with only the
servers' addresses (and the ports, moved by an offset) rewritten: one order goes through the saga.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import yaml
from conftest import free_port_offset

from eventlab.resilience import wait_until
from eventlab.settings import SERVICE_PORTS, Settings
from eventlab.supervisor import PROCESS_NAMES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROCESSES = {name: SERVICES[name] for name in PROCESS_NAMES}
#: Seconds each service may take to pass its healthcheck (seven interpreters starting at once: a
#: minute and more on a busy machine).
HEALTHY_WITHIN = 180


def listeners(text: str) -> dict[str, str]:
    """``NAME://host:port,…`` as name -> host:port."""
    return dict(item.split("://") for item in text.split(","))


def test_every_process_of_the_shop_is_a_container_running_eventlab_run_on_its_seed_port():
    for name, service in PROCESSES.items():
        assert service["command"] == ["eventlab", "run", name]
        assert service["build"] == "." and service["image"] == "eventlab:local"
        if name in SERVICE_PORTS:
            port = SERVICE_PORTS[name]
            assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
            assert f"http://127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"])
        else:  # the relay serves no HTTP
            assert "ports" not in service
        assert service["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }
        assert {"healthcheck"} <= set(SERVICES["kafka"]) and {"healthcheck"} <= set(SERVICES["postgres"])


def test_every_port_is_published_on_this_machine_only():
    # the services have no authentication, PostgreSQL's password is in the file, Kafka has none
    published = [(name, mapping) for name, service in SERVICES.items() for mapping in service.get("ports", [])]
    assert {name for name, _ in published} == {"kafka", "postgres", "jaeger", *SERVICE_PORTS}
    assert [(name, m) for name, m in published if not m.startswith("127.0.0.1:") or m.count(":") != 2] == []


def test_each_container_keeps_its_data_directory_and_the_store_in_named_volumes():
    # a re-created Payment must still find its gateway journal (no charge twice), Notification its
    # mailbox (no email twice); each process its own volume, so no two write one file
    data_dir = re.search(r"EVENTLAB_DATA_DIR=(\S+)", (ROOT / "Dockerfile").read_text())
    assert data_dir and data_dir[1] == "/var/lib/eventlab"
    for name, service in PROCESSES.items():
        assert service["volumes"] == [f"{name}-data:{data_dir[1]}"]
    assert SERVICES["postgres"]["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    # Kafka's topics too: its log directory is the volume (a re-created broker keeps offsets and events)
    kafka = SERVICES["kafka"]
    assert kafka["volumes"] == [f"kafka-data:{kafka['environment']['KAFKA_LOG_DIRS']}"]
    assert set(COMPOSE["volumes"]) == {"kafka-data", "postgres-data", *(f"{name}-data" for name in PROCESSES)}


def test_the_containers_reach_the_compose_kafka_and_postgres_and_the_host_reaches_them_too():
    for service in PROCESSES.values():
        settings = Settings.from_env(env=service["environment"])
        # Kafka: kafka:9092 is a listener that advertises itself as kafka:9092 to the containers
        kafka = SERVICES["kafka"]["environment"]
        advertised, bound = listeners(kafka["KAFKA_ADVERTISED_LISTENERS"]), listeners(kafka["KAFKA_LISTENERS"])
        internal = next(name for name, address in advertised.items() if address == settings.bootstrap_servers)
        assert settings.bootstrap_servers == "kafka:9092" and bound[internal] == ":9092"
        # ... and the host's localhost:9092 is published to a listener that advertises localhost:9092
        host = next(name for name, address in advertised.items() if address == "localhost:9092")
        assert SERVICES["kafka"]["ports"] == [f"127.0.0.1:9092:{bound[host].lstrip(':')}"]
        # PostgreSQL: the compose server, with its user, password and database, a schema per service
        postgres = SERVICES["postgres"]["environment"]
        assert set(settings.service_store_urls) == set(SERVICE_PORTS) and not settings.store_url
        for service, url in settings.service_store_urls.items():
            store = urlsplit(url)
            assert settings.store_of(service).store_backend == "postgresql"
            assert (store.hostname, store.port, store.username, store.password, store.path) == (
                "postgres",
                5432,
                postgres["POSTGRES_USER"],
                postgres["POSTGRES_PASSWORD"],
                "/" + postgres["POSTGRES_DB"],
            )
        schemas = {_schema(url) for url in settings.service_store_urls.values()}
        assert len(schemas) == len(SERVICE_PORTS)  # no two services share one
        assert settings.http_host == "0.0.0.0"  # so compose can publish the ports


def test_the_image_is_python_3_11_slim_with_eventlab_and_its_postgres_extra():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM python:3.11-slim\n" in dockerfile
    assert 'pip install ".[postgres]"' in dockerfile
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    kept = [line for line in lines if line and not line.startswith("#")]
    assert kept[:1] == ["*"] and {"!pyproject.toml", "!README.md", "!data/", "!eventlab/"} <= set(kept)


def _schema(url: str) -> str:
    """The schema a compose store URL names (``?options=-csearch_path%3D<schema>``)."""
    [options] = parse_qs(urlsplit(url).query)["options"]
    return options.removeprefix("-csearch_path=")


def _as_here(value: str, bootstrap_servers: str, postgres_url: str, prefix: str) -> str:
    """A compose environment value with the compose servers' addresses replaced by the tests' own
    (and each schema's name given ``prefix``, so that the test's schemas are its own)."""
    if value == "kafka:9092":
        return bootstrap_servers
    if urlsplit(value).hostname == "postgres":
        return f"{postgres_url}?options=-csearch_path%3D{prefix}_{_schema(value)}"
    return value


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def _succeeds(command: list[str]) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def _accepted(url: str, body: dict[str, Any]) -> Any:
    """The answer to a POST, or None while the service does not know the user or product yet (422)."""
    try:
        return _post(url, body)
    except urllib.error.HTTPError as exc:
        if exc.code == 422:
            return None
        raise


def test_the_compose_commands_run_the_shop_as_processes_and_an_order_completes(
    apache_kafka_factory, postgres_url, tmp_path
):
    # given: Apache Kafka and PostgreSQL, and each compose service's command and environment with
    # only the servers' addresses rewritten (and the ports moved where they are free here)
    bootstrap_servers = apache_kafka_factory().bootstrap_servers
    offset = free_port_offset()
    prefix = f"compose_{os.getpid()}_{offset}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, service in PROCESSES.items():
            env = {k: _as_here(v, bootstrap_servers, postgres_url, prefix) for k, v in service["environment"].items()}
            env |= {"EVENTLAB_DATA_DIR": str(tmp_path / name), "EVENTLAB_HTTP_PORT_OFFSET": str(offset)}
            command = [sys.executable, "-m", "eventlab", *service["command"][1:]]
            log = (tmp_path / f"{name}.log").open("wb")
            children[name] = subprocess.Popen(command, env={**clean, **env}, stdout=log, stderr=subprocess.STDOUT)
        # when: every service answers its compose healthcheck, and orders are placed over HTTP
        for name in SERVICE_PORTS:
            check = PROCESSES[name]["healthcheck"]["test"][1:]
            port = SERVICE_PORTS[name]
            probe = [sys.executable, *[part.replace(f":{port}/", f":{port + offset}/") for part in check[1:]]]
            wait_until(
                lambda probe=probe: _succeeds(probe),
                HEALTHY_WITHIN,
                interval=0.3,
                timeout_error=lambda _, name=name: AssertionError(
                    f"{name} not healthy in {HEALTHY_WITHIN} s; its log ends:\n"
                    f"{(tmp_path / f'{name}.log').read_text()[-2000:]}"
                ),
            )

        def url(service: str, path: str) -> str:
            return f"http://127.0.0.1:{SERVICE_PORTS[service] + offset}{path}"

        _post(url("user", "/users"), {"user_id": "U1", "name": "Ada", "email": "ada@example.com"})
        _post(
            url("product", "/products"), {"product_id": "P1", "name": "Lamp", "price_cents": 2750, "initial_stock": 9}
        )
        outcomes = []
        for _ in range(5):  # the simulated gateway declines 10 % of payments: one of five completes
            line = {"user_id": "U1", "lines": [{"product_id": "P1", "quantity": 1}]}
            placed = wait_until(lambda line=line: _accepted(url("order", "/orders"), line), 30, interval=0.2)
            order = wait_until(
                lambda placed=placed: _get(url("order", f"/orders/{placed['order_id']}")),
                60,
                until=lambda order: order["status"] in ("completed", "cancelled"),
                interval=0.2,
            )
            outcomes.append((order["status"], order["reason"]))
            if order["status"] == "completed":
                break
        # then: the saga ran through the six services and the relay: the order completed, and each
        # service's events are in its own schema, which eventlab created
        assert outcomes[-1][0] == "completed" and all(reason in ("", "payment_failed") for _, reason in outcomes)
        assert all(child.poll() is None for child in children.values())
        with psycopg.connect(postgres_url, autocommit=True) as admin:

            def event_kinds() -> dict[str, set[str]]:
                return {
                    schema: {
                        row[0]
                        for row in admin.execute(f"SELECT DISTINCT event_type FROM {prefix}_{schema}.events".encode())
                    }
                    for schema in ("users", "orders", "payments", "notifications")
                }

            # the email is sent by a second hop (Notification consumes its own committed request), after
            # the order completed
            kinds = wait_until(event_kinds, 30, until=lambda kinds: "EmailSent" in kinds["notifications"], interval=0.2)
        assert kinds["users"] == {"UserCreated"} and "OrderCompleted" in kinds["orders"]
        assert "PaymentCompleted" in kinds["payments"] and "EmailSent" in kinds["notifications"]
        assert not kinds["orders"] & (kinds["users"] | kinds["payments"] | kinds["notifications"])
    finally:
        for child in children.values():
            child.terminate()
        for name, child in children.items():
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            for (schema,) in admin.execute(
                f"SELECT nspname FROM pg_namespace WHERE nspname LIKE '{prefix}%'".encode()
            ).fetchall():
                admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def test_the_bind_address_is_checked_like_every_setting():
    from eventlab.settings import SettingsError

    assert Settings.from_env(env={}).http_host == "127.0.0.1"  # nothing listens beyond this machine by default
    with pytest.raises(SettingsError, match="EVENTLAB_HTTP_HOST: not an address to bind"):
        Settings.from_env(env={"EVENTLAB_HTTP_HOST": "0.0.0.0 8081"})
