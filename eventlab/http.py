"""Each service's small HTTP face: ``GET /health``, ``GET /metrics`` and, for the user, product
and order services, their commands as JSON.

| service | routes |
|---|---|
| every service | ``GET /health`` (200 ok, 503 degraded with ``problems``), ``GET /metrics`` (Prometheus) |
| user | ``POST /users`` (201, the same again for a repeat) |
| product | ``POST /products`` (201, the same again for a repeat) |
| order | ``POST /orders`` (202; an ``order_id`` of the client's own makes a retry safe), ``GET /orders/{id}`` |

Every answer but ``/metrics`` is JSON; every error is ``{"error": ..., "field": ...}``:

| status | when | ``field`` |
|---|---|---|
| 400 | body not JSON, nested too deeply, duplicate keys; bad ``Content-Length``; bad request line; a header line not ``Name: value`` | ``body``, ``Content-Length``, ``request``, ``headers`` |
| 404 | no such route, unknown order | ``path``, ``order_id`` |
| 405 | a method the route does not take (with ``Allow``) | ``method`` |
| 408 | a request that started but did not arrive within ``Limits.read_timeout`` | ``null`` |
| 409 | the id is taken by another user, product or order | the id field |
| 411 | POST without ``Content-Length`` (or chunked) | ``Content-Length`` |
| 413 | body over ``Limits.max_body`` (refused before it is read) | ``body`` |
| 414, 431 | request line or headers too long (``Limits.max_headers`` bytes in all) | ``path``, ``headers`` |
| 422 | invalid command (control characters in text included) | the field |
| 500 | a bug (logged once with its traceback) | ``null`` |
| 501, 505 | unknown method; HTTP/0.9 or 2 | ``method``, ``version`` |
| 503 | the store or broker failed, or too many connections (``Retry-After``) | ``null`` |

Why ``http.server`` and not a server library: six tiny servers (one per service) in one process
or six, a few requests per second, and every answer must be our JSON. The standard library's server
needs three additions to be safe — a deadline per request rather than per ``recv`` (so a client
trickling bytes cannot keep a thread), a bound on connections, and JSON for the errors it makes
itself — which fit in this module. Waitress (the well-kept pure-Python choice) buffers slow clients
without a thread, but writes its own plain-text errors and adds a second threading model to learn;
asyncio servers (uvicorn, hypercorn) add an event loop and ASGI beside the loops' threads.
"""

from __future__ import annotations

import email.errors
import io
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlsplit

from eventlab.application import Commands
from eventlab.errors import (
    AlreadyExists,
    BrokerError,
    ConcurrencyError,
    EventlabError,
    InvalidCommand,
    NotFound,
    StoreError,
)
from eventlab.kafka.loop import ServiceLoop
from eventlab.metrics import LatencyHistogram, SagaDurations, ServiceCollector, problems_of, registry_for, render
from eventlab.store.base import EventStore

if TYPE_CHECKING:
    from eventlab.tracing.spans import Tracing

__all__ = ["MAX_BODY", "STALL_S", "Limits", "Reply", "ServiceHealth", "ServiceHttp", "service_health"]

log = logging.getLogger(__name__)

#: Paths whose requests make no span.
_UNTRACED = frozenset({"/health", "/metrics"})


def _route_of(path: str) -> str:
    """The route ``path`` takes, as span names give it (one name for every order).

    Example:
        >>> _route_of("/orders/O-1"), _route_of("/orders/")
        ('/orders/{order_id}', '/orders')
    """
    parts = [part for part in path.split("/") if part]
    return "/orders/{order_id}" if len(parts) == 2 and parts[0] == "orders" else "/" + "/".join(parts)


MAX_BODY = 64 * 1024
#: A service with events waiting that has handled none of them for this long is reported as lagging.
STALL_S = 30.0
#: What ``GET /health`` answers: numbers by name (``lag``, ``handled``, ...) and ``problems``, a list of text.
Health = Callable[[], Mapping[str, object]]


@dataclass(frozen=True)
class Limits:
    """What one client may ask of a server, and for how long.

    ``idle_timeout`` bounds the wait for a request to start (also between keep-alive requests),
    ``read_timeout`` the time from its first byte until its whole body has arrived, and
    ``write_timeout`` the sending of one reply. ``max_body`` bounds a body, ``max_headers`` the
    header lines of one request together (``http.server`` alone allows 100 lines of 64 KiB). A
    connection over ``max_connections`` waits up to ``queue_wait`` for a free slot, then gets a 503;
    while every slot stays taken, new connections get the 503 at once, so a flood cannot queue up
    ``/health`` behind it.
    """

    max_body: int = MAX_BODY
    max_headers: int = MAX_BODY
    max_connections: int = 64
    idle_timeout: float = 5.0
    read_timeout: float = 10.0
    write_timeout: float = 10.0
    queue_wait: float = 0.5
    linger: float = 1.0


class Reply(NamedTuple):
    """What a route answers: a status and a JSON-able body (or bytes of ``content_type``)."""

    status: int
    body: Any
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Action = Callable[[Any], Reply]


class ServiceHealth:
    """What ``GET /health`` reports for a service: its loop's lag and counters, or the store's head.

    ``handled`` is the durable count (the store's processed markers), so it survives restarts.
    A loop that has no partitions assigned yet is reported as a problem; so is any error while
    measuring (a store that cannot be read, say): ``/health`` answers 503, it does not fail.
    """

    def __init__(
        self,
        loop: ServiceLoop | None,
        store: EventStore,
        problems: Sequence[Callable[[], list[str]]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop = loop
        self.store = store
        self.problems = tuple(problems)
        self._clock = clock
        self._progress: tuple[int, float] | None = None  # (handled, since when) while events wait
        #: Who answers, added as is (a replica's number, the count and its port: see eventlab.supervisor).
        self.identity: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"<ServiceHealth {self.loop.service.name if self.loop else 'commands only'}>"

    def __call__(self) -> dict[str, object]:
        try:
            data = {**self.identity, **self._measure()}
            data["problems"] = problems_of(data) + [problem for source in self.problems for problem in source()]
        except Exception as exc:  # a health check reports what fails; it must not fail itself
            expected = isinstance(exc, EventlabError)
            log.warning("health check failed: %s: %s", type(exc).__name__, exc, exc_info=not expected)
            return {"problems": [f"health check failed: {type(exc).__name__}: {exc}"]}
        return data

    def _measure(self) -> dict[str, object]:
        if self.loop is None:
            return {"events": self.store.head(), "problems": []}
        data: dict[str, object] = dict(self.loop.health())
        data["handled_here"] = data.get("handled")  # by this process (one replica) since it started
        data["handled"] = handled = self.store.processed_count(self.loop.service.name)
        data.setdefault("retries", self.loop.stats.retries)
        data["problems"] = problems = problems_of(data)
        if not self.loop.assigned.is_set():
            problems.append("not consuming: no partitions assigned to this service yet")
        lag = data.get("lag")
        if stalled := self._stalled(handled, lag if isinstance(lag, int) else 0):
            problems.append(f"lagging: {lag} events waiting, none handled for {stalled:.0f} s")
        return data

    def _stalled(self, handled: int, lag: int) -> float:
        """Seconds since this service last handled an event while events wait (0 when it keeps up)."""
        now = self._clock()
        if not lag or self._progress is None or self._progress[0] != handled:
            self._progress = (handled, now)
            return 0.0
        waited = now - self._progress[1]
        return waited if waited > STALL_S else 0.0


def service_health(loop: ServiceLoop | None, store: EventStore, *problems: Callable[[], list[str]]) -> ServiceHealth:
    """What ``GET /health`` reports: a consuming service's lag and counters, else the store's head,
    plus the ``problems`` each source adds (a crash-looping sibling, a failing relay)."""
    return ServiceHealth(loop, store, problems)


class ServiceHttp:
    """Serves one service's HTTP endpoints on ``port`` in a background thread.

    Example:
        >>> server = ServiceHttp("order", 8083, service_health(loop, store), Commands(store)).start()  # doctest: +SKIP
    """

    def __init__(
        self,
        service: str,
        port: int,
        health: Health,
        commands: Commands | None = None,
        *,
        limits: Limits | None = None,
        histograms: Sequence[LatencyHistogram] = (),
        tracing: Tracing | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.service = service
        self.health = health
        self.commands = commands
        self.limits = limits or Limits()
        self.tracing = tracing
        exposed: list[LatencyHistogram | SagaDurations] = list(histograms)
        store = health.store if isinstance(health, ServiceHealth) else commands.store if commands else None
        if isinstance(health, ServiceHealth) and health.loop is not None:
            exposed.append(health.loop.handler_seconds)
        if service == "order" and store is not None:
            exposed.append(SagaDurations(store))
        self.registry = registry_for(ServiceCollector(service, health, exposed))
        self.host = host
        self._server = _Server((host, port), self)
        self._thread = threading.Thread(target=self._serve, name=f"http-{service}", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def __repr__(self) -> str:
        return f"<ServiceHttp {self.service} http://{self.host}:{self.port}>"

    def start(self) -> ServiceHttp:
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        self._server.shutdown()  # returns within one poll interval
        self._server.server_close()

    def routes(self, parts: Sequence[str], accept: str | None = None) -> dict[str, Action] | None:
        """The methods the path ``parts`` takes, each with its action; None for no such path."""
        if list(parts) == ["health"]:
            return {"GET": lambda _: self._health()}
        if list(parts) == ["metrics"]:
            return {"GET": lambda _: self.metrics(accept)}
        commands = self.commands
        if commands is None:
            return None
        match (self.service, *parts):
            case ("user", "users"):
                return {"POST": lambda body: Reply(201, commands.register_user(_object(body)).model_dump(mode="json"))}
            case ("product", "products"):
                return {"POST": lambda body: Reply(201, commands.create_product(_object(body)).model_dump(mode="json"))}
            case ("order", "orders"):
                return {
                    "POST": lambda body: Reply(
                        202, {"order_id": commands.place_order(_object(body)), "status": "created"}
                    )
                }
            case ("order", "orders", order_id):
                return {"GET": lambda _: Reply(200, commands.get_order(order_id).as_dict())}
        return None

    def call(self, method: str, path: str, action: Action, body: Any, traceparent: str = "") -> Reply:
        """Run ``action``; map eventlab's errors to statuses, and anything else to a logged 500.

        With tracing on, a ``SERVER`` span covers it, a child of the caller's ``traceparent`` if any
        (not for health probes and metrics scrapes: a trace each would bury the orders' traces).
        """
        if self.tracing is None or path in _UNTRACED:
            return self._call(method, path, action, body)
        with self.tracing.serving(self.service, method, _route_of(path), path, traceparent) as answered:
            reply = self._call(method, path, action, body)
            answered(reply.status)
            return reply

    def _call(self, method: str, path: str, action: Action, body: Any) -> Reply:
        try:
            return action(body)
        except AlreadyExists as exc:
            return Reply(409, {"error": exc.message, "field": exc.field})
        except NotFound as exc:
            return Reply(404 if method == "GET" else 422, {"error": exc.message, "field": exc.field})
        except InvalidCommand as exc:
            return Reply(422, {"error": exc.message, "field": exc.field})
        except (StoreError, BrokerError, ConcurrencyError) as exc:
            log.warning("%s: %s %s answered 503: %s: %s", self.service, method, path, type(exc).__name__, exc)
            error = f"temporarily unavailable ({type(exc).__name__}): {exc}; retry shortly"
            return Reply(503, {"error": error, "field": None}, headers=(("Retry-After", "1"),))
        except Exception:
            log.exception("%s: %s %s failed", self.service, method, path)
            return Reply(500, {"error": "internal error; the service's log has the details", "field": None})

    def _health(self) -> Reply:
        data = dict(self.health())
        problems = problems_of(data)
        data.pop("problems", None)
        body = {"status": "degraded" if problems else "ok", "service": self.service, "pid": os.getpid()}
        return Reply(503 if problems else 200, {**body, **data, "problems": problems})

    def metrics(self, accept: str | None) -> Reply:
        """The service's metrics in the format asked for (Prometheus text unless OpenMetrics)."""
        data, content_type = render(self.registry, accept)
        return Reply(200, data, content_type)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidCommand("body", "expected a JSON object")
    return body


class _Rejected(Exception):
    """A request refused before it reached a route."""

    def __init__(self, status: int, error: str, field: str | None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(error)
        self.reply = Reply(status, {"error": error, "field": field}, headers=headers)


class _Timeout(Exception):
    """The request did not arrive in time; ``started`` if some of it had."""

    def __init__(self, started: bool) -> None:
        super().__init__("request timed out")
        self.started = started


class _DeadlineReader(io.RawIOBase):
    """Reads a connection against one deadline per request, not one timeout per ``recv``.

    With a plain socket timeout a client sending a byte every few seconds keeps its connection,
    and its thread, for ever; here the whole request (line, headers and body) must arrive within
    ``read_timeout`` of its first byte, and that first byte within ``idle_timeout``.
    """

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self.sock = sock
        self.limits = limits
        self.deadline = math.inf
        self.started = False

    def readable(self) -> bool:
        return True

    def expect_request(self) -> None:
        self.started = False
        self.deadline = time.monotonic() + self.limits.idle_timeout

    def begin(self) -> None:
        """The request has begun: its first bytes came with the one before (pipelined)."""
        if not self.started:
            self.started = True
            self.deadline = time.monotonic() + self.limits.read_timeout

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Timeout(self.started)
        self.sock.settimeout(left)
        try:
            count = self.sock.recv_into(buffer)
        except TimeoutError:
            raise _Timeout(self.started) from None
        if count and not self.started:
            self.started = True
            self.deadline = time.monotonic() + self.limits.read_timeout
        return count


class _HeaderLines:
    """What ``http.server`` reads the header lines through: ``limit`` bytes of them in all, then a 431."""

    def __init__(self, source: io.BufferedIOBase, limit: int) -> None:
        self.source = source
        self.left = limit
        self.limit = limit

    def readline(self, size: int = -1) -> bytes:
        line = self.source.readline(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise _Rejected(431, f"headers larger than {self.limit} bytes in all", "headers")
        return line


#: Empty lines skipped before a request line (RFC 9112 2.2: a client's CRLF after the body before).
_EMPTY_LINES = 4
#: The ``field`` of the errors ``http.server`` finds itself.
_ERROR_FIELDS = {400: "request", 414: "path", 431: "headers", 501: "method", 505: "version"}
#: After these the connection is closed: what the client sends next cannot be trusted to be a request.
_CLOSE_AFTER = frozenset({400, 408, 411, 413, 414, 431, 500, 501, 505})


class _Handler(BaseHTTPRequestHandler):
    """One connection: requests parsed by ``http.server``, answered by the server's ServiceHttp."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so replies to unparseable requests still get a status line
    server: _Server
    raw_requestline: bytes  # set by handle_one_request before parse_request

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by a reader with a deadline per request
        self.app = self.server.app
        self.limits = self.app.limits
        self.reader = _DeadlineReader(self.connection, self.limits)
        self.buffered = self.rfile = io.BufferedReader(self.reader)
        self.body_pending = False
        self.linger = False

    def handle_one_request(self) -> None:
        self.reader.expect_request()
        self.body_pending = False
        self.replied = False
        # what a reply reads, should the request line itself not arrive in time (else an earlier request's)
        self.command, self.requestline, self.request_version = "", "", self.default_request_version
        try:
            if self._skip_empty_lines():
                self.reader.begin()
            super().handle_one_request()
        except _Timeout as exc:
            self.close_connection = True
            if exc.started and not self.replied:
                error = f"request not received within {self.limits.read_timeout:g} s"
                self._reply_quietly(Reply(408, {"error": error, "field": None}))
        except OSError as exc:  # the client went away (reset, broken pipe) or stopped reading
            self.close_connection = True
            log.debug("%s: connection from %s ended: %r", self.app.service, self.client_address, exc)

    def _skip_empty_lines(self) -> bool:
        """Wait for a request's first byte and skip a few empty lines before it; False on end of input.

        ``peek`` returns at once what is buffered, else waits for a first byte (within the idle timeout).
        """
        for _ in range(_EMPTY_LINES):
            ahead = self.buffered.peek(2)
            empty = 1 if ahead.startswith(b"\n") else 2 if ahead.startswith(b"\r\n") else 0
            if not empty:
                return bool(ahead)
            self.buffered.read(empty)
        return bool(self.buffered.peek(1))

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.linger:
                self._drain()

    def parse_request(self) -> bool:
        if len(self.raw_requestline.split()) == 2:  # HTTP/0.9 has no headers: answer now, do not wait for them
            self.command, self.request_version, self.close_connection = "", "HTTP/1.0", True  # no method
            self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            self.send_error(505, "HTTP/0.9 is not supported", "send e.g. 'GET /health HTTP/1.1' and headers")
            return False
        if not self.raw_requestline.strip():  # http.server would close without a word
            self.command, self.request_version, self.close_connection = "", "HTTP/1.0", True
            self.send_error(400, "empty request line", "send e.g. 'GET /health HTTP/1.1' and headers")
            return False
        self.rfile = _HeaderLines(self.buffered, self.limits.max_headers)  # type: ignore[assignment]
        try:
            if not super().parse_request():
                return False
        except _Rejected as rejected:
            self._reply(rejected.reply)
            return False
        finally:
            self.rfile = self.buffered
        if malformed := _malformed_header(self.headers):
            self.close_connection = True
            self._reply(Reply(400, {"error": malformed, "field": "headers"}))
            return False
        return True

    def handle_expect_100(self) -> bool:
        return True  # "100 Continue" goes out once the body's length is accepted (see _read_json)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """``http.server``'s own errors (bad request line, headers too long, unknown method) as JSON."""
        error = message or HTTPStatus(code).phrase
        self._reply(
            Reply(code, {"error": f"{error}: {explain}" if explain else error, "field": _ERROR_FIELDS.get(code)})
        )

    def version_string(self) -> str:
        return f"eventlab-{self.app.service}"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.app.service, *args)

    def _dispatch(self) -> None:
        self.body_pending = "Content-Length" in self.headers or "Transfer-Encoding" in self.headers
        try:
            self._reply(self._answer(self._target_path()))
        except _Rejected as rejected:
            self._reply(rejected.reply)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _dispatch

    def _target_path(self) -> str:
        """The request target's path: ``/orders/1`` of ``/orders/1?x``, and of ``http://host/orders/1``
        (the absolute form a proxy sends, RFC 9112 3.2.2)."""
        if self.path.startswith("/"):
            return self.path.split("?", 1)[0]
        try:
            return urlsplit(self.path).path
        except ValueError as exc:  # e.g. http://[::1 (an IPv6 address without its bracket)
            raise _Rejected(400, f"bad request target {self.path[:60]!r}: {exc}", "path") from None

    def _answer(self, path: str) -> Reply:
        parts = [unquote(part) for part in path.split("/") if part]  # %2D is -, as RFC 3986 6.2.2.2 says
        routes = self.app.routes(parts, self.headers.get("Accept"))
        if routes is None:
            raise _Rejected(404, f"no route {path} on the {self.app.service} service", "path")
        method = "GET" if self.command == "HEAD" else self.command
        if method not in routes:
            allowed = sorted({*routes, "HEAD"} if "GET" in routes else set(routes))
            error = f"{self.command} is not allowed on {path}; allowed: {', '.join(allowed)}"
            raise _Rejected(405, error, "method", headers=(("Allow", ", ".join(allowed)),))
        body = self._read_json() if method == "POST" else None
        return self.app.call(method, path, routes[method], body, self.headers.get("traceparent", ""))

    def _read_json(self) -> Any:
        """The body as JSON, after checking its length: nothing is read unless it is acceptable."""
        if "Transfer-Encoding" in self.headers:
            raise _Rejected(411, "a chunked body is not accepted: send Content-Length", "Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise _Rejected(411, "Content-Length is required", "Content-Length")
        text = values[0].strip()
        if len(set(values)) > 1 or not (text.isascii() and text.isdigit()):
            shown = ", ".join(values)[:40]
            raise _Rejected(400, f"Content-Length must be one non-negative integer, not {shown!r}", "Content-Length")
        length = int(text)
        if length > self.limits.max_body:
            raise _Rejected(413, f"body of {length} bytes is larger than {self.limits.max_body}", "body")
        if self.headers.get("Expect", "").lower() == "100-continue" and self.request_version >= "HTTP/1.1":
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        data = self.rfile.read(length)
        self.body_pending = False
        if len(data) < length:
            self.close_connection = True
            raise _Rejected(400, f"body ended after {len(data)} of {length} bytes", "body")
        try:
            return json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        except RecursionError:
            raise _Rejected(400, "body is not JSON: nested too deeply", "body") from None
        except ValueError as exc:
            raise _Rejected(400, f"body is not JSON: {exc}", "body") from None

    def _reply(self, reply: Reply) -> None:
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        if self.body_pending or reply.status in _CLOSE_AFTER:
            self.close_connection = True
            self.linger = True
        self.connection.settimeout(self.limits.write_timeout)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.replied = True

    def _reply_quietly(self, reply: Reply) -> None:
        try:
            self._reply(reply)
        except OSError as exc:
            log.debug("%s: could not answer %s: %r", self.app.service, self.client_address, exc)

    def _drain(self) -> None:
        """Read what the client still sends, briefly, before closing: closing a socket with unread
        input resets the connection, and the client may lose the reply it has not read yet."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + self.limits.linger, 0
            while drained < 16 * self.limits.max_body and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.connection.recv(65536)
                if not chunk:
                    return
                drained += len(chunk)
        except OSError:
            return


#: The parser's defects that mean a header line it could not read (not e.g. a multipart Content-Type's
#: missing boundary, which it reports too: the headers alone have no body to find one in).
_HEADER_LINE_DEFECTS = (
    email.errors.MissingHeaderBodySeparatorDefect,
    email.errors.MisplacedEnvelopeHeaderDefect,
    email.errors.FirstHeaderLineIsContinuationDefect,
)


def _malformed_header(headers: Message) -> str | None:
    """What is wrong with a header line that is not ``Name: value``, or None.

    ``http.server`` ends the headers at such a line (``NoColon``, ``Content-Length : 5``) and takes
    the rest for the body, so a ``Content-Length`` after it would be ignored and the body read as
    the next request; it keeps an obs-fold's line break inside the value. RFC 9112 says reject both.
    """
    if any(isinstance(defect, _HEADER_LINE_DEFECTS) for defect in headers.defects):
        line = str(headers.get_payload()).splitlines()[0] if headers.get_payload() else ""
        return f"malformed header line {line[:60]!r}: expected 'Name: value'"
    for name, value in headers.items():
        if "\n" in value or "\r" in value:
            return f"header {name[:60]!r} is folded over several lines (obs-fold): send it on one line"
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen.add(key)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``Limits.max_connections`` of them."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: where a burst waits for a free slot

    def __init__(self, address: tuple[str, int], app: ServiceHttp) -> None:
        self.app = app
        self._slots = threading.BoundedSemaphore(app.limits.max_connections)
        self._saturated = False
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        wait = 0.0 if self._saturated else self.app.limits.queue_wait
        if not self._slots.acquire(timeout=wait):
            self._saturated = True
            self._refuse(request)
            return
        self._saturated = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 from the accepting thread without ever blocking it."""
        limit = self.app.limits.max_connections
        body = json.dumps({"error": f"more than {limit} connections; retry shortly", "field": None}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            request.setblocking(False)
            try:
                request.recv(65536)  # what has arrived of the request, so closing does not reset
            except BlockingIOError:
                pass
            request.send(head.encode() + body)
        except OSError as exc:
            log.debug("%s: could not refuse a connection: %r", self.app.service, exc)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a client that went away or stalled: nothing to fix here
            log.debug("%s: connection from %s ended: %r", self.app.service, client_address, error)
        else:
            log.exception("%s: unexpected error serving %s", self.app.service, client_address)
