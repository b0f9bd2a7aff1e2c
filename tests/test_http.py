"""The services' HTTP endpoints on a running shop."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from conftest import files_open_on, unique

from eventlab.kafka import EmbeddedBroker

pytestmark = pytest.mark.integration


def call(shop, service, method, path, body=None, raw=None, headers=False):
    url = f"http://127.0.0.1:{shop.settings.port(service)}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        assert error.headers["Content-Type"] == "application/json"
        answer = error.code, json.loads(error.read()), error.headers
    return answer if headers else answer[:2]


def test_every_service_answers_health(shop):
    for service in ("user", "product", "order", "payment", "inventory", "notification"):
        status, body = call(shop, service, "GET", "/health")
        assert (status, body["status"], body["service"]) == (200, "ok", service)
    assert "lag" in call(shop, "inventory", "GET", "/health")[1]


def test_an_order_placed_over_http_completes(shop):
    user_id, product_id = unique("U"), unique("P")
    assert (
        call(shop, "user", "POST", "/users", {"user_id": user_id, "name": "Ada", "email": "ada@example.com"})[0] == 201
    )
    assert (
        call(
            shop,
            "product",
            "POST",
            "/products",
            {"product_id": product_id, "name": "Lamp", "price_cents": 2750, "initial_stock": 3},
        )[0]
        == 201
    )
    shop.wait_idle()
    status, body = call(
        shop, "order", "POST", "/orders", {"user_id": user_id, "lines": [{"product_id": product_id, "quantity": 2}]}
    )
    assert status == 202
    shop.wait(body["order_id"])
    status, order = call(shop, "order", "GET", f"/orders/{body['order_id']}")
    assert (status, order["status"], order["total_cents"]) == (200, "completed", 5500)


@pytest.mark.parametrize(
    ("service", "path", "body", "other"),
    [
        ("user", "/users", {"user_id": "U", "name": "Ada", "email": "ada@example.com"}, {"email": "ada@example.org"}),
        (
            "product",
            "/products",
            {"product_id": "P", "name": "Lamp", "price_cents": 2750, "initial_stock": 3},
            {"price_cents": 1},
        ),
    ],
)
def test_a_create_sent_again_is_answered_the_same_and_written_once(shop, service, path, body, other):
    # given a user or product created over HTTP (under an id of its own)
    id_field = f"{service}_id"
    body = {**body, id_field: unique(body[id_field])}
    first = call(shop, service, "POST", path, body)
    assert first == (201, body)
    shop.wait_idle()  # Order's copy of it, and Inventory's stock, recorded
    head = shop.store.head()
    # when the client sends it again (its answer lost), then it gets the same answer and nothing is written
    assert call(shop, service, "POST", path, body) == first
    # and the same id with other details is a 409 naming the id, writing nothing
    status, answer = call(shop, service, "POST", path, {**body, **other})
    assert (status, answer["field"]) == (409, id_field) and "already exists with" in answer["error"]
    assert shop.store.head() == head
    assert len(shop.store.read_stream(service, body[id_field])) == 1


@pytest.mark.parametrize(
    ("service", "path", "body", "status", "field"),
    [
        ("user", "/users", {"user_id": "U-x", "name": "A", "email": "not-an-email"}, 422, "email"),
        ("product", "/products", {"product_id": "P-x", "name": "A", "price_cents": 12.5}, 422, "price_cents"),
        ("order", "/orders", {"user_id": "nobody", "lines": [{"product_id": "P001", "quantity": 1}]}, 422, "user_id"),
        ("order", "/orders", {"user_id": "U-x", "lines": []}, 422, "lines"),
        (
            "order",
            "/orders",
            {"order_id": "../O1", "user_id": "U-x", "lines": [{"product_id": "P1", "quantity": 1}]},
            422,
            "order_id",
        ),
        ("order", "/orders", ["not", "an", "object"], 422, "body"),
    ],
)
def test_invalid_commands_are_rejected_naming_the_field_and_write_nothing(shop, service, path, body, status, field):
    shop.wait_idle()
    head = shop.store.head()
    got_status, got = call(shop, service, "POST", path, body)
    assert (got_status, got["field"]) == (status, field)
    assert got["error"]
    assert shop.store.head() == head


def error(shop, service, method, path, body=None, raw=None):
    """(status, field) of an error answer, checking it says what went wrong."""
    status, answer = call(shop, service, method, path, body, raw)
    assert answer["error"], answer
    return status, answer["field"]


def test_transport_errors_are_json_naming_the_field(shop):
    assert error(shop, "order", "POST", "/orders", raw=b"{oops") == (400, "body")
    assert error(shop, "order", "POST", "/orders", raw=b"x" * (65 * 1024)) == (413, "body")
    assert error(shop, "order", "POST", "/orders", raw=b"[" * 10_000 + b"]" * 10_000) == (400, "body")
    assert error(shop, "order", "GET", "/orders/no-such-order") == (404, "order_id")
    assert error(shop, "payment", "POST", "/orders", {}) == (404, "path")


@pytest.mark.parametrize("key", ["self", "data"])
def test_a_key_named_like_a_parameter_is_just_an_unknown_field(shop, customer, key):
    body = {key: 1, "user_id": customer, "lines": [{"product_id": "P001", "quantity": 1}]}
    assert error(shop, "order", "POST", "/orders", body) == (422, key)


@pytest.mark.parametrize(
    ("method", "path", "allow"), [("DELETE", "/orders/x", "GET, HEAD"), ("PUT", "/orders", "POST")]
)
def test_wrong_methods_are_405_with_allow(shop, method, path, allow):
    status, body, headers = call(shop, "order", method, path, headers=True)
    assert (status, body["field"], headers["Allow"]) == (405, "method", allow)


def test_fifty_half_sent_requests_do_not_stop_health(shop):
    port = shop.settings.port("order")
    loris = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
    try:
        for sock in loris:
            sock.sendall(b"POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Length: 100\r\n\r\n{")
        assert call(shop, "order", "GET", "/health")[1]["status"] == "ok"
    finally:
        for sock in loris:
            sock.close()


def test_requests_on_connections_of_their_own_keep_no_store_files_open(shop):
    # given the order service, which serves each connection in a new thread that reads the store
    path = shop.store.path
    assert error(shop, "order", "GET", "/orders/no-such-order") == (404, "order_id")
    before = files_open_on(path)
    # when 150 more requests come, each on a connection of its own
    for _ in range(150):
        assert error(shop, "order", "GET", "/orders/no-such-order") == (404, "order_id")
    # then the process holds about as many files open on the store as before (a SQLite connection
    # kept per request thread held two or three, and its page cache, until the shop stopped)
    assert files_open_on(path) < before + 20


def test_health_tells_when_a_partition_of_the_embedded_broker_nears_its_limit(shop):
    # given the shop on its embedded broker: its relay watches the partitions, and a young shop is healthy
    assert shop.relay.partition_warning == EmbeddedBroker.PARTITION_WARNING
    assert call(shop, "order", "GET", "/health")[1]["problems"] == []
    try:
        # when a partition holds more than the level (lowered here, so that one event is enough)
        shop.relay.partition_warning = 1
        shop.register_user(unique("U"), "Ada", "ada@example.com")
        shop.wait_idle()

        # then every service's health names the partition and what to do
        status, body = call(shop, "user", "GET", "/health")
        assert (status, body["status"]) == (503, "degraded")
        assert any("embedded broker's partition" in p and "restart the shop" in p for p in body["problems"])
    finally:
        shop.relay.partition_warning = EmbeddedBroker.PARTITION_WARNING
    assert call(shop, "order", "GET", "/health")[1]["problems"] == []
