"""Tables that fit the width they are printed at, one line per row.

A table is declared as columns with a priority; :func:`fit_table` keeps every column when the
table fits the console's width and otherwise drops the least important ones until it does, names
what it left out in the caption (``--json`` has everything), and never wraps a row: a cell that
still does not fit is cut with an ellipsis. So a table piped to a file or shown in an 80-column
terminal stays one line per row, readable by a person and by ``grep``/``awk``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Column:
    """One column: its header, alignment and how much it matters (higher = kept longer; the
    columns with the highest priority are never dropped)."""

    header: str
    justify: Literal["left", "right"] = "left"
    priority: int = 0
    cut: bool = True  # False: never narrower than its widest cell (only the others give way)


def _cell_width(cell: str) -> int:
    return max((Text.from_markup(line).cell_len for line in cell.split("\n")), default=0)


def table_width(widths: Sequence[int]) -> int:
    """The width rich's default box draws for columns of these content widths: one space of
    padding each side of every cell and a border between and around the columns."""
    return sum(w + 2 for w in widths) + len(widths) + 1


def fit_table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]],
              width: int) -> Table:
    """A table of ``rows`` with as many of ``columns`` as fit in ``width`` (see module doc)."""
    widths = [max([_cell_width(c.header)] + [_cell_width(r[i]) for r in rows])
              for i, c in enumerate(columns)]
    keep = list(range(len(columns)))
    top = max((c.priority for c in columns), default=0)
    # Drop the least important (then the rightmost) column until the table fits.
    while table_width([widths[i] for i in keep]) > width:
        droppable = [i for i in keep if columns[i].priority < top]
        if not droppable:
            break
        keep.remove(min(droppable, key=lambda i: (columns[i].priority, -i)))
    hidden = [columns[i].header for i in range(len(columns)) if i not in keep]
    caption = f"not shown at this width: {', '.join(hidden)} (see --json)" if hidden else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    # Columns that may not be cut keep their width; the others share what is left.
    cuttable = [i for i in keep if columns[i].cut]
    spare = width - table_width([0 if i in cuttable else widths[i] for i in keep])
    limit = {i: max(1, spare * widths[i] // max(1, sum(widths[j] for j in cuttable)))
             for i in cuttable} if table_width([widths[i] for i in keep]) > width else {}
    for i in keep:
        table.add_column(columns[i].header, justify=columns[i].justify, no_wrap=True,
                         overflow="ellipsis", min_width=None if columns[i].cut else widths[i],
                         max_width=limit.get(i))
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table
