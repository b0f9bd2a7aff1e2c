"""Each service's small HTTP face: ``GET /health``, ``GET /metrics`` and, for the user, product
and order services, their commands as JSON.

| service | routes |
|---|---|
| user | ``POST /users`` |
| product | ``POST /products`` |
| order | ``POST /orders``, ``GET /orders/{id}`` |

Errors come back as ``{"error": ..., "field": ...}`` with 400 (bad JSON), 404 (unknown order),
409 (already exists), 413 (body over 64 KiB) or 422 (invalid command).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eventlab.application import Commands
from eventlab.errors import AlreadyExists, InvalidCommand, NotFound
from eventlab.services.loop import ServiceLoop
from eventlab.store.base import EventStore

__all__ = ["ServiceHttp", "MAX_BODY", "service_health"]

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Health = Callable[[], dict[str, Any]]


def service_health(loop: ServiceLoop | None, store: EventStore) -> Health:
    """What ``GET /health`` reports: a consuming service's lag and counters, else the store's head."""
    return loop.health if loop is not None else lambda: {"events": store.head()}


class ServiceHttp:
    """Serves one service's HTTP endpoints on ``port`` in a background thread.

    Example:
        >>> server = ServiceHttp("order", 8083, health, commands).start()  # doctest: +SKIP
    """

    def __init__(self, service: str, port: int, health: Health, commands: Commands | None = None) -> None:
        self.service = service
        self.health = health
        self.commands = commands
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"http-{service}", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def __repr__(self) -> str:
        return f"<ServiceHttp {self.service} http://127.0.0.1:{self.port}>"

    def start(self) -> ServiceHttp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """Dispatch one request; returns (status, JSON-able body)."""
        parts = [p for p in path.split("?")[0].split("/") if p]
        if method == "GET" and parts == ["health"]:
            return 200, {"status": "ok", "service": self.service, "pid": os.getpid(), **self.health()}
        if method == "GET" and parts == ["metrics"]:
            return 200, self._metrics()
        commands = self.commands
        if commands is not None:
            if (self.service, method, parts) == ("user", "POST", ["users"]):
                return 201, commands.register_user(**_object(body)).model_dump()
            if (self.service, method, parts) == ("product", "POST", ["products"]):
                return 201, commands.create_product(**_object(body)).model_dump()
            if (self.service, method, parts) == ("order", "POST", ["orders"]):
                order_id = commands.place_order(**_object(body))
                return 202, {"order_id": order_id, "status": "created"}
            if self.service == "order" and method == "GET" and len(parts) == 2 and parts[0] == "orders":
                return 200, commands.get_order(parts[1]).as_dict()
        return 404, {"error": f"no route {method} {path} on the {self.service} service"}

    def _metrics(self) -> str:
        lines = []
        for name, value in self.health().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                lines.append(f'eventlab_{name}{{service="{self.service}"}} {value}')
        return "\n".join(lines) + "\n"


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidCommand("body", "expected a JSON object")
    return body


def _handler(app: ServiceHttp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"eventlab-{app.service}"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._respond("GET", None)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"error": f"body larger than {MAX_BODY} bytes", "field": "body"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._send(400, {"error": f"body is not JSON: {exc}", "field": "body"})
                return
            self._respond("POST", body)

        def _respond(self, method: str, body: Any) -> None:
            try:
                status, payload = app.route(method, self.path, body)
            except AlreadyExists as exc:
                status, payload = 409, {"error": exc.message, "field": exc.field}
            except NotFound as exc:
                status = 404 if method == "GET" else 422
                payload = {"error": exc.message, "field": exc.field}
            except InvalidCommand as exc:
                status, payload = 422, {"error": exc.message, "field": exc.field}
            self._send(status, payload)

        def _send(self, status: int, payload: Any) -> None:
            text = isinstance(payload, str)
            data = payload.encode() if text else json.dumps(payload).encode()
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "text/plain; version=0.0.4" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s: " + format, app.service, *args)

    return Handler
