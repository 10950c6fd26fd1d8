"""Plain-text tables for the terminal: columns that fit its width, long names shortened in the middle."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from rich.cells import cell_len

ELLIPSIS = "…"
MIN_COLUMN = 12  # a shortened column keeps at least this many cells (or its header's width, if wider)
GAP = "  "


def terminal_width() -> int | None:
    """The width tables must fit: $COLUMNS, else the terminal's; None when stdout is no terminal (a pipe or a
    file gets whole names, as with --wide)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def shorten_middle(text: str, width: int) -> str:
    """`text` in at most `width` terminal cells: its start and end with an ellipsis between them."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    head_room = width // 2
    tail_room = width - 1 - head_room
    head = _take(text, head_room)
    tail = _take(text[::-1], tail_room)[::-1]
    return head + ELLIPSIS + tail


def _take(text: str, cells: int) -> str:
    taken: list[str] = []
    used = 0
    for char in text:
        size = cell_len(char)
        if used + size > cells:
            break
        taken.append(char)
        used += size
    return "".join(taken)


def fit_line(text: str, width: int | None) -> str:
    """A free-form line shortened in the middle to the width (None: whole)."""
    return text if width is None else shorten_middle(text, width)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    numeric: Sequence[int] = (),
    width: int | None = None,
) -> list[str]:
    """Columns separated by two spaces, numeric ones right-aligned; with `width`, the text columns are narrowed
    (the widest first) and their cells shortened in the middle until each line fits in `width` cells."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([cell_len(header)] + [cell_len(row[i]) for row in cells]) for i, header in enumerate(headers)]
    if width is not None:
        widths = _narrowed(widths, [cell_len(h) for h in headers], numeric, width - len(GAP) * (len(headers) - 1))
        cells = [[shorten_middle(value, widths[i]) for i, value in enumerate(row)] for row in cells]
        headers = [shorten_middle(header, widths[i]) for i, header in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [
            _pad(value, size, right=i in numeric) for i, (value, size) in enumerate(zip(values, widths, strict=True))
        ]
        return GAP.join(padded).rstrip()

    return [line(headers), *(line(row) for row in cells)]


def _pad(value: str, size: int, right: bool) -> str:
    room = " " * max(0, size - cell_len(value))
    return room + value if right else value + room


def _narrowed(widths: list[int], header_widths: list[int], numeric: Sequence[int], room: int) -> list[int]:
    """Column widths summing to at most `room`: the widest text column gives up a cell at a time."""
    widths = list(widths)
    floors = [max(MIN_COLUMN, header) if i not in numeric else widths[i] for i, header in enumerate(header_widths)]
    excess = sum(widths) - room
    while excess > 0:
        candidates = [i for i in range(len(widths)) if widths[i] > floors[i]]
        if not candidates:
            break  # every text column at its floor: the line stays wider than the terminal
        widest = max(candidates, key=lambda i: widths[i])
        others = [widths[i] for i in candidates if i != widest]
        # Narrow the widest to the next one's width (or as far as needed), not one cell per pass.
        step = min(excess, widths[widest] - max([floors[widest], *others]) or 1)
        widths[widest] -= step
        excess -= step
    return widths
