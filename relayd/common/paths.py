"""Where condor-relay keeps its files (XDG base directories).

The ProxyCommand helper imports this on every connection and needs only the socket's
path, so the module imports neither dataclasses nor pathlib (milliseconds each):
socket_path() works on strings, and Path is imported where a Paths is built.
"""

from __future__ import annotations

import os
import stat
from collections import namedtuple

from relayd.common.errors import UnusablePath

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


def unsafe_dir(directory: str) -> str | None:
    """Why another user could replace `directory` (or put something else in its place),
    or None when only this user and root can.

    Every directory above it must belong to this user or root and be writable by no one
    else, except a sticky one (like /tmp) whose next directory down is this user's (or
    root's): the sticky bit keeps others from renaming that one.
    `directory` itself, if it exists, must be this user's and not a symlink (private_dir
    corrects its mode). Missing directories are fine: they will be created as ours.
    """
    uid = os.getuid()
    parent, name = os.path.split(directory)
    chain = _ancestors(os.path.join(os.path.realpath(parent), name))
    infos = []
    for path in chain:
        try:
            infos.append(os.lstat(path))
        except FileNotFoundError:
            break
    for depth, info in enumerate(infos):
        path = chain[depth]
        if not stat.S_ISDIR(info.st_mode):
            return f"{path} is {'a symlink' if stat.S_ISLNK(info.st_mode) else 'not a directory'}"
        if info.st_uid != uid and (info.st_uid != 0 or depth == len(chain) - 1):
            return f"{path} belongs to uid {info.st_uid}"
        below = infos[depth + 1] if depth + 1 < len(infos) else None
        if info.st_mode & 0o022 and depth < len(chain) - 1:
            if not info.st_mode & stat.S_ISVTX:
                return f"{path} is writable by other users"
            if below is not None and below.st_uid not in (uid, 0):
                return f"{path} is writable by other users and {chain[depth + 1]} belongs to uid {below.st_uid}"
    return None


def _ancestors(path: str) -> list[str]:
    """/, /a and /a/b for /a/b."""
    found = [path]
    while (up := os.path.dirname(found[-1])) != found[-1]:
        found.append(up)
    return found[::-1]


def _runtime_dir(state_dir: str) -> tuple[str, str | None]:
    """$XDG_RUNTIME_DIR/condor-relay (symlinks resolved), unless another user could replace
    it; else, as the XDG spec asks, a private directory under the state dir (never a shared
    /tmp path). Also why the fallback was taken, when it was because of such a user.

    Without XDG_RUNTIME_DIR (su, sudo, cron), /run/user/<uid> if it exists: what pam_systemd
    sets it to, so such a helper finds the daemon of the user's login sessions."""
    fallback = os.path.join(state_dir, "run")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime or not os.path.isabs(runtime):
        runtime = f"/run/user/{os.getuid()}"
        if not os.path.isdir(runtime):
            return fallback, None
    wanted = os.path.join(os.path.realpath(runtime), APP)
    why = unsafe_dir(wanted)
    if why is None:
        return wanted, None
    return fallback, f"{wanted} is not safe ({why}); using {fallback} instead"


def socket_path(given: str | os.PathLike[str] | None = None) -> str:
    """The daemon's socket: `given` made absolute (a daemon started from it runs in /),
    else the default one. A few lstat calls: the helper runs this on every connection."""
    if given:
        return os.path.abspath(given)
    return os.path.join(_runtime_dir(_state_dir())[0], SOCKET_NAME)


# A namedtuple, not a dataclass: importing dataclasses costs the helper milliseconds.
class Paths(namedtuple("Paths", "config_file state_dir runtime_dir socket_name runtime_fallback",
                       defaults=(SOCKET_NAME, None))):
    """The three directories (Paths), the socket's name in the runtime dir (a str), and why
    the runtime dir is the state dir's fallback rather than $XDG_RUNTIME_DIR's (or None)."""

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
        return self._replace(runtime_dir=path.parent, socket_name=path.name, runtime_fallback=None)

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
    runtime_dir, fallback = _runtime_dir(state_dir)
    return Paths(config_file=Path(config_file), state_dir=Path(state_dir), runtime_dir=Path(runtime_dir),
                 runtime_fallback=fallback)


def private_dir(path: Path) -> int | None:
    """Create `path` (and parents) and make sure only we can enter it.

    Returns the mode it had when that had to be corrected, for the caller to report.
    Raises UnusablePath if it cannot be created or belongs to another user.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise UnusablePath(f"cannot create the directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        what = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise UnusablePath(f"{path} is {what}; remove it and try again")
    if info.st_uid != os.getuid():
        raise UnusablePath(f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})")
    mode = info.st_mode & 0o777
    if mode == 0o700:
        return None
    os.chmod(path, 0o700)
    return mode
