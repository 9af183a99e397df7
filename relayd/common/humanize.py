"""Durations and byte counts as people read them, for `relayd status` and the logs.

Stdlib only: the helper's progress display uses it too.
"""

from __future__ import annotations


def duration(seconds: float) -> str:
    """E.g. `0.4 s`, `42 s`, `3 min 05 s`, `2 h 07 min`, `3 d 04 h`."""
    if seconds < 10:
        return f"{max(seconds, 0):.1f} s"
    whole = int(seconds)
    for unit, size, sub_unit, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size} {unit} {whole % size // sub_size:02d} {sub_unit}"
    return f"{whole} s"


def size(count: int) -> str:
    """E.g. `512 B`, `1.5 KiB`, `50.0 MiB`."""
    value, unit = float(count), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
