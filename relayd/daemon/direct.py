"""The direct path (`job-32.0.direct.condor`): ssh talks to the job's own sshd, the relay only negotiates.

For bulk transfers the relay's crypto is the bottleneck, so for a direct name the daemon
negotiates a fresh sshd, passes ssh the job's TCP socket itself (through the helper, as
ProxyUseFdpass), and serves what ssh then needs from memory:

- the job's private key through an ssh-agent socket (`IdentityAgent`): a connection gets
  the key negotiated for *its* process (SO_PEERCRED) and nothing else;
- the job's host key to `KnownHostsCommand` (a HOSTKEY request on the daemon's socket), for
  the ssh process that ran that command.

Both are keyed by the ssh process that ran the helper (the helper's parent, which the
daemon reads from /proc, not from anything the helper says), and dropped when it exits.
What this path loses: nothing is shared (each ssh negotiates its own sshd and takes a slot
of the job's sshd count), and nothing of the relay's messages or job watch applies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from twisted.conch.ssh import keys
from twisted.internet import protocol
from twisted.logger import Logger

from relayd.common.errors import JobUnreachable, ProtocolViolation
from relayd.common.peercred import peer_credentials
from relayd.condor.names import DIRECT_LABEL, JobName
from relayd.condor.negotiate import Credentials
from relayd.relay.wire import Reader, string, u32
from relayd.ssh.job_keys import NegotiatedKey

log = Logger()

# ssh-agent protocol (draft-miller-ssh-agent): the messages ssh sends for public key authentication.
AGENT_FAILURE = 5
AGENTC_REQUEST_IDENTITIES = 11
AGENT_IDENTITIES_ANSWER = 12
AGENTC_SIGN_REQUEST = 13
AGENT_SIGN_RESPONSE = 14
_RSA_SIGNATURES = {4: b"rsa-sha2-512", 2: b"rsa-sha2-256"}  # SSH_AGENT_RSA_SHA2_* flags
MAX_AGENT_MESSAGE = 256 * 1024  # ssh-agent's own limit
AGENT_SOCKET = "agent.sock"  # in the daemon's runtime dir, beside its socket
# The user the starter reports (RemoteUser) when it preloads HTCondor's fake getpwnam into the
# job's sshd (CONDOR_SSH_TO_JOB_FAKE_PASSWD_ENTRY, on by default): that sshd then takes any
# login name, as the job's uid. Seen on a real 25.14 pool; the sandbox pool fakes nothing.
FAKE_PASSWD_USER = "condor-user"
__all__ = ["AGENT_SOCKET", "DIRECT_LABEL", "Grants", "listen_agent", "parent_pid", "refused_login"]


@dataclass(frozen=True)
class _Grant:
    """What one ssh process may use: the job's key pair and its sshd's host key."""

    job: JobName
    private_key: keys.Key
    host_key: keys.Key


def refused_login(asked: str | None, sshd_user: str) -> bool:
    """Whether the job's sshd would refuse ssh's user `asked` (None: ssh's own default, which
    the daemon cannot know): only a real account is checked, as the sshd runs as that
    account and takes no other name; a faked passwd entry takes any."""
    return asked is not None and asked != sshd_user and sshd_user != FAKE_PASSWD_USER


def parent_pid(pid: int) -> int:
    """The parent of process `pid`, from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class Grants:
    """Keys handed to ssh processes, by pid, each dropped when its process exits (a pidfd
    in the reactor, so a recycled pid never inherits one)."""

    def __init__(self, reactor) -> None:  # type: ignore[no-untyped-def]
        self._reactor = reactor
        self._grants: dict[int, _Grant] = {}
        self._watchers: dict[int, _ExitWatch] = {}

    def __len__(self) -> int:
        return len(self._grants)

    def grant(self, ssh_pid: int, job: JobName, credentials: Credentials) -> None:
        """Let process `ssh_pid` use `credentials`' keys until it exits; JobUnreachable if it is gone."""
        if not isinstance(credentials.host_key, NegotiatedKey):
            raise JobUnreachable(f"job {job.job_id} is not reached through condor_ssh_to_job; it has no direct form")
        try:
            watch = _ExitWatch(ssh_pid, self._forget)
        except OSError:
            raise JobUnreachable("the ssh process asking for the direct connection is gone") from None
        self.revoke(ssh_pid)
        self._grants[ssh_pid] = _Grant(job, credentials.private_key, keys.Key.fromString(credentials.host_key.blob))
        self._watchers[ssh_pid] = watch
        self._reactor.addReader(watch)

    def revoke(self, ssh_pid: int) -> None:
        self._grants.pop(ssh_pid, None)
        watch = self._watchers.pop(ssh_pid, None)
        if watch is not None:
            self._reactor.removeReader(watch)
            watch.close()

    def revoke_all(self) -> None:
        for pid in list(self._watchers):
            self.revoke(pid)

    def _forget(self, pid: int) -> None:
        self.revoke(pid)

    def for_pid(self, pid: int) -> _Grant | None:
        return self._grants.get(pid)

    def host_key_line(self, command_pid: int) -> str | None:
        """The host key (`type base64`) for the ssh process that ran `command_pid`, if granted."""
        grant = self._grants.get(parent_pid(command_pid))
        return grant.host_key.toString("OPENSSH").decode() if grant is not None else None


class _ExitWatch:
    """A pidfd in the reactor: readable once the process exits."""

    def __init__(self, pid: int, gone) -> None:  # type: ignore[no-untyped-def]
        self._pid = pid
        self._gone = gone
        self._fd = os.pidfd_open(pid)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self._gone(self._pid)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def connectionLost(self, reason: object) -> None:
        self.close()

    def logPrefix(self) -> str:
        return "direct-path"


class AgentConnection(protocol.Protocol):
    """One ssh's connection to the agent socket: it is offered the job key granted to its own
    pid and may sign with that key only."""

    def __init__(self, grants: Grants) -> None:
        self._grants = grants
        self._buffer = b""
        self._pid = 0

    def connectionMade(self) -> None:
        self._pid, uid = peer_credentials(self.transport.getHandle())
        if uid != os.getuid():
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            size = int.from_bytes(self._buffer[:4], "big")
            if not 0 < size <= MAX_AGENT_MESSAGE:
                self.transport.loseConnection()
                return
            if len(self._buffer) < 4 + size:
                return
            message, self._buffer = self._buffer[4 : 4 + size], self._buffer[4 + size :]
            answer = self._answer(message)
            self.transport.write(u32(len(answer)) + answer)

    def _answer(self, message: bytes) -> bytes:
        grant = self._grants.for_pid(self._pid)
        if grant is None:
            return bytes([AGENT_FAILURE]) if message[0] != AGENTC_REQUEST_IDENTITIES \
                else bytes([AGENT_IDENTITIES_ANSWER]) + u32(0)
        if message[0] == AGENTC_REQUEST_IDENTITIES:
            comment = f"job {grant.job.job_id}".encode()
            return bytes([AGENT_IDENTITIES_ANSWER]) + u32(1) + string(grant.private_key.blob()) + string(comment)
        if message[0] == AGENTC_SIGN_REQUEST:
            try:
                reader = Reader(message[1:])
                blob, data, flags = reader.string(), reader.string(), reader.u32()
            except ProtocolViolation:
                return bytes([AGENT_FAILURE])
            if blob != grant.private_key.blob():
                return bytes([AGENT_FAILURE])
            kind = next((name for flag, name in _RSA_SIGNATURES.items() if flags & flag), None) \
                if grant.private_key.type() == "RSA" else None
            return bytes([AGENT_SIGN_RESPONSE]) + string(grant.private_key.sign(data, signatureType=kind))
        return bytes([AGENT_FAILURE])


class AgentFactory(protocol.Factory):
    noisy = False

    def __init__(self, grants: Grants) -> None:
        self._grants = grants

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return AgentConnection(self._grants)


def listen_agent(reactor, path: Path, grants: Grants):  # type: ignore[no-untyped-def]
    """Listen on the agent socket in the daemon's private runtime dir (replacing a stale one)."""
    path.unlink(missing_ok=True)
    old_umask = os.umask(0o177)
    try:
        return reactor.listenUNIX(str(path), AgentFactory(grants), mode=0o600, wantPID=False)
    finally:
        os.umask(old_umask)

