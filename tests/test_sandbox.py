"""The analytics sandbox: user SQL reads the projections and the store's tables, and nothing else.

Each escape below worked before the sandbox (the query ran on the connection that had loaded
DuckDB's sqlite extension and attached the store). Then: a time limit, Ctrl-C, readable tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from conftest import run_python
from projection_story import ShopStory, standard_story

from eventlab.cli import main
from eventlab.projections import ProjectionError, Projections, QueryOutOfMemory, QueryRefused, QueryTimeout, query
from eventlab.projections.sandbox import Sandbox, duckdb_error, sandbox_connection, translate

ENDLESS = "SELECT sum(hash(i)) FROM range(100000000000) t(i)"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sandbox") / "events.db"
    standard_story(path).store.close()
    return path


@pytest.fixture(scope="module")
def projections(store_path: Path):
    with Projections(store_path, attach=True) as opened:  # the connection that has the sqlite extension
        yield opened


@pytest.fixture(scope="module")
def secret_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another SQLite file on the machine, with something in it a query must not see."""
    path = tmp_path_factory.mktemp("elsewhere") / "secret.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (secret TEXT)")
        con.execute("INSERT INTO t VALUES ('hunter2')")
    return path


ESCAPES = {
    "sqlite_scan": "SELECT * FROM sqlite_scan('{path}', 't')",
    "sqlite_attach": "SELECT * FROM sqlite_attach('{path}')",
    "sqlite_query": "SELECT * FROM sqlite_query('{path}', 'SELECT * FROM t')",
    "attach": "ATTACH '{path}' AS other",
    "read_csv": "SELECT * FROM read_csv('{path}')",
    "read_text": "SELECT * FROM read_text('{path}')",
    "read_blob": "SELECT * FROM read_blob('{path}')",
    "read_parquet": "SELECT * FROM read_parquet('{path}')",
    "replacement_scan": "SELECT * FROM '{path}'",
    "copy_to": "COPY (SELECT 1) TO '{path}.csv'",
    "glob": "SELECT * FROM glob('{path}')",
}


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_no_table_function_or_statement_reads_another_file(projections, secret_db, escape):
    # given a SQLite file elsewhere on the machine, when a query names it, then it is refused
    with pytest.raises(ProjectionError) as refused:
        projections.sql(ESCAPES[escape].format(path=secret_db)).fetchall()
    assert "hunter2" not in str(refused.value)
    assert not Path(f"{secret_db}.csv").exists()


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_a_refusal_says_the_same_whether_the_path_exists_or_not(projections, secret_db, escape):
    texts = []
    for path in (secret_db, secret_db.with_name("missing.db"), Path("/etc/passwd"), Path("/etc/no-such-file")):
        with pytest.raises(ProjectionError) as refused:
            projections.sql(ESCAPES[escape].format(path=path)).fetchall()
        texts.append(str(refused.value))
    assert len(set(texts)) == 1, texts


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM read_json('/etc/passwd')",
        "SELECT * FROM read_csv('https://example.com/x.csv')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM duckdb_extensions()",
    ],
)
def test_files_urls_and_the_extension_directory_are_refused_in_one_message(projections, sql):
    with pytest.raises(QueryRefused, match="query refused: only the projections"):
        projections.sql(sql).fetchall()


@pytest.mark.parametrize(
    "sql",
    [
        "INSTALL sqlite",
        "LOAD sqlite",
        "LOAD '/tmp/evil.duckdb_extension'",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "PRAGMA enable_profiling",
        "CALL sqlite_attach('/etc/passwd')",
    ],
)
def test_extensions_and_settings_cannot_be_changed(projections, sql):
    with pytest.raises(ProjectionError, match="only reads"):
        projections.sql(sql)


def test_the_environment_and_home_directory_are_not_readable(projections):
    with pytest.raises(ProjectionError, match="getenv"):
        projections.sql("SELECT getenv('HOME')").fetchall()
    settings = projections.sql("SELECT name, value FROM duckdb_settings()").fetchall()
    home, cwd = os.path.expanduser("~"), os.getcwd()
    assert not [(name, value) for name, value in settings if value and (home in value or cwd in value)]
    assert dict(settings)["enable_external_access"] == "false" and dict(settings)["lock_configuration"] == "true"


def test_a_file_named_like_the_in_memory_database_is_not_readable(projections, tmp_path, monkeypatch):
    """DuckDB allows ``<cwd>/:memory:`` when external access is disabled at connect time."""
    (tmp_path / ":memory:").write_text("hunter2")
    monkeypatch.chdir(tmp_path)
    with Projections(projections.store_path) as fresh, pytest.raises(QueryRefused):
        fresh.sql("SELECT content FROM read_text(':memory:')").fetchall()


def test_the_sandbox_still_reads_every_relation_the_store_tables_and_snapshots(projections):
    assert projections.sql("SELECT count(*) FROM orders").fetchone() == (5,)
    assert projections.sql("SELECT count(*) FROM store.events").fetchone() == (51,)
    assert projections.sql('SELECT count(*) FROM "store"."checkpoints"').fetchone()[0] >= 1
    snapshot = projections.as_of(position=27)
    assert projections.sql(f"SELECT count(*) FROM {snapshot.schema}.orders").fetchone() == (3,)
    for name in projections.names:
        assert projections.sql(f"SELECT count(*) FROM {name}").fetchone()[0] == projections.pl(name).height


def test_an_endless_query_stops_at_its_time_limit(projections):
    with pytest.raises(QueryTimeout, match="exceeded 0.5 s") as stopped:
        projections.sql(ENDLESS, timeout=0.5)
    assert isinstance(stopped.value, ProjectionError)
    assert projections.sql("SELECT count(*) FROM orders").fetchone() == (5,)  # still usable afterwards


def test_the_time_limit_is_the_objects_default_and_the_api_takes_one_too(store_path):
    with Projections(store_path, timeout=0.3) as short, pytest.raises(QueryTimeout):
        short.sql(ENDLESS)
    with pytest.raises(QueryTimeout):
        query(store_path, ENDLESS, timeout=0.3)


def test_cli_query_over_its_timeout_is_one_line_and_exit_2(store_path, capsys):
    code = main(["query", "--data-dir", str(store_path.parent), "--timeout", "0.5", ENDLESS])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == "eventlab: query exceeded 0.5 s (--timeout)\n" and captured.out == ""


def test_cli_refused_query_names_no_path(store_path, secret_db, capsys):
    code = main(["query", "--data-dir", str(store_path.parent), f"SELECT * FROM sqlite_scan('{secret_db}', 't')"])
    err = capsys.readouterr().err
    assert code == 2 and str(secret_db) not in err and err.startswith("eventlab: error: query refused")


def test_cli_query_of_a_store_table_not_copied_names_the_ones_it_can_read(store_path, capsys):
    # given the command line, which reads a copy of the store's events and checkpoints (not its dead letters)
    # when a query names a store table that is not in that copy
    code = main(["query", "--data-dir", str(store_path.parent), "SELECT reason FROM store.dead_letters"])
    # then one line says which table, and which store tables it can read (not "schema store does not exist")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "store.dead_letters" in err and "store.checkpoints, store.events" in err and "eventlab dlq" in err
    # and the tables it names are readable, and a table named only in a string is no reason to refuse
    assert main(["query", "--data-dir", str(store_path.parent), "SELECT count(*) FROM store.checkpoints"]) == 0
    assert main(["query", "--data-dir", str(store_path.parent), "SELECT 'see store.dead_letters' AS note"]) == 0


def _wait_until_it_reads(child: subprocess.Popen, store_path: Path) -> None:
    """Wait (at most a minute) until ``child`` has the store open."""
    deadline = time.monotonic() + 60
    fds = Path(f"/proc/{child.pid}/fd")
    while time.monotonic() < deadline and child.poll() is None:
        try:
            if any(os.path.realpath(fd) == str(store_path.resolve()) for fd in fds.iterdir()):
                return
        except OSError:  # a descriptor closed while listing
            pass
        time.sleep(0.05)
    raise AssertionError(f"eventlab query never opened {store_path}")


def test_ctrl_c_stops_an_endless_query_with_one_line_and_exit_130(store_path):
    # given `eventlab query` running a query without end, when it gets SIGINT, then it stops cleanly
    command = [
        sys.executable,
        "-m",
        "eventlab",
        "query",
        "--data-dir",
        str(store_path.parent),
        "--timeout",
        "0",
        ENDLESS,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with ctrl_c_as_in_a_terminal():  # the child starts with SIGINT's default (a handler is reset on exec)
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_until_it_reads(child, store_path)  # past the imports: the command is running
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=1)  # and keeps running (it would for hours)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130
    assert err == "eventlab: query interrupted\n" and out == ""


@contextlib.contextmanager
def ctrl_c_as_in_a_terminal() -> Iterator[None]:
    """Ctrl-C raising ``KeyboardInterrupt``, whatever this process inherited: a shell without job control
    starts a background job (``make test &``, a CI runner's script) with SIGINT ignored, and Python
    then leaves it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_the_api_interrupts_duckdb_and_raises_keyboard_interrupt(projections):
    """The waiting thread gets the KeyboardInterrupt; DuckDB is interrupted before it propagates."""
    import threading

    main_thread = threading.get_ident()
    timer = threading.Timer(0.5, lambda: signal.pthread_kill(main_thread, signal.SIGINT))
    with ctrl_c_as_in_a_terminal():
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                projections.sql(ENDLESS, timeout=None)
        finally:
            timer.cancel()
    assert projections.sql("SELECT count(*) FROM orders").fetchone() == (5,)


def test_any_exception_raised_while_the_caller_waits_stops_duckdb_before_it_goes_on():
    """A signal handler that raises (a SIGALRM timeout, as pytest-timeout's) must not leave the query
    running: the next statement on the connection would wait for it for ever."""
    from eventlab.projections.sandbox import bounded

    class Alarm(Exception):
        pass

    def alarm(*_: object) -> None:
        raise Alarm

    con = sandbox_connection()
    previous = signal.signal(signal.SIGUSR1, alarm)
    main_thread = threading.get_ident()
    timer = threading.Timer(0.5, lambda: signal.pthread_kill(main_thread, signal.SIGUSR1))
    timer.start()
    try:
        # when the handler raises while the caller waits for an endless query
        with pytest.raises(Alarm):
            bounded([con], lambda: con.execute(ENDLESS).fetchall(), None)
        # then DuckDB was interrupted before the exception went on: no query runs, the connection answers
        assert not [thread for thread in threading.enumerate() if thread.name == "eventlab-query"]
        assert con.execute("SELECT 42").fetchone() == (42,)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
        con.interrupt()  # on a failure above, the endless query must not outlive the test
    con.close()


def test_ctrl_c_while_the_query_thread_starts_still_stops_duckdb(monkeypatch):
    """A Ctrl-C that lands while ``Thread.start`` waits for the query thread to begin (seen on a loaded
    machine: the endless query of the test above ran on, at full CPU, until the process was killed)."""
    import threading

    from eventlab.projections.sandbox import bounded

    con = sandbox_connection()
    started = threading.Thread.start

    def start_then_ctrl_c(thread: threading.Thread) -> None:
        started(thread)
        raise KeyboardInterrupt

    # given the query thread started, and Ctrl-C raised in the waiting thread before it waits
    monkeypatch.setattr(threading.Thread, "start", start_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        bounded([con], lambda: con.execute(ENDLESS).fetchall(), 60)
    monkeypatch.undo()
    # then DuckDB was interrupted before the KeyboardInterrupt went on: no query runs, the connection answers
    assert not [thread for thread in threading.enumerate() if thread.name == "eventlab-query"]
    assert con.execute("SELECT 42").fetchone() == (42,)
    con.close()


# -- readable tables ------------------------------------------------------------------------------


def test_show_fits_the_terminal_and_names_the_columns_left_out(store_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["show", "--data-dir", str(store_path.parent), "orders"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table, footer = lines[:-1], lines[-1]
    assert max(len(line) for line in table) <= 80
    assert footer.startswith("") and "more columns (--columns or --wide): " in footer and "updated_at" in footer
    assert "order_id" in table[1] and "O5" in "\n".join(table)


@pytest.mark.parametrize(
    ("argv", "last"), [(["show", "orders", "--limit", "1"], "updated_at"), (["query", "SELECT 1 AS one"], "one")]
)
def test_a_terminal_wider_than_polars_draws_gets_its_widest_table(store_path, capsys, monkeypatch, argv, last):
    # given a COLUMNS wider than the u16 polars takes (it panicked: "table width argument does not fit in u16")
    monkeypatch.setenv("COLUMNS", "65536")
    # when a table is printed, then it is, every column in it
    assert main([*argv, "--data-dir", str(store_path.parent)]) == 0
    out = capsys.readouterr().out
    assert "more columns" not in out and last in out.splitlines()[1]


def test_wide_prints_every_column_at_full_width(store_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["show", "--data-dir", str(store_path.parent), "orders", "--wide"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1]
    assert "updated_at" in header and "cancel_detail" in header and "more columns" not in out
    assert "…" not in out and max(len(line) for line in out.splitlines()) > 80


def test_columns_choose_and_order_the_columns_in_every_format(store_path, capsys):
    data_dir = str(store_path.parent)
    assert main(["show", "--data-dir", data_dir, "orders", "--columns", "status,order_id"]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert header.split() == ["│", "status", "┆", "order_id", "│"]
    sql = "SELECT order_id, status, total FROM orders ORDER BY order_id LIMIT 2"
    assert main(["query", "--data-dir", data_dir, "--json", "--columns", "order_id,total", sql]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"order_id": "O1", "total": "22.50"},
        {"order_id": "O2", "total": "25.00"},
    ]
    assert main(["query", "--data-dir", data_dir, "--columns", "nope", sql]) == 2
    assert "no column nope; the columns are: order_id, status, total" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fmt", "shown"), [([], "00:00:00.06"), (["--json"], '"took": "00:00:00.06"'), (["--csv"], "O1,00:00:00.06")]
)
def test_the_time_between_two_steps_of_an_order_is_printed_not_a_traceback(store_path, capsys, fmt, shown):
    # given a store whose order O1 was created and completed 60 ms apart
    # when a query subtracts the two times (DuckDB answers an INTERVAL, a type polars cannot import)
    sql = "SELECT order_id, completed_at - created_at AS took FROM orders WHERE order_id = 'O1'"
    code = main(["query", "--data-dir", str(store_path.parent), *fmt, sql])
    # then the duration is printed as DuckDB writes it, in every format
    assert code == 0
    assert shown in capsys.readouterr().out


@pytest.mark.parametrize("fmt", [[], ["--json"], ["--csv"], ["--wide"]])
def test_maps_lists_and_bytes_print_in_every_format(store_path, capsys, monkeypatch, fmt):
    # given a terminal 120 columns wide
    monkeypatch.setenv("COLUMNS", "120")
    # when a query answers a map (what histogram() gives), a fixed-size array and bytes that are not UTF-8
    sql = "SELECT histogram(status) AS h, [1, 2]::INTEGER[2] AS a, from_base64('/w==') AS b FROM orders"
    code = main(["query", "--data-dir", str(store_path.parent), *fmt, sql])
    # then they are printed (the table cannot cast them to text to measure them), not a traceback
    assert code == 0
    out = capsys.readouterr().out
    assert "completed" in out and "xff" in out.lower()
    if fmt == ["--json"]:
        assert json.loads(out)[0]["b"] == "\\xff"


@pytest.mark.parametrize("fmt", [["--json"], ["--csv"]])
def test_times_and_maps_keyed_by_anything_print_as_json_text(store_path, capsys, fmt):
    # given a time of day, one with its offset (which polars would drop), one in a list, and maps keyed
    # by a date, bytes and NaN
    sql = (
        "SELECT TIME '12:34:56' AS t, TIMETZ '01:02:03+04' AS tz, [TIME '00:00:01'] AS l,"
        " MAP {DATE '2020-01-01': 1} AS d, MAP {from_base64('/w=='): 2} AS b, MAP {'nan'::DOUBLE: 3} AS n"
    )
    # then each is printed as text (JSON holds no time, and a JSON key is text), not a traceback
    assert main(["query", "--data-dir", str(store_path.parent), *fmt, sql]) == 0
    out = capsys.readouterr().out
    if fmt == ["--json"]:
        [row] = json.loads(out)
        assert (row["t"], row["tz"], row["l"]) == ("12:34:56", "01:02:03+04", ["00:00:01"])
        assert (row["d"], row["b"], row["n"]) == ({"2020-01-01": 1}, {"\\xff": 2}, {"NaN": 3})
    else:
        assert out.splitlines()[1].startswith('12:34:56,01:02:03+04,"[""00:00:01""]",')


@pytest.mark.parametrize("fmt", [["--json"], ["--csv"]])
def test_a_result_of_many_rows_is_printed_whole_a_slice_at_a_time(store_path, capsys, fmt):
    # given a result of 100,000 rows (ten slices), printed while tracemalloc counts Python's memory
    sql = "SELECT range AS n, 'row ' || range AS label FROM range(100000)"
    tracemalloc.start()
    try:
        assert main(["query", "--data-dir", str(store_path.parent), *fmt, sql]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = capsys.readouterr().out
    # then every row is printed, in order
    if fmt == ["--json"]:
        assert json.loads(out) == [{"n": n, "label": f"row {n}"} for n in range(100_000)]
    else:
        assert out.splitlines() == ["n,label", *(f"{n},row {n}" for n in range(100_000))]
    # and the rows were never all Python values at once (all as dicts: ~35 MB; a slice at a time: ~10,
    # most of it the captured output)
    assert peak < 20_000_000, peak


@pytest.mark.parametrize("fmt", [[], ["--wide"]])
def test_a_table_shows_at_most_a_thousand_rows_and_says_how_many_there_are(store_path, capsys, fmt):
    assert main(["query", "--data-dir", str(store_path.parent), *fmt, "SELECT range AS n FROM range(5000)"]) == 0
    out = capsys.readouterr().out
    numbers = [int(cell) for line in out.splitlines() if (cell := line.strip("│ ")).isdigit()]
    assert numbers == [*range(500), *range(4500, 5000)]
    assert out.splitlines()[-1] == "5,000 rows, the first and last 500 shown (--json or --csv print all)"


def test_a_join_that_repeats_a_column_name_answers_with_the_repeat_numbered(store_path, capsys):
    # given orders and their lines, which both have an order_id
    sql = "SELECT * FROM orders o JOIN order_lines l ON o.order_id = l.order_id WHERE o.order_id = 'O1'"
    # when a query joins them with SELECT * (two columns named order_id; also a, a, a_1 by hand)
    frame = query(store_path, sql)
    # then the second is order_id_1, as DuckDB names it, and both hold the order's id
    assert frame.columns.count("order_id") == 1 and set(frame["order_id_1"]) == {"O1"}
    assert set(frame["order_id"]) == {"O1"}
    assert query(store_path, "SELECT 1 AS a, 2 AS a, 3 AS a_1").row(0, named=True) == {"a": 1, "a_2": 2, "a_1": 3}
    # and the command line prints it
    assert main(["query", "--data-dir", str(store_path.parent), "--csv", sql]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("order_id,")


def test_a_query_of_types_polars_lacks_returns_them_as_text_from_the_api(store_path):
    # given intervals and unions, alone and inside a list and a struct
    frame = query(
        store_path,
        "SELECT INTERVAL 90 MINUTE AS i, [INTERVAL 1 DAY] AS l, {'took': INTERVAL 2 SECOND, 'n': 1} AS s,"
        ' union_value(a := 7) AS u, 3 AS "plain ""quoted"""',
    )
    # then each such column is DuckDB's text for it, and the others keep their types and names
    row = frame.row(0, named=True)
    assert (row["i"], row["u"], row['plain "quoted"']) == ("01:30:00", "7", 3)
    assert "1 day" in row["l"] and "00:00:02" in row["s"]


def test_python_variables_of_the_caller_are_not_tables():
    """DuckDB's Python client reads a DataFrame by its variable name unless told not to."""
    secret_frame = pl.DataFrame({"secret": ["hunter2"]})  # noqa: F841 - read by DuckDB, by name
    with duckdb.connect() as default:
        assert default.sql("SELECT * FROM secret_frame").fetchall() == [("hunter2",)]
    with sandbox_connection() as con, pytest.raises(duckdb.CatalogException, match="secret_frame"):
        con.sql("SELECT * FROM secret_frame").fetchall()


SMALL = 64 * 2**20


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM range(20000) a, range(10000) b",  # a result bigger than the limit (DuckDB does not count it)
        "SELECT length(string_agg(range::VARCHAR, ',')) FROM range(100000000)",  # an aggregate bigger than it
    ],
)
def test_a_query_needing_more_memory_than_the_sandbox_has_is_refused_in_one_line(sql):
    # given a sandbox of 64 MiB (the default is 2 GiB; a test keeps it small to stay fast)
    sandbox = Sandbox(SMALL)
    try:
        # when a query needs more (a cross join of 200 million rows, a string of a billion characters)
        with pytest.raises(QueryOutOfMemory) as refused:
            sandbox.run(sql, None, 30)
        # then it is refused in one line that names the limit and how to raise it
        message = str(refused.value)
        assert "ran out of the sandbox's memory (64 MiB)" in message and "EVENTLAB_QUERY_MEMORY" in message
        assert "\n" not in message
        # and the sandbox still answers a normal query
        assert sandbox.run("SELECT count(*) AS n FROM range(1000)", None, 30).to_pylist() == [{"n": 1000}]
    finally:
        sandbox.close()


def test_the_sandbox_memory_comes_from_eventlab_query_memory(store_path, monkeypatch, capsys):
    # given no variable: the default, 2 GiB
    monkeypatch.delenv("EVENTLAB_QUERY_MEMORY", raising=False)
    with sandbox_connection() as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() == ("2.0 GiB",)
    # when the variable says 64MiB, a query over the projections that needs more is refused at the command line
    monkeypatch.setenv("EVENTLAB_QUERY_MEMORY", "64MiB")
    big = "SELECT * FROM orders, range(3000000)"
    assert main(["query", "--data-dir", str(store_path.parent), big]) == 2
    assert "ran out of the sandbox's memory (64 MiB)" in capsys.readouterr().err
    # and a value that is not a size is refused naming the variable
    for garbage in ("lots", "-1GB", "1MB", "nan", "1e9", "9" * 40):
        monkeypatch.setenv("EVENTLAB_QUERY_MEMORY", garbage)
        assert main(["query", "--data-dir", str(store_path.parent), "SELECT 1"]) == 2
        assert "EVENTLAB_QUERY_MEMORY:" in capsys.readouterr().err


def test_show_is_bounded_by_eventlab_query_memory_as_query_is(tmp_path, monkeypatch, capsys):
    # given a store whose events hold 80 MB of text (eight cancellations, each with a 10 MB detail)
    story = ShopStory(tmp_path / "events.db")
    story.user("U1")
    story.product("P1", price_cents=100, stock=100)
    for n in range(8):
        story.cancel(story.place(f"O{n}", "U1", {"P1": 1}), "payment_failed", "x" * 10_000_000, release=False)
    story.store.close()
    store = str(tmp_path / "events.db")
    # when the variable says 64MiB, then a query of all the events is refused
    monkeypatch.setenv("EVENTLAB_QUERY_MEMORY", "64MiB")
    assert main(["query", "--store", store, "--csv", "SELECT * FROM events ORDER BY position"]) == 2
    assert "ran out of the sandbox's memory (64 MiB)" in capsys.readouterr().err
    # and so is show of them (it printed all 80 MB: its read ran where no limit applies)
    assert main(["show", "events", "--store", store, "--limit", "0", "--csv"]) == 2
    out, err = capsys.readouterr()
    assert "ran out of the sandbox's memory (64 MiB)" in err and err.count("\n") == 1 and not out
    # while the first rows still print; and with more memory, a relation as of a position (computed then)
    assert main(["show", "events", "--store", store, "--limit", "2", "--csv", "--columns", "position"]) == 0
    assert capsys.readouterr().out.splitlines() == ["position", "1", "2"]
    monkeypatch.setenv("EVENTLAB_QUERY_MEMORY", "1GiB")
    assert main(["show", "orders", "--store", store, "--as-of-position", "5", "--csv", "--columns", "order_id"]) == 0
    assert capsys.readouterr().out.splitlines() == ["order_id", "O0"]


@pytest.mark.parametrize("fmt", [[], ["--json"], ["--csv"], ["--wide"]])
def test_infinite_and_far_dates_print_in_every_format(store_path, capsys, fmt):
    # given a query answering dates and times Python has no object for (polars panicked showing them)
    sql = (
        "SELECT 'infinity'::DATE AS d, '-infinity'::TIMESTAMP AS t, 'infinity'::TIMESTAMPTZ AS tz,"
        " '-infinity'::TIMESTAMP_S AS s, DATE '20000-01-01' AS far, TIME '24:00:00' AS midnight"
    )
    # when it is printed
    code = main(["query", "--data-dir", str(store_path.parent), *fmt, sql])
    # then each is shown as DuckDB writes it (not a panic, not 1970-01-01 for -infinity, not None for 24:00)
    assert code == 0
    out = capsys.readouterr().out
    if fmt == ["--json"]:
        assert json.loads(out) == [
            {"d": "infinity", "t": "-infinity", "tz": "infinity", "s": "-infinity", "far": "20000-01-01",
             "midnight": "24:00:00"}
        ]  # fmt: skip
    else:
        assert "-infinity" in out and "20000-01-01" in out and "24:00:00" in out


def test_infinite_dates_show_in_a_notebook_and_ordinary_dates_keep_their_type(store_path):
    # given a query answering an infinite date beside an ordinary one
    frame = query(store_path, "SELECT 'infinity'::DATE AS d, DATE '2024-05-01' AS ok, created_at FROM orders LIMIT 1")
    # when a notebook shows it
    shown = frame._repr_html_()
    # then the infinite one is text, the others keep their types
    assert "infinity" in shown and "2024-05-01" in shown
    assert frame.schema["d"] == pl.String and frame.schema["ok"] == pl.Date
    assert frame.schema["created_at"].is_temporal()


def test_a_pivot_over_the_values_it_finds_is_a_read(store_path, capsys):
    # given orders in several statuses
    statuses = set(query(store_path, "SELECT DISTINCT status FROM orders")["status"])
    # when a query pivots on status without listing the values (DuckDB parses it into two statements)
    frame = query(store_path, "PIVOT orders ON status USING count(*)")
    # then there is one column per status, and the command line answers it too
    assert statuses <= set(frame.columns)
    assert main(["query", "--data-dir", str(store_path.parent), "--json", "PIVOT orders ON status USING count(*)"]) == 0
    assert statuses <= set(json.loads(capsys.readouterr().out)[0])
    # and the statements a user writes beside it, or writing it into a table, are still refused
    for sql in (
        "PIVOT orders ON status USING count(*); SELECT 1",
        "CREATE TYPE mood AS ENUM ('ok'); SELECT 1",
        "CREATE TABLE t AS PIVOT orders ON status USING count(*)",
    ):
        with pytest.raises(ProjectionError, match="exactly one statement"):
            query(store_path, sql)


def test_a_pivot_leaves_no_types_behind():
    # given a sandbox holding a table
    sandbox = Sandbox()
    try:
        sandbox.add("orders", pa.table({"status": ["paid", "new", "paid"]}))
        # when a pivot runs three times
        for _ in range(3):
            assert sandbox.run("PIVOT orders ON status", None, 5).to_pylist() == [{"new": 1, "paid": 2}]
        # then the ENUM types DuckDB made for it are gone
        count = "SELECT count(*) FROM duckdb_types() WHERE starts_with(type_name, '__pivot')"
        assert sandbox.con.execute(count).fetchone() == (0,)
    finally:
        sandbox.close()


#: Queries whose first batches come back and a later one fails inside DuckDB (pyarrow raises those as OSError).
LATER_BATCH_FAILS = "SELECT i, {} FROM range(200000) r(i)"


def test_running_out_of_memory_in_a_later_batch_is_refused_in_one_line(store_path, monkeypatch, capsys):
    # given a sandbox of 256 MiB, and a query whose rows grow to 10 MB each after the first 50,000
    sql = LATER_BATCH_FAILS.format("repeat('x', CASE WHEN i > 50000 THEN 10000000 ELSE 1 END)")
    sandbox = Sandbox(256 * 2**20)
    try:
        # when it runs (the first batches come back, a later one cannot be made)
        with pytest.raises(QueryOutOfMemory, match=r"memory \(256 MiB\)"):
            sandbox.run(sql, None, 30)
        # then it is told as running out of memory, as at execute, and the sandbox still answers
        assert sandbox.run("SELECT 1 AS one", None, 30).to_pylist() == [{"one": 1}]
    finally:
        sandbox.close()
    # and the command line says so in one line, exit status 2
    monkeypatch.setenv("EVENTLAB_QUERY_MEMORY", "256MiB")
    assert main(["query", "--data-dir", str(store_path.parent), sql]) == 2
    err = capsys.readouterr().err
    assert "ran out of the sandbox's memory (256 MiB)" in err and err.count("\n") == 1


def test_any_other_error_in_a_later_batch_keeps_duckdbs_words(store_path, capsys):
    # given a query whose text stops converting to a number after the first 100,000 rows
    # (small rows: a later error that builds big ones may meet the sandbox's memory limit first)
    sql = LATER_BATCH_FAILS.format("CAST(CASE WHEN i > 100000 THEN 'x' ELSE '1' END AS INTEGER)")
    # when it runs
    with pytest.raises(ProjectionError) as failed:
        query(store_path, sql)
    # then it is a ProjectionError in DuckDB's words, not an OSError, nor the "Interrupted!" DuckDB gives
    # instead one run in five or so (told as running out of memory if the sandbox did not ask again)
    assert type(failed.value) is ProjectionError
    assert str(failed.value).startswith("query failed: Conversion Error: Could not convert string 'x' to INT32")
    assert main(["query", "--data-dir", str(store_path.parent), sql]) == 2
    assert "Conversion Error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    ["Permission Error: Cannot access file /etc/shadow", "IO Error: No files found that match /x", "HTTP Error: 404"],
)
def test_a_file_or_url_error_in_a_later_batch_is_the_generic_refusal(text):
    # given DuckDB's words about a file or a URL, as pyarrow hands them over from a later batch
    found = duckdb_error(OSError(text))
    # then they are told as the one refusal (their text would tell whether a path exists)
    assert found is not None and isinstance(translate(found, SMALL), QueryRefused)
    # and an OSError of the machine's own (a subclass, or without DuckDB's words) is not taken for one
    assert duckdb_error(FileNotFoundError(2, "No such file", "/x")) is None
    assert duckdb_error(OSError("disk full")) is None


@pytest.mark.parametrize("sql", ["", ";", "-- nothing", "  ;; "])
def test_an_empty_query_is_refused_as_no_statement(store_path, projections, capsys, sql):
    # when a query holds no statement, then it is refused as such, in the notebook and at the command line
    with pytest.raises(ProjectionError, match="expected exactly one statement, got 0"):
        projections.sql(sql)
    assert main(["query", "--data-dir", str(store_path.parent), sql]) == 2
    err = capsys.readouterr().err
    assert "expected exactly one statement, got 0" in err and err.count("\n") == 1


#: Dates and times Python cannot hold, nested in a list, a struct, a map, an array and two levels deep.
NESTED_BEYOND = (
    "SELECT [DATE 'infinity'] AS l, {'d': DATE 'infinity'} AS s, MAP {DATE 'infinity': 1} AS m,"
    " [DATE '20000-01-01']::DATE[1] AS a, {'x': [[TIME '24:00:00']]} AS deep"
)
NESTED_TEXT = {
    "l": "[infinity]",
    "s": "{'d': infinity}",
    "m": "{infinity=1}",
    "a": "[20000-01-01]",
    "deep": "{'x': [['24:00:00']]}",
}


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_dates_python_cannot_hold_inside_nested_columns_print_as_duckdbs_text(store_path, capsys, fmt):
    # given a query answering infinite and far dates inside lists, structs, maps and arrays (polars panicked)
    # when it is printed
    code = main(["query", "--data-dir", str(store_path.parent), *fmt, NESTED_BEYOND])
    # then each such column is DuckDB's text for it
    assert code == 0
    out = capsys.readouterr().out
    if fmt == ["--json"]:
        assert json.loads(out) == [NESTED_TEXT]
    else:
        assert all(text in out for text in ("[infinity]", "{'d': infinity}", "{infinity=1}", "[20000-01-01]"))


def test_nested_dates_show_in_a_notebook_and_ordinary_nested_dates_keep_their_type(store_path):
    # given nested columns holding dates Python cannot hold, beside nested ordinary dates
    frame = query(
        store_path, f"{NESTED_BEYOND}, [DATE '2024-05-01'] AS ok, {{'t': created_at}} AS ok2 FROM orders LIMIT 1"
    )
    # when a notebook shows it
    shown = frame._repr_html_()
    # then the first are text, the ordinary ones keep their types
    assert "infinity" in shown and "20000-01-01" in shown
    assert {name: frame.schema[name] for name in NESTED_TEXT} == dict.fromkeys(NESTED_TEXT, pl.String)
    assert frame.schema["ok"] == pl.List(pl.Date) and frame.schema["ok2"].fields[0].dtype.is_temporal()
    assert frame.row(0, named=True)["l"] == "[infinity]"


def test_projections_made_without_settings_honour_eventlab_query_memory(store_path, monkeypatch):
    # given the variable set in a notebook's environment, and no settings given
    monkeypatch.setenv("EVENTLAB_QUERY_MEMORY", "64MiB")
    with Projections(store_path) as projections:
        # when a query needs more, then it is refused at that limit
        assert projections.memory == SMALL
        with pytest.raises(QueryOutOfMemory, match=r"\(64 MiB\)"):
            projections.sql("SELECT * FROM orders, range(3000000)")
    # and a limit given explicitly wins over the variable
    with Projections(store_path, memory=128 * 2**20) as projections:
        assert projections.sql("SELECT current_setting('memory_limit') AS m").fetchall() == [("128.0 MiB",)]


# --- threads sharing one Projections -------------------------------------------------------------


def test_threads_sharing_one_projections_each_get_their_own_answer(store_path):
    # Given one Projections, queried by four threads while a fifth refreshes it and a sixth reads a relation
    # (in a child: on one shared DuckDB connection this froze the process, or handed one thread's rows
    # to another)
    out = run_python(f"""
        import collections, faulthandler, threading
        from eventlab.projections import Projections
        faulthandler.dump_traceback_later(50, exit=True)
        projections = Projections({str(store_path)!r})
        seen = collections.Counter()

        def ask(me):
            for _ in range(60):
                rows = projections.sql(f"SELECT '{{me}}' AS who, count(*) FROM orders", timeout=None).fetchall()
                seen[me == rows[0][0] and rows[0][1] > 0] += 1

        def refresh():
            for _ in range(60):
                projections.refresh()

        def read():
            for _ in range(60):
                seen[len(projections.relation("orders").fetchall()) > 0] += 1

        threads = [threading.Thread(target=ask, args=(w,)) for w in "ABCD"]
        threads += [threading.Thread(target=refresh), threading.Thread(target=read)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(dict(seen))
    """)
    # then every question got its own answer, and nothing froze
    assert out.strip() == "{True: 300}", out


def test_a_query_waiting_for_another_times_out_within_its_own_limit_and_leaves_the_other_alone(projections):
    # Given a long query with no limit running in one thread
    answers = {}

    def long():
        long_sql = "SELECT max(i) FROM range(500000000) t(i) WHERE hash(i) >= 0"  # 3-6 s
        rows = projections.sql(long_sql, timeout=None)
        answers["ran_until"] = time.monotonic()
        answers["long"] = rows.fetchall()

    projections.sql("SELECT 1").fetchall()  # the sandbox is made: the long query takes only the sandbox's turn
    thread = threading.Thread(target=long)
    thread.start()
    time.sleep(0.3)
    # when another thread's query, limited to 0.2 s, waits for its turn (its check for a single read
    # included: it waited for the long query's end, however long, before its limit struck)
    with pytest.raises(QueryTimeout, match="0.2 s"):
        projections.sql("SELECT 1", timeout=0.2)
    struck = time.monotonic()
    thread.join()
    # then its time limit struck it while the long query still ran, and the long query was not interrupted
    assert struck < answers["ran_until"]
    assert answers["long"] == [(499_999_999,)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM enable_profiling()",
        "SELECT * FROM enable_logging(level := 'debug')",
        "SELECT * FROM query('SELECT * FROM enable_profiling()')",
    ],
)
def test_a_query_that_changes_a_setting_is_refused_and_the_next_ones_run_as_before(store_path, sql, capfd):
    with Projections(store_path) as projections:
        # given a read whose table function turns profiling or logging on (the configuration lock does not
        # cover them: every later query was profiled to stderr, or its text logged where queries read it)
        with pytest.raises(QueryRefused, match="changed the sandbox's settings"):
            projections.sql(sql)
        capfd.readouterr()
        # then the next queries run in a sandbox as it was: not profiled, not logged
        assert projections.sql("SELECT count(*) FROM orders").fetchall()[0][0] > 0
        settings = "SELECT current_setting('enable_profiling') IS NULL, current_setting('enable_logging')"
        assert projections.sql(settings).fetchall() == [(True, False)]
        assert "Query Profiling" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        ("SELECT total_cents/100 FROM ordrs", 'Table with name ordrs does not exist! Did you mean "orders"?'),
        ("SELECT nosuchfn(total_cents)/100 FROM orders", "Scalar Function with name nosuchfn does not exist!"),
    ],
)
def test_a_typo_in_a_query_with_a_slash_is_told_as_the_typo_not_as_a_file_refused(projections, sql, said):
    # DuckDB quotes the query's line below its message: a "/" there was read as a path
    with pytest.raises(ProjectionError) as error:
        projections.sql(sql)
    assert not isinstance(error.value, QueryRefused)
    assert said in " ".join(str(error.value).split())


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM pandas_scan(NULL)",
        "SELECT * FROM system.main.PANDAS_SCAN(NULL)",
        "SELECT (SELECT count(*) FROM arrow_scan(1, 2, 3))",
        "DESCRIBE SELECT * FROM python_map_function(NULL, NULL, NULL)",
        "SELECT * FROM checkpoint('system')",
        "SELECT * FROM query('SELECT * FROM force_checkpoint(''system'')')",
        "SELECT * FROM query('SELECT * FROM ' || 'checkpoint(''system'')')",
        "PIVOT (SELECT * FROM pandas_scan(NULL)) ON x USING count(*)",
    ],
)
def test_a_table_function_that_would_crash_the_process_or_break_the_sandbox_is_refused(store_path, sql):
    # given a query calling one of the Python client's scans (pandas_scan(NULL) crashed the process) or
    # a checkpoint (checkpoint('system') invalidated the sandbox: every later query failed), however
    # it is spelled or nested; in a process of its own, so that a crash is a failure, not a lost worker
    said = run_python(f"""
        from eventlab.projections import Projections, QueryRefused
        with Projections({str(store_path)!r}) as projections:
            try:
                projections.sql({sql!r})
            except QueryRefused as exc:
                print(exc)
            print(projections.sql("SELECT count(*) > 0 FROM orders").fetchall())
    """)
    # then it is refused in one line naming what, and the next query runs
    refusal, after = said.splitlines()
    assert refusal.startswith("query refused: ") and ("() is not available" in refusal or "query()" in refusal)
    assert after == "[(True,)]"


def test_a_result_stays_readable_after_another_query_spoiled_the_sandbox(store_path):
    with Projections(store_path) as projections:
        # given a result, then a query refused for changing a setting (its sandbox is replaced)
        orders = projections.sql("SELECT order_id, status FROM orders ORDER BY order_id")
        with pytest.raises(QueryRefused):
            projections.sql("SELECT * FROM enable_logging(level := 'debug')")
        assert projections.sql("SELECT 1").fetchall() == [(1,)]
        # then the first result is still read, filtered and joined (its sandbox was closed under it:
        # "Connection has already been closed")
        rows = orders.fetchall()
        assert rows and orders.filter("status = 'completed'").fetchall() == [r for r in rows if r[1] == "completed"]


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1, "5", True])
def test_a_time_limit_that_is_no_number_of_seconds_is_refused_naming_it(projections, store_path, timeout):
    # NaN meant no limit at all, "5" a TypeError deep inside, -1 "query exceeded -1 s"
    with pytest.raises(ProjectionError, match="timeout must be a number of seconds"):
        projections.sql("SELECT 1", timeout=timeout)
    with pytest.raises(ProjectionError, match="timeout must be a number of seconds"):
        Projections(store_path, timeout=timeout)


@pytest.mark.parametrize("memory", [-1, 0, 1024, "lots", 1.5, True, 2**60])
def test_a_memory_that_is_no_size_is_refused_naming_it(store_path, memory):
    # -1 and 1024 reached DuckDB; "lots" and 1.5 a ValueError or an int() deep inside the first query
    with pytest.raises(ProjectionError, match="^memory must be"):
        Projections(store_path, memory=memory)
    with pytest.raises(ProjectionError, match="^memory must be"):
        query(store_path, "SELECT 1", memory=memory)


def test_a_memory_given_as_a_size_is_the_sandboxs_limit(store_path):
    with Projections(store_path, memory="96MiB") as projections:
        assert projections.sql("SELECT current_setting('memory_limit')").fetchall() == [("96.0 MiB",)]


def test_a_query_that_is_not_utf8_text_is_refused_in_one_line(projections, store_path, capsys):
    # a byte that is not UTF-8 reaches Python's argv as a lone surrogate
    with pytest.raises(ProjectionError, match="not UTF-8 text"):
        projections.sql("SELECT '\udcff'")
    assert main(["query", "--store", str(store_path), "SELECT '\udcff'"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_map_keyed_by_lists_is_printed_as_its_entries_in_json_and_csv(store_path, capsys):
    # a key that is a list or a struct makes no Python dict (polars raised a TypeError: a traceback)
    sql = "SELECT MAP {[1, 2]: 'a'} AS m, [MAP {{'k': 1}: 2}] AS n, MAP {'x': 1} AS plain"
    assert main(["query", "--store", str(store_path), "--json", sql]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"m": [{"key": [1, 2], "value": "a"}], "n": [[{"key": {"k": 1}, "value": 2}]], "plain": {"x": 1}}
    ]
    assert main(["query", "--store", str(store_path), "--csv", sql]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        '"[{""key"": [1, 2], ""value"": ""a""}]","[[{""key"": {""k"": 1}, ""value"": 2}]]","{""x"": 1}"'
    )


def test_types_arrow_cannot_carry_exactly_come_back_as_their_text(projections):
    # DuckDB's Arrow export gave -1 for the largest UHUGEINT, null for TIME_NS 24:00:00, bytes for a BIT
    sql = (
        "SELECT $big::UHUGEINT AS \"u\"\"v\", '24:00:00'::TIME_NS AS t, '101'::BIT AS b, 7::HUGEINT AS h, 1 AS n"
        " -- a trailing comment"
    )
    rows = projections.sql(sql, {"big": 2**128 - 1}).fetchall()
    assert rows == [(str(2**128 - 1), "24:00:00", "101", 7, 1)]


#: Those types inside a list, a struct, a map, an array and a union; and a struct whose field is only named ``bit``.
NESTED_ARROW_CANNOT_CARRY = (
    "SELECT [$big::UHUGEINT] AS l, {'a': $big::UHUGEINT} AS s, [TIMETZ '01:02:03+04'] AS tz,"
    " {'t': TIME_NS '24:00:00'} AS tn, ['0101'::BIT] AS b, MAP {'0101'::BIT: 1} AS m,"
    " [TIME_NS '24:00:00']::TIME_NS[1] AS a, union_value(k := '0101'::BIT) AS u, {'bit': 1} AS named"
)


def test_types_arrow_cannot_carry_exactly_come_back_as_their_text_when_nested(projections, store_path, capsys):
    # DuckDB's Arrow export gave ["-1"], {"a": "-1"}, ["01:02:03"], {"t": null}, ["\u0004\\xf5"], silently
    big = str(2**128 - 1)
    rows = projections.sql(NESTED_ARROW_CANNOT_CARRY, {"big": 2**128 - 1}).fetchall()
    assert rows == [
        (
            f"[{big}]",
            f"{{'a': {big}}}",
            "['01:02:03+04']",
            "{'t': '24:00:00'}",
            "[0101]",
            "{0101=1}",
            "[24:00:00]",
            "0101",
            {"bit": 1},  # a field's name is not its type: kept as it is
        )
    ]
    # and the command line prints the same text
    sql = NESTED_ARROW_CANNOT_CARRY.replace("$big", big)
    assert main(["query", "--store", str(store_path), "--json", sql]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["l"], row["s"], row["tz"], row["tn"], row["b"]) == (
        f"[{big}]",
        f"{{'a': {big}}}",
        "['01:02:03+04']",
        "{'t': '24:00:00'}",
        "[0101]",
    )


def test_columns_of_those_types_named_alike_come_back_as_their_text_each(projections, store_path, capsys):
    # "A" and "a" failed (DuckDB compares names without case): Duplicate entry "a" in REPLACE list; of two
    # columns named x only the first was cast, and the second's 2^128 - 1 came back as -1
    sql = 'SELECT 1::UHUGEINT AS "A", 2::UHUGEINT AS "a", $big::UHUGEINT AS x, $big::UHUGEINT AS x, 3 AS n'
    relation = projections.sql(sql, {"big": 2**128 - 1})
    # (the repeats numbered as for any column: DuckDB's names are one whatever their case)
    assert relation.columns == ["A", "a_1", "x", "x_1", "n"]
    assert relation.fetchall() == [("1", "2", str(2**128 - 1), str(2**128 - 1), 3)]
    assert main(["query", "--store", str(store_path), "--json", 'SELECT 1::UHUGEINT AS "A", 2::UHUGEINT AS "a"']) == 0
    assert json.loads(capsys.readouterr().out) == [{"A": "1", "a_1": "2"}]


@pytest.mark.parametrize("fmt", [["--json"], ["--csv"]])
def test_bignums_geometries_and_the_largest_hugeint_print_exactly(projections, store_path, capsys, fmt):
    # a BIGNUM and a GEOMETRY came back as their bytes; 2^127 - 1 lost its last digit in JSON and CSV
    # (1.7014118346046923173168730371588410573E+38)
    big, largest = "1234567890123456789012345678901234567890", str(2**127 - 1)
    sql = f"SELECT '{big}'::BIGNUM AS v, 'POINT(1 2)'::GEOMETRY AS g, {largest}::HUGEINT AS h, [h] AS l"
    assert projections.sql(sql).fetchall() == [(big, "POINT (1 2)", 2**127 - 1, [2**127 - 1])]
    assert main(["query", "--store", str(store_path), *fmt, sql]) == 0
    out = capsys.readouterr().out
    if fmt == ["--json"]:
        assert json.loads(out) == [{"v": big, "g": "POINT (1 2)", "h": largest, "l": [largest]}]
    else:
        assert out.splitlines() == ["v,g,h,l", f'{big},POINT (1 2),{largest},"[""{largest}""]"']


def test_json_output_is_strict_json_even_for_nan_and_infinity(store_path, capsys):
    sql = "SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, '-inf'::DOUBLE AS c, 1.5::DOUBLE AS d"
    assert main(["query", "--store", str(store_path), "--json", sql]) == 0

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    assert json.loads(capsys.readouterr().out, parse_constant=refuse) == [
        {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1.5}
    ]


def test_a_column_named_twice_is_a_usage_error(store_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["query", "--store", str(store_path), "--columns", "a,b,a", "SELECT 1 AS a, 2 AS b"])
    assert exit_.value.code == 2 and "a named twice" in capsys.readouterr().err
