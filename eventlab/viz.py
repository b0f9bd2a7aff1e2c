"""Draw a saga: mermaid sequence diagrams, step timelines, event tables and the live feed's page.

The analysis (causal order, reactions, steps, the mermaid text) is :mod:`eventlab.saga`; this
module renders it. matplotlib (the one charting library, imported only by
:func:`plot_saga_timeline`) renders inline in JupyterLab and to PNG headless with the Agg backend;
IPython is imported only by :func:`mermaid_markdown`. Tables are :class:`eventlab.tables.Table`,
whose output does not depend on any dataframe library's formatting.

Example:
    >>> from eventlab.saga import saga_mermaid
    >>> from eventlab.viz import mermaid_markdown
    >>> mermaid_markdown(saga_mermaid(shop.wait(order_id).events))  # doctest: +SKIP
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from eventlab.saga import causal_order, causes, describe, saga_steps, source
from eventlab.services import SERVICE_NAMES
from eventlab.store.base import StoredEvent
from eventlab.tables import Html, Table, html_table

if TYPE_CHECKING:  # pragma: no cover
    from IPython.display import Markdown
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["SERVICE_COLOURS", "events_table", "feed_html", "mermaid_markdown", "plot_saga_timeline"]

#: One colour per service (matplotlib's tab10 hues), used by the timeline and the feed.
SERVICE_COLOURS: dict[str, str] = dict(
    zip(SERVICE_NAMES, ("#7f7f7f", "#8c564b", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"), strict=True)
)
_OTHER_COLOUR = "#333333"


def _colour(service: str) -> str:
    return SERVICE_COLOURS.get(service, _OTHER_COLOUR)


def mermaid_markdown(diagram: str) -> Markdown:
    """``IPython.display.Markdown`` with the diagram in a mermaid fence (JupyterLab 4 draws it)."""
    from IPython.display import Markdown

    return Markdown(f"```mermaid\n{diagram}\n```")  # type: ignore[no-untyped-call]


def plot_saga_timeline(events: Iterable[StoredEvent], *, ax: Axes | None = None, title: str | None = None) -> Figure:
    """A Gantt-style chart of :func:`~eventlab.saga.saga_steps`: one bar per step, coloured by service.

    Returns the matplotlib figure (closed, so a notebook shows it once when it is the cell's value).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    steps = saga_steps(events)
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(steps), 1) + 1.2))
        plt.close(fig)
    else:
        root = ax.get_figure(root=True)
        if root is None:
            raise ValueError("the axes given belong to no figure")
        fig = root
    labels = [f"{s.index}. {s.service}: {s.label}" for s in steps]
    for row, step in enumerate(steps):
        ax.barh(row, max(step.duration_ms, 0.5), left=step.start_ms, color=_colour(step.service), height=0.6)
    ax.set_yticks(range(len(steps)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the order was placed")
    if title:
        ax.set_title(title)
    seen = list(dict.fromkeys(s.service for s in steps))
    ax.legend(
        handles=[Patch(color=_colour(s), label=s) for s in seen],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def events_table(
    events: Iterable[StoredEvent], *, causal: bool = True, positions: bool = False, versions: bool = False
) -> Table:
    """One row per event: step, service, what happened, its stream, what caused it.

    ``causal=True`` (default) lists them in :func:`~eventlab.saga.causal_order`, which is the same
    on every run. ``positions=True`` adds the store position and ``versions=True`` the version in
    its stream; both can vary between runs where services write concurrently (commit order; e.g.
    the notification stream of an order gets its emails in whatever order they were handled).
    """
    events = list(events)
    ordered = causal_order(events) if causal else sorted(events, key=lambda e: e.position)
    parent_of = causes(ordered)
    rows = []
    for index, event in enumerate(ordered, start=1):
        row: dict[str, Any] = {"step": index}
        if positions:
            row["position"] = event.position
        parent = parent_of.get(event.event_id)
        row.update(service=source(event), event=describe(event), stream=f"{event.aggregate_type}:{event.aggregate_id}")
        if versions:
            row["version"] = event.version
        row["caused_by"] = parent.event_type if parent else "(command)"
        rows.append(row)
    return Table(rows)


def _short(text: str, width: int = 12) -> str:
    return text if len(text) <= width else text[:8] + "…"


def feed_html(events: Sequence[StoredEvent], *, limit: int = 12, head: int | None = None) -> str:
    """The newest ``limit`` events as an HTML table, newest first, coloured by service."""
    newest = sorted(events, key=lambda e: e.position, reverse=True)[:limit]
    rows = [
        (
            e.position,
            Html(f'<span style="color:{_colour(source(e))}">{html.escape(source(e))}</span>'),
            describe(e),
            f"{e.aggregate_type}:{e.aggregate_id}",
            _short(e.correlation_id),
        )
        for e in newest
    ]
    total = f"{head} events in the store; " if head is not None else ""
    table = html_table(["position", "service", "event", "stream", "saga"], rows, css_class="eventlab-feed")
    return f"<div><b>Live events</b> <small>({total}newest first)</small>{table}</div>"
