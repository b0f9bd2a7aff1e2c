"""Export the event log and the projections to Parquet, for any tool that reads it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from eventlab.projections.engine import Projections, Source
from eventlab.projections.sandbox import ProjectionError
from eventlab.store import ShopStores

__all__ = ["export_parquet"]

log = logging.getLogger(__name__)


def export_parquet(
    source: Projections | Source | ShopStores | Sequence[Source],
    directory: str | Path,
    names: Iterable[str] | None = None,
    *,
    attach: bool = False,
) -> dict[str, Path]:
    """Write one Parquet file per relation into ``directory`` (created if needed); return name → path.

    ``events.parquet`` is the store's log itself, every column as stored (JSON as text) up to the
    projections' checkpoint (over several stores: the merged log, with ``store`` and
    ``store_position``); every other ``<name>.parquet`` is a relation of :attr:`Projections.names`,
    in its documented order. Each file replaces the previous one whole, or not at all. ``names``
    picks some (default: all); ``attach`` is passed on when ``source`` is a path (see
    :class:`Projections`; a ``postgresql://`` URL is always read by DuckDB's postgres extension).
    Files are written through Arrow; DuckDB itself never touches the file system.

    Example:
        >>> export_parquet(store_path, store_path.parent / "parquet")["orders"].name
        'orders.parquet'
    """
    if not isinstance(source, Projections):
        with Projections(source, attach=attach) as projections:
            return export_parquet(projections, directory, names)
    chosen = list(source.names if names is None else names)
    for name in chosen:
        if name not in source.names:
            raise ProjectionError(f"unknown relation {name!r}; known: {', '.join(source.names)}")
    directory = Path(directory)
    try:  # asking whether it exists can fail too (a name longer than the file system takes)
        if directory.exists() and not directory.is_dir():
            raise ProjectionError(f"{directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProjectionError(f"cannot write to {directory}: {exc.strerror or exc}") from exc
    written = {}
    for name in chosen:
        relation = source.raw_events() if name == "events" else source.relation(name)
        reader = relation.to_arrow_reader()
        path, partial = directory / f"{name}.parquet", directory / f".{name}.parquet.partial"
        try:  # written beside it, then put in its place: a reader never sees half a file
            with pq.ParquetWriter(partial, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
            partial.replace(path)
        except OSError as exc:  # a full disk or a file it may not replace: the previous export stays
            partial.unlink(missing_ok=True)
            raise ProjectionError(f"cannot write to {directory}: {exc.strerror or exc}") from exc
        written[name] = path
        log.info("exported %s to %s", name, path)
    return written
