"""Negotiation: drive condor_ssh_to_job with the capture hook and collect what it hands over.

`condor_ssh_to_job -ssh <hook> [-name S] [-pool P] JOB` does the schedd and starter work;
the hook (relayd.condor.capture_hook) sends the daemon the session's key, the job sshd's public
key, the user and the TCP socket to sshd. condor_ssh_to_job's stderr and exit status
become the user's error message when it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.conch.ssh import keys
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger

from relayd.common.errors import NegotiationFailed
from relayd.common.termsafe import htcondor_text
from relayd.condor.capture_hook import PID_ENV, SOCKET_ENV, TOKEN_ENV
from relayd.condor.names import JobName
from relayd.config import ScheddConfig
from relayd.ssh.job_keys import HostKeyPolicy, NegotiatedKey

log = Logger()
_MAX_STDERR = 64 * 1024


@dataclass(frozen=True)
class Credentials:
    """What it takes to open one upstream connection. Held in memory only."""

    user: str
    private_key: keys.Key
    host_key: HostKeyPolicy
    job_socket: socket.socket


def _load_private_key(text: str) -> keys.Key:
    """The negotiated key, in OpenSSH's format.

    Conch's own loader checks an RSA key's primes, which takes 0.1 s for the starter's
    RSA-3072 key, in the reactor thread; this key comes from the starter through the
    capture hook, so skip that check: a broken key would only make the sshd refuse us.
    """
    return keys.Key(serialization.load_ssh_private_key(text.encode(), None, unsafe_skip_rsa_key_validation=True))


def _parse_capture(payload: dict[str, object], fd: int) -> Credentials:
    job_socket = socket.socket(fileno=fd)
    try:
        user, private_key, server_key = (payload[k] for k in ("user", "private_key", "server_key"))
        if not all(isinstance(v, str) for v in (user, private_key, server_key)):
            raise ValueError("fields must be strings")
        return Credentials(
            user=str(user),
            private_key=_load_private_key(str(private_key)),
            host_key=NegotiatedKey(keys.Key.fromString(str(server_key).encode())),
            job_socket=job_socket,
        )
    except Exception:
        job_socket.close()
        raise


class Captures:
    """Negotiations waiting for their capture hook, by one-time token."""

    def __init__(self) -> None:
        self._waiting: dict[str, defer.Deferred[Credentials]] = {}

    def expect(self) -> tuple[str, defer.Deferred[Credentials]]:
        token = secrets.token_hex(16)
        waiting: defer.Deferred[Credentials] = defer.Deferred()
        self._waiting[token] = waiting
        return token, waiting

    def forget(self, token: str) -> None:
        self._waiting.pop(token, None)

    def deliver(self, token: str, payload: bytes, fd: int) -> None:
        """Hand a capture to its negotiation; raises ValueError (and closes fd) if unusable."""
        waiting = self._waiting.pop(token, None)
        if waiting is None:
            os.close(fd)
            raise ValueError("no negotiation is waiting for this capture")
        try:
            credentials = _parse_capture(json.loads(payload), fd)
        except Exception as exc:
            waiting.errback(NegotiationFailed(f"the capture hook sent unusable keys ({exc})"))
            raise ValueError(f"unusable capture: {exc}") from None
        waiting.callback(credentials)


class _ToolProcess(protocol.ProcessProtocol):
    """Collects condor_ssh_to_job's stderr and its exit status."""

    def __init__(self) -> None:
        self.stderr = bytearray()
        self.ended: defer.Deferred[int] = defer.Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 2 and len(self.stderr) < _MAX_STDERR:
            self.stderr += data[: _MAX_STDERR - len(self.stderr)]

    def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
        value = reason.value
        code = value.exitCode if isinstance(value, (error.ProcessDone, error.ProcessTerminated)) else None
        self.ended.callback(1 if code is None else code)

    def message(self) -> str:
        return htcondor_text(self.stderr.decode(errors="replace"))


def hook_path() -> str:
    """The capture hook installed next to this interpreter (the package's console script)."""
    candidate = Path(sys.executable).parent / "condor-relay-capture"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("condor-relay-capture")
    if not found:
        raise NegotiationFailed("condor-relay-capture is not installed next to relayd; reinstall condor-relay")
    return found


class Negotiator:
    """Runs condor_ssh_to_job for a job and returns the captured Credentials."""

    def __init__(
        self,
        reactor: IReactorProcess | IReactorTime,
        tool: str,
        captures: Captures,
        daemon_socket: str,
        timeout: float,
    ) -> None:
        self._reactor = reactor
        self._tool = tool
        self._captures = captures
        self._daemon_socket = daemon_socket
        self._timeout = timeout
        self._setsid = shutil.which("setsid")

    def argv(self, job: JobName, hook: str, schedd: ScheddConfig) -> list[str]:
        argv = [self._tool, "-ssh", hook]
        for option, value in (("-name", schedd.name), ("-pool", schedd.pool), ("-shells", schedd.shells),
                              ("-keygen-options", schedd.keygen_options)):
            if value:
                argv += [option, value]
        return argv + [job.job_id]

    async def negotiate(self, job: JobName, schedd: ScheddConfig) -> Credentials:
        argv = self.argv(job, hook_path(), schedd)
        token, captured = self._captures.expect()
        # The hook checks that this process listens on the socket (SO_PEERCRED records who
        # called listen(); Twisted calls it on a socket systemd passed too) before it sends.
        env = dict(os.environ, **{SOCKET_ENV: self._daemon_socket, TOKEN_ENV: token, PID_ENV: str(os.getpid())})
        tool = _ToolProcess()
        # A new session makes the whole tree (tool, hook, any ssh) killable on timeout.
        prefix = [self._setsid] if self._setsid else []
        process = self._reactor.spawnProcess(tool, (prefix + argv)[0], prefix + argv, env=env)  # type: ignore[union-attr]
        log.info("negotiating with job {job}: {argv}", job=job.job_id, argv=" ".join(argv))
        timed_out: list[bool] = []

        pid = process.pid  # Twisted forgets it once the tool is reaped

        def on_timeout() -> None:
            timed_out.append(True)
            self._kill(process, pid, own_group=bool(prefix))
            # A child that left the group may still hold the tool's stdout and stderr;
            # processEnded waits for those pipes, so close our ends.
            process.loseConnection()

        timer = self._reactor.callLater(self._timeout, on_timeout)  # type: ignore[union-attr]
        try:
            code = await tool.ended
        finally:
            if timer.active():
                timer.cancel()
            self._captures.forget(token)
        if captured.called:
            credentials = await captured
            if code == 0:
                return credentials
            credentials.job_socket.close()
        if timed_out:
            raise NegotiationFailed(f"condor_ssh_to_job did not finish within {self._timeout:g} s for job {job.job_id}")
        detail = tool.message() or f"condor_ssh_to_job exited with status {code} and no message"
        if code == 0:
            detail = f"condor_ssh_to_job finished without handing over a connection ({detail})"
        raise NegotiationFailed(f"job {job.job_id}: {detail}", retryable="-auto-retry" in detail)

    @staticmethod
    def _kill(process, pid: int, own_group: bool) -> None:  # type: ignore[no-untyped-def]
        log.warn("negotiation timed out; killing condor_ssh_to_job (pid {pid})", pid=pid)
        try:
            if own_group:
                os.killpg(pid, signal.SIGKILL)
            else:
                process.signalProcess("KILL")
        except (OSError, error.ProcessExitedAlready):
            pass
