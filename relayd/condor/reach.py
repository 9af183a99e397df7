"""How the relay reaches a job: look it up, wait for it if asked, then negotiate or go to EC2.

A lookup first (when `job_lookup` allows) turns condor_ssh_to_job's terse failures into
precise messages and finds EC2 jobs, which condor_ssh_to_job would not hand over. Right
after a job starts, condor_ssh_to_job fails for a few seconds with a retryable error;
those are retried for `running_grace` seconds before they are reported.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from relayd.common.errors import JobUnreachable, NegotiationFailed
from relayd.common.humanize import duration
from relayd.common.paths import Paths
from relayd.condor.ec2 import connect_instance
from relayd.condor.lookup import Action, Ad, JobSource, assess, find
from relayd.condor.names import JobName
from relayd.condor.negotiate import Captures, Credentials, Negotiator
from relayd.condor.sources import make_source
from relayd.config import Config, ScheddConfig

Progress = Callable[[str], None]  # told each step while a job is reached, for the user

log = Logger()

RETRY_INTERVAL = 2.0  # between retries of a job that is starting up
# A waiting client is told how long it has waited this often: each report is a line on its
# terminal, so not at every check.
WAIT_REPORT_INTERVAL = 30.0


class ReportPacer:
    """Lets a repeated progress report through at once and then at most every `interval`
    seconds: each report is a line on the user's terminal."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: float | None = None

    def due(self, now: float) -> bool:
        if self._last is not None and now - self._last < self._interval:
            return False
        self._last = now
        return True


@dataclass(frozen=True)
class LegRequest:
    """What one client asked for."""

    job: JobName
    user: str | None = None  # the user ssh connects as (%r)
    wait: float = 0.0  # seconds to wait for an idle job to start


class Reacher:
    def __init__(self, reactor, config: Config, paths: Paths, captures: Captures,  # type: ignore[no-untyped-def]
                 run_blocking: Callable[..., defer.Deferred] = threads.deferToThread) -> None:
        self._reactor = reactor
        self._run_blocking = run_blocking  # a lookup blocks: in a thread
        self._config = config
        self._paths = paths
        self._captures = captures
        self._sources: dict[str | None, JobSource | None] = {}
        self.negotiations = 0  # condor_ssh_to_job runs so far, retries included

    def schedd(self, label: str | None) -> ScheddConfig:
        try:
            return self._config.schedd(label)
        except KeyError as exc:
            raise JobUnreachable(exc.args[0]) from None

    def source(self, label: str | None) -> JobSource | None:
        """The job source for a schedd label (cached), or None when lookups are off."""
        if label not in self._sources:
            self._sources[label] = make_source(self._config, self.schedd(label))
        return self._sources[label]

    async def open_leg(self, request: LegRequest, progress: Progress, first: bool) -> tuple[Credentials, Ad | None]:
        """Credentials for one more upstream connection to the job, and its ad if it was looked up."""
        job = request.job
        schedd = self.schedd(job.label)
        source = self.source(job.label)
        ad: Ad | None = None
        if first and source is not None:
            ad = await self._until_reachable(source, request, progress)
            if assess(job, ad).action is Action.EC2:
                return await self._ec2(request, ad), ad
        return await self._negotiate(job, schedd, progress, ad, grace=source is not None and first), ad

    async def _query(self, source: JobSource, job: JobName) -> Ad | None:
        return find(await self._run_blocking(source.query, [job]), job)

    async def _until_reachable(self, source: JobSource, request: LegRequest, progress: Progress) -> Ad | None:
        """The job's ad once it runs; waits while it is idle if the request allows."""
        job = request.job
        started = self._reactor.seconds()
        interval = min(5.0, self._config.watch_interval)
        pacer = ReportPacer(WAIT_REPORT_INTERVAL)
        while True:
            ad = await self._query(source, job)
            verdict = assess(job, ad)
            if verdict.action is Action.REFUSE:
                raise JobUnreachable(verdict.message)
            if verdict.action is not Action.WAIT:
                return ad
            waited = self._reactor.seconds() - started
            if waited >= request.wait and request.wait:
                raise JobUnreachable(f"job {job.cluster}.{job.proc} is still idle after waiting {duration(waited)}")
            if waited >= request.wait:
                raise JobUnreachable(f"{verdict.message}; it can be reached once it runs (to wait for it: "
                                        "CONDOR_RELAY_WAIT=<seconds> ssh ..., or wait_for_running in the config)")
            if pacer.due(waited):
                progress(f"job {job.cluster}.{job.proc} is idle, waiting: {duration(waited)} of "
                         f"{duration(request.wait)}")
            await task.deferLater(self._reactor, min(interval, request.wait - waited), lambda: None)

    async def _negotiate(self, job: JobName, schedd: ScheddConfig, progress: Progress, ad: Ad | None,
                         grace: bool) -> Credentials:
        tool = self._config.negotiator_path()
        if tool is None:
            raise JobUnreachable(
                f"condor_ssh_to_job not found ({self._config.condor_ssh_to_job!r}); "
                "install HTCondor's tools or set condor_ssh_to_job in the config"
            )
        negotiator = Negotiator(self._reactor, tool, self._captures, str(self._paths.socket),
                                self._config.negotiation_timeout)
        started = self._reactor.seconds()
        progress(f"negotiating with job {job.job_id} through condor_ssh_to_job")
        pacer = ReportPacer(WAIT_REPORT_INTERVAL)
        while True:
            self.negotiations += 1
            try:
                return await negotiator.negotiate(job, schedd)
            except NegotiationFailed as exc:
                waited = self._reactor.seconds() - started
                if not (grace and exc.retryable and waited < self._config.running_grace):
                    raise _with_owner(exc, ad) from None
                if pacer.due(waited):
                    log.info("job {job}: condor_ssh_to_job refused it ({why}); retrying", job=job.job_id, why=exc)
                    progress(f"job {job.job_id} is starting up; condor_ssh_to_job refuses it for now, retrying "
                             f"for up to {duration(self._config.running_grace)}")
                await task.deferLater(self._reactor, RETRY_INTERVAL, lambda: None)

    def ec2_user(self, asked: str | None) -> str:
        """The user to log in to an EC2 instance as: the one asked for, else `ec2_user`."""
        if self._config.ec2_user and (asked is None or asked == getpass.getuser()):
            return self._config.ec2_user  # ssh sends the local login name when none was asked for
        return asked or getpass.getuser()

    async def _ec2(self, request: LegRequest, ad: Ad) -> Credentials:
        return await connect_instance(request.job, ad, self.ec2_user(request.user), self._paths.ec2_known_hosts,
                                      self._config.ec2_port)


def _with_owner(exc: NegotiationFailed, ad: Ad | None) -> NegotiationFailed:
    """Say whose job it is when condor_ssh_to_job refused someone else's."""
    owner = (ad or {}).get("Owner")
    me = getpass.getuser()
    if owner and owner != me and "not authorized" in str(exc):
        return NegotiationFailed(f"{exc} (the job belongs to {owner}; you are {me})")
    return exc
