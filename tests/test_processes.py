"""Microservice mode: `eventlab up --processes` runs one OS process per service; orders placed
over HTTP complete."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pytest
from conftest import free_port_offset

pytestmark = pytest.mark.integration


def request(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def wait_healthy(port, timeout=120):
    """The service's /health once it answers; a budget, not a speed check (two cores running six
    service processes beside another test's took over 60 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return request(port, "GET", "/health")
        # not up yet (OSError: refused, or too busy to answer in time); HTTPException too: a port of the
        # ephemeral range that nothing binds yet can connect the client to itself, which then reads its
        # own request as the answer (BadStatusLine)
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
    raise AssertionError(f"nothing healthy on port {port} in {timeout} s")


@contextmanager
def processes(data_dir, offset, **variables):
    """``eventlab up --processes`` on ``data_dir`` (none of our EVENTLAB_*/OTEL_* variables), stopped
    with SIGTERM afterwards, when it must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTLAB_", "OTEL_"))}
    env.update(EVENTLAB_DATA_DIR=str(data_dir), EVENTLAB_HTTP_PORT_OFFSET=str(offset), **variables)
    up = subprocess.Popen(
        [sys.executable, "-m", "eventlab", "up", "--processes", "--payment-failure-rate", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield up
    finally:
        up.send_signal(signal.SIGTERM)
        output = up.communicate(timeout=60)[0]
    assert up.returncode == 0, output


def test_one_process_per_service(tmp_path):
    offset = free_port_offset()
    port = {
        name: base + offset
        for name, base in {
            "user": 8081,
            "product": 8082,
            "order": 8083,
            "payment": 8084,
            "inventory": 8085,
            "notification": 8086,
        }.items()
    }
    with processes(tmp_path, offset) as up:
        pids = {name: wait_healthy(p)["pid"] for name, p in port.items()}
        assert len(set(pids.values())) == 6 and up.pid not in pids.values()
        request(port["user"], "POST", "/users", {"user_id": "U1", "name": "Ada", "email": "ada@example.com"})
        request(
            port["product"],
            "POST",
            "/products",
            {"product_id": "P1", "name": "Lamp", "price_cents": 2750, "initial_stock": 5},
        )
        deadline = time.monotonic() + 60
        # inventory stocks the product, and Order records its own copies of the user and the price (the
        # order is refused if they are still on their way after a 2 s wait: Order joins its group on its own)
        for service, handled in (("inventory", 1), ("order", 2)):
            while (health := request(port[service], "GET", "/health"))["lag"] or health["handled"] < handled:
                assert time.monotonic() < deadline, f"{service} never heard of the user and the product"
                time.sleep(0.2)
        order_ids = [
            request(
                port["order"], "POST", "/orders", {"user_id": "U1", "lines": [{"product_id": "P1", "quantity": 1}]}
            )["order_id"]
            for _ in range(3)
        ]
        for order_id in order_ids:
            while (order := request(port["order"], "GET", f"/orders/{order_id}"))["status"] not in (
                "completed",
                "cancelled",
            ):
                assert time.monotonic() < deadline, f"order {order_id} stuck in {order['status']}"
                time.sleep(0.1)
            assert order["status"] == "completed"
        # and no service reports a problem: nothing crash-loops
        assert not [problems for p in port.values() if (problems := request(p, "GET", "/health").get("problems"))]
