"""The read side on both stores: projections, audit, query and export take a SQLite file or a
``postgresql://`` URL (``--store`` or ``EVENTLAB_STORE_URL``), and the query sandbox holds on both.

The PostgreSQL store is read by DuckDB's postgres extension, logged in as a role with a password:
neither the password nor a write may get through user SQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from datetime import timedelta
from urllib.parse import quote

import duckdb
import polars as pl
import psycopg
import pytest
from projection_story import SplitShopStory, standard_story, tell_standard_story
from psycopg.conninfo import conninfo_to_dict

from eventlab.errors import StoreError
from eventlab.projections import ProjectionError, Projections, audit, query
from eventlab.projections.sandbox import QueryTimeout

PASSWORD = "hunter2-on-postgres"


def url_as(admin_url: str, user: str, password: str, schema: str) -> str:
    """A ``postgresql://`` URL of the server ``admin_url`` names, as ``user``, searching ``schema``."""
    parts = conninfo_to_dict(admin_url)
    host = f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}"
    return f"postgresql://{user}:{quote(password)}@{host}/{parts.get('dbname', '')}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="module")
def stores(postgres_url, tmp_path_factory):
    """The standard story written to a SQLite file and to a PostgreSQL schema, which a reader role
    with a password may only read."""
    sqlite_path = tmp_path_factory.mktemp("read-side") / "events.db"
    standard_story(sqlite_path).store.close()
    schema, reader = f"readside_{os.getpid()}", f"reader_{os.getpid()}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
        admin.execute(f"CREATE ROLE {reader} LOGIN PASSWORD '{PASSWORD}'".encode())
    writer_url = url_as(postgres_url, conninfo_to_dict(postgres_url).get("user", "postgres"), "", schema)
    writer_url = writer_url.replace(":@", "@")  # the test server trusts its owner
    story = standard_story(writer_url)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {reader}".encode())
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {reader}".encode())
    try:
        yield {
            "sqlite": sqlite_path,
            "postgresql": url_as(postgres_url, reader, PASSWORD, schema),
            "story": story,
            "writer": writer_url,
        }
    finally:
        story.store.close()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())
            admin.execute(f"DROP ROLE {reader}".encode())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def projections(request, stores):
    """Projections read by a DuckDB extension: the SQLite file attached, or the PostgreSQL schema."""
    with Projections(stores[request.param], attach=request.param == "sqlite") as opened:
        yield opened


def frames(projections: Projections) -> dict[str, pl.DataFrame]:
    return {name: projections.pl(name) for name in projections.names}


def test_every_relation_is_the_same_read_from_postgresql_as_from_sqlite(stores):
    # given: one story in both stores; when: projected from each
    with Projections(stores["sqlite"]) as on_sqlite, Projections(stores["postgresql"]) as on_postgres:
        # then: the same rows in every relation
        assert on_postgres.checkpoint == on_sqlite.checkpoint == 51
        expected, found = frames(on_sqlite), frames(on_postgres)
        for name in on_sqlite.names:
            assert found[name].equals(expected[name]), name
        assert "hunter2" not in repr(on_postgres) and on_postgres.source.startswith("postgresql://reader_")


def test_a_refresh_on_postgresql_reads_only_the_new_events(stores):
    with Projections(stores["postgresql"]) as projections:
        # given: projections of the story; when: a new order is stored and they refresh
        head = projections.checkpoint
        stores["story"].place("O9", "U2", {"P1": 1})
        try:
            # then: one event applied, and the order is there as a rebuild sees it
            assert projections.refresh() == 1 and projections.checkpoint == head + 1
            refreshed = projections.pl("orders")
            projections.rebuild()
            assert refreshed.equals(projections.pl("orders")) and "O9" in refreshed["order_id"].to_list()
        finally:
            with psycopg.connect(stores["writer"], autocommit=True) as admin:
                admin.execute("DELETE FROM events WHERE position > %s", (head,))


WRITES = [
    "INSERT INTO store.events SELECT * FROM store.events",
    "DELETE FROM store.events",
    "UPDATE store.checkpoints SET position = 0",
    "DROP TABLE store.events",
    "CREATE TABLE store.stolen AS SELECT 1",
    "CALL postgres_execute('store', 'DELETE FROM events')",
    "LOAD postgres",
    "INSTALL postgres",
    "SET allow_persistent_secrets = true",
    "CREATE SECRET s (TYPE postgres, PASSWORD 'x')",
    "DETACH store",
]


@pytest.mark.parametrize("sql", WRITES)
def test_no_statement_but_a_read_runs_and_the_store_is_unchanged(projections, sql):
    with pytest.raises(ProjectionError, match="only reads|expected exactly one"):
        projections.sql(sql)
    assert projections.sql("SELECT count(*) FROM store.events").fetchone() == (51,)


REACHING_OUT = [
    "SELECT * FROM postgres_query('store', 'SELECT 1')",
    "SELECT * FROM postgres_scan('{url}', 'public', 'events')",
    "SELECT * FROM postgres_attach('{url}')",
    "SELECT * FROM sqlite_scan('{path}', 'events')",
    "SELECT * FROM read_text('{path}')",
]


@pytest.mark.parametrize("sql", REACHING_OUT)
def test_no_query_reaches_either_store_or_another_database_directly(projections, stores, sql):
    with pytest.raises(ProjectionError) as refused:
        projections.sql(sql.format(url=stores["postgresql"], path=stores["sqlite"])).fetchall()
    assert PASSWORD not in str(refused.value)


def test_the_password_is_nowhere_user_sql_can_look(projections):
    # every catalogue and setting the sandbox has, as text
    seen = []
    for sql in (
        "SELECT * FROM duckdb_databases()",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM duckdb_tables()",
        "SELECT * FROM duckdb_views()",
        "SELECT * FROM store.eventlab",
        "SELECT current_setting('secret_directory')",
    ):
        seen.append(str(projections.sql(sql).fetchall()))
    assert not [text for text in seen if PASSWORD in text]
    assert "'store'" not in seen[0]  # no database is attached where user SQL runs
    assert seen[2] == "[]"  # and no secret exists there


def test_another_applications_table_in_the_store_schema_is_not_visible_to_user_sql(stores):
    # given: another application's table in the shared schema, readable by the same role
    with psycopg.connect(stores["writer"], autocommit=True) as admin:
        admin.execute("CREATE TABLE app_users (name TEXT, secret TEXT)")
        admin.execute("INSERT INTO app_users VALUES ('alice', 'not-for-eventlab')")
        admin.execute(f"GRANT SELECT ON app_users TO {conninfo_to_dict(stores['postgresql'])['user']}".encode())
    try:
        # when: user SQL names it, through the library and the command line
        with Projections(stores["postgresql"]) as projections:
            with pytest.raises(ProjectionError, match="app_users"):
                projections.sql("SELECT * FROM store.app_users").fetchall()
            tables = projections.sql("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'store'").fetchall()
            # then: the store's own tables stay readable, the foreign one is nowhere
            assert projections.sql("SELECT count(*) FROM store.events").fetchone() == (51,)
            assert ("app_users",) not in tables
        shown = eventlab("query", "--json", "--store", stores["postgresql"], "SELECT * FROM store.app_users")
        assert shown.returncode != 0 and "not-for-eventlab" not in shown.stdout + shown.stderr
    finally:
        with psycopg.connect(stores["writer"], autocommit=True) as admin:
            admin.execute("DROP TABLE app_users")


def test_another_applications_table_in_the_sqlite_file_is_not_visible_to_user_sql(stores, tmp_path):
    # given: a copy of the store file that also holds another application's table
    path = tmp_path / "shared.db"
    path.write_bytes(stores["sqlite"].read_bytes())
    with closing(sqlite3.connect(path)) as other, other:
        other.execute("CREATE TABLE app_users (name TEXT, secret TEXT)")
        other.execute("INSERT INTO app_users VALUES ('alice', 'not-for-eventlab')")
    # when: user SQL names it, on the attached file and on the file read through sqlite3
    for attach in (True, False):
        with Projections(path, attach=attach) as projections:
            # then: refused, while the store's own tables stay readable
            with pytest.raises(ProjectionError, match="app_users"):
                projections.sql("SELECT * FROM store.app_users").fetchall()
            assert projections.sql("SELECT count(*) FROM store.events").fetchone() == (51,)


def test_a_query_stops_at_its_timeout_even_while_the_server_makes_it_wait(stores):
    # given: a store table locked on the server (a migration, a VACUUM FULL), released only by a
    # safety net far beyond the query's limit
    with Projections(stores["postgresql"]) as projections, psycopg.connect(stores["writer"]) as holder:
        holder.execute("LOCK TABLE dead_letters IN ACCESS EXCLUSIVE MODE")
        released = threading.Event()
        safety_net = threading.Timer(20.0, lambda: (released.set(), holder.rollback()))
        safety_net.start()
        try:
            # when: a query with a short limit names it (its copy waits for the lock)
            with pytest.raises(QueryTimeout, match="exceeded 0.5 s"):
                projections.sql("SELECT count(*) FROM store.dead_letters", timeout=0.5).fetchall()
            # then: it stopped while the table was still locked: the wait on the server was cancelled
            assert not released.is_set()
        finally:
            safety_net.cancel()
            holder.rollback()
        # and once the lock is gone the same query answers
        assert projections.sql("SELECT count(*) FROM store.dead_letters", timeout=30).fetchone() == (0,)


def test_even_the_building_connection_cannot_write_or_show_the_password(stores):
    """Defence in depth: user SQL never runs there, but the attachment itself is read-only."""
    with Projections(stores["postgresql"]) as projections:
        con = projections._con
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("SELECT * FROM postgres_execute('store', 'DELETE FROM events')").fetchall()
        with pytest.raises(duckdb.Error):
            con.execute("DELETE FROM store.events")
        shown = str(con.execute("SELECT * FROM duckdb_databases()").fetchall())
        shown += str(con.execute("SELECT * FROM duckdb_secrets()").fetchall())
        assert "default_transaction_read_only=on" in shown and PASSWORD not in shown
    with psycopg.connect(stores["writer"]) as admin:
        assert admin.execute("SELECT count(*) FROM events").fetchone() == (51,)


def test_audit_and_query_take_a_postgresql_url(stores):
    # the same verdicts, violations included (O5 waits for its payment), from either store
    now = stores["story"].now + timedelta(days=1)
    on_postgres, on_sqlite = audit(stores["postgresql"], now=now), audit(stores["sqlite"], now=now)
    assert on_postgres.as_dict() == on_sqlite.as_dict() and not on_postgres["orders_terminal"].ok
    by_status = query(stores["postgresql"], "SELECT status, count(*) AS n FROM orders GROUP BY status ORDER BY 1")
    assert dict(by_status.iter_rows()) == {"cancelled": 2, "completed": 2, "confirmed": 1}


def test_a_shop_split_over_sqlite_files_and_a_postgresql_schema_is_read_as_one_log(stores, postgres_url, tmp_path):
    # given: the story with the catalogue and the orders in SQLite files, the rest in a PostgreSQL schema
    schema = f"split_{os.getpid()}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
    owner = conninfo_to_dict(postgres_url).get("user", "postgres")
    rest = url_as(postgres_url, owner, "", schema).replace(":@", "@")
    story = SplitShopStory(tmp_path, rest=rest)
    try:
        tell_standard_story(story)
        # when: projected, queried and audited as one shop
        with Projections(story.paths) as merged, Projections(stores["sqlite"]) as whole:
            # then: the relations of the one-store story, and the sandbox still holds
            for name in whole.names:
                assert (
                    merged.pl(name)
                    .drop([c for c in ("store", "store_position") if c in merged.pl(name).columns])
                    .equals(whole.pl(name))
                ), name
            assert merged.sql("SELECT count(DISTINCT store) FROM store.events").fetchone() == (3,)
            for sql in REACHING_OUT:
                with pytest.raises(ProjectionError):
                    merged.sql(sql.format(url=rest, path=stores["sqlite"])).fetchall()
        report = audit(story.paths, now=story.now + timedelta(seconds=1))
        assert report.ok, report.table()
    finally:
        story.close()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def test_a_schema_that_is_not_an_event_store_is_refused_by_name(postgres_url):
    empty = url_as(postgres_url, conninfo_to_dict(postgres_url).get("user", "postgres"), "", "public")
    with pytest.raises(StoreError, match="schema public is not an eventlab event store"):
        Projections(empty.replace(":@", "@"))


def eventlab(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
    return subprocess.run(
        [sys.executable, "-m", "eventlab", *args], env={**clean, **env}, capture_output=True, text=True, check=False
    )


def test_the_commands_read_the_store_that_store_or_eventlab_store_url_names(stores, tmp_path):
    sql = "SELECT order_id, status FROM orders ORDER BY order_id"
    from_sqlite = eventlab("query", "--json", "--store", str(stores["sqlite"]), sql)
    from_option = eventlab("query", "--json", "--store", stores["postgresql"], sql)
    from_env = eventlab("query", "--json", sql, EVENTLAB_STORE_URL=stores["postgresql"])
    assert from_option.returncode == from_env.returncode == 0, from_option.stderr + from_env.stderr
    assert json.loads(from_option.stdout) == json.loads(from_env.stdout) == json.loads(from_sqlite.stdout)
    # the audit and the export too (the story's O5 still waits for its payment: exit 1, said in JSON)
    checked = eventlab("audit", "--json", "--grace", "1e9", EVENTLAB_STORE_URL=stores["postgresql"])
    assert checked.returncode == 0 and json.loads(checked.stdout)["orders_terminal"]["ok"], checked.stderr
    exported = eventlab("export", "--store", stores["postgresql"], str(tmp_path / "out"), "orders")
    assert exported.returncode == 0 and pl.read_parquet(tmp_path / "out" / "orders.parquet").height == 5
    assert PASSWORD not in from_option.stderr + checked.stdout + exported.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--store", "mysql://db/shop"], {}, "argument --store: 'mysql://db/shop' is not a store eventlab knows"),
        (["--store", "memory://"], {}, "argument --store: memory:// is a store in one process's memory"),
        ([], {"EVENTLAB_STORE_URL": "memory://"}, "EVENTLAB_STORE_URL is memory://"),
        ([], {"EVENTLAB_PAYMENT_STORE_URL": "memory://"}, "EVENTLAB_PAYMENT_STORE_URL is memory://"),
        ([], {"EVENTLAB_STORE_URL": "redis://x"}, "EVENTLAB_STORE_URL: 'redis://x' is not a store"),
    ],
)
def test_a_store_that_cannot_be_read_is_one_line_naming_the_option(args, env, message, tmp_path):
    result = eventlab("query", *args, "SELECT 1", EVENTLAB_DATA_DIR=str(tmp_path), **env)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
