"""An append-only JSON-lines file of keyed records, written at most once per key.

Several threads and several processes may share one journal: every write takes an exclusive
``fcntl.flock`` on the file, catches up with the lines other writers appended since this
instance last looked (from the remembered byte offset, so a check costs only the new lines),
and appends only if the key is new. Writing the line *is* the side effect being recorded (an
email delivered, a charge answered), so it happens once per key, whatever dies when.

A writer killed in the middle of a line leaves a torn tail without a newline; the next writer,
holding the lock, cuts it off before appending (nobody else can be writing it).

A file's records stay in the file: the journal keeps each key and where its line starts, and reads
a record again when it is asked for. So a long run costs about 125 bytes a record in memory rather
than the parsed record (about 730), and a big file is read line by line, not at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["Journal", "Record"]

log = logging.getLogger(__name__)

Record = dict[str, Any]


class Journal:
    """Records keyed by ``record[key_field]``, in a file (``path``) or, without one, in memory.

    Example:
        >>> journal = Journal(None)
        >>> journal.record_once("a", lambda records: {"key": "a", "n": 1})
        ({'key': 'a', 'n': 1}, True)
        >>> journal.record_once("a", lambda records: {"key": "a", "n": 2})
        ({'key': 'a', 'n': 1}, False)
    """

    def __init__(self, path: Path | str | None, key_field: str = "key") -> None:
        self.path = Path(path) if path is not None else None
        self.key_field = key_field
        self._records: dict[str, Record] = {}  # without a file
        self._starts: dict[str, int] = {}  # with one: where each key's line starts
        self._offset = 0  # where the lines this instance has read end
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"<Journal {str(self.path) if self.path else 'in memory'} {len(self._records) + len(self._starts)} records>"
        )

    def written_keys(self) -> list[str]:
        """Every key written so far, in the order of writing."""
        with self._locked(fcntl.LOCK_SH) as file:
            if file is None:
                return list(self._records)
            self._catch_up(file)
            return list(self._starts)

    def record_once(self, key: str, make: Callable[[Mapping[str, Record]], Record]) -> tuple[Record, bool]:
        """The record under ``key``: the existing one (``False``), or ``make(records)`` appended now (``True``).

        ``make`` runs under the lock with every record written so far, so of two racing writers
        exactly one makes the record, and it may decide from the others.
        """
        with self._locked(fcntl.LOCK_EX) as file:
            if file is not None:
                self._catch_up(file, repair=True)
            records = self._records if file is None else _Lines(self, file)
            known = records.get(key)
            if known is not None:
                return known, False
            record = make(records)
            if record.get(self.key_field) != key:
                raise ValueError(f"record must carry {self.key_field}={key!r}")
            if file is None:
                self._records[key] = record
            else:
                line = (json.dumps(record) + "\n").encode()
                file.seek(0, os.SEEK_END)
                file.write(line)
                file.flush()
                self._starts[key] = self._offset
                self._offset += len(line)
            return record, True

    @contextmanager
    def _locked(self, mode: int) -> Iterator[IO[bytes] | None]:
        with self._lock:
            if self.path is None:
                yield None
                return
            if mode == fcntl.LOCK_SH and not self.path.exists():
                yield None
                return
            try:
                opened = open(self.path, "a+b")  # noqa: SIM115 - closed by the with below
            except FileNotFoundError:  # its directory first (not on every call: a mkdir that finds it costs
                self.path.parent.mkdir(parents=True, exist_ok=True)  # two system calls and an exception)
                opened = open(self.path, "a+b")  # noqa: SIM115
            with opened as file:
                fcntl.flock(file, mode)
                try:
                    yield file
                finally:
                    fcntl.flock(file, fcntl.LOCK_UN)

    def _catch_up(self, file: IO[bytes], *, repair: bool = False) -> None:
        """Note where each line written since this instance last looked starts; with ``repair``, cut a
        torn last line off (only a writer, holding the lock alone, may)."""
        size = file.seek(0, os.SEEK_END)
        if self._offset and (size < self._offset or _byte_before(file, self._offset) != b"\n"):
            # the file was replaced or truncated (then maybe written again past where this instance
            # stopped reading, but no longer with a line ending there): read it again
            self._starts.clear()
            self._offset = 0
        file.seek(self._offset)
        for line in file:
            if not line.endswith(b"\n"):  # a torn last line: a writer killed mid-line
                break
            self._remember(line)
            self._offset += len(line)
        if repair and self._offset < size:
            log.warning("%s: cutting a torn last line of %d bytes", self.path, size - self._offset)
            file.truncate(self._offset)

    def _read(self, file: IO[bytes], key: str) -> Record | None:
        """The record under ``key``, read from its line; None when there is none. Should the line found
        there be another's (the file was rewritten in place since this instance looked), the lines are
        noted again from the start."""
        for _ in range(2):
            start = self._starts.get(key)
            if start is None:
                return None
            file.seek(start)
            try:
                record = json.loads(file.readline())
            except (ValueError, RecursionError):
                record = None
            if isinstance(record, dict) and str(record.get(self.key_field)) == key:
                return record
            log.warning("%s: the line of %r moved: reading the journal again", self.path, key)
            self._starts.clear()
            self._offset = 0
            self._catch_up(file, repair=True)
        return None

    def _remember(self, line: bytes) -> None:
        try:
            key = json.loads(line)[self.key_field]
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("%s: skipping an unreadable line at offset %d", self.path, self._offset)
            return
        self._starts.setdefault(str(key), self._offset)


def _byte_before(file: IO[bytes], offset: int) -> bytes:
    file.seek(offset - 1)
    return file.read(1)


class _Lines(Mapping[str, Record]):
    """A journal file's records by key, each read from its line when asked for (under the journal's lock)."""

    def __init__(self, journal: Journal, file: IO[bytes]) -> None:
        self._journal = journal
        self._file = file

    def __getitem__(self, key: str) -> Record:
        record = self._journal._read(self._file, key)
        if record is None:
            raise KeyError(key)
        return record

    def __contains__(self, key: object) -> bool:
        return key in self._journal._starts

    def __iter__(self) -> Iterator[str]:
        return iter(self._journal._starts)

    def __len__(self) -> int:
        return len(self._journal._starts)
