from __future__ import annotations

import functools
import sqlite3

import pytest
from store_contract import EventStoreContract

from eventlab.errors import StoreError
from eventlab.store import SqliteEventStore


class TestSqliteEventStore(EventStoreContract):
    @pytest.fixture
    def path(self, tmp_path):
        return tmp_path / "events.db"

    @pytest.fixture
    def store(self, path):
        with SqliteEventStore(path) as store:
            yield store

    @pytest.fixture
    def reopen(self, path):
        return functools.partial(SqliteEventStore, path)


def test_opening_a_missing_store_without_create_fails_clearly(tmp_path):
    with pytest.raises(StoreError, match="no event store"):
        SqliteEventStore(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()


def test_a_file_that_is_not_an_event_store_is_refused(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE things (x)").connection.commit()
    with pytest.raises(StoreError, match="not an eventlab event store"):
        SqliteEventStore(other, create=False)
    text = tmp_path / "notes.txt"
    text.write_text("hello " * 1000)
    with pytest.raises(StoreError):
        SqliteEventStore(text, create=False)


def test_a_store_knows_whether_this_process_has_it_open(tmp_path):
    from eventlab.store.sqlite import open_in_this_process

    path = tmp_path / "events.db"
    store = SqliteEventStore(path)
    assert open_in_this_process(path)
    store.close()
    assert not open_in_this_process(path)
