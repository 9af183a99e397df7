"""The sandbox pool's schedd and negotiator for jobs on demand.

`submit_description` turns a submit description into a job ad as condor_submit would
(RequestCpus/Memory/GPUs and a Requirements that asks a slot for them, the `MY.`
attributes, periodic_remove, allowed_job_duration). `schedd_cycle` plays what a real pool
does periodically: the negotiator starts an idle job once `start_delay` has passed, if the
pool's one slot can run it, and otherwise leaves a LastRejMatchReason; the schedd and shadow
remove a job whose periodic_remove is true (the relay's heartbeat expired) and hold one that
ran past its allowed_job_duration. The pool has no clock of its own, so the cycle runs
whenever the pool is asked (its job source and submitter call it), and tests call it.
"""

from __future__ import annotations

import re
import time
from typing import Any

from relayd.common.jobstates import HELD, IDLE, REMOVED, RUNNING

from .layout import LEFT_QUEUE, PoolLayout, PoolSettings
from .pool import PathArg, _open_queue, find_ad, submit_job

_MEMORY = re.compile(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", re.IGNORECASE)
_MEMORY_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_REQUESTS = {"request_cpus": "RequestCpus", "request_memory": "RequestMemory", "request_gpus": "RequestGPUs",
             "request_disk": "RequestDisk"}
_SLOT_CLAUSES = {"RequestCpus": "TARGET.Cpus >= RequestCpus", "RequestMemory": "TARGET.Memory >= RequestMemory",
                 "RequestGPUs": "TARGET.GPUs >= RequestGPUs", "RequestDisk": "TARGET.Disk >= RequestDisk"}
_SUBMIT_ATTRS = {"batch_name": "JobBatchName", "allowed_job_duration": "AllowedJobDuration",
                 "periodic_remove": "PeriodicRemove", "container_image": "ContainerImage"}


def submit_description(pool_dir: PathArg, description: dict[str, str], submit_method: int) -> tuple[int, int]:
    """Queue one idle job of a submit description; its (cluster, proc)."""
    attrs: dict[str, Any] = {"RequestCpus": 1, "RequestMemory": 128, "JobSubmitMethod": submit_method}
    for key, value in description.items():
        lower = key.lower()
        if lower.startswith("my."):
            attrs[key[3:]] = _literal(value)
        elif lower in _REQUESTS:
            attrs[_REQUESTS[lower]] = _memory_mb(value) if lower == "request_memory" else int(value)
        elif lower in _SUBMIT_ATTRS:
            attrs[_SUBMIT_ATTRS[lower]] = _literal(value)
    clauses = [f"({description['requirements']})"] if description.get("requirements") else []
    clauses += [f"({_SLOT_CLAUSES[name]})" for name in _SLOT_CLAUSES if name in attrs]
    attrs["Requirements"] = " && ".join(clauses)
    return submit_job(pool_dir, "idle", **attrs)


def job_classad(ad: dict[str, Any]) -> Any:
    """A sandbox job ad as a classad2.ClassAd (its expressions parsed)."""
    import classad2

    out = classad2.ClassAd({k: v for k, v in ad.items() if isinstance(v, (int, float, str)) and k not in
                            ("Requirements", "PeriodicRemove")})
    for name in ("Requirements", "PeriodicRemove"):
        if ad.get(name):
            out[name] = classad2.ExprTree(str(ad[name]))
    return out


def slot_classad(settings: PoolSettings) -> Any:
    import classad2

    return classad2.ClassAd({**settings.slot, "Name": f"slot1@{settings.exec_host}"})


def never_matches(pool_dir: PathArg, cluster: int, proc: int) -> str | None:
    """Why the pool's slot can never run this job (the clause), or None."""
    from relayd.condor.submit import unmatched_clause

    layout = PoolLayout(pool_dir)
    table = layout.read_table()
    ad = find_ad(table["jobs"], cluster, proc)
    if ad is None or not ad.get("Requirements"):
        return None
    return unmatched_clause(job_classad(ad), [slot_classad(PoolSettings.from_mapping(table["pool"]))])


def edit_jobs(pool_dir: PathArg, jobs: list[tuple[int, int]], attr: str, value: str) -> None:
    """condor_qedit: set one attribute (a ClassAd literal) of these jobs."""
    with _open_queue(PoolLayout(pool_dir)) as queue:
        for cluster, proc in jobs:
            ad = find_ad(queue.jobs, cluster, proc)
            if ad is not None and ad.get("JobStatus") not in LEFT_QUEUE:
                ad[attr] = _literal(value)


def schedd_cycle(pool_dir: PathArg, now: float | None = None) -> None:
    """One round of what the negotiator, schedd and shadows do on their own (see above)."""
    layout = PoolLayout(pool_dir)
    now = time.time() if now is None else now
    table = layout.read_table()
    settings = PoolSettings.from_mapping(table["pool"])
    if not any(_due(ad, settings, now) for ad in table["jobs"]):
        return  # nothing to change: no write, no lock
    with _open_queue(layout) as queue:
        for ad in queue.jobs:
            change = _due(ad, queue.settings, now)
            if change is None:
                continue
            status, reason = change
            if status == IDLE:
                ad["LastRejMatchReason"], ad["LastRejMatchTime"] = reason, int(now)
                continue
            if status == RUNNING:
                ad["JobCurrentStartDate"] = int(now)
            elif status == REMOVED:
                ad["RemoveReason"] = reason
            queue.enter_status(ad, status, reason if status == HELD else None)


def _due(ad: dict[str, Any], settings: PoolSettings, now: float) -> tuple[int, str] | None:
    """The change a job is due (status, reason), or None."""
    status = ad.get("JobStatus")
    if status in LEFT_QUEUE or "CondorRelayProfile" not in ad:
        return None
    if ad.get("PeriodicRemove") and job_classad(ad).eval("PeriodicRemove") is True:
        return REMOVED, "The job attribute PeriodicRemove expression became True"
    allowed = ad.get("AllowedJobDuration")
    if status == RUNNING and isinstance(allowed, int) and now - ad.get("JobCurrentStartDate", now) > allowed:
        return HELD, f"The job exceeded allowed job duration of {allowed} seconds"
    if status != IDLE:
        return None
    if not slot_classad(settings).matches(job_classad(ad)):
        return None if ad.get("LastRejMatchReason") else (IDLE, "no match found")
    if now - ad.get("QDate", now) >= settings.start_delay:
        return RUNNING, ""
    return None


def _literal(value: str) -> Any:
    """A submit-description value as the job ad holds it: a number, a string, or an expression."""
    text = value.strip()
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _memory_mb(value: str) -> int:
    match = _MEMORY.fullmatch(value)
    if not match:
        raise ValueError(f"request_memory {value!r} is not a size such as 8GB")
    return max(1, int(float(match[1]) * _MEMORY_MB[match[2].upper()]))
