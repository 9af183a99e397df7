"""Submitting, finding, editing and removing the relay's jobs on demand.

Two submitters share one interface, as the job sources do (relayd.condor.lookup): the
htcondor2 bindings for a real schedd, and the sandbox pool (relayd.sandbox.submitter) for
demos and tests. Ads come back as plain dicts, made safe for a terminal. Every call blocks:
the daemon runs them in a thread.
"""

from __future__ import annotations

import getpass
from typing import Any, Iterable, Protocol

from relayd.common.errors import LookupFailed
from relayd.common.termsafe import htcondor_text
from relayd.condor.lookup import Ad, HTCondorSource, safe_ads
from relayd.condor.names import JobName
from relayd.condor.profiles import (
    HEARTBEAT_ATTR,
    IDLE_SINCE_ATTR,
    LINGER_ATTR,
    PROFILE_ATTR,
    SUBMIT_METHOD,
    marks_constraint,
)

ATTRIBUTES = [
    "ClusterId", "ProcId", "JobStatus", "Owner", "HoldReason", "EnteredCurrentStatus", "QDate", "RemoteHost",
    "JobCurrentStartDate", "LastRejMatchReason", "AllowedJobDuration", PROFILE_ATTR, HEARTBEAT_ATTR,
    IDLE_SINCE_ATTR, LINGER_ATTR,
]
# Slot resources whose partitionable total is what a job could ever get there.
_RESOURCES = ("Cpus", "Memory", "GPUs", "Disk")


class JobSubmitter(Protocol):
    def submit(self, description: dict[str, str]) -> JobName:
        """Submit one job of this description; its id."""

    def find(self, profile: str | None = None) -> list[Ad]:
        """Ads of the relay's jobs of this user (and profile) in the queue, found by their marks."""

    def edit(self, jobs: Iterable[JobName], attr: str, value: str) -> None:
        """Set an attribute of these jobs, forwarded to their shadows (SetDirty)."""

    def remove(self, jobs: Iterable[JobName], reason: str) -> None:
        """Remove these jobs."""

    def never_matches(self, job: JobName) -> str | None:
        """Why no slot of the pool could ever run this idle job (the clause), or None."""


def job_spec(jobs: Iterable[JobName]) -> list[str]:
    return [f"{job.cluster}.{job.proc}" for job in jobs]


def make_submit(description: dict[str, str]) -> Any:
    """An htcondor2.Submit of the description, marked as the relay's (JobSubmitMethod)."""
    import htcondor2

    submit = htcondor2.Submit(description)
    submit.setSubmitMethod(SUBMIT_METHOD)
    return submit


# What the schedd says when an edited job is no longer in the queue (qmgmt's SetAttribute).
_LEFT_THE_QUEUE = "nonexistent job"


class HTCondorSubmitter(HTCondorSource):
    """The relay's jobs on a real schedd, through the htcondor2 bindings."""

    def _call(self, what: str, action: Any) -> Any:
        try:
            return action(self._schedd())
        except LookupFailed:
            raise
        except Exception as exc:  # HTCondorException, IOError, ValueError from the bindings
            where = f"schedd {self._schedd_name!r}" if self._schedd_name else "the local schedd"
            raise LookupFailed(f"cannot {what} ({where}): {htcondor_text(str(exc))}") from None

    def submit(self, description: dict[str, str]) -> JobName:
        result = self._call("submit", lambda schedd: schedd.submit(make_submit(description)))
        return JobName(result.cluster(), result.first_proc())

    def find(self, profile: str | None = None) -> list[Ad]:
        constraint = marks_constraint(getpass.getuser(), profile)
        ads = self._call("query", lambda schedd: schedd.query(constraint=constraint, projection=ATTRIBUTES))
        return safe_ads([plain_ad(ad) for ad in ads])

    def edit(self, jobs: Iterable[JobName], attr: str, value: str) -> None:
        import htcondor2

        def edit(schedd: Any) -> None:
            failed = []
            for job in job_spec(jobs):  # one by one: a job that just left would fail the others' edit
                try:
                    schedd.edit(job, attr, value, flags=htcondor2.TransactionFlag.SetDirty)
                except Exception as exc:  # HTCondorException from the bindings
                    if _LEFT_THE_QUEUE not in str(exc):  # removed meanwhile (relayd release): the heartbeat forgets it
                        failed.append(f"{job}: {exc}")
            if failed:
                raise RuntimeError("; ".join(failed))

        self._call("edit jobs", edit)

    def remove(self, jobs: Iterable[JobName], reason: str) -> None:
        import htcondor2

        spec = job_spec(jobs)
        if spec:
            # As a (text, code) pair: htcondor2 (25.14) drops a reason given as a plain string.
            self._call("remove jobs", lambda schedd: schedd.act(htcondor2.JobAction.Remove, spec, (reason, 0)))

    def never_matches(self, job: JobName) -> str | None:
        import htcondor2

        ads = self._call("query", lambda schedd: schedd.query(
            constraint=f"ClusterId == {job.cluster} && ProcId == {job.proc}"))
        if not ads:
            return None
        try:
            slots = htcondor2.Collector(self._pool).query(htcondor2.AdType.Startd)
        except Exception:  # the collector may refuse queries; then nothing can be said early
            return None
        return unmatched_clause(ads[0], slots)


def plain_ad(ad: Any) -> Ad:
    """A ClassAd as a plain dict of the attributes the relay reads."""
    out: Ad = {}
    for key in ATTRIBUTES:
        value = ad.get(key) if hasattr(ad, "get") else None
        if value is not None:
            out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def requirement_clauses(requirements: str) -> list[str]:
    """The top-level `&&` clauses of a Requirements expression, outer parentheses dropped."""
    clauses, depth, start, quoted = [], 0, 0, False
    for index, char in enumerate(requirements):
        if char == '"' and requirements[index - 1:index] != "\\":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and requirements.startswith("&&", index):
            clauses.append(requirements[start:index])
            start = index + 2
    clauses.append(requirements[start:])
    return [_unwrap(clause.strip()) for clause in clauses if clause.strip()]


def _unwrap(clause: str) -> str:
    """The clause without parentheses around all of it."""
    while clause.startswith("(") and _closing(clause) == len(clause) - 1:
        clause = clause[1:-1].strip()
    return clause


def _closing(text: str) -> int:
    """Where the parenthesis that opens `text` closes (-1: it does not)."""
    depth, quoted = 0, False
    for index, char in enumerate(text):
        if char == '"' and text[index - 1:index] != "\\":
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
            if depth == 0:
                return index
    return -1


def unmatched_clause(job: Any, slots: list[Any]) -> str | None:
    """When no slot could ever run the job (classad2 ads), the first clause of its
    Requirements that no slot satisfies, as condor_q -better-analyze would name it.

    A partitionable slot is judged by its total resources (TotalSlotCpus, ...), not by
    what is left of it now: a busy pool is no reason to give up."""
    import classad2

    if not slots:
        return None  # an empty or unreadable pool: slots may yet come
    whole = [_whole_slot(classad2, slot) for slot in slots]
    if any(slot.matches(job) for slot in whole):
        return None
    requirements = job.lookup("Requirements") if "Requirements" in job else None
    for clause in requirement_clauses(str(requirements)) if requirements is not None else []:
        probe = classad2.ClassAd(str(job))
        probe["Requirements"] = classad2.ExprTree(clause)
        if not any(slot.matches(probe) for slot in whole):
            return f"0 of {len(whole)} slots satisfy {' '.join(clause.split())}"
    return f"0 of {len(whole)} slots match the job's requirements"


def _whole_slot(classad2: Any, slot: Any) -> Any:
    whole = classad2.ClassAd(str(slot))
    for resource in _RESOURCES:
        total = slot.get(f"TotalSlot{resource}")
        if total is not None and slot.get("PartitionableSlot"):
            whole[resource] = total
    return whole
