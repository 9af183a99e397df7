"""The schedd's side of condor_ssh_to_job, answered from jobs.yaml.

Mirrors what the tool learns from a real schedd: whether the named schedd
exists, the job ad (GetJobAd), and GET_JOB_CONNECT_INFO's verdict -- the slot
to talk to, or an error string with a Retry flag -- following the checks and
messages of Scheduler::get_job_connect_info_handler.
"""

from __future__ import annotations

import time
from typing import Any

from relayd.common.jobstates import GRID, HELD, MPI, PARALLEL, RUNNING, SCHEDULER, SUSPENDED, TRANSFERRING_OUTPUT

from .layout import LEFT_QUEUE, PoolLayout, PoolSettings, find_ad

# Default QUEUE_SUPER_USERS: they may act on anyone's jobs.
QUEUE_SUPER_USERS = ("root", "condor")
# Statuses in which the job still holds its claim (the schedd has a match record).
_CLAIMED = (RUNNING, TRANSFERRING_OUTPUT, SUSPENDED)


class ScheddError(Exception):
    """GET_JOB_CONNECT_INFO failed: ErrorString, Retry, and the job's status and hold reason."""

    def __init__(self, message: str, retry: bool = False, job_status: int = -1,
                 hold_reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.job_status = job_status
        self.hold_reason = hold_reason


def locate_error(settings: PoolSettings, name: str, pool: str) -> str | None:
    """The tool's message if -name names a schedd other than the pool's, else None."""
    if not name or name == settings.schedd_name:
        return None
    if not pool:
        return f"No such schedd named {name} in local pool"
    return f"No such schedd named {name} in pool {pool}"


def fetch_job_ad(layout: PoolLayout, cluster: int, proc: int) -> dict[str, Any] | None:
    """GetJobAd: the ad if the job is still in the queue."""
    ad = find_ad(layout.read_table()["jobs"], cluster, proc)
    return None if ad is None or ad.get("JobStatus") in LEFT_QUEUE else ad


def get_job_connect_info(layout: PoolLayout, settings: PoolSettings, cluster: int, proc: int,
                         subproc: int, requester: str) -> tuple[str, dict[str, Any]]:
    """Return (slot name, job ad) of a job one may ssh to; raises ScheddError."""
    job = f"{cluster}.{proc}"
    ad = fetch_job_ad(layout, cluster, proc)
    if ad is None:
        raise ScheddError(f"No such job: {job}")
    if requester != ad.get("Owner") and requester not in QUEUE_SUPER_USERS:
        raise ScheddError(f"{requester} is not authorized for access to the starter for job {job}")
    status = ad.get("JobStatus", -1)
    universe = ad.get("JobUniverse", -1)
    claimed = status in _CLAIMED and "RemoteHost" in ad
    slot = None
    retry = False
    if universe in (GRID, SCHEDULER):
        pass  # these universes are not supported
    elif universe in (MPI, PARALLEL):
        if claimed and "AllRemoteHosts" in ad:
            hosts = ad["AllRemoteHosts"].split(",")
            if len(hosts) == 1 and subproc == -1:
                subproc = 0
            if not 0 <= subproc < len(hosts):
                raise ScheddError(f"This is a parallel job.  Please specify job {job}.X "
                                  f"where X is an integer from 0 to {len(hosts) - 1}.")
            slot = hosts[subproc]
        elif status not in (RUNNING, TRANSFERRING_OUTPUT):
            retry = True
    elif claimed:
        slot = ad["RemoteHost"]
    elif status not in (RUNNING, TRANSFERRING_OUTPUT):
        retry = True

    if slot is not None and not settings.schedd_enable_ssh_to_job:
        raise ScheddError(f"Job {job} is denied by SCHEDD_ENABLE_SSH_TO_JOB.")
    if slot is None:
        if not retry:
            raise ScheddError(f"Job {job} does not support remote access.")
        raise ScheddError(f"Job {job} is not running.", retry=True, job_status=status,
                          hold_reason=ad.get("HoldReason", "") if status == HELD else "")
    started = ad.get("EnteredCurrentStatus", 0)
    if status == RUNNING and time.time() - started < settings.ssh_ready_delay:
        # A just-started job: the shadow has not activated the starter yet.
        raise ScheddError("Failed to get address of starter for this job", retry=True,
                          job_status=status)
    return slot, ad
