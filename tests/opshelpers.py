"""Helpers shared by the tests of running the daemon (tests/test_ops_*.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from harness import RELAYD, Home


def status(home: Home) -> dict[str, Any] | None:
    """`relayd status --json`, or None when no daemon runs."""
    done = subprocess.run([RELAYD, "status", "--json"], env=home.env, capture_output=True, text=True, timeout=30)
    return json.loads(done.stdout) if done.returncode == 0 else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for our purposes
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def daemon_log(home: Home) -> str:
    path = Path(home.env["XDG_STATE_HOME"]) / "condor-relay" / "relayd.log"
    return path.read_text(errors="replace") if path.exists() else ""
