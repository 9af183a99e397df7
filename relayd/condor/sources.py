"""Which job source a schedd's lookups use: `job_lookup` in the config picks the htcondor2
bindings, the sandbox pool (the stand-in for demos and tests), or none."""

from __future__ import annotations

from relayd.condor.lookup import HTCondorSource, JobSource
from relayd.config import Config, ScheddConfig


def make_source(config: Config, schedd: ScheddConfig) -> JobSource | None:
    """The job source `job_lookup` names for a schedd, or None when lookups are off."""
    if config.job_lookup == "sandbox":
        from relayd.sandbox.source import SandboxSource  # the stand-in pool, for demos and tests

        assert config.sandbox_pool is not None
        return SandboxSource(config.sandbox_pool, schedd.name)
    if config.job_lookup == "htcondor":
        return HTCondorSource(schedd.name, schedd.pool)
    return None
