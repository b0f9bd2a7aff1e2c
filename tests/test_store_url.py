"""EVENTLAB_STORE_URL: which store eventlab opens, and the values it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventlab.cli import main
from eventlab.events import StockAdded
from eventlab.settings import Settings, SettingsError
from eventlab.store import MemoryEventStore, NewEvent, SqliteEventStore, open_store


def test_by_default_the_store_is_the_sqlite_file_in_the_data_directory(tmp_path):
    settings = Settings.from_env({}, data_dir=tmp_path)
    assert settings.store_backend == "sqlite" and settings.store_path == tmp_path / "events.db"
    with open_store(settings) as store:
        assert isinstance(store, SqliteEventStore) and store.path == tmp_path / "events.db"


@pytest.mark.parametrize("form", ["sqlite://{path}", "{path}"])
def test_a_sqlite_url_or_a_plain_path_names_that_file(tmp_path, form):
    path = tmp_path / "elsewhere" / "shop.db"
    settings = Settings.from_env({"EVENTLAB_STORE_URL": form.format(path=path)}, data_dir=tmp_path)
    assert settings.store_path == path
    with open_store(settings) as store:
        store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 1)])
    assert path.is_file() and not (tmp_path / "events.db").exists()


@pytest.mark.parametrize("scheme", ["SQLITE", "Sqlite"])
def test_a_sqlite_url_in_capitals_names_the_same_file(tmp_path, monkeypatch, scheme):
    # given a store URL whose scheme is in capitals (accepted as SQLite, as URL schemes are case-insensitive)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    path = tmp_path / "elsewhere" / "shop.db"
    settings = Settings.from_env({"EVENTLAB_STORE_URL": f"{scheme}://{path}"}, data_dir=tmp_path)
    # when the shop writes to it
    with open_store(settings) as store:
        store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 1)])
    # then the event is in that file, not in a file under a directory named 'SQLITE:' in the working directory
    assert settings.store_path == path and path.is_file()
    assert not list((tmp_path / "work").iterdir())


def test_memory_gives_a_fresh_store_in_this_process(tmp_path):
    settings = Settings.from_env({"EVENTLAB_STORE_URL": "memory://"}, data_dir=tmp_path)
    first, second = open_store(settings), open_store(settings)
    first.append([NewEvent(StockAdded(product_id="P1", quantity=1), 1)])
    assert isinstance(first, MemoryEventStore) and (first.head(), second.head()) == (1, 0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["dlq", "list"], ["dlq", "show", "1"], ["trace", "demo-s0-r1-00001"]])
@pytest.mark.parametrize("variable", ["EVENTLAB_STORE_URL", "EVENTLAB_ORDER_STORE_URL"])
def test_a_command_that_reads_a_store_refuses_memory_instead_of_reading_a_new_empty_one(
    tmp_path, monkeypatch, capsys, argv, variable
):
    # given a shop's store, and the store (or Order's) set to memory:// for a command run on its own
    SqliteEventStore(tmp_path / "events.db").close()
    monkeypatch.setenv(variable, "memory://")
    # when a command that only reads the store runs
    status = main([*argv, "--data-dir", str(tmp_path)])
    # then it says the store is in another process's memory (not "no dead letters" from a new empty one)
    err = capsys.readouterr().err
    assert status in (1, 2) and "memory://" in err and "one process's memory" in err


@pytest.mark.parametrize("url", ["mysql://shop@db/shop", "sqlite://relative.db", "memory://shop", "postgresq://x"])
def test_an_unknown_store_url_is_refused_naming_the_variable(url):
    with pytest.raises(SettingsError, match="EVENTLAB_STORE_URL: .* is not a store eventlab knows"):
        Settings.from_env({"EVENTLAB_STORE_URL": url})


@pytest.mark.parametrize("variable", ["EVENTLAB_STORE_URL", "EVENTLAB_ORDER_STORE_URL"])
def test_a_password_with_a_slash_is_refused_without_showing_it(variable):
    # given a password with an unencoded '/' (libpq would read its first part as the host and print the rest)
    url = "postgresql://shop:hunter/2secret@db:5432/shop"
    # when the settings are read, then they are refused naming the variable and the way out, not the password
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: url})
    assert str(refused.value).startswith(f"{variable}: ") and "%2F" in str(refused.value)
    assert "hunter" not in str(refused.value) and "2secret" not in str(refused.value)
    # and the same password percent-encoded is a store
    assert Settings.from_env({variable: url.replace("hunter/", "hunter%2F")}).store_of("order").store_backend == (
        "postgresql"
    )


def test_the_url_goes_to_child_processes_and_its_password_stays_out_of_logs():
    settings = Settings.from_env({"EVENTLAB_STORE_URL": "postgresql://shop:hunter2@db:5432/shop"})
    assert settings.store_backend == "postgresql"
    assert Settings.from_env(settings.environ()) == settings
    assert "hunter2" not in repr(settings) and "postgresql://shop:***@db:5432/shop" in repr(settings)
    assert Settings.from_env({}, data_dir=Path("/srv/shop")).environ()["EVENTLAB_STORE_URL"] == ""


@pytest.mark.parametrize("argv", [["query", "SELECT 1"], ["audit"], ["export", "out"], ["dlq", "list"]])
def test_a_store_path_that_is_a_symlink_loop_is_one_line_naming_it(tmp_path, capsys, argv):
    # given a data directory whose events.db is a symbolic link to itself (a restore script gone wrong)
    (tmp_path / "events.db").symlink_to(tmp_path / "events.db")
    # when a command reads the store
    status = main([*argv, "--data-dir", str(tmp_path)])
    # then it stops with one line naming the path, not a RuntimeError's traceback
    err = capsys.readouterr().err
    assert status == 2 and "events.db: the path cannot be followed to a file" in err and "Traceback" not in err
