"""The system-wide ssh_config drop-in: one block, installed by root, for every user.

OpenSSH reads ~/.ssh/config first and /etc/ssh/ssh_config after it, and Debian, Ubuntu
and EL 8/9 include /etc/ssh/ssh_config.d/*.conf at the top of the latter; ssh takes the
first value it finds, so a user's own block (`relayd ssh-config install`) still wins.
The file is named 20-... to come before EL's 50-redhat.conf and its `Host *` settings.

The drop-in holds no per-user path: the helper runs without --socket and finds each user's
socket itself (relayd.common.paths), and known_hosts is named under each user's home (`~` is the
passwd home for ssh). That file is the relay's pin in the default state directory, which
relayd writes (creating the host key) before it takes a first connection, and the helper's
refusal before it answers one: so it exists before ssh checks it, even for a user who never
ran relayd. A user whose XDG_STATE_HOME moves it elsewhere is told by `relayd doctor`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from clientconf import sshconfig
from relayd.config import Config

DROPIN_DIR = Path("/etc/ssh/ssh_config.d")
DROPIN = DROPIN_DIR / "20-condor-relay.conf"
SYSTEM_SSH_CONFIG = Path("/etc/ssh/ssh_config")
KNOWN_HOSTS = "~/.local/state/condor-relay/known_hosts"  # ssh expands ~ to each user's home
_INCLUDE = re.compile(r"\s*include\s+(.*)", re.IGNORECASE)
_SECTION = re.compile(r"\s*(host|match)\s", re.IGNORECASE)


def render(config: Config, helper: str | None = None) -> str:
    """The drop-in for the site's `config` (the system block never uses ssh's ControlMaster:
    its ControlPath would be per user)."""
    settings = sshconfig.BlockSettings(domain=config.domain, helper=helper or sshconfig.helper_executable(),
                                       socket="", known_hosts=KNOWN_HOSTS)
    return sshconfig.render(settings)


def include_problem(ssh_config: Path = SYSTEM_SSH_CONFIG, directory: Path = DROPIN_DIR) -> str | None:
    """Why ssh would not read the drop-ins of `directory` through `ssh_config`, or None."""
    try:
        lines = ssh_config.read_text().splitlines()
    except OSError as exc:
        return f"cannot read {ssh_config} ({exc.strerror})"
    for line in lines:
        if _SECTION.match(line):
            break  # an Include after a Host line applies to that host only
        found = _INCLUDE.match(line)
        if found and any(_names(word, ssh_config.parent, directory) for word in found[1].split()):
            return None
    return (f"{ssh_config} does not include {directory}/*.conf before its first Host line; add "
            f"'Include {directory}/*.conf' at its top, or put the block in the file itself: "
            f"relayd ssh-config install --system --file {ssh_config}")


def _names(word: str, base: Path, directory: Path) -> bool:
    pattern = Path(os.path.expanduser(word.strip('"')))
    pattern = pattern if pattern.is_absolute() else base / pattern
    return pattern.parent == directory and pattern.name.endswith(".conf") and "*" in pattern.name


def command(action: str, config: Config, target: Path | None, dry_run: bool) -> int:
    """`relayd ssh-config print|install|uninstall --system [--file F] [--dry-run]`."""
    block = render(config)
    if action == "print":
        sys.stdout.write(block)
        return 0
    path = target or DROPIN
    old = path.read_text() if path.exists() else ""
    new = sshconfig.with_block(old, block) if action == "install" else sshconfig.without_block(old)
    problem = include_problem() if action == "install" and target is None else None
    if dry_run:
        sys.stdout.write(sshconfig.diff(path, old, new) or f"{path}: already up to date\n")
    elif new == old:
        print(f"{path}: already up to date")
    else:
        try:
            _write(path, new)
        except OSError as exc:
            print(f"relayd: cannot write {path}: {exc.strerror} (the system block is installed as root)",
                  file=sys.stderr)
            return 1
        done = "installed the condor-relay block for all users" if action == "install" else "removed"
        print(f"{path}: {done}")
    if problem:
        print(f"relayd: warning: {problem}", file=sys.stderr)
    return 0


def _write(path: Path, text: str) -> None:
    """Every user's ssh reads the file: 0644 (a file uninstall leaves empty is removed)."""
    if not text.strip():
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    sshconfig.write_atomically(path, text, mode=0o644)
