"""Where a sandbox pool keeps things, its settings, and the job table format.

A pool is one directory, found by the stand-in through CONDOR_RELAY_SANDBOX
(as the real tools find their pool through CONDOR_CONFIG):

    jobs.yaml           pool settings (`pool:`) and job ads (`jobs:`)
    jobs.lock           flock(2) target serialising writers of jobs.yaml
    negotiations.log    one JSON line per condor_ssh_to_job invocation
    bin/condor_ssh_to_job                     the stand-in's wrapper
    libexec/condor_ssh_to_job_shell_setup     the sshd forced command
    execute/dir_<cluster>_<proc>/             each job's sandbox (scratch dir)
    run/<cluster>.<proc>/                     pid records: `job`, `sshd.<pid>`
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# libyaml's parser where PyYAML has it: the daemon reads this table at every lookup, and
# the pure-Python parser made half of an idle daemon's CPU in the bench.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

from relayd.common.jobstates import (
    COMPLETED,
    GRID,
    HELD,
    IDLE,
    REMOVED,
    RUNNING,
    SCHEDULER,
)

from .jobuser import DEFAULT_JOB_USER

POOL_ENV = "CONDOR_RELAY_SANDBOX"
# The name the wrapper was invoked by; the real tool puts its argv[0] in %x.
ARGV0_ENV = "CONDOR_RELAY_SANDBOX_ARGV0"

# What submit and set_status can put a job into.
SETTABLE_STATUSES = (IDLE, RUNNING, REMOVED, COMPLETED, HELD)
# A removed or completed job has left the queue (it is in the history).
LEFT_QUEUE = (REMOVED, COMPLETED)

# Universes whose jobs run in a slot of an execute machine (with a starter).
SLOTLESS = (SCHEDULER, GRID)


DEFAULT_SLOT = {"Cpus": 4, "Memory": 8192, "GPUs": 0, "Disk": 100_000_000, "Arch": "X86_64", "OpSys": "LINUX"}


class PoolError(RuntimeError):
    """A pool operation that cannot be done; str() is meant for the user."""


@dataclass
class PoolSettings:
    """The `pool:` section of jobs.yaml.

    negotiation_delay stands for the schedd and starter round trips before
    START_SSHD; ssh_ready_delay for the few seconds after a job starts
    running during which a real pool answers with a retryable error;
    retry_delay is -auto-retry's period (5 s in HTCondor).  The two enable
    flags stand for SCHEDD_ENABLE_SSH_TO_JOB and ENABLE_SSH_TO_JOB.
    negotiation_fault makes every negotiation fail in one way, for the relay's
    fault tests: "hang" (the schedd never answers; the tool waits forever with
    a child in its process group), "no_socket" (the -ssh command is never run
    and the tool exits 0), "wrong_host_key" (the client is told a server key
    that the sshd does not have). start_delay and slot model the negotiator for jobs on
    demand: when an idle job starts, and what no request may exceed.
    """

    schedd_name: str = "sandbox"
    exec_host: str = "sandbox.local"
    job_user: str = DEFAULT_JOB_USER
    negotiation_delay: float = 0.0
    ssh_ready_delay: float = 0.0
    retry_delay: float = 5.0
    schedd_enable_ssh_to_job: bool = True
    enable_ssh_to_job: bool = True
    negotiation_fault: str = ""
    # Jobs on demand (relayd.sandbox.demand): an idle job the pool's one slot can run starts
    # after start_delay seconds; `slot` is that slot's machine ad (resources in HTCondor's units).
    start_delay: float = 0.0
    slot: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SLOT))

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> PoolSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PoolError(f"unknown pool settings in jobs.yaml: {', '.join(sorted(unknown))}")
        return cls(**data)


class PoolLayout:
    """Paths inside one pool directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.jobs_file = self.root / "jobs.yaml"
        self.lock_file = self.root / "jobs.lock"
        self.negotiations_log = self.root / "negotiations.log"
        self.tool = self.root / "bin" / "condor_ssh_to_job"
        self.shell_setup = self.root / "libexec" / "condor_ssh_to_job_shell_setup"
        self.execute = self.root / "execute"
        self.run = self.root / "run"

    def scratch_dir(self, cluster: int, proc: int) -> Path:
        return self.execute / f"dir_{cluster}_{proc}"

    def run_dir(self, cluster: int, proc: int) -> Path:
        return self.run / f"{cluster}.{proc}"

    def read_table(self) -> dict[str, Any]:
        """jobs.yaml as a mapping; safe without the lock since writers rename atomically."""
        try:
            with open(self.jobs_file) as f:
                table = yaml.load(f, Loader=_LOADER)
        except FileNotFoundError:
            raise PoolError(f"{self.root} is not a sandbox pool (no jobs.yaml)") from None
        if not isinstance(table, dict) or not isinstance(table.get("jobs"), list):
            raise PoolError(f"{self.jobs_file} is not a sandbox job table")
        return table

    def settings(self) -> PoolSettings:
        return PoolSettings.from_mapping(self.read_table().get("pool") or {})


def find_ad(ads: list[dict[str, Any]], cluster: int, proc: int) -> dict[str, Any] | None:
    """The ad of job cluster.proc, or None."""
    for ad in ads:
        if ad.get("ClusterId") == cluster and ad.get("ProcId") == proc:
            return ad
    return None
