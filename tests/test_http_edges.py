"""HTTP at its edges, as a hostile client meets it: every request gets a JSON answer or a bounded
close, nothing a client sends can hold a thread for long, and no input reaches a route unchecked.

Each test talks to a real ``ServiceHttp`` on a free port over real sockets, with a real SQLite
event store behind it (no broker: these are the command services' and the server's own edges).
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from conftest import ordering

from eventlab.application import Commands
from eventlab.chaos.inject import place_order
from eventlab.errors import StoreError
from eventlab.http import MAX_BODY, Limits, ServiceHttp, service_health
from eventlab.store.sqlite import SqliteEventStore

#: Short deadlines, so tests of timeouts stay fast; every wait below is bounded by a multiple.
FAST = Limits(idle_timeout=1.0, read_timeout=1.5, write_timeout=2.0, queue_wait=0.2, linger=0.2)
WAIT = 10.0


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


def read_response(sock: socket.socket, head_only: bool = False) -> Response:
    """One HTTP response from ``sock`` (status, headers, body by Content-Length), reading no further."""
    stream = sock.makefile("rb", buffering=0)  # unbuffered: what follows stays in the socket
    lines = []
    while (line := _readline(stream)) not in (b"\r\n", b""):
        lines.append(line.decode("iso-8859-1").rstrip("\r\n"))
    if not lines:
        raise ConnectionError("closed without an answer")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = 0 if head_only else int(headers.get("content-length", 0))
    body = b""
    while len(body) < length and (chunk := stream.read(length - len(body))):
        body += chunk
    return Response(status, headers, body)


def _readline(stream) -> bytes:
    line = b""
    while not line.endswith(b"\n") and (byte := stream.read(1)):
        line += byte
    return line


def exchange(port: int, request: bytes, head_only: bool = False) -> Response:
    """Send ``request`` as is on a new connection and read the answer (within WAIT seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        return read_response(sock, head_only)


def post(port: int, path: str, body: bytes, extra: str = "") -> Response:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    return exchange(port, head.encode() + body)


def get(port: int, path: str, method: str = "GET") -> Response:
    return exchange(
        port, f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode(), method == "HEAD"
    )


@pytest.fixture
def store(tmp_path):
    with SqliteEventStore(tmp_path / "events.db") as store:
        yield store


@pytest.fixture
def serve(store):
    """Start a ServiceHttp on a free port; every one started is stopped after the test."""
    servers = []

    def start(service="user", limits=FAST, commands=None, health=None):
        server = ServiceHttp(
            service, 0, health or service_health(None, store), commands or Commands(store), limits=limits
        )
        servers.append(server.start())
        return server.port

    yield start
    for server in servers:
        server.stop()


def user(user_id="U1", name="Ada", **extra) -> bytes:
    return json.dumps({"user_id": user_id, "name": name, "email": "ada@example.com", **extra}).encode()


# --- Content-Length: checked before a byte of the body is read -----------------------------------


@pytest.mark.parametrize(
    ("length", "status"),
    [("-1", 400), ("abc", 400), ("+5", 400), ("1e3", 400), ("٣", 400), (str(MAX_BODY + 1), 413), ("99999999999", 413)],
)
def test_a_bad_or_huge_content_length_is_refused_before_the_body_is_read(serve, store, length, status):
    # Given a server, when a client announces a body it never sends (or one too big)
    port = serve()
    answer = exchange(port, f"POST /users HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode())
    # then it is answered at once (nothing waits for the body), naming the header or the body
    assert answer.status == status
    assert answer.json["field"] == ("body" if status == 413 else "Content-Length")
    assert answer.headers["connection"] == "close"
    assert store.head() == 0


def test_a_negative_length_with_a_big_body_is_refused_and_the_body_not_parsed(serve, store):
    # Given a valid command followed by 2 MB, announced as Content-Length: -1 (once read to EOF)
    port = serve()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"POST /users HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n" + user() + b" " * 2_000_000)
        answer = read_response(sock)
    assert (answer.status, answer.json["field"]) == (400, "Content-Length")
    assert store.head() == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("", 411),  # no Content-Length at all
        ("Transfer-Encoding: chunked\r\n", 411),
        ("Content-Length: 2\r\nContent-Length: 3\r\n", 400),  # two lengths: a smuggling attempt
    ],
)
def test_a_post_must_say_how_long_its_body_is(serve, headers, status):
    port = serve()
    answer = exchange(port, f"POST /users HTTP/1.1\r\nHost: t\r\n{headers}\r\n{{}}".encode())
    assert (answer.status, answer.json["field"]) == (status, "Content-Length")


def test_expect_100_continue_is_sent_only_for_an_acceptable_length(serve):
    port = serve()
    body = user()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        head = f"POST /users HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        sock.sendall(head.encode())
        assert read_response(sock, head_only=True).status == 100
        sock.sendall(body)
        assert read_response(sock).status == 201
    big = f"POST /users HTTP/1.1\r\nHost: t\r\nContent-Length: {MAX_BODY + 1}\r\nExpect: 100-continue\r\n\r\n"
    assert exchange(port, big.encode()).status == 413


# --- bodies that are not what they seem ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "nested too deeply"),
        (b"{oops", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b'{"user_id": "U1", "user_id": "U2"}', "duplicate key 'user_id'"),
        (b'{"price_cents": NaN}', "NaN is not a JSON number"),
        (b"1" * 5_000, "not JSON"),  # an integer with more digits than Python converts
    ],
)
def test_a_body_that_is_not_plain_json_is_a_400_naming_the_body(serve, store, body, error):
    port = serve()
    answer = post(port, "/users", body)
    assert (answer.status, answer.json["field"]) == (400, "body")
    assert error in answer.json["error"]
    assert store.head() == 0


@pytest.mark.parametrize("key", ["self", "data", "fields", "command"])
def test_client_json_never_becomes_keyword_arguments(serve, store, key):
    # Given keys that clash with the command methods' own parameter names
    users, orders = serve("user"), serve("order")
    for port, path, body in [
        (users, "/users", user(**{key: 1})),
        (orders, "/orders", json.dumps({key: 1, "user_id": "U1", "lines": []}).encode()),
    ]:
        answer = post(port, path, body)
        # then each is one more unknown field, rejected by the command model
        assert answer.status == 422, answer.body
        assert answer.json["field"] in (key, "lines")
    assert store.head() == 0


@pytest.mark.parametrize(
    ("name", "char"),
    [
        ("Ada\x00", "U+0000"),
        ("evil\u202egnp.exe", "U+202E"),
        ("in\u200bvisible", "U+200B"),
        ("two\nlines", "U+000A"),
        ("para\u2029graph", "U+2029"),
        ("\x1b[31mred", "U+001B"),
    ],
)
def test_control_and_format_characters_are_rejected_naming_the_field(serve, store, name, char):
    port = serve()
    answer = post(port, "/users", user(name=name))
    assert (answer.status, answer.json["field"]) == (422, "name")
    assert char in answer.json["error"]
    assert store.head() == 0


def test_names_that_need_joiners_and_non_latin_letters_are_accepted(serve, store):
    port = serve()
    assert post(port, "/users", user("U1", "مهدی\u200cزاده")).status == 201  # ZWNJ in a Persian name
    assert post(port, "/users", user("U2", "Zoë O'Brien-Łukasz")).status == 201
    assert store.head() == 2


def test_an_email_with_a_control_character_is_rejected(serve):
    body = json.dumps({"user_id": "U1", "name": "Ada", "email": "ada\x00@example.com"}).encode()
    answer = post(serve(), "/users", body)
    assert (answer.status, answer.json["field"]) == (422, "email")


# --- methods, paths, versions --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "GET"])
def test_a_method_the_route_does_not_take_is_405_with_allow(serve, method):
    answer = get(serve(), "/users", method)
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json["field"] == "method"


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_post_to_a_read_only_route_is_405(serve, path):
    answer = post(serve(), path, b"{}")
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD"


def test_head_answers_the_headers_of_get_without_a_body(serve):
    port = serve()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        head = read_response(sock, head_only=True)
        full = read_response(sock)  # the same connection: nothing of a body came after the HEAD
    assert (head.status, full.status) == (200, 200)
    assert int(head.headers["content-length"]) == len(full.body)
    assert full.json["status"] == "ok"


def test_an_unknown_method_is_a_json_501(serve):
    answer = get(serve(), "/health", "BREW")
    assert (answer.status, answer.json["field"]) == (501, "method")


def test_unknown_paths_and_orders_are_404s_naming_the_field(serve):
    port = serve("order")
    assert get(port, "/nowhere").json["field"] == "path"
    assert get(port, "/orders/a/b").json["field"] == "path"
    answer = get(port, "/orders/no-such-order")
    assert (answer.status, answer.json["field"]) == (404, "order_id")


def test_http_0_9_gets_an_answer_at_once(serve):
    # Given a request line without a version (HTTP/0.9 has no headers, so nothing more will come)
    answer = exchange(serve(), b"GET /health\r\n")
    # then it is answered now, instead of waiting for headers that never arrive
    assert (answer.status, answer.json["field"]) == (505, "version")


@pytest.mark.parametrize(
    ("request_line", "status", "field"),
    [
        (b"GET /health HTTP/2.0\r\n\r\n", 505, "version"),
        (b"GET /health HTTP/x\r\n\r\n", 400, "request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n", 400, "request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "path"),
        (b"GET /health HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431, "headers"),
    ],
)
def test_garbage_gets_a_json_error(serve, request_line, status, field):
    answer = exchange(serve(), request_line)
    assert (answer.status, answer.json["field"]) == (status, field)


def test_headers_are_bounded_in_all_not_only_per_line(serve):
    # Given header lines each well under http.server's 64 KiB per line (it allows 100 of them: 6.4 MB)
    port, line = serve(), b"X-Pad: " + b"a" * 4000 + b"\r\n"
    # then: under MAX_BODY bytes of them in all is served, over it is a 431 naming the headers
    assert exchange(port, b"GET /health HTTP/1.1\r\n" + line * 15 + b"\r\n").status == 200
    answer = exchange(port, b"GET /health HTTP/1.1\r\n" + line * 17 + b"\r\n")
    assert (answer.status, answer.json) == (
        431,
        {"error": f"headers larger than {MAX_BODY} bytes in all", "field": "headers"},
    )


def test_empty_lines_before_a_request_are_skipped_and_a_blank_line_is_a_400(serve):
    port = serve()
    # Given a client that ends a POST's body with CRLF, then sends its next request on the connection
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        body = user("U1")
        head = f"POST /users HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        sock.sendall(head + body + b"\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        # then both are answered (RFC 9112 2.2: ignore empty lines before a request line)
        assert read_response(sock).status == 201
        assert read_response(sock).json["events"] == 1
    assert exchange(port, b"\nGET /health HTTP/1.1\r\n\r\n").status == 200
    # but a line of spaces is no request: a 400, not a close without a word
    answer = exchange(port, b"   \r\nGET /health HTTP/1.1\r\n\r\n")
    assert (answer.status, answer.json["field"]) == (400, "request")


def test_absolute_form_and_percent_encoded_paths_reach_their_routes(serve):
    port = serve("order")
    # a proxy's absolute-form target (RFC 9112 3.2.2), and %XX for an unreserved character (RFC 3986 6.2.2.2)
    assert get(port, f"http://127.0.0.1:{port}/health?x=1").json["status"] == "ok"
    assert get(port, "/%68ealth").json["status"] == "ok"
    answer = get(port, "/orders/no%2Dsuch%2Forder")
    assert (answer.status, answer.json["field"]) == (404, "order_id")
    assert "no-such/order" in answer.json["error"]
    answer = get(port, "http://[::1/health")  # an absolute form urllib cannot split
    assert (answer.status, answer.json["field"]) == (400, "path")


SMUGGLED = b"GET /orders/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.mark.parametrize(
    "bad_line",
    [
        b"NoColon",  # not a header at all: http.server's parser took it (and all after it) for the body
        b"Content-Length : %d" % len(SMUGGLED),  # space before the colon (RFC 9112 5.1: must be a 400)
        b"X-Folded: a\r\n continued",  # obs-fold (RFC 9112 5.2: reject, or unfold)
    ],
)
def test_a_malformed_header_line_is_a_400_and_what_follows_is_not_another_request(serve, bad_line):
    # Given a GET whose headers hold a line that is not 'Name: value', then a body that is a second
    # request (one request to anything that reads the Content-Length, two to a parser that lost it)
    port = serve("order")
    length = b"" if bad_line.startswith(b"Content-Length") else b"Content-Length: %d\r\n" % len(SMUGGLED)
    request = b"GET /health HTTP/1.1\r\nHost: t\r\n" + bad_line + b"\r\n" + length + b"\r\n" + SMUGGLED
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        answer = read_response(sock)
        # then: one 400 naming the headers, and the connection closes: the body is never answered as a request
        assert (answer.status, answer.json["field"]) == (400, "headers"), answer.body
        assert answer.headers["connection"] == "close"
        assert sock.recv(65536) == b""


@pytest.mark.parametrize("content_type", [b"multipart/form-data; boundary=abc", b"multipart/mixed"])
def test_a_form_post_is_judged_by_its_body_not_refused_for_its_headers(serve, content_type):
    # Given a browser-style form POST: the header parser notes a multipart type's missing boundary
    # (it has no body to look in), which is no malformed header line
    body = b"--abc\r\nContent-Disposition: form-data; name=user_id\r\n\r\nU1\r\n--abc--\r\n"
    request = b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: " + content_type
    answer = exchange(serve("order"), request + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    # then: the 400 is about the body, which is not JSON
    assert (answer.status, answer.json["field"]) == (400, "body"), answer.body


def test_keep_alive_serves_several_requests_on_one_connection(serve):
    port = serve()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        for user_id in ("U1", "U2"):
            body = user(user_id)
            sock.sendall(f"POST /users HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            assert read_response(sock).status == 201
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock).json["events"] == 2


# --- slow, half-sent and too many connections -----------------------------------------------------


@pytest.mark.parametrize(
    "begun",
    [
        b"POST /users HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{",  # in the body
        b"POST /users HTTP/1.1\r\nHost: t\r\nX-Slow: ",  # in a header
        b"POST /us",  # in the request line
    ],
    ids=["body", "header", "request-line"],
)
def test_a_client_trickling_bytes_is_cut_off_at_the_read_deadline(serve, begun, caplog):
    # Given a client that sends a byte every 0.2 s, for ever, wherever it is in its request
    port = serve()
    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
        sock.sendall(begun)
        deadline = time.monotonic() + WAIT
        answer = b""
        while time.monotonic() < deadline:
            try:
                sock.sendall(b" ")
                answer = sock.recv(65536)
                break
            except TimeoutError:
                continue
            except OSError:  # reset: the server closed while we were still sending
                break
    # then the server answers 408 once the request's deadline passes, not per byte received
    assert answer.startswith(b"HTTP/1.1 408"), answer
    # and takes it for a client's fault, not its own (a request line cut short was a logged traceback)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_request_begun_in_the_same_packet_as_the_one_before_gets_a_408_too(serve):
    # Given a request followed, in the same send, by the start of another that never completes
    port = serve()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /hea")
        assert read_response(sock).status == 200
        # then the second is answered 408 at its read deadline, not dropped without a word at the
        # idle one (its first bytes were already read with the first request, so no read started it)
        assert read_response(sock).status == 408


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(serve):
    port = serve()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        assert sock.recv(100) == b""  # closed by the server, silently: no request, no answer


def handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def test_a_slow_loris_cannot_hold_more_threads_than_the_limit_nor_stop_health(serve):
    # Given a server that takes 8 connections at a time, and 40 clients that each send half a request
    limits = Limits(max_connections=8, idle_timeout=1.0, read_timeout=1.5, queue_wait=0.1, linger=0.1)
    port = serve(limits=limits)
    before = handler_threads()
    loris = []
    for _ in range(40):
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        loris.append(sock)
    try:
        # then it never runs more than 8 handler threads for them
        assert handler_threads() - before <= 8
        # and /health is answered within the read deadline: a quick 503 while the slots are
        # taken, a 200 once the half-sent requests have been cut off
        deadline = time.monotonic() + WAIT
        statuses = []
        while time.monotonic() < deadline:
            answer = get(port, "/health")
            statuses.append(answer.status)
            assert answer.json  # JSON either way
            if answer.status == 200:
                break
            assert answer.status == 503 and answer.headers["retry-after"] == "1"
            time.sleep(0.2)
        assert statuses[-1] == 200, statuses
        # and every half-sent request got an end: a 408 or a close (or a 503 when refused)
        for sock in loris:
            data = sock.recv(65536)
            assert data == b"" or data.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")), data
    finally:
        for sock in loris:
            sock.close()


def test_fifty_slow_clients_do_not_stop_health_with_the_default_limits(serve):
    port = serve(limits=Limits())
    loris = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(50)]
    try:
        for sock in loris:
            sock.sendall(b"POST /users HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=Limits().read_timeout) as response:
            assert json.loads(response.read())["status"] == "ok"
    finally:
        for sock in loris:
            sock.close()


def test_concurrent_clients_all_get_an_answer(serve, store):
    # Given 120 clients posting at once to a server taking 16 connections at a time
    port = serve(limits=Limits(max_connections=16))

    def register(n):
        try:
            return post(port, "/users", user(f"U{n}", f"User {n}"))
        except OSError as exc:  # a dropped connection fails the test below
            return exc

    with ThreadPoolExecutor(120) as pool:
        answers = list(pool.map(register, range(120)))
    # then every one is answered with JSON: created, or told to retry
    statuses = [a.status if isinstance(a, Response) else repr(a) for a in answers]
    assert set(statuses) <= {201, 503}, statuses
    assert all(a.json["field"] is None for a in answers if a.status == 503)
    assert store.head() == statuses.count(201) > 0


def test_a_client_that_disconnects_leaves_no_traceback(serve, caplog, capfd):
    # Given clients that reset their connection right after asking (SO_LINGER 0 sends RST on close)
    port = serve()
    caplog.set_level(logging.DEBUG, logger="eventlab.http")
    for path in ("/metrics", "/health", "/users"):
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            sock.close()
    assert get(port, "/health").status == 200  # every disconnect has been dealt with by now
    time.sleep(0.3)
    # then nothing above debug level is logged and nothing is printed
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    assert "Traceback" not in capfd.readouterr().err


# --- errors behind the route ---------------------------------------------------------------------


class FailingStore(SqliteEventStore):
    """A real store whose appends fail the way a full or locked disk does."""

    error: Exception = StoreError("database is locked")

    def append(self, events, *, processed=None):
        raise self.error


def test_a_store_error_inside_a_route_is_a_503_with_json(serve, tmp_path):
    store = FailingStore(tmp_path / "failing.db")
    port = serve(commands=Commands(store))
    answer = post(port, "/users", user())
    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json["field"] is None and "database is locked" in answer.json["error"]
    store.close()


def test_an_unexpected_error_is_a_500_with_json_logged_once(serve, tmp_path, caplog, capfd):
    store = FailingStore(tmp_path / "failing.db")
    store.error = RuntimeError("a bug")
    port = serve(commands=Commands(store))
    answer = post(port, "/users", user())
    assert (answer.status, answer.json["field"]) == (500, None)
    assert "a bug" not in answer.json["error"]  # internals stay in the log
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "Traceback" not in capfd.readouterr().err  # not printed a second time by socketserver
    store.close()


def test_urllib_sees_json_errors(serve):
    # The errors a stock client sees: JSON bodies it can read, for 4xx and 5xx alike
    port = serve()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/users", data=b"{oops", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=WAIT)
    assert error.value.code == 400 and json.loads(error.value.read())["field"] == "body"


# --- an answer lost after the order was stored -----------------------------------------------------


class AnswerDropper:
    """A proxy to ``port`` that passes each request on whole and drops the first ``drop`` answers:
    it reads them from the server, then closes the client's connection without a byte, as a kill or
    a network cut right after the commit would."""

    def __init__(self, port: int, drop: int = 1) -> None:
        self.upstream, self.drop, self.requests = port, drop, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            with client, socket.create_connection(("127.0.0.1", self.upstream), timeout=WAIT) as server:
                server.sendall(self._request(client))
                answer = b"".join(iter(lambda: server.recv(65536), b""))  # urllib asks to close after it
                self.requests += 1
                if self.requests > self.drop:
                    client.sendall(answer)

    @staticmethod
    def _request(client: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += client.recv(65536)
        head = data.split(b"\r\n\r\n")[0].decode("iso-8859-1").lower()
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        while len(data) - data.index(b"\r\n\r\n") - 4 < length:
            data += client.recv(65536)
        return data

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(("own_id", "orders"), [(True, 1), (False, 2)])
def test_an_order_retried_after_its_answer_was_lost_is_placed_once_under_its_own_id(serve, store, own_id, orders):
    # Given the order service behind a proxy that loses the first answer after the order is stored
    proxy = AnswerDropper(serve("order", commands=ordering(store)))
    order = {"user_id": "U1", "lines": [{"product_id": "P1", "quantity": 1}]}
    if own_id:
        order["order_id"] = "mine-1"
    # when a client retries until it gets its 202 (as `eventlab chaos` does)
    order_id, why = place_order(f"http://127.0.0.1:{proxy.port}", order, time.monotonic() + WAIT)
    proxy.close()
    # then it was sent twice and answered once; under its own id it is one order, without one the retry made a second
    assert (order_id is not None, proxy.requests) == (True, 2), why
    assert len([e for e in store.read_all() if e.event_type == "OrderCreated"]) == orders
    assert order_id == "mine-1" or not own_id
