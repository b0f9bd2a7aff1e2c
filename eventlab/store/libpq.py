"""PostgreSQL connection strings and server-side cancels for the read side, through psycopg (the
``postgres`` extra): the driver stays inside the store package, imported only when a PostgreSQL store
is read."""

from __future__ import annotations

import logging

from eventlab.errors import StoreError

__all__ = ["cancel_sessions", "conninfo", "conninfo_parts"]

log = logging.getLogger(__name__)


def conninfo_parts(url: str) -> dict[str, str]:
    """``url``'s libpq parameters, parsed by libpq itself."""
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise StoreError(
            f"reading a PostgreSQL store needs {exc.name}, which is not installed: pip install 'eventlab[postgres]'"
        ) from exc
    try:
        return {key: str(value) for key, value in conninfo_to_dict(url).items()}
    except ProgrammingError as exc:
        raise StoreError(f"not a PostgreSQL connection string: {exc}") from exc


def conninfo(parts: dict[str, str]) -> str:
    """A libpq connection string of ``parts`` (keyword form, quoted where needed)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(**parts)


def cancel_sessions(url: str, session: str) -> None:
    """Cancel the statements the connections named ``session`` (``application_name``) run on the server
    ``url``. A failure is logged, not raised: the caller is already stopping a query."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5, application_name=f"{session}-cancel") as conn:
            conn.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
                (session,),
            )
    except psycopg.Error as exc:
        log.warning("could not cancel the reads of %s: %s", session, exc)
