"""The projections as a notebook shows them: which relations there are, and what each one holds."""

from __future__ import annotations

import html
from datetime import datetime

from eventlab.projections.definitions import PROJECTIONS, RELATIONS
from eventlab.projections.typed import EVENTS_DOC
from eventlab.tables import Html, html_table

__all__ = ["projections_html", "snapshot_html"]

_COLUMNS = ("relation", "kind", "what")


def _name(relation: str) -> Html:
    return Html(f"<code>{html.escape(relation)}</code>")


def projections_html(source: str, checkpoint: int) -> str:
    """Every relation of the live projections of ``source`` at ``checkpoint``: its kind and what it holds."""
    rows = [(_name("events"), "table", EVENTS_DOC)]
    rows += [(_name(r.name), f"{r.kind} ({p.name})", r.doc) for p in PROJECTIONS.values() for r in p.relations]
    return html_table(_COLUMNS, rows, caption=f"Projections of {source} at position {checkpoint}")


def snapshot_html(position: int, recorded_at: datetime | None, schema: str) -> str:
    """Every relation of the snapshot at ``position`` (recorded at ``recorded_at``), held in ``schema``."""
    rows = [(_name(r.name), "view", r.doc) for r in RELATIONS.values()]
    return html_table(_COLUMNS, rows, caption=f"As of position {position} ({recorded_at} UTC): schema {schema}")
