"""Which host keys the upstream leg accepts from a job.

A negotiated job's sshd must present exactly the key the negotiation returned. An EC2
instance is reached directly, so its key is trusted on first use and pinned in the
relay's state; a changed key is refused, as OpenSSH does with StrictHostKeyChecking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from twisted.conch.ssh import keys

from relayd.common.errors import HostKeyRefused, UnusablePath
from relayd.ssh.relay_key import write_private


class HostKeyPolicy(Protocol):
    def check(self, blob: bytes) -> None:
        """Accept the key blob or raise HostKeyRefused."""


class NegotiatedKey:
    def __init__(self, key: keys.Key) -> None:
        self._blob = key.blob()

    @property
    def blob(self) -> bytes:
        """The negotiated key (the direct path hands it to ssh's KnownHostsCommand)."""
        return self._blob

    def check(self, blob: bytes) -> None:
        if blob != self._blob:
            raise HostKeyRefused("the job's sshd presented a host key other than the negotiated one; refused")


class TrustOnFirstUse:
    """Pins the first key seen for `host` in a known_hosts-style file."""

    def __init__(self, store: Path, host: str) -> None:
        self._store = store
        self._host = host

    def _pinned(self) -> keys.Key | None:
        try:
            lines = self._store.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            host, _, key = line.partition(" ")
            if host == self._host:
                return keys.Key.fromString(key.encode())
        return None

    def check(self, blob: bytes) -> None:
        pinned = self._pinned()
        if pinned is None:
            self._pin(keys.Key.fromString(blob))
        elif pinned.blob() != blob:
            raise HostKeyRefused(
                f"the host key of {self._host} has changed since it was first seen; if the instance was replaced, "
                f"remove its line from {self._store} and connect again"
            )

    def _pin(self, key: keys.Key) -> None:
        line = f"{self._host} {key.toString('OPENSSH').decode()}\n"
        old = self._store.read_text() if self._store.exists() else ""
        try:
            write_private(self._store, (old + line).encode(), "the EC2 host key pins")
        except UnusablePath as exc:  # an unrecorded key must not be trusted either
            raise HostKeyRefused(str(exc)) from None
