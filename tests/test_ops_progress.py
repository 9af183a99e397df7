"""The helper's progress: one line redrawn in place on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import time

from clientconf.progress import ProgressDisplay
from relayd.sandbox import pool as sandbox


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


def test_negotiation_progress_on_a_real_terminal(unstarted_relay):
    relay = unstarted_relay
    sandbox.configure_pool(relay.pool_dir, negotiation_delay=0.8)
    sandbox.submit_job(relay.pool_dir, status="running")
    controller, terminal = pty.openpty()
    ssh = subprocess.Popen(relay.ssh_argv("job-1.0.condor", "echo done"), env=relay.home.env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: ssh exited
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert ssh.wait(timeout=30) == 0 and ssh.stdout.read() == b"done\n"
    text = shown.decode(errors="replace")
    redraws = re.findall(r"\rcondor-relay: \[(\d+\.\d) s\] negotiating with job 1\.0", text)
    assert len(redraws) >= 3, text  # the clock ticks while condor_ssh_to_job works
    assert float(redraws[-1]) >= 0.6
    assert "\rcondor-relay: [" in text and text.endswith("\r\x1b[K")  # wiped before the session's output
