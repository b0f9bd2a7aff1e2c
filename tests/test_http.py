"""The services' HTTP endpoints on a running shop."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from conftest import unique

pytestmark = pytest.mark.integration


def call(shop, service, method, path, body=None, raw=None):
    url = f"http://127.0.0.1:{shop.settings.port(service)}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


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
    ("service", "path", "body", "status", "field"),
    [
        ("user", "/users", {"user_id": "U-x", "name": "A", "email": "not-an-email"}, 422, "email"),
        ("product", "/products", {"product_id": "P-x", "name": "A", "price_cents": 12.5}, 422, "price_cents"),
        ("order", "/orders", {"user_id": "nobody", "lines": [{"product_id": "P001", "quantity": 1}]}, 422, "user_id"),
        ("order", "/orders", {"user_id": "U-x", "lines": []}, 422, "lines"),
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


def test_transport_errors(shop):
    assert call(shop, "order", "POST", "/orders", raw=b"{oops")[0] == 400
    assert call(shop, "order", "POST", "/orders", raw=b"x" * (65 * 1024))[0] == 413
    assert call(shop, "order", "GET", "/orders/no-such-order")[0] == 404
    assert call(shop, "payment", "POST", "/orders", {})[0] == 404
