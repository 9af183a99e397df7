"""The sandbox pool as a job source for relayd's lookups: its job table, read as a schedd
query would return it, behind the same interface as the htcondor2 bindings."""

from __future__ import annotations

from typing import Iterable

from relayd.common.errors import LookupFailed
from relayd.common.termsafe import htcondor_text
from relayd.condor.lookup import Ad, safe_ads
from relayd.condor.names import JobName

from .demand import schedd_cycle
from .pool import PoolError, load_ads, pool_settings


class SandboxSource:
    """Reads the sandbox pool's job table, as a schedd query would return it."""

    def __init__(self, pool_dir: str, schedd: str | None = None) -> None:
        self._pool_dir = pool_dir
        self._schedd = schedd

    def query(self, jobs: Iterable[JobName] | None) -> list[Ad]:
        try:
            if self._schedd is not None and self._schedd != pool_settings(self._pool_dir).schedd_name:
                raise LookupFailed(f"schedd {self._schedd!r} not found in the sandbox pool")
            schedd_cycle(self._pool_dir)  # what a real pool does on its own clock (jobs on demand)
            ads = load_ads(self._pool_dir)
        except (OSError, PoolError) as exc:
            raise LookupFailed(f"cannot read the sandbox pool at {self._pool_dir}: {htcondor_text(str(exc))}") from None
        if jobs is None:
            return safe_ads(ads)  # the sandbox pool's jobs all belong to its one user
        wanted = {(job.cluster, job.proc) for job in jobs}
        return safe_ads([ad for ad in ads if (ad.get("ClusterId"), ad.get("ProcId")) in wanted])
