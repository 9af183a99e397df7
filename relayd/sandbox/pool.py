"""Creating a sandbox pool and playing schedd: submit, change status, query.

The job table is a list of ClassAd-like mappings with HTCondor's attribute
names, so code written against `htcondor2.Schedd.query` reads it unchanged.
Every change goes through `_locked_table` (flock + write to a temp file +
rename), so concurrent writers never lose updates and readers never see a
half-written file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from relayd.common.jobstates import COMPLETED, HELD, PARALLEL, RUNNING, STATUS_BY_NAME, STATUS_NAMES, VANILLA

from . import jobprocs
from .jobuser import JobUser, current_user_name, ensure_job_user, resolve_job_user
from .layout import (
    ARGV0_ENV,
    LEFT_QUEUE,
    POOL_ENV,
    SETTABLE_STATUSES,
    SLOTLESS,
    PoolError,
    PoolLayout,
    PoolSettings,
    find_ad,
)

PathArg = str | os.PathLike[str]
DEFAULT_PARALLEL_NODES = 2
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SHELL_SETUP_SOURCE = Path(__file__).with_name("shell_setup.sh")
# The directory holding the `relayd` package: the wrapper puts it on
# PYTHONPATH so the stand-in imports this very code from any cwd.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def create_pool(pool_dir: PathArg, **settings: Any) -> Path:
    """Create a pool in pool_dir (new or empty); settings are PoolSettings fields.

    As root this also creates the job user (see jobuser.ensure_job_user) and
    checks that it can reach the pool's sandboxes.
    """
    layout = PoolLayout(pool_dir)
    config = PoolSettings(**settings)
    if layout.jobs_file.exists():
        raise PoolError(f"{layout.root} already holds a sandbox pool")
    if os.geteuid() == 0:
        _check_reachable(layout.root, ensure_job_user(config.job_user))
    for directory in (layout.root, layout.tool.parent, layout.shell_setup.parent,
                      layout.execute, layout.run):
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    _install_wrapper(layout)
    shutil.copyfile(_SHELL_SETUP_SOURCE, layout.shell_setup)
    layout.shell_setup.chmod(0o755)
    _write_table(layout, {"pool": dataclasses.asdict(config), "jobs": []})
    return layout.root


def configure_pool(pool_dir: PathArg, **settings: Any) -> PoolSettings:
    """Change pool settings (e.g. negotiation_delay) of an existing pool."""
    with _locked_table(PoolLayout(pool_dir)) as table:
        config = dataclasses.replace(PoolSettings.from_mapping(table["pool"]), **settings)
        table["pool"] = dataclasses.asdict(config)
    return config


def submit_job(pool_dir: PathArg, status: str | int = "running", **attrs: Any) -> tuple[int, int]:
    """Submit one job; attrs are job ad attributes (HoldReason, JobUniverse, Environment, ...)."""
    return submit_cluster(pool_dir, 1, status, **attrs)[0]


def submit_cluster(pool_dir: PathArg, count: int = 1, status: str | int = "running",
                   **attrs: Any) -> list[tuple[int, int]]:
    """Submit `count` jobs as procs 0..count-1 of a new cluster; returns their ids."""
    if count < 1:
        raise ValueError("count must be at least 1")
    new_status = _status_code(status)
    _check_attrs(attrs)
    with _open_queue(PoolLayout(pool_dir)) as queue:
        cluster = 1 + max((ad["ClusterId"] for ad in queue.jobs), default=0)
        ids = []
        for proc in range(count):
            ad = queue.new_ad(cluster, proc, attrs)
            queue.enter_status(ad, new_status)
            ids.append((cluster, proc))
    return ids


def set_status(pool_dir: PathArg, cluster: int, proc: int, status: str | int,
               hold_reason: str | None = None) -> None:
    """Move a job to a new JobStatus, as condor_hold/release/rm/vacate or job exit would.

    Leaving Running kills the job process and, except when the job completes, all the
    job's sshds (as hold, remove and vacate do; after a job exits its sshds live on); entering
    Running starts the job process (again) if it is not alive.
    """
    new_status = _status_code(status)
    if hold_reason is not None and new_status != HELD:
        raise ValueError("hold_reason only applies to status held")
    with _open_queue(PoolLayout(pool_dir)) as queue:
        ad = find_ad(queue.jobs, cluster, proc)
        if ad is None:
            raise PoolError(f"No such job: {cluster}.{proc}")
        queue.enter_status(ad, new_status, hold_reason)


def load_ads(pool_dir: PathArg, *, include_history: bool = False) -> list[dict[str, Any]]:
    """The job ads in the queue, like Schedd.query(); include_history adds
    removed and completed jobs, which have left the queue."""
    ads = PoolLayout(pool_dir).read_table()["jobs"]
    return [ad for ad in ads if include_history or ad.get("JobStatus") not in LEFT_QUEUE]


def pool_settings(pool_dir: PathArg) -> PoolSettings:
    """The pool's settings (schedd name, job user, delays)."""
    return PoolSettings.from_mapping(PoolLayout(pool_dir).read_table()["pool"])


def job_pids(pool_dir: PathArg, cluster: int, proc: int) -> list[int]:
    """Pids of the job's live processes (what the shell setup puts in _CONDOR_JOB_PIDS)."""
    process = jobprocs.job_process(PoolLayout(pool_dir), cluster, proc)
    return [] if process is None else [process.pid]


def sshd_pids(pool_dir: PathArg, cluster: int, proc: int) -> list[int]:
    """Pids of the job's live sshds."""
    return [p.pid for p in jobprocs.live_sshds(PoolLayout(pool_dir), cluster, proc)]


def read_negotiations(pool_dir: PathArg, *, include_proxy: bool = False) -> list[dict[str, Any]]:
    """The calls recorded in negotiations.log ({"time", "pid", "uid", "argv"} each);
    by default without the tool's own `-proxy` calls, so one entry is one negotiation."""
    path = PoolLayout(pool_dir).negotiations_log
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line]
    # The tool calls itself as `<argv0> [-debug] -proxy <fdpass>`.
    return [e for e in entries if include_proxy or "-proxy" not in e["argv"][1:3]]


def stop_pool(pool_dir: PathArg) -> None:
    """Kill every job process and sshd of the pool (job statuses stay as they are)."""
    layout = PoolLayout(pool_dir)
    if not layout.run.is_dir():
        return
    for run_dir in layout.run.iterdir():
        cluster, _, proc = run_dir.name.partition(".")
        if cluster.isdigit() and proc.isdigit():
            jobprocs.vacate(layout, int(cluster), int(proc))


def _status_code(status: str | int) -> int:
    """The JobStatus for a name or number the pool can model (not 6 or 7, whose
    starter-side behaviour -- output transfer, SIGSTOP -- the sandbox lacks)."""
    code = STATUS_BY_NAME.get(status) if isinstance(status, str) else status
    if code not in SETTABLE_STATUSES:
        names = ", ".join(STATUS_NAMES[c] for c in SETTABLE_STATUSES)
        raise ValueError(f"cannot set job status {status!r}; use one of {names}")
    return code


def _check_attrs(attrs: dict[str, Any]) -> None:
    for name in ("ClusterId", "ProcId", "JobStatus"):
        if name in attrs:
            raise ValueError(f"{name} is assigned by the pool")
    env = attrs.get("Environment") or {}
    if not isinstance(env, dict) or not all(_ENV_NAME.match(str(k)) for k in env):
        raise ValueError("Environment must map shell variable names to values")


@dataclasses.dataclass
class _Queue:
    """The job table opened for a change, with what status changes need."""

    layout: PoolLayout
    settings: PoolSettings
    user: JobUser
    jobs: list[dict[str, Any]]

    def new_ad(self, cluster: int, proc: int, attrs: dict[str, Any]) -> dict[str, Any]:
        """Queue a new job (JobStatus still unset) and create its sandbox."""
        now = int(time.time())
        scratch = self.layout.scratch_dir(cluster, proc)
        ad: dict[str, Any] = {
            "ClusterId": cluster, "ProcId": proc, "JobStatus": 0,
            "Owner": current_user_name(), "JobUniverse": VANILLA,
            "QDate": now, "EnteredCurrentStatus": now, "Iwd": str(scratch), "Environment": {},
        }
        ad.update(copy.deepcopy(attrs))  # no sharing between the ads of a cluster
        if ad["JobUniverse"] == PARALLEL:
            ad.setdefault("MaxHosts", DEFAULT_PARALLEL_NODES)
            ad.setdefault("MinHosts", ad["MaxHosts"])
        self.jobs.append(ad)
        scratch.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(scratch, self.user.uid, self.user.gid)
        return ad

    def enter_status(self, ad: dict[str, Any], new_status: int,
                     hold_reason: str | None = None) -> None:
        """Set JobStatus and do what the schedd and starter do on that transition."""
        cluster, proc = ad["ClusterId"], ad["ProcId"]
        if new_status != ad["JobStatus"]:
            ad["EnteredCurrentStatus"] = int(time.time())
        ad["JobStatus"] = new_status
        if new_status == HELD:
            ad["HoldReason"] = (hold_reason or ad.get("HoldReason")
                                or f"via condor_hold (by user {current_user_name()})")
        elif "HoldReason" in ad:  # as condor_release and condor_rm do
            ad["LastHoldReason"] = ad.pop("HoldReason")
        if new_status != RUNNING:
            if "RemoteHost" in ad:
                ad["LastRemoteHost"] = ad.pop("RemoteHost")
                ad.pop("AllRemoteHosts", None)
            jobprocs.vacate(self.layout, cluster, proc, keep_sshds=new_status == COMPLETED)
        elif ad["JobUniverse"] not in SLOTLESS:
            if "RemoteHost" not in ad:
                self._assign_slots(ad)
            if jobprocs.job_process(self.layout, cluster, proc) is None:
                jobprocs.start_job_process(self.layout, ad, self.user)

    def _assign_slots(self, ad: dict[str, Any]) -> None:
        """Give a job that starts running its slot (one per node of a parallel job)."""
        index = self.jobs.index(ad) + 1
        nodes = ad.get("MaxHosts", 1) if ad["JobUniverse"] == PARALLEL else 1
        slots = [f"slot{node + 1}_{index}@{self.settings.exec_host}" for node in range(nodes)]
        ad["RemoteHost"] = slots[0]
        if ad["JobUniverse"] == PARALLEL:
            ad["AllRemoteHosts"] = ",".join(slots)


@contextlib.contextmanager
def _open_queue(layout: PoolLayout) -> Iterator[_Queue]:
    with _locked_table(layout) as table:
        settings = PoolSettings.from_mapping(table["pool"])
        yield _Queue(layout, settings, resolve_job_user(settings.job_user), table["jobs"])


@contextlib.contextmanager
def _locked_table(layout: PoolLayout) -> Iterator[dict[str, Any]]:
    """Yield the job table under an exclusive lock; write it back if the block succeeds."""
    with open(layout.lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = layout.read_table()
        yield table
        _write_table(layout, table)


def _write_table(layout: PoolLayout, table: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".jobs.", suffix=".yaml", dir=layout.root)
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(table, f, sort_keys=False, default_flow_style=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, layout.jobs_file)
    except BaseException:
        os.unlink(tmp)
        raise


def _install_wrapper(layout: PoolLayout) -> None:
    """bin/condor_ssh_to_job: run the stand-in with this interpreter, pointed at this pool."""
    q = shlex.quote
    layout.tool.write_text(
        "#!/bin/sh\n"
        f"# condor_ssh_to_job for the sandbox pool {layout.root}\n"
        "# (written by `python -m relayd.sandbox init`).\n"
        f"{POOL_ENV}={q(str(layout.root))}\n"
        f'{ARGV0_ENV}="$0"\n'
        f'PYTHONPATH={q(str(_PACKAGE_ROOT))}"${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        f"export {POOL_ENV} {ARGV0_ENV} PYTHONPATH\n"
        f'exec {q(sys.executable)} -m relayd.sandbox.ssh_to_job "$@"\n')
    layout.tool.chmod(0o755)


def _check_reachable(root: Path, user: JobUser) -> None:
    """Fail early if the job user could not reach its sandboxes under root."""
    for directory in [*reversed(root.parents), root]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            return  # the rest will be created by us with mode 0755
        if info.st_uid == user.uid:
            ok = info.st_mode & stat.S_IXUSR
        elif info.st_gid in user.groups:
            ok = info.st_mode & stat.S_IXGRP
        else:
            ok = info.st_mode & stat.S_IXOTH
        if not ok:
            raise PoolError(f"job user {user.name} cannot enter {directory}; "
                            f"put the pool under a directory it can traverse")
