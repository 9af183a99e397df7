"""Byte counters for one side of the relay, read by `relayd status` and the connection log.

Counted in SSH connection-layer message payloads (what the peers exchange through the
relay), not in encrypted wire bytes, so both legs of one transfer show the same figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Traffic:
    """Bytes towards and from a peer, and when anything last moved."""

    sent: int = 0
    received: int = 0
    last_activity: float = field(default_factory=time.monotonic)

    def count_sent(self, size: int) -> None:
        self.sent += size
        self.last_activity = time.monotonic()

    def count_received(self, size: int) -> None:
        self.received += size
        self.last_activity = time.monotonic()

    def idle_seconds(self) -> float:
        return time.monotonic() - self.last_activity
