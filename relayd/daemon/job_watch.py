"""Watching the jobs the relay holds connections to, so it never keeps a finished job's slot.

A live sshd keeps the slot Claimed/Busy after the job exits. Every `watch_interval` the
watcher asks each schedd once for all of its jobs that have sessions, and closes the
sessions of jobs that left Running, telling their clients why. It runs only while there
are sessions, so an idle daemon does nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from relayd.common.errors import LookupFailed
from relayd.condor.lookup import JobSource, find, left_running
from relayd.daemon.job_session import JobSession

log = Logger()


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
