"""Watching the jobs the relay holds connections to, so it never keeps a finished job's slot.

A live sshd keeps the slot Claimed/Busy after the job exits. Every `watch_interval` the
watcher asks each schedd once for all of its jobs that have sessions, and closes the
sessions of jobs that left Running, telling their clients why. It runs only while there
are sessions, so an idle daemon does nothing. It also answers why a job's connection ended on
its own (`why_lost`), which a vacate, hold or remove causes before the next poll.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from relayd.common.errors import LookupFailed
from relayd.condor.lookup import JobSource, find, left_running
from relayd.condor.names import JobName
from relayd.daemon.job_session import JobSession

log = Logger()

# When a job's connection ends on its own, the schedd is asked why after these pauses
# (seconds) until it says the job left Running: about 4 s in all.
LOSS_CHECK_DELAYS = (0.0, 0.5, 1.0, 2.5)


class JobWatcher:
    def __init__(
        self,
        reactor,  # type: ignore[no-untyped-def]
        interval: float,
        sessions: Callable[[], Iterable[JobSession]],
        source: Callable[[str | None], JobSource | None],
        run_blocking: Callable[..., defer.Deferred] = threads.deferToThread,
    ) -> None:
        self._interval = interval
        self._run_blocking = run_blocking  # a lookup blocks: in a thread
        self._sessions = sessions
        self._source = source
        self._reactor = reactor
        self._loop = task.LoopingCall(lambda: defer.ensureDeferred(self._check()))
        self._loop.clock = reactor

    def wake(self) -> None:
        """A session became ready: make sure the watch runs."""
        if not self._loop.running:
            self._loop.start(self._interval, now=False).addErrback(
                lambda failure: log.failure("job watch stopped", failure)
            )

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    async def _check(self) -> None:
        by_schedd: dict[str | None, list[JobSession]] = defaultdict(list)
        for session in self._sessions():
            if session.ready and not session.closed:
                by_schedd[session.job.label].append(session)
        if not by_schedd:
            self._loop.stop()
            return
        for label, sessions in by_schedd.items():
            source = self._source(label)
            if source is None:
                continue
            try:
                ads = await self._run_blocking(source.query, [s.job for s in sessions])
            except LookupFailed as exc:
                log.warn("cannot check job states on schedd {label}: {exc}", label=label or "(default)", exc=exc)
                continue
            for session in sessions:
                reason = left_running(session.job, find(ads, session.job))
                if reason is not None and not session.closed:
                    log.info("{reason}", reason=reason)
                    session.close(reason)

    async def why_lost(self, job: JobName) -> str | None:
        """Why a job's connection ended, if the schedd says it left Running: asked at once and
        a few times more, as the schedd may learn of an eviction after the sshd is gone."""
        source = self._source(job.label)
        if source is None:
            return None
        for delay in LOSS_CHECK_DELAYS:
            await task.deferLater(self._reactor, delay)
            try:
                ads = await self._run_blocking(source.query, [job])
            except LookupFailed:
                return None
            reason = left_running(job, find(ads, job))
            if reason is not None:
                return reason
        return None
