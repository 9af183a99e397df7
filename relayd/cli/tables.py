"""Aligned text tables for the commands that print them (`relayd jobs`, `relayd status`)."""

from __future__ import annotations


def table(header: list[str], rows: list[list[str]], indent: str = "") -> list[str]:
    """The header and rows as lines, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]
