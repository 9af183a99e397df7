"""Where condor-relay keeps its files (XDG base directories).

The ProxyCommand helper imports this on every connection and needs only the socket's
path, so the module imports neither dataclasses nor pathlib (milliseconds each):
socket_path() works on strings, and Path is imported where a Paths is built.
"""

from __future__ import annotations

import os
from collections import namedtuple

TYPE_CHECKING = False  # as typing.TYPE_CHECKING (type checkers honour it) without importing typing
if TYPE_CHECKING:
    from pathlib import Path

APP = "condor-relay"
SOCKET_NAME = "relay.sock"


def _xdg(var: str, default: str) -> str:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return value
    return os.path.join(os.path.expanduser("~"), default)


def _state_dir() -> str:
    return os.path.join(_xdg("XDG_STATE_HOME", ".local/state"), APP)


def _runtime_dir(state_dir: str) -> str:
    """$XDG_RUNTIME_DIR/condor-relay; without it, a private directory under the state dir
    (never a shared /tmp path)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, APP) if runtime and os.path.isabs(runtime) else os.path.join(state_dir, "run")


def socket_path(given: str | os.PathLike[str] | None = None) -> str:
    """The daemon's socket: `given` made absolute (a daemon started from it runs in /),
    else the default one."""
    if given:
        return os.path.abspath(given)
    return os.path.join(_runtime_dir(_state_dir()), SOCKET_NAME)


# A namedtuple, not a dataclass: importing dataclasses costs the helper milliseconds.
class Paths(namedtuple("Paths", "config_file state_dir runtime_dir socket_name", defaults=(SOCKET_NAME,))):
    """The three directories (Paths) and the socket's name in the runtime dir (a str)."""

    __slots__ = ()

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

    def with_socket(self, given: str | os.PathLike[str]) -> Paths:
        """These paths with the socket (and the runtime dir holding it) at `given`."""
        from pathlib import Path  # noqa: PLC0415 (see the module's docstring)

        path = Path(socket_path(given))
        return self._replace(runtime_dir=path.parent, socket_name=path.name)

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
    """Resolve the paths from the environment, as the XDG spec says."""
    from pathlib import Path  # noqa: PLC0415 (see the module's docstring)

    config = os.environ.get("CONDOR_RELAY_CONFIG")
    config_file = config or os.path.join(_xdg("XDG_CONFIG_HOME", ".config"), APP, "config.yaml")
    state_dir = _state_dir()
    return Paths(config_file=Path(config_file), state_dir=Path(state_dir), runtime_dir=Path(_runtime_dir(state_dir)))


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
