"""Time-ordered identifiers (UUIDv7 layout) and W3C trace context."""

from __future__ import annotations

import os
import random
import time
import uuid

__all__ = ["new_id", "new_span_id", "new_trace_id"]


def new_id() -> str:
    """Return a UUIDv7-style id: 48 bits of Unix milliseconds, then randomness.

    Time-ordered keys keep the store's unique index append-mostly (DESIGN.md §6: ~8x faster
    than random uuid4 keys at 200k rows).
    """
    ms = time.time_ns() // 1_000_000
    rand = random.getrandbits(80)
    value = (ms << 80) | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def new_trace_id() -> str:
    """A random 128-bit W3C trace id as 32 hex digits."""
    return os.urandom(16).hex()


def new_span_id() -> str:
    """A random 64-bit W3C span id as 16 hex digits."""
    return os.urandom(8).hex()
