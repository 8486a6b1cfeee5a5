"""The text the operator commands print: aligned columns, shortened cells, times, the end
of a progress bar."""

from __future__ import annotations

import sys
from typing import Any

import click


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Plain aligned columns (numbers right-aligned)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def short(text: str | None, width: int = 60) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else ""


def end_progress() -> None:
    """Off a terminal click prints only the progress bar's label: end its line."""
    if not sys.stderr.isatty():
        click.echo("", err=True)
