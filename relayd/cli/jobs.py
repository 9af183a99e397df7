"""`relayd jobs`: the user's jobs that can be reached, with their ssh names."""

from __future__ import annotations

import time
from dataclasses import dataclass

from relayd.cli.tables import table
from relayd.common.errors import LookupFailed
from relayd.common.humanize import duration
from relayd.common.jobstates import RUNNING
from relayd.condor.lookup import Action, Ad, assess
from relayd.condor.names import JobName
from relayd.condor.sources import make_source
from relayd.config import Config

_STATES = {1: "idle", 2: "running", 3: "removed", 4: "completed", 5: "held", 6: "transferring output",
           7: "suspended"}


@dataclass(frozen=True)
class JobRow:
    host: str
    state: str
    slot: str
    runtime: str
    reachable: bool


def _row(job: JobName, ad: Ad, domain: str, now: float) -> JobRow:
    status = ad.get("JobStatus")
    started = ad.get("JobCurrentStartDate") or ad.get("EnteredCurrentStatus")
    runtime = duration(now - started) if status == RUNNING and isinstance(started, (int, float)) else "-"
    return JobRow(host=job.host(domain), state=_STATES.get(status, str(status)),  # type: ignore[arg-type]
                  slot=str(ad.get("RemoteHost") or "-"), runtime=runtime,
                  reachable=assess(job, ad).action in (Action.NEGOTIATE, Action.EC2))


def list_jobs(config: Config) -> tuple[list[JobRow], list[str]]:
    """Rows for every configured schedd (running first), and one error line per schedd that failed."""
    rows, errors = [], []
    now = time.time()
    labels = [None] + sorted(label for label in config.schedds if label != "default")
    for label in labels:
        source = make_source(config, config.schedd(label))
        if source is None:
            errors.append("job_lookup is none: no schedd to ask")
            break
        try:
            ads = source.query(None)
        except LookupFailed as exc:
            errors.append(f"{label or 'default schedd'}: {exc}")
            continue
        for ad in ads:
            job = JobName(int(ad["ClusterId"]), int(ad["ProcId"]), label=label)
            rows.append(_row(job, ad, config.domain, now))
    rows.sort(key=lambda row: (not row.reachable, row.state != "running", row.host))
    return rows, errors


def format_rows(rows: list[JobRow]) -> str:
    lines = table(["HOST", "STATE", "SLOT", "RUNTIME"], [[r.host, r.state, r.slot, r.runtime] for r in rows])
    return "\n".join(lines) + "\n"
