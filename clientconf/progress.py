"""What the helper shows while a connection starts the daemon, negotiates, or waits.

On a terminal: one line, redrawn in place with the elapsed time and the current step,
and wiped before ssh takes over. Elsewhere (VS Code's log, scripts): one plain line per
step, which logs keep readably. Stdlib only.
"""

from __future__ import annotations

import os
import time

from relayd.common.humanize import duration

TYPE_CHECKING = False  # as typing.TYPE_CHECKING (type checkers honour it) without importing typing
if TYPE_CHECKING:
    from typing import TextIO

PREFIX = "condor-relay: "
TICK_SECONDS = 0.2  # how often the terminal line's clock is redrawn
DEFAULT_WIDTH = 80


class ProgressDisplay:
    def __init__(self, stream: TextIO, interactive: bool | None = None) -> None:
        self._stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self._started = time.monotonic()
        self._step: str | None = None
        self._drawn = False

    def step(self, text: str) -> None:
        """A new step began."""
        self._step = text
        if self.interactive:
            self._draw()
        else:
            self._write(f"{PREFIX}{text}\n")

    def tick(self) -> None:
        """Time passed: redraw the clock (terminal only)."""
        if self.interactive and self._step is not None:
            self._draw()

    def clear(self) -> None:
        """Remove the line, so the session's own output starts on a clean line."""
        if self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False

    def say(self, message: str) -> None:
        """A message that stays (errors)."""
        self.clear()
        self._write(f"{PREFIX}{message}\n")

    def _draw(self) -> None:
        try:
            width = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError):
            width = 0
        width = width if width > 0 else DEFAULT_WIDTH  # a terminal may not know its size
        line = f"{PREFIX}[{duration(time.monotonic() - self._started)}] {self._step}"
        self._write("\r" + line[: width - 1] + "\x1b[K")
        self._drawn = True

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except OSError:
            pass  # a closed stderr must not fail the connection
