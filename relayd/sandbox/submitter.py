"""The sandbox pool as a submitter of jobs on demand, behind relayd.condor.submit's interface."""

from __future__ import annotations

from typing import Iterable

from relayd.common.errors import LookupFailed
from relayd.common.jobstates import REMOVED
from relayd.common.termsafe import htcondor_text
from relayd.condor.lookup import Ad, safe_ads
from relayd.condor.names import JobName
from relayd.condor.profiles import PROFILE_ATTR, SUBMIT_METHOD
from relayd.condor.submit import ATTRIBUTES

from . import demand
from .layout import PoolError
from .pool import load_ads, pool_settings, set_status


class SandboxSubmitter:
    """Submits to, edits and removes from the sandbox pool's job table."""

    def __init__(self, pool_dir: str, schedd: str | None = None) -> None:
        self._pool_dir = pool_dir
        self._schedd = schedd

    def _call(self, what: str, action):  # type: ignore[no-untyped-def]
        try:
            if self._schedd is not None and self._schedd != pool_settings(self._pool_dir).schedd_name:
                raise LookupFailed(f"schedd {self._schedd!r} not found in the sandbox pool")
            return action()
        except (OSError, PoolError, ValueError) as exc:
            raise LookupFailed(f"cannot {what} in the sandbox pool at {self._pool_dir}: "
                               f"{htcondor_text(str(exc))}") from None

    def submit(self, description: dict[str, str]) -> JobName:
        cluster, proc = self._call("submit", lambda: demand.submit_description(
            self._pool_dir, description, SUBMIT_METHOD))
        return JobName(cluster, proc)

    def find(self, profile: str | None = None) -> list[Ad]:
        def query() -> list[Ad]:
            demand.schedd_cycle(self._pool_dir)
            return [ad for ad in load_ads(self._pool_dir) if ad.get(PROFILE_ATTR) is not None
                    and ad.get("JobSubmitMethod", 0) >= SUBMIT_METHOD
                    and (profile is None or ad.get(PROFILE_ATTR) == profile)]

        return safe_ads([{k: ad[k] for k in ATTRIBUTES if k in ad} for ad in self._call("query", query)])

    def edit(self, jobs: Iterable[JobName], attr: str, value: str) -> None:
        ids = [(job.cluster, job.proc) for job in jobs]
        self._call("edit jobs", lambda: demand.edit_jobs(self._pool_dir, ids, attr, value))

    def remove(self, jobs: Iterable[JobName], reason: str) -> None:
        for job in jobs:
            try:
                self._call("remove jobs", lambda: set_status(self._pool_dir, job.cluster, job.proc, REMOVED))
            except LookupFailed as exc:
                if "No such job" not in str(exc):
                    raise

    def never_matches(self, job: JobName) -> str | None:
        return self._call("query", lambda: demand.never_matches(self._pool_dir, job.cluster, job.proc))
