"""Job lookups before negotiating, so users get a precise message instead of a terse one.

Two sources share one code path: the htcondor2 bindings (a real schedd) and the sandbox
pool's table. Both return job ads as plain dicts with HTCondor's attribute names, their
strings already stripped of control characters (relayd.common.termsafe), and `assess` turns an
ad into what the relay should do. Lookups block: the daemon runs them in a thread.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Protocol

from relayd.common.errors import LookupFailed
from relayd.common.humanize import duration
from relayd.common.jobstates import (
    COMPLETED,
    GRID,
    HELD,
    IDLE,
    PARALLEL,
    REMOVED,
    RUNNING,
    SCHEDULER,
    SUSPENDED,
    TRANSFERRING_OUTPUT,
    UNIVERSE_NAMES,
)
from relayd.common.termsafe import htcondor_text
from relayd.condor.names import JobName

ATTRIBUTES = [
    "ClusterId", "ProcId", "JobStatus", "Owner", "HoldReason", "JobUniverse", "GridResource",
    "EC2RemoteVirtualMachineName", "EC2KeyPairFile", "EnteredCurrentStatus", "QDate", "RemoteHost",
    "JobCurrentStartDate",
]

Ad = dict[str, Any]


class JobSource(Protocol):
    def query(self, jobs: Iterable[JobName] | None) -> list[Ad]:
        """Ads of these queued jobs (None: all of the user's jobs), in one query. Blocking."""


def job_constraint(jobs: Iterable[JobName] | None, owner: str) -> str:
    """One ClassAd constraint for several jobs, so a watch costs one query per schedd."""
    if jobs is None:
        return f'Owner == "{owner}"'
    return " || ".join(f"(ClusterId == {j.cluster} && ProcId == {j.proc})" for j in jobs) or "false"


def safe_ads(ads: list[Ad]) -> list[Ad]:
    """The ads with every string made safe for a terminal: HoldReason and the rest are the job's or the pool's."""
    return [{key: htcondor_text(value) if isinstance(value, str) else value for key, value in ad.items()}
            for ad in ads]


def find(ads: list[Ad], job: JobName) -> Ad | None:
    return next((ad for ad in ads if ad.get("ClusterId") == job.cluster and ad.get("ProcId") == job.proc), None)


class HTCondorSource:
    """Asks a schedd through the htcondor2 bindings."""

    def __init__(self, schedd: str | None = None, pool: str | None = None) -> None:
        self._schedd_name = schedd
        self._pool = pool

    def _schedd(self):  # type: ignore[no-untyped-def]
        import htcondor2

        if self._schedd_name is None:
            return htcondor2.Schedd()
        try:
            ad = htcondor2.Collector(self._pool).locate(htcondor2.DaemonType.Schedd, self._schedd_name)
        except Exception as exc:  # HTCondorException or IOError from the bindings
            raise LookupFailed(f"cannot reach the collector of pool {self._pool or '(local)'}: "
                               f"{htcondor_text(str(exc))}") from None
        if ad is None:  # Schedd(None) would silently mean the local schedd
            raise LookupFailed(f"schedd {self._schedd_name!r} not found in pool {self._pool or '(local)'}")
        return htcondor2.Schedd(ad)

    def query(self, jobs: Iterable[JobName] | None) -> list[Ad]:
        try:
            schedd = self._schedd()
            ads = schedd.query(constraint=job_constraint(jobs, getpass.getuser()), projection=ATTRIBUTES)
        except LookupFailed:
            raise
        except Exception as exc:  # HTCondorException, IOError, ValueError from the bindings
            where = f"schedd {self._schedd_name!r}" if self._schedd_name else "the local schedd"
            raise LookupFailed(f"cannot query {where}: {htcondor_text(str(exc))}") from None
        return safe_ads([ad_to_dict(ad) for ad in ads])


def ad_to_dict(ad: Any) -> Ad:
    """A ClassAd (or mapping) as a plain dict of the attributes the relay reads."""
    out = {}
    for key in ATTRIBUTES:
        value = ad.get(key) if hasattr(ad, "get") else None
        if value is not None:
            out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class Action(Enum):
    NEGOTIATE = "negotiate"  # running: condor_ssh_to_job
    EC2 = "ec2"  # grid-universe EC2 job: straight to the instance
    WAIT = "wait"  # idle: can be waited for
    REFUSE = "refuse"  # cannot be reached; `message` says why


@dataclass(frozen=True)
class Verdict:
    action: Action
    message: str = ""


def assess(job: JobName, ad: Ad | None, now: float | None = None) -> Verdict:
    """What to do for a job, given its ad (None: not in the queue)."""
    job_id = f"{job.cluster}.{job.proc}"
    if ad is None:
        return Verdict(Action.REFUSE, f"job {job_id} is not in the queue (finished, removed, or never submitted)")
    status = ad.get("JobStatus")
    since = ad.get("EnteredCurrentStatus")
    for_how_long = f" for {duration((now or time.time()) - since)}" if isinstance(since, (int, float)) else ""
    universe = ad.get("JobUniverse")
    grid = str(ad.get("GridResource") or "")
    if universe == GRID and grid.lower().startswith("ec2"):
        if status == RUNNING:
            return Verdict(Action.EC2)
    elif universe in (GRID, SCHEDULER):
        return Verdict(Action.REFUSE, f"job {job_id} does not support remote access ({_universe(universe)} universe)")
    if universe == PARALLEL and job.node is None and status == RUNNING:
        return Verdict(Action.REFUSE, f"job {job_id} is a parallel job: name a node, e.g. job-{job_id}.0.<domain>")
    if status == RUNNING:
        return Verdict(Action.NEGOTIATE)
    if status == IDLE:
        return Verdict(Action.WAIT, f"job {job_id} is idle{for_how_long}")
    if status == HELD:
        return Verdict(Action.REFUSE, f"job {job_id} is held: {ad.get('HoldReason') or 'no reason given'}")
    if status == COMPLETED:
        return Verdict(Action.REFUSE, f"job {job_id} has completed")
    if status == REMOVED:
        return Verdict(Action.REFUSE, f"job {job_id} was removed")
    if status == TRANSFERRING_OUTPUT:
        return Verdict(Action.REFUSE, f"job {job_id} has finished and is transferring its output")
    if status == SUSPENDED:
        return Verdict(Action.REFUSE, f"job {job_id} is suspended{for_how_long}")
    return Verdict(Action.REFUSE, f"job {job_id} is in an unknown state ({status!r})")


def left_running(job: JobName, ad: Ad | None) -> str | None:
    """Why a job the relay is connected to should be let go, or None if it still runs."""
    if ad is not None and ad.get("JobStatus") == RUNNING:
        return None
    if ad is None:
        return f"job {job.cluster}.{job.proc} left the queue (completed or removed); connection closed"
    if ad.get("JobStatus") == IDLE:
        return f"job {job.cluster}.{job.proc} was evicted or vacated and is idle again; connection closed"
    return f"{assess(job, ad).message}; connection closed"


def _universe(number: object) -> str:
    return UNIVERSE_NAMES.get(number, str(number))  # type: ignore[call-overload]
