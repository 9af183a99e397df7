"""The daemon: one private unix socket, one negotiated upstream per job, shared by clients."""

from __future__ import annotations

import errno
import os
import socket
from typing import Callable

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd.config import Config
from relayd.control import ControlFactory, UserError
from relayd.downstream import ClientTransportFactory
from relayd.hostkey import load_or_create
from relayd.lookup import HTCondorSource, JobSource, LookupFailed, SandboxSource, explain
from relayd.names import BadHostName, JobName, parse_host
from relayd.negotiate import Captures, NegotiationFailed, Negotiator
from relayd.paths import Paths, private_dir
from relayd.upstream import Upstream

log = Logger()

Progress = Callable[[str], None]


class AlreadyRunning(Exception):
    pass


class _Negotiation:
    """One negotiation in flight, shared by every client that asks for the job meanwhile."""

    def __init__(self) -> None:
        self.waiters: list[defer.Deferred[Upstream]] = []
        self.listeners: list[Progress] = []

    def progress(self, text: str) -> None:
        for listener in self.listeners:
            listener(text)

    def join(self, progress: Progress) -> defer.Deferred[Upstream]:
        waiter: defer.Deferred[Upstream] = defer.Deferred()
        self.waiters.append(waiter)
        self.listeners.append(progress)
        return waiter


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
        self.upstreams: dict[JobName, Upstream] = {}
        self.negotiations = 0
        self._in_flight: dict[JobName, _Negotiation] = {}
        self._source = _job_source(config)
        self._port = None
        private_dir(paths.state_dir)
        self.client_factory = ClientTransportFactory(load_or_create(paths.host_key, paths.known_hosts))
        self.client_factory.doStart()

    # -- the socket ---------------------------------------------------------------------

    def listen(self) -> None:
        """Listen on the private socket; a stale socket file from a dead daemon is replaced."""
        private_dir(self.paths.runtime_dir)
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
        for upstream in list(self.upstreams.values()):
            upstream.close("relayd is shutting down")
        return defer.maybeDeferred(self._port.stopListening) if self._port else defer.succeed(None)

    # -- connecting clients -------------------------------------------------------------

    async def connect(self, host: str, port: int, progress: Progress) -> Upstream:
        """Resolve `host` to a job and return its authenticated upstream (negotiating once)."""
        try:
            job = parse_host(host, self.config.domain)
        except BadHostName as exc:
            raise UserError(str(exc)) from None
        upstream = self.upstreams.get(job)
        if upstream is not None and not upstream.closed:
            return upstream
        negotiation = self._in_flight.get(job)
        if negotiation is None:
            negotiation = self._in_flight[job] = _Negotiation()
            defer.ensureDeferred(self._establish(job, negotiation))
        return await negotiation.join(progress)

    async def _establish(self, job: JobName, negotiation: _Negotiation) -> None:
        result: Upstream | Failure
        try:
            result = await self._negotiate(job, negotiation.progress)
        except (NegotiationFailed, LookupFailed) as exc:
            result = Failure(UserError(str(exc)))
        except Exception:
            result = Failure()
            log.failure("negotiation with job {job} failed", result, job=job.job_id)
        else:
            self.upstreams[job] = result
        finally:
            del self._in_flight[job]
        for waiter in negotiation.waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _negotiate(self, job: JobName, progress: Progress) -> Upstream:
        if self._source is not None:
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
        negotiator = Negotiator(
            self.reactor, tool, self.captures, str(self.paths.socket), self.config.negotiation_timeout
        )
        self.negotiations += 1
        credentials = await negotiator.negotiate(job)
        upstream = Upstream(job, self.reactor, self.config.idle_timeout, self._upstream_closed)
        return await upstream.start(credentials)

    def _upstream_closed(self, upstream: Upstream) -> None:
        if self.upstreams.get(upstream.job) is upstream:
            del self.upstreams[upstream.job]
