"""`relayd jobs` (its jobs-on-demand part) and `relayd release <profile>`.

Both ask the schedd directly, by the jobs' marks, so they work with or without a daemon:
the job ad carries the profile, its linger and since when no client uses it
(relayd.condor.profiles), and a daemon holding a released job sees it leave the queue.
"""

from __future__ import annotations

import time

from relayd.cli.tables import table
from relayd.common.errors import LookupFailed, RelayError
from relayd.common.humanize import duration
from relayd.common.jobstates import RUNNING
from relayd.condor.lookup import Ad
from relayd.condor.names import JobName, parse_profile_host
from relayd.condor.profiles import IDLE_SINCE_ATTR, LINGER_ATTR, PROFILE_ATTR
from relayd.condor.sources import make_submitter
from relayd.config import Config

_STATES = {1: "idle", 2: "running", 5: "held"}


def profile_hosts(config: Config) -> list[str]:
    """A host name per profile, for `relayd ssh-config install --jobs` (VS Code lists only explicit names)."""
    return [f"{name}.{config.domain}" for name in sorted(config.profiles)]


def _labels(config: Config) -> list[str | None]:
    return [None] + sorted(label for label in config.schedds if label != "default")


def time_left(ad: Ad, now: float) -> str:
    """Until the relay removes the job: `in use`, or what is left of its linger."""
    since, linger = ad.get(IDLE_SINCE_ATTR), ad.get(LINGER_ATTR)
    if not since or not isinstance(linger, (int, float)):
        return "in use"
    return f"removed in {duration(max(0.0, since + linger - now))}"


def on_demand_rows(config: Config) -> tuple[list[list[str]], list[str]]:
    """One row per job on demand of this user (host, job, profile, state, time left), and errors."""
    rows, errors = [], []
    now = time.time()
    for label in _labels(config):
        try:
            submitter = make_submitter(config, config.schedd(label))
            ads = submitter.find() if submitter is not None else []
        except LookupFailed as exc:
            errors.append(f"{label or 'default schedd'}: {exc}")
            continue
        for ad in ads:
            profile = str(ad.get(PROFILE_ATTR))
            host = ".".join([profile] + ([label] if label else []) + [config.domain])
            rows.append([host, f"{ad['ClusterId']}.{ad['ProcId']}", profile,
                         _STATES.get(ad.get("JobStatus"), str(ad.get("JobStatus"))),  # type: ignore[arg-type]
                         time_left(ad, now) if ad.get("JobStatus") == RUNNING else "-"])
    return rows, errors


def format_on_demand(rows: list[list[str]]) -> str:
    return "\n".join(table(["HOST", "JOB", "PROFILE", "STATE", "LEFT"], rows)) + "\n"


def release(config: Config, target: str) -> list[str]:
    """Remove the user's jobs of a profile (`gpu`, or `gpu.<schedd label>`); a line per job removed.

    Raises RelayError when there is none, or the schedd cannot be asked."""
    name = parse_profile_host(f"{target}.{config.domain}", config.domain)
    if name is None:
        raise RelayError(f"{target!r} is not a profile name (e.g. gpu, or gpu.<schedd label>)")
    try:
        schedd = config.schedd(name.label)
    except KeyError as exc:
        raise RelayError(exc.args[0]) from None
    submitter = make_submitter(config, schedd)
    if submitter is None:
        raise RelayError("job_lookup is none: no schedd to ask")
    ads = submitter.find(name.profile)
    if not ads:
        raise RelayError(f"no job of profile {name.profile} in the queue")
    jobs = [JobName(int(ad["ClusterId"]), int(ad["ProcId"])) for ad in ads]
    submitter.remove(jobs, "condor-relay: released by relayd release")
    return [f"removed job {job.job_id} (profile {name.profile})" for job in jobs]
