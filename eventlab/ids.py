"""Time-ordered identifiers (UUIDv7 layout) and W3C trace context."""

from __future__ import annotations

import random
import re
import time

__all__ = ["TRACEPARENT", "new_id", "new_span_id", "new_trace_id"]

#: A valid W3C ``traceparent`` (for :meth:`re.Pattern.fullmatch`): a version other than ``ff``, a
#: trace id and a span id that are not all zeros, and the flags, all in lowercase hex.
TRACEPARENT = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})(?P<trace_id>[0-9a-f]{32})-(?!0{16})(?P<span_id>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
)


# The version (7) and RFC 4122 variant bits of a UUIDv7, set over the time and random bits.
_VERSION_BITS, _VERSION_MASK = (0x7 << 76) | (0x2 << 62), ~((0xF << 76) | (0x3 << 62))


def new_id() -> str:
    """Return a UUIDv7-style id: 48 bits of Unix milliseconds, then randomness.

    Time-ordered keys keep the store's unique index append-mostly (DESIGN.md §6: ~8x faster
    than random uuid4 keys at 200k rows). Formatted from its 32 hex digits, as ``str(uuid.UUID(...))``
    would (half the time: one is made for every appended event).

    >>> import uuid
    >>> value = new_id()
    >>> str(uuid.UUID(value)) == value, uuid.UUID(value).version, uuid.UUID(value).variant == uuid.RFC_4122
    (True, 7, True)
    """
    digits = "%032x" % ((time.time_ns() // 1_000_000 << 80 | random.getrandbits(80)) & _VERSION_MASK | _VERSION_BITS)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def new_trace_id() -> str:
    """A random 128-bit W3C trace id as 32 hex digits (never all zeros, which W3C reserves for "invalid").

    From ``random`` like OpenTelemetry's own id generator, not ``os.urandom``: ids need to be unique, not
    secret, and ``os.urandom`` is a system call that lets go of the interpreter lock, so each of the ~11
    ids an order makes could wait for the lock to come back from a busy thread.

    >>> len(new_trace_id()), new_trace_id() != new_trace_id()
    (32, True)
    """
    return "%032x" % (random.getrandbits(128) or 1)


def new_span_id() -> str:
    """A random 64-bit W3C span id as 16 hex digits (never all zeros; see :func:`new_trace_id`).

    >>> len(new_span_id())
    16
    """
    return "%016x" % (random.getrandbits(64) or 1)
