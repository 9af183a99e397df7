"""The daemon: one private unix socket, one negotiated upstream per job, shared by clients."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from twisted.internet import defer, threads
from twisted.logger import Logger

from relayd.config import Config
from relayd.control import ControlFactory, UserError
from relayd.downstream import ClientTransportFactory
from relayd.hostkey import load_or_create
from relayd.jobs import JobSession, Progress
from relayd.lookup import HTCondorSource, JobSource, LookupFailed, SandboxSource, explain
from relayd.names import BadHostName, JobName, parse_host
from relayd.negotiate import Captures, Credentials, NegotiationFailed, Negotiator
from relayd.paths import Paths, private_dir

log = Logger()


def _private_dir(path: Path) -> None:
    """private_dir, logging a mode it had to correct."""
    old_mode = private_dir(path)
    if old_mode is not None:
        log.warn("{path} had mode {mode:o}; changed it to 700", path=str(path), mode=old_mode)


class AlreadyRunning(Exception):
    pass


def _job_source(config: Config) -> JobSource | None:
    if config.job_lookup == "sandbox":
        assert config.sandbox_pool is not None
        return SandboxSource(config.sandbox_pool)
    if config.job_lookup == "htcondor":
        return HTCondorSource()
    return None


class RelayDaemon:
    def __init__(self, reactor, config: Config, paths: Paths) -> None:  # type: ignore[no-untyped-def]
        self.reactor = reactor
        self.config = config
        self.paths = paths
        self.captures = Captures()
        self.jobs: dict[JobName, JobSession] = {}
        self.negotiations = 0
        self._source = _job_source(config)
        self._port = None
        _private_dir(paths.state_dir)
        self.client_factory = ClientTransportFactory(load_or_create(paths.host_key, paths.known_hosts))
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
        log.info("relayd listening on {path}", path=str(path))

    def stop(self) -> defer.Deferred[None]:
        for session in list(self.jobs.values()):
            session.close("relayd is shutting down")
        return defer.maybeDeferred(self._port.stopListening) if self._port else defer.succeed(None)

    # -- connecting clients -------------------------------------------------------------

    async def connect(self, host: str, port: int, progress: Progress) -> JobSession:
        """Resolve `host` to a job and return its session once connected (negotiating once)."""
        try:
            job = parse_host(host, self.config.domain)
        except BadHostName as exc:
            raise UserError(str(exc)) from None
        session = self.jobs.get(job)
        if session is None:
            session = self.jobs[job] = JobSession(
                job, lambda progress, first: self._open_leg(job, progress, first), self.reactor,
                self.config.idle_timeout, self._session_closed,
            )
            session.start()
        try:
            return await session.wait_ready(progress)
        except (NegotiationFailed, LookupFailed) as exc:
            raise UserError(str(exc)) from None

    async def _open_leg(self, job: JobName, progress: Progress, first: bool) -> Credentials:
        """Negotiate one upstream connection; the first one looks the job up beforehand."""
        if first and self._source is not None:
            ad = await threads.deferToThread(self._source.query, job)
            reason = explain(job, ad)
            if reason:
                raise NegotiationFailed(reason)
        tool = self.config.negotiator_path()
        if tool is None:
            raise NegotiationFailed(
                f"condor_ssh_to_job not found ({self.config.condor_ssh_to_job!r}); "
                "install HTCondor's tools or set condor_ssh_to_job in the config"
            )
        progress(f"negotiating with job {job.job_id} through condor_ssh_to_job")
        self.negotiations += 1
        return await self._negotiator(tool).negotiate(job)

    def _negotiator(self, tool: str) -> Negotiator:
        return Negotiator(self.reactor, tool, self.captures, str(self.paths.socket), self.config.negotiation_timeout)

    def _session_closed(self, session: JobSession) -> None:
        if self.jobs.get(session.job) is session:
            del self.jobs[session.job]
