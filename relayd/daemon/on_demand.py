"""Jobs on demand, the daemon's side: `ssh gpu.condor` gets the user's job of profile `gpu`.

The first connection submits a job (relayd.condor.profiles, .submit) and waits for it to
run, telling the user each step; connections meanwhile share that submission, and the wait
stops when the last of them leaves (the job stays queued for its linger). Every later
connection reaches the same job, also after a daemon restart: the daemon finds its jobs
again by their marks. Once no client has used a job for its profile's `linger`, the daemon
removes it. Every `heartbeat_interval` it refreshes the jobs' heartbeat attribute, without
which the schedd removes them by itself (periodic_remove): a daemon that dies leaks no slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd.common.errors import JobUnreachable, LookupFailed
from relayd.common.humanize import duration
from relayd.common.jobstates import HELD, IDLE, RUNNING
from relayd.condor.lookup import Ad, assess, find
from relayd.condor.names import JobName, ProfileName
from relayd.condor.profiles import HEARTBEAT_ATTR, IDLE_SINCE_ATTR, PROFILE_ATTR, Profile, submit_description
from relayd.condor.reach import Progress, ReportPacer
from relayd.condor.submit import JobSubmitter
from relayd.config import Config
from relayd.daemon.job_session import JobSession

log = Logger()

TICK = 1.0  # how often linger clocks are checked (in memory) and heartbeats fall due
QUEUE_REPORT_INTERVAL = 10.0  # a client waiting for a slot is told how long, and why, this often
Key = tuple[str, "str | None"]  # (profile, schedd label)
T = TypeVar("T")


@dataclass
class HeldJob:
    """A job the relay holds for a profile."""

    job: JobName
    profile: str
    last_used: float  # reactor time a client last used it
    tracked_at: float
    idle_since: float | None = None  # what the ad's CondorRelayIdleSince says (0: in use), None: unknown
    status: int = IDLE  # its JobStatus when last looked at


class _Shared:
    """One first submission that every concurrent connection to a profile waits for."""

    def __init__(self) -> None:
        self.waiters: list[tuple[defer.Deferred[JobName], Progress]] = []

    def join(self, progress: Progress) -> defer.Deferred[JobName]:
        """A waiter for the job; cancelling it (its client left) takes it out of the wait."""
        waiter: defer.Deferred[JobName] = defer.Deferred(self._leave)
        self.waiters.append((waiter, progress))
        return waiter

    def _leave(self, waiter: defer.Deferred[JobName]) -> None:
        self.waiters = [entry for entry in self.waiters if entry[0] is not waiter]

    def progress(self, text: str) -> None:
        for _, progress in self.waiters:
            progress(text)

    def settle(self, result: JobName | Failure) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter, _ in waiters:
            if not waiter.called:  # cancelled by a callback of an earlier waiter
                waiter.callback(result) if isinstance(result, JobName) else waiter.errback(result)


class OnDemand:
    def __init__(self, reactor, config: Config, submitter: Callable[[str | None], JobSubmitter | None],  # type: ignore[no-untyped-def]
                 session_of: Callable[[JobName], JobSession | None], changed: Callable[[], None]) -> None:
        self.reactor = reactor
        self.config = config
        self._submitter = submitter  # for a schedd label; raises JobUnreachable for an unknown one
        self._session_of = session_of
        self._changed = changed  # a job was let go (the daemon may become idle)
        self.jobs: dict[Key, HeldJob] = {}
        self._pending: dict[Key, _Shared] = {}
        self._released: set[tuple[str | None, int, int]] = set()  # removed, maybe still listed: never adopted
        self._next_heartbeat = 0.0
        self._beating = False
        self._found_earlier = False  # the jobs of an earlier daemon were looked for
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor

    def start(self) -> None:
        """Heartbeats and linger clocks; the first heartbeat finds the jobs of an earlier daemon."""
        if self.config.profiles and not self._loop.running:
            self._loop.start(TICK, now=True).addErrback(lambda f: log.failure("jobs on demand", f))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    # -- connecting ----------------------------------------------------------------------------

    async def resolve(self, name: ProfileName, progress: Progress) -> JobName:
        """The running job of a profile for this user: found, or submitted and waited for.

        Raises JobUnreachable with the message for the user."""
        profile = self.config.profiles.get(name.profile)
        if profile is None:
            known = ", ".join(sorted(self.config.profiles)) or "none (add profiles: to the config)"
            raise JobUnreachable(f"{name.host(self.config.domain)}: no profile {name.profile!r}; known profiles: "
                                 f"{known}; job names are job-<cluster>.<proc>.{self.config.domain}")
        submitter = self._submitter(name.label)
        if submitter is None:
            raise JobUnreachable("jobs on demand need job_lookup: htcondor (or sandbox) in the config")
        self.start()
        key = (profile.name, name.label)
        # Asked every time, not taken from memory: `relayd release`, a hold or the pool may
        # have removed the job while its connection's end is still being explained.
        shared = self._pending.get(key)
        first = shared is None
        if shared is None:
            shared = self._pending[key] = _Shared()
        waiter = shared.join(progress)  # before the wait starts, which ends when no one waits
        if first:
            defer.ensureDeferred(self._obtain(key, profile, submitter, shared))
        try:
            job = await waiter
        except defer.CancelledError:  # its client left (relayd.daemon.control cancels its connect)
            if not shared.waiters and key in self.jobs:
                self.jobs[key].last_used = self.reactor.seconds()  # the linger clock starts now
            raise
        if key in self.jobs:
            self.jobs[key].last_used = self.reactor.seconds()
        return job

    async def _obtain(self, key: Key, profile: Profile, submitter: JobSubmitter, shared: _Shared) -> None:
        try:
            job, status = await self._find_or_submit(key, profile, submitter)
            if status != RUNNING:
                await self._until_running(key, job, submitter, shared, submitted=status is None)
        except Exception as exc:
            if not isinstance(exc, (JobUnreachable, LookupFailed)):
                log.failure("a job on demand for profile {profile}", profile=profile.name)
            result: JobName | Failure = Failure(JobUnreachable(str(exc)))
        else:
            result = job
        del self._pending[key]
        shared.settle(result)

    async def _find_or_submit(self, key: Key, profile: Profile,
                              submitter: JobSubmitter) -> tuple[JobName, int | None]:
        """The user's live job of the profile and its JobStatus, or a new one (None)."""
        ads = await self._blocking(submitter.find, profile.name)
        live = [ad for ad in ads if ad.get("JobStatus") in (RUNNING, IDLE) and not self._was_released(ad, key[1])]
        live.sort(key=lambda ad: (ad.get("JobStatus") != RUNNING, ad.get("QDate", 0)))
        label = key[1]
        stale = [JobName(int(ad["ClusterId"]), int(ad["ProcId"]), label=label) for ad in ads
                 if ad.get("JobStatus") == HELD]
        if stale:  # held (by its max_lifetime, say): of no use, and it would outlive its heartbeat in the queue
            log.info("removing held jobs {jobs} of profile {profile}", jobs=", ".join(j.job_id for j in stale),
                     profile=profile.name)
            self._background(submitter.remove, stale, "condor-relay: held, replaced by a new job")
        status = None
        if live:
            job = JobName(int(live[0]["ClusterId"]), int(live[0]["ProcId"]), label=label)
            status = live[0]["JobStatus"]
            if self.jobs.get(key, None) is None or self.jobs[key].job != job:
                log.info("job {job} of profile {profile} found again", job=job.job_id, profile=profile.name)
        else:
            description = submit_description(profile, self.config.heartbeat_interval, time.time())
            submitted = await self._blocking(submitter.submit, description)
            job = JobName(submitted.cluster, submitted.proc, label=label)
            log.info("submitted job {job} for profile {profile}", job=job.job_id, profile=profile.name)
        now = self.reactor.seconds()
        if key not in self.jobs or self.jobs[key].job != job:
            self.jobs[key] = HeldJob(job, profile.name, last_used=now, tracked_at=now)
        self.jobs[key].status = status or IDLE
        return job, status

    async def _until_running(self, key: Key, job: JobName, submitter: JobSubmitter, shared: _Shared,
                             submitted: bool) -> None:
        """Wait for the job to run, telling each step (in one line each: ssh shows a step that
        lasts over a second, and the latest of quicker ones), while anyone still waits for it."""
        profile = key[0]
        news = f"submitted a job of profile {profile} as {job.job_id}; " if submitted else ""
        poll = min(2.0, self.config.watch_interval)
        pacer = ReportPacer(QUEUE_REPORT_INTERVAL)
        checked: str | None = None  # the match reason the last never-match check saw
        progress = shared.progress
        while True:
            if not shared.waiters:  # its linger runs from the last one's departure (_tick)
                log.info("stopped waiting for job {job} of profile {profile}: its clients left", job=job.job_id,
                         profile=profile)
                return
            ad = find(await self._blocking(submitter.find, profile), job)
            status = (ad or {}).get("JobStatus")
            if status == RUNNING:
                if key in self.jobs:
                    self.jobs[key].status = RUNNING
                progress(f"{news}job {job.job_id} is running on {(ad or {}).get('RemoteHost') or 'its slot'}")
                return
            if status == HELD:
                reason = (ad or {}).get("HoldReason") or "no reason given"
                await self._give_up(key, job, submitter, f"job {job.job_id} of profile {profile} was held: {reason}")
            if status != IDLE:
                self.jobs.pop(key, None)
                raise JobUnreachable(assess(job, ad).message)
            assert ad is not None
            match_reason = ad.get("LastRejMatchReason")
            if checked is None or match_reason != checked:
                checked = match_reason or ""
                why = await self._blocking(submitter.never_matches, job)
                if why:
                    await self._give_up(key, job, submitter, f"no slot in the pool can run profile {profile}: {why}")
            waited = time.time() - ad.get("QDate", time.time())
            if pacer.due(waited):
                because = f" ({match_reason})" if match_reason else ""
                progress(f"{news}job {job.job_id} is idle for {duration(waited)}{because}, waiting for a slot")
                news = ""
            await task.deferLater(self.reactor, poll, lambda: None)

    async def _give_up(self, key: Key, job: JobName, submitter: JobSubmitter, why: str) -> None:
        """Remove a job that will not run, and fail with why."""
        self.jobs.pop(key, None)
        log.info("removing job {job}: {why}", job=job.job_id, why=why)
        await self._blocking(submitter.remove, [job], f"condor-relay: {why}")
        raise JobUnreachable(f"{why}; removed the job")

    # -- linger and heartbeat ------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.reactor.seconds()
        for key, held in list(self.jobs.items()):
            if self._in_use(key, held):
                held.last_used = now
                if held.idle_since != 0:
                    held.idle_since = 0
                    self._edit(key, held, IDLE_SINCE_ATTR, "0")
                continue
            if held.idle_since in (None, 0):
                held.idle_since = time.time() - (now - held.last_used)
                self._edit(key, held, IDLE_SINCE_ATTR, str(int(held.idle_since)))
            linger = self._linger(held)
            if now - held.last_used >= linger:
                self.release(key, f"no client for {duration(linger)}" if held.profile in self.config.profiles
                             else "its profile left the config")
        if now >= self._next_heartbeat and not self._beating:
            self._next_heartbeat = now + self.config.heartbeat_interval
            defer.ensureDeferred(self._heartbeat())

    def _in_use(self, key: Key, held: HeldJob) -> bool:
        session = self._session_of(held.job)
        shared = self._pending.get(key)
        return (shared is not None and bool(shared.waiters)) or (
            session is not None and not session.closed and (not session.ready or bool(session.relay.clients)))

    def time_left(self, key: Key, held: HeldJob) -> float | None:
        """Seconds before the job is removed for want of clients; None while one uses it."""
        if self._in_use(key, held):
            return None
        return max(0.0, self._linger(held) - (self.reactor.seconds() - held.last_used))

    def _linger(self, held: HeldJob) -> float:
        """How long the job stays without a client: its profile's linger, none once the
        profile left the config."""
        profile = self.config.profiles.get(held.profile)
        return profile.linger if profile is not None else 0.0

    def release(self, key: Key, reason: str) -> None:
        """Remove the job held for a profile, and close its connections."""
        held = self.jobs.pop(key, None)
        if held is None:
            return
        self._released.add((held.job.label, held.job.cluster, held.job.proc))
        log.info("removing job {job} of profile {profile}: {reason}", job=held.job.job_id, profile=held.profile,
                 reason=reason)
        session = self._session_of(held.job)
        if session is not None:
            session.close(f"job {held.job.job_id} of profile {held.profile} removed: {reason}")
        submitter = self._submitter_or_none(key[1])
        if submitter is not None:
            self._background(submitter.remove, [held.job], f"condor-relay: {reason}")
        self._changed()

    async def _heartbeat(self) -> None:
        """Refresh the heartbeat of every job held; forget those gone, adopt those found again."""
        self._beating = True
        try:
            # The first heartbeat also asks the default schedd for the jobs of an earlier daemon.
            labels = {key[1] for key in self.jobs} | (set() if self._found_earlier else {None})
            for label in labels:
                submitter = self._submitter_or_none(label)
                if submitter is not None:
                    await self._beat(label, submitter)
            self._found_earlier = True
        except LookupFailed as exc:
            log.warn("jobs on demand: heartbeat failed: {exc}", exc=exc)
        finally:
            self._beating = False

    async def _beat(self, label: str | None, submitter: JobSubmitter) -> None:
        asked = self.reactor.seconds()
        ads = await self._blocking(submitter.find)
        listed = {(label, ad.get("ClusterId"), ad.get("ProcId")) for ad in ads}
        self._released = {r for r in self._released if r[0] != label or r in listed}  # bounded: still queued
        ads = [ad for ad in ads if (label, ad.get("ClusterId"), ad.get("ProcId")) not in self._released]
        for key, held in list(self.jobs.items()):
            ad = find(ads, held.job) if key[1] == label else None
            if ad is not None:
                held.status = ad.get("JobStatus", held.status)
            elif key[1] == label and held.tracked_at < asked and key not in self._pending:
                log.info("job {job} of profile {profile} left the queue", job=held.job.job_id, profile=held.profile)
                del self.jobs[key]
                self._changed()
        for ad in sorted(ads, key=lambda ad: ad.get("JobStatus") != RUNNING):
            key = (str(ad.get(PROFILE_ATTR)), label)
            if key[0] in self.config.profiles and key not in self.jobs and ad.get("JobStatus") in (RUNNING, IDLE):
                job = JobName(int(ad["ClusterId"]), int(ad["ProcId"]), label=label)
                now = self.reactor.seconds()
                self.jobs[key] = HeldJob(job, key[0], last_used=now, tracked_at=now, status=ad["JobStatus"])
                log.info("job {job} of profile {profile} found again", job=job.job_id, profile=key[0])
        held = [h.job for key, h in self.jobs.items() if key[1] == label]
        if held:
            await self._blocking(submitter.edit, held, HEARTBEAT_ATTR, str(int(time.time())))

    def _was_released(self, ad: Ad, label: str | None) -> bool:
        return (label, ad.get("ClusterId"), ad.get("ProcId")) in self._released

    # -- helpers -----------------------------------------------------------------------------

    def _submitter_or_none(self, label: str | None) -> JobSubmitter | None:
        try:
            return self._submitter(label)
        except JobUnreachable:
            return None  # the label left the config

    def _edit(self, key: Key, held: HeldJob, attr: str, value: str) -> None:
        submitter = self._submitter_or_none(key[1])
        if submitter is not None:
            self._background(submitter.edit, [held.job], attr, value)

    def _background(self, call: Callable[..., object], *args: object) -> None:
        threads.deferToThread(call, *args).addErrback(
            lambda failure: log.warn("jobs on demand: {exc}", exc=failure.value))

    def _blocking(self, call: Callable[..., T], *args: object) -> Awaitable[T]:
        return threads.deferToThread(call, *args)
