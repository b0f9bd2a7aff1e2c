"""Tables that look the same everywhere: HTML in a notebook, aligned text in a terminal.

Every HTML table eventlab shows (an order's events, the audit, the relations, the live feed, the
control panel) is built by :func:`html_table`, so cells are escaped in one place.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Frame", "Html", "Table", "html_table", "text_rows"]


class Html(str):
    """A cell that is HTML already (e.g. ``<code>…</code>``): :func:`html_table` does not escape it."""

    __slots__ = ()


def _cell(value: object) -> str:
    if isinstance(value, Html):
        return value
    return html.escape("" if value is None else str(value))


def html_table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], *, caption: str = "", css_class: str = "eventlab-table"
) -> str:
    """An HTML table of ``rows`` under ``columns``; every cell escaped unless it is :class:`Html`.

    Example:
        >>> html_table(["event"], [["<b>x</b>"], [Html("<code>y</code>")]])
        '<table class="eventlab-table"><thead><tr><th>event</th></tr></thead><tbody><tr><td>&lt;b&gt;x&lt;/b&gt;</td></tr><tr><td><code>y</code></td></tr></tbody></table>'
    """
    head = "".join(f"<th>{_cell(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    table = f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return f"<div><p>{_cell(caption)}</p>{table}</div>" if caption else table


def text_rows(rows: Iterable[tuple[str, object]]) -> str:
    """``label  value`` lines, the values lined up after the longest label (a report in a terminal).

    Example:
        >>> print(text_rows([("orders", 100), ("saga p50", "12 ms")]))
        orders    100
        saga p50  12 ms
    """
    rows = list(rows)
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


@runtime_checkable
class Frame(Protocol):
    """A dataframe that gives its rows as dicts (a polars ``DataFrame``)."""

    def to_dicts(self) -> list[dict[str, Any]]: ...


class Table:
    """Rows shown as an HTML table in a notebook and as aligned text elsewhere.

    Its output depends only on the rows, not on a dataframe library's version, so a notebook
    that shows it can be compared by ``pytest --nbval``.

    Example:
        >>> Table([{"event": "OrderCreated", "version": 1}])
        event        | version
        -------------+--------
        OrderCreated | 1
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]] | Frame, columns: Sequence[str] | None = None) -> None:
        if isinstance(rows, Frame):
            rows = rows.to_dicts()
        self.rows = [dict(row) for row in rows]
        self.columns = list(columns or (dict.fromkeys(k for row in self.rows for k in row)))

    def __len__(self) -> int:
        return len(self.rows)

    def _cells(self) -> list[list[str]]:
        return [["" if row.get(c) is None else str(row.get(c)) for c in self.columns] for row in self.rows]

    def __repr__(self) -> str:
        cells = self._cells()
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(self.columns)]
        fmt = " | ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*self.columns).rstrip(), "-+-".join("-" * w for w in widths)]
        lines += [fmt.format(*r).rstrip() for r in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return html_table(self.columns, self._cells())
