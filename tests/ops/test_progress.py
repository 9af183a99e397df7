"""The helper's own progress (starting relayd): one line redrawn in place on a terminal, plain
lines elsewhere. What the daemon reports while it reaches a job comes as SSH banners
(tests/test_e2e_messages.py)."""

from __future__ import annotations

import io
import re

from clientconf.progress import ProgressDisplay


def test_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    display = ProgressDisplay(stream, interactive=False)
    display.step("starting relayd")
    display.tick()
    display.step("negotiating")
    display.clear()
    assert stream.getvalue() == "condor-relay: starting relayd\ncondor-relay: negotiating\n"


def test_terminal_line_is_redrawn_and_wiped():
    stream = io.StringIO()
    display = ProgressDisplay(stream, interactive=True)
    display.step("negotiating")
    display.tick()
    display.clear()
    draws = stream.getvalue().split("\r")[1:]
    assert len(draws) == 3 and draws[-1] == "\x1b[K"
    assert all(re.fullmatch(r"condor-relay: \[\d+\.\d s\] negotiating\x1b\[K", d) for d in draws[:2])
