"""HTCondor's text on its way to a user's terminal: no escape sequences get through.

condor_ssh_to_job's stderr and job ad strings such as HoldReason are written by whoever
controls the job or the pool; ESC, CR and the other C0/C1 controls in them could rewrite
the user's terminal (title, colours, what earlier lines seem to say).
"""

from __future__ import annotations

_DROPPED = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0)])  # C0, DEL, C1: None deletes
_DROPPED[ord("\t")] = " "


def htcondor_text(raw: str) -> str:
    """`raw` as one line: its lines stripped and joined with "; ", every control character dropped."""
    lines = (line.translate(_DROPPED).strip() for line in raw.splitlines())
    return "; ".join(line for line in lines if line)
