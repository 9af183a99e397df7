"""Job lookups before negotiating, so users get a precise message instead of a terse one.

Two sources share one code path: the htcondor2 bindings (a real schedd) and the sandbox
pool's table. Both return the job ad as a plain dict with HTCondor's attribute names.
Lookups block, so the daemon runs them in a thread.
"""

from __future__ import annotations

import time
from typing import Protocol

from relayd.names import JobName

IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)

ATTRIBUTES = [
    "ClusterId", "ProcId", "JobStatus", "Owner", "HoldReason", "JobUniverse", "GridResource",
    "EC2RemoteVirtualMachineName", "EC2KeyPairFile", "EnteredCurrentStatus", "QDate", "RemoteHost",
]


class LookupFailed(Exception):
    """The job source could not be asked (schedd or collector unreachable, bad pool dir)."""


class JobSource(Protocol):
    def query(self, job: JobName) -> dict[str, object] | None:
        """The job's ad, or None when it is not in the queue. Blocking."""


class SandboxSource:
    """Reads the sandbox pool's job table, as a schedd query would return it."""

    def __init__(self, pool_dir: str) -> None:
        self._pool_dir = pool_dir

    def query(self, job: JobName) -> dict[str, object] | None:
        from relayd.sandbox.pool import PoolError, load_ads

        try:
            ads = load_ads(self._pool_dir)
        except (OSError, PoolError) as exc:
            raise LookupFailed(f"cannot read the sandbox pool at {self._pool_dir}: {exc}") from None
        for ad in ads:
            if ad.get("ClusterId") == job.cluster and ad.get("ProcId") == job.proc:
                return ad
        return None


class HTCondorSource:
    """Asks a schedd through the htcondor2 bindings."""

    def __init__(self, schedd: str | None = None, pool: str | None = None) -> None:
        self._schedd_name = schedd
        self._pool = pool

    def _schedd(self):  # type: ignore[no-untyped-def]
        import htcondor2

        if self._schedd_name is None:
            return htcondor2.Schedd()
        ad = htcondor2.Collector(self._pool).locate(htcondor2.DaemonType.Schedd, self._schedd_name)
        if ad is None:  # Schedd(None) would silently mean the local schedd
            raise LookupFailed(f"schedd {self._schedd_name!r} not found in pool {self._pool or '(local)'}")
        return htcondor2.Schedd(ad)

    def query(self, job: JobName) -> dict[str, object] | None:
        try:
            ads = self._schedd().query(
                constraint=f"ClusterId == {job.cluster} && ProcId == {job.proc}", projection=ATTRIBUTES, limit=1
            )
        except LookupFailed:
            raise
        except Exception as exc:  # the bindings raise HTCondorException and plain IOError/ValueError
            raise LookupFailed(f"cannot query the schedd: {exc}") from None
        return {key: ads[0].get(key) for key in ATTRIBUTES} if ads else None


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def explain(job: JobName, ad: dict[str, object] | None, now: float | None = None) -> str | None:
    """Why the job cannot be reached now, or None when it is running."""
    job_id = f"{job.cluster}.{job.proc}"
    if ad is None:
        return f"job {job_id} is not in the queue (finished, removed, or never submitted)"
    status = ad.get("JobStatus")
    since = ad.get("EnteredCurrentStatus")
    for_how_long = f" for {_duration((now or time.time()) - since)}" if isinstance(since, (int, float)) else ""
    if status == RUNNING:
        return None
    if status == IDLE:
        return f"job {job_id} is idle{for_how_long}; it can be reached once it starts running"
    if status == HELD:
        reason = ad.get("HoldReason") or "no reason given"
        return f"job {job_id} is held: {reason}"
    if status == COMPLETED:
        return f"job {job_id} has completed"
    if status == REMOVED:
        return f"job {job_id} was removed"
    if status == TRANSFERRING_OUTPUT:
        return f"job {job_id} has finished and is transferring its output"
    if status == SUSPENDED:
        return f"job {job_id} is suspended{for_how_long}"
    return f"job {job_id} is in an unknown state ({status!r})"
