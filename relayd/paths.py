"""Where condor-relay keeps its files (XDG base directories).

Stdlib only: the ProxyCommand helper imports this on every connection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

APP = "condor-relay"


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / default


@dataclass(frozen=True)
class Paths:
    config_file: Path
    state_dir: Path
    runtime_dir: Path

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "relay.sock"

    @property
    def host_key(self) -> Path:
        return self.state_dir / "host_key"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "relayd.log"


def default_paths() -> Paths:
    """Resolve the paths from the environment, as the XDG spec says.

    The socket lives in $XDG_RUNTIME_DIR/condor-relay; without it, in a private
    directory under the state dir (never a shared /tmp path).
    """
    config = os.environ.get("CONDOR_RELAY_CONFIG")
    config_file = Path(config) if config else _xdg("XDG_CONFIG_HOME", ".config") / APP / "config.yaml"
    state_dir = _xdg("XDG_STATE_HOME", ".local/state") / APP
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    runtime_dir = Path(runtime) / APP if runtime and os.path.isabs(runtime) else state_dir / "run"
    return Paths(config_file=config_file, state_dir=state_dir, runtime_dir=runtime_dir)


class UnusablePath(Exception):
    """A directory or file of the daemon's that it cannot use; str() says which and why."""


def private_dir(path: Path) -> int | None:
    """Create `path` (and parents) and make sure only we can enter it.

    Returns the mode it had when that had to be corrected, for the caller to report.
    Raises UnusablePath if it cannot be created or belongs to another user.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise UnusablePath(f"cannot create the directory {path}: {exc.strerror}") from None
    if info.st_uid != os.getuid():
        raise UnusablePath(f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})")
    mode = info.st_mode & 0o777
    if mode == 0o700:
        return None
    os.chmod(path, 0o700)
    return mode
