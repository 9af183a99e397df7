"""The relay's own SSH host key, which clients pin through the generated ssh_config."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys

HOST_KEY_ALIAS = "condor-relay"


def _write_private(path: Path, data: bytes) -> None:
    """Write a file that only the owner can read, never readable by others even briefly."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load_or_create(key_path: Path, known_hosts: Path) -> keys.Key:
    """Load the ed25519 host key, creating it on first run, and keep known_hosts in step."""
    if key_path.exists():
        if key_path.stat().st_mode & 0o077:
            os.chmod(key_path, 0o600)
        key = keys.Key.fromFile(str(key_path))
    else:
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        _write_private(key_path, key.toString("OPENSSH"))
    line = f"{HOST_KEY_ALIAS} {key.public().toString('OPENSSH').decode()}\n"
    if not known_hosts.exists() or known_hosts.read_text() != line:
        _write_private(known_hosts, line.encode())
    return key
