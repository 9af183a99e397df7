"""The relay's own SSH host key, which clients pin through the generated ssh_config."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.logger import Logger

from relayd.common.errors import UnusablePath
from relayd.common.pinning import pinned_names

log = Logger()


def write_private(path: Path, data: bytes, what: str) -> None:
    """Write a file that only the owner can read, never readable by others even briefly,
    and never left half-written: a failed write removes its temp file and says why.

    Nothing is followed: the temp file is created anew (O_EXCL, O_NOFOLLOW), and the
    rename replaces whatever `path` was, a symlink too, rather than writing through it."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)  # left by a crash; unlink removes a symlink, not its target
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UnusablePath(f"cannot write {what} {path}: {exc.strerror}") from None


def _load(key_path: Path) -> keys.Key:
    info = key_path.lstat()
    if stat.S_ISLNK(info.st_mode):  # chmod below would change its target
        raise UnusablePath(f"the host key {key_path} is a symlink; put the key itself there, or remove it")
    mode = info.st_mode & 0o777
    if mode & 0o077:
        os.chmod(key_path, 0o600)
        log.warn("the host key {path} had mode {mode:o}; changed it to 600", path=str(key_path), mode=mode)
    try:
        return keys.Key.fromFile(str(key_path))
    except Exception as exc:  # Conch raises BadKeyError, struct.error, ValueError ... for a damaged key
        raise UnusablePath(
            f"cannot read the host key {key_path} ({exc or type(exc).__name__}); "
            "move it away and relayd will make a new one"
        ) from None


def pin_line(public: keys.Key, domain: str) -> str:
    """The known_hosts line pinning the relay's key (relayd.common.pinning says under which names)."""
    return f"{pinned_names(domain)} {public.toString('OPENSSH').decode()}\n"


def load_or_create(key_path: Path, known_hosts: Path, domain: str) -> keys.Key:
    """Load the ed25519 host key, creating it on first run, and keep known_hosts in step
    (for the job names of `domain`).

    Raises UnusablePath naming the file when the key or known_hosts cannot be used.
    """
    if key_path.exists() or key_path.is_symlink():
        key = _load(key_path)
    else:
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        write_private(key_path, key.toString("OPENSSH"), "the host key")
    line = pin_line(key.public(), domain)
    if not known_hosts.exists() or known_hosts.read_bytes() != line.encode():
        write_private(known_hosts, line.encode(), "the known_hosts file")
    return key
