"""Where condor-relay keeps its files (XDG base directories).

Stdlib only: the ProxyCommand helper imports this on every connection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
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
    socket_name: str = "relay.sock"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / self.socket_name

    @property
    def start_lock(self) -> Path:
        """Held while a daemon is being started or is exiting idle, so only one runs."""
        return self.runtime_dir / "start.lock"

    @property
    def start_output(self) -> Path:
        """stdout and stderr of a daemon the helper started, shown if it fails to start."""
        return self.runtime_dir / "start.out"

    def with_socket(self, socket_path: str | os.PathLike[str]) -> Paths:
        """These paths with the socket (and the runtime dir holding it) at `socket_path`."""
        path = Path(socket_path).absolute()
        return replace(self, runtime_dir=path.parent, socket_name=path.name)

    @property
    def host_key(self) -> Path:
        return self.state_dir / "host_key"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def ec2_known_hosts(self) -> Path:
        """Host keys of EC2 instances, pinned on first use."""
        return self.state_dir / "ec2_known_hosts"

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
