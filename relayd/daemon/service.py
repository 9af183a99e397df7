"""The daemon: one private unix socket, and one session per job shared by all its clients."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from relayd.common.errors import AlreadyRunning, JobUnreachable
from relayd.common.paths import Paths, private_dir
from relayd.common.protocol import Connect
from relayd.condor.lookup import JobSource
from relayd.condor.names import JobName, parse_direct, parse_host, parse_profile_host
from relayd.condor.negotiate import Captures, Credentials
from relayd.condor.reach import LegRequest, Progress, Reacher
from relayd.condor.sources import make_submitter
from relayd.condor.submit import JobSubmitter
from relayd.config import Config
from relayd.daemon import direct
from relayd.daemon.control import ControlFactory
from relayd.daemon.job_session import JobSession
from relayd.daemon.job_watch import JobWatcher
from relayd.daemon.on_demand import OnDemand
from relayd.daemon.status import snapshot
from relayd.ssh.client_transport import ClientTransport, ClientTransportFactory
from relayd.ssh.job_keys import NegotiatedKey
from relayd.ssh.packet_transport import PacketTransport
from relayd.ssh.relay_key import load_or_create

if TYPE_CHECKING:
    from relayd.daemon.control import ControlConnection

log = Logger()


def _private_dir(path: Path) -> None:
    """private_dir, logging a mode it had to correct."""
    old_mode = private_dir(path)
    if old_mode is not None:
        log.warn("{path} had mode {mode:o}; changed it to 700", path=str(path), mode=old_mode)


class RelayDaemon:
    def __init__(self, reactor, config: Config, paths: Paths) -> None:  # type: ignore[no-untyped-def]
        self.reactor = reactor
        self.config = config
        self.paths = paths
        self.captures = Captures()
        self.jobs: dict[JobName, JobSession] = {}
        self.reacher = Reacher(reactor, config, paths, self.captures)
        self.watcher = self._watcher()
        self.on_demand = OnDemand(reactor, config, self._submitter, self.jobs.get, lambda: self.on_idle_change())
        self.started = time.time()
        self.activation = "foreground"  # or "helper" / "systemd": how run.py started it, for status
        self.connections: set[ControlConnection] = set()  # every open connection on the socket
        self.on_idle_change: Callable[[], None] = lambda: None  # clients or upstreams came or went
        self._port = None
        self._agent_port = None
        self.grants = direct.Grants(reactor)  # the direct path's keys, by ssh process
        self._adopted = False
        _private_dir(paths.state_dir)
        PacketTransport.rekey_bytes = config.rekey_bytes
        host_key = load_or_create(paths.host_key, paths.known_hosts, config.domain)
        self.client_factory = ClientTransportFactory(reactor, host_key)
        self.client_factory.doStart()

    # -- the socket ---------------------------------------------------------------------

    def listen(self) -> None:
        """Listen on the private socket; a stale socket file from a dead daemon is replaced."""
        _private_dir(self.paths.runtime_dir)
        path = self.paths.socket
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                    raise
                path.unlink(missing_ok=True)
            else:
                raise AlreadyRunning(f"another relayd is already listening on {path}")
            finally:
                probe.close()
        old_umask = os.umask(0o177)
        try:
            self._port = self.reactor.listenUNIX(str(path), ControlFactory(self), mode=0o600, wantPID=False)
        finally:
            os.umask(old_umask)
        self._listen_agent()
        log.info("relayd listening on {path}", path=str(path))
        self.on_demand.start()

    def adopt(self, fd: int) -> None:
        """Serve a socket someone else listens on (systemd socket activation)."""
        self._port = self.reactor.adoptStreamPort(fd, socket.AF_UNIX, ControlFactory(self))
        self._adopted = True
        self._listen_agent()
        log.info("relayd serving the socket systemd passed ({path})", path=str(self.paths.socket))
        self.on_demand.start()

    def _listen_agent(self) -> None:
        self._agent_port = direct.listen_agent(self.reactor, self.paths.runtime_dir / direct.AGENT_SOCKET, self.grants)

    @property
    def negotiations(self) -> int:
        return self.reacher.negotiations

    # -- what its control connections need (ControlService) ------------------------------

    def opened(self, connection: ControlConnection) -> None:
        self.connections.add(connection)
        self.on_idle_change()

    def closed(self, connection: ControlConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.on_idle_change()

    def client_transport(self) -> ClientTransport:
        return self.client_factory.buildProtocol(None)

    def deliver_capture(self, token: str, payload: bytes, fd: int) -> None:
        self.captures.deliver(token, payload, fd)

    def status(self, asking: ControlConnection) -> dict[str, Any]:
        on_demand = self.activation != "foreground"
        return snapshot(
            started=self.started, activation=self.activation, paths=self.paths, domain=self.config.domain,
            exit_when_idle=self.config.exit_when_idle if on_demand and self.config.exit_when_idle > 0 else None,
            negotiations=self.negotiations, sessions=list(self.jobs.values()),
            clients=[c for c in self.connections if c is not asking and c.host is not None],
            on_demand=self.on_demand,
        )

    def _watcher(self) -> JobWatcher:
        return JobWatcher(self.reactor, self.config.watch_interval, lambda: list(self.jobs.values()),
                          self._watch_source)

    def reload(self, config: Config) -> None:
        """A new config (SIGHUP): new connections use it; open upstreams stay as they are."""
        negotiations = self.negotiations
        self.config = config
        self.reacher = Reacher(self.reactor, config, self.paths, self.captures)
        self.reacher.negotiations = negotiations
        self.on_demand.config = config
        self.on_demand.start()
        self.watcher.stop()
        self.watcher = self._watcher()
        if self.jobs:
            self.watcher.wake()

    def is_idle(self) -> bool:
        return not self.jobs and not self.connections and not self.on_demand.jobs

    def stop(self) -> defer.Deferred[None]:
        """Tell every client why, close every upstream, and stop accepting."""
        reason = "relayd is shutting down"
        self.on_demand.stop()  # its jobs stay, to be found again; their heartbeat stops
        for session in list(self.jobs.values()):
            session.close(reason)
        for connection in list(self.connections):
            connection.shutdown(reason)
        self.grants.revoke_all()
        if self._agent_port is not None:
            self._agent_port.stopListening()
        if self._port is None:
            return defer.succeed(None)
        if self._adopted:  # the socket file is systemd's: stop accepting but leave it in place
            self._port.stopReading()
            return defer.succeed(None)
        return defer.maybeDeferred(self._port.stopListening)

    # -- connecting clients -------------------------------------------------------------

    async def connect(self, request: Connect, progress: Progress) -> JobSession:
        """Resolve the host to a job and return its session once connected (negotiating once).

        Raises a RelayError whose message is for the user."""
        wait = request.wait if request.wait is not None else self.config.wait_for_running
        profile = parse_profile_host(request.host, self.config.domain)
        if profile is not None:  # a job on demand: found or submitted, and running
            job = await self.on_demand.resolve(profile, progress)
        else:
            job = parse_host(request.host, self.config.domain)
        self.reacher.schedd(job.label)
        reach = LegRequest(job, request.user, wait)
        session = self.jobs.get(job)
        if session is None:
            session = self.jobs[job] = JobSession(
                job, lambda progress, first: self._open_leg(session, reach, progress, first), self.reactor,
                self.config.idle_timeout, self._session_closed,
                explain_loss=lambda job: self.watcher.why_lost(job),  # the watcher of the day (SIGHUP replaces it)
            )
            session.start()
        await session.wait_ready(progress)
        if session.ec2_user is not None and self.reacher.ec2_user(request.user) != session.ec2_user:
            raise JobUnreachable(f"job {job.job_id} is connected as {session.ec2_user}; ask for that user, or try "
                            f"again once its connections have closed")
        self.watcher.wake()
        return session

    def is_direct(self, host: str) -> bool:
        return host.lower().rstrip(".").endswith(f".{direct.DIRECT_LABEL}.{self.config.domain.lower()}")

    async def connect_direct(self, request: Connect, helper_pid: int) -> socket.socket:
        """Negotiate a fresh sshd for the ssh that ran the helper and grant that ssh its keys."""
        job = parse_direct(request.host, self.config.domain)
        assert job is not None
        wait = request.wait if request.wait is not None else self.config.wait_for_running
        credentials, _ = await self.reacher.open_leg(LegRequest(job, request.user, wait), lambda text: None, True)
        try:
            if direct.refused_login(request.user, credentials.user):
                raise JobUnreachable(f"the sshd of job {job.job_id} logs in only as {credentials.user}: "
                                     f"ssh {credentials.user}@{request.host} (or -l {credentials.user})")
            self.grants.grant(direct.parent_pid(helper_pid), job, credentials)
        except BaseException:
            credentials.job_socket.close()
            raise
        return credentials.job_socket

    def host_key_line(self, command_pid: int) -> str | None:
        return self.grants.host_key_line(command_pid)

    async def _open_leg(self, session: JobSession, request: LegRequest, progress: Progress, first: bool) -> Credentials:
        credentials, ad = await self.reacher.open_leg(request, progress, first)
        if ad is not None:
            session.slot = ad.get("RemoteHost")
        if not isinstance(credentials.host_key, NegotiatedKey):
            session.ec2_user = credentials.user
        return credentials

    def _submitter(self, label: str | None) -> JobSubmitter | None:
        return make_submitter(self.config, self.reacher.schedd(label))

    def _watch_source(self, label: str | None) -> JobSource | None:
        try:
            return self.reacher.source(label)
        except JobUnreachable:
            return None  # the label left the config

    def _session_closed(self, session: JobSession) -> None:
        if self.jobs.get(session.job) is session:
            del self.jobs[session.job]
            self.on_idle_change()
