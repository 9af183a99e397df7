"""What a schedd's lookups and jobs on demand go through: `job_lookup` in the config picks
the htcondor2 bindings, the sandbox pool (the stand-in for demos and tests), or none."""

from __future__ import annotations

from typing import Callable, TypeVar

from relayd.condor.lookup import HTCondorSource, JobSource
from relayd.condor.submit import HTCondorSubmitter, JobSubmitter
from relayd.config import Config, ScheddConfig

T = TypeVar("T")


def _picked(config: Config, schedd: ScheddConfig, sandbox: Callable[[str, str | None], T],
            htcondor: Callable[[str | None, str | None], T]) -> T | None:
    if config.job_lookup == "sandbox":
        assert config.sandbox_pool is not None
        return sandbox(config.sandbox_pool, schedd.name)
    if config.job_lookup == "htcondor":
        return htcondor(schedd.name, schedd.pool)
    return None


def make_source(config: Config, schedd: ScheddConfig) -> JobSource | None:
    """The job source `job_lookup` names for a schedd, or None when lookups are off."""
    from relayd.sandbox.source import SandboxSource  # the stand-in pool, for demos and tests

    return _picked(config, schedd, SandboxSource, HTCondorSource)


def make_submitter(config: Config, schedd: ScheddConfig) -> JobSubmitter | None:
    """The submitter for jobs on demand on a schedd, or None when lookups are off."""
    from relayd.sandbox.submitter import SandboxSubmitter

    return _picked(config, schedd, SandboxSubmitter, HTCondorSubmitter)
