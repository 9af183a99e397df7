"""The daemon learns that condor_ssh_to_job ended even when its pipes closed first."""

from __future__ import annotations

import time


def test_a_tool_that_closes_its_pipes_before_exiting_is_still_reaped(relay, tmp_path):
    # Without SIGCHLD handling the daemon only noticed an exit that came before its
    # stdin, stdout and stderr pipes closed (a race at every exit); this tool closes them
    # first and left the connection hanging past negotiation_timeout.
    tool = tmp_path / "condor_ssh_to_job"
    tool.write_text("#!/bin/sh\nexec <&- >&- 2>&-\nsleep 0.5\nexit 1\n")
    tool.chmod(0o755)
    relay.stop()
    relay.configure(condor_ssh_to_job=str(tool), job_lookup="none", negotiation_timeout=60)
    relay.start()
    start = time.monotonic()
    done = relay.ssh("job-1.0.condor", "true", timeout=30)
    assert done.returncode == 255
    assert "condor_ssh_to_job exited with status 1" in done.stderr.decode()
    assert time.monotonic() - start < 10
