"""The processes a running sandbox job owns: the job itself and its sshds.

In HTCondor the starter tracks every sshd it started for a job, and vacate,
remove and hold kill the job together with all of them.  Here the records are
files under run/<cluster>.<proc>/ so that any process (a test, the CLI, the
stand-in) can find and kill them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .jobuser import JobUser
from .layout import PoolLayout
from .processes import ProcessId, kill_tree, sessions_under, spawn_detached, wait_gone

_JOB_RECORD = "job"
_SSHD_PREFIX = "sshd."


def job_environment(layout: PoolLayout, ad: dict[str, Any]) -> dict[str, str]:
    """The environment HTCondor gives the job: its Environment plus the starter's additions."""
    scratch = str(layout.scratch_dir(ad["ClusterId"], ad["ProcId"]))
    env = {str(k): str(v) for k, v in (ad.get("Environment") or {}).items()}
    env.update(BATCH_SYSTEM="HTCondor", _CONDOR_SCRATCH_DIR=scratch,
               _CONDOR_JOB_IWD=str(ad.get("Iwd") or scratch))
    return env


def start_job_process(layout: PoolLayout, ad: dict[str, Any], user: JobUser) -> ProcessId:
    """Start the job's long-lived process (`sleep infinity`) in its sandbox, as `user`."""
    cluster, proc = ad["ClusterId"], ad["ProcId"]
    scratch = layout.scratch_dir(cluster, proc)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": user.home} | job_environment(layout, ad)
    sleep = shutil.which("sleep") or "/bin/sleep"
    stdin = os.open(os.devnull, os.O_RDONLY)
    # The starter's names for a job's stdout/stderr inside the sandbox.
    out = os.open(scratch / "_condor_stdout", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    err = os.open(scratch / "_condor_stderr", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if os.geteuid() == 0:
            for fd in (out, err):
                os.fchown(fd, user.uid, user.gid)
        process = spawn_detached([sleep, "infinity"], user=user, cwd=scratch, env=env,
                                 stdio=(stdin, out, err))
    finally:
        for fd in (stdin, out, err):
            os.close(fd)
    _write_record(layout.run_dir(cluster, proc) / _JOB_RECORD, process)
    return process


def job_process(layout: PoolLayout, cluster: int, proc: int) -> ProcessId | None:
    """The job's process if it is alive."""
    process = _read_record(layout.run_dir(cluster, proc) / _JOB_RECORD)
    return process if process is not None and process.alive() else None


def record_sshd(layout: PoolLayout, cluster: int, proc: int, process: ProcessId) -> None:
    _write_record(layout.run_dir(cluster, proc) / f"{_SSHD_PREFIX}{process.pid}", process)


def live_sshds(layout: PoolLayout, cluster: int, proc: int) -> list[ProcessId]:
    """The job's sshds that are still alive (records of dead ones are pruned)."""
    alive = []
    for path in _sshd_records(layout.run_dir(cluster, proc)):
        process = _read_record(path)
        if process is not None and process.alive():
            alive.append(process)
        else:
            path.unlink(missing_ok=True)
    return alive


def vacate(layout: PoolLayout, cluster: int, proc: int, keep_sshds: bool = False) -> None:
    """Kill the job's process and (unless keep_sshds) every sshd of the job, and forget them.

    A job that exits on its own leaves its sshds running: on a real pool they keep the
    slot claimed until the last one exits, which is what a relay must not cause.
    """
    run_dir = layout.run_dir(cluster, proc)
    records = [run_dir / _JOB_RECORD, *([] if keep_sshds else _sshd_records(run_dir))]
    processes = [p for p in map(_read_record, records) if p is not None]
    if not keep_sshds:  # as the starter kills the slot's whole family: sessions whose sshd has gone too
        processes += sessions_under(layout.scratch_dir(cluster, proc))
    for process in processes:
        kill_tree(process)
    wait_gone(processes)
    for path in records:
        path.unlink(missing_ok=True)


def _sshd_records(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.name.startswith(_SSHD_PREFIX))


def _write_record(path: Path, process: ProcessId) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(process.dumps())
    tmp.replace(path)


def _read_record(path: Path) -> ProcessId | None:
    try:
        return ProcessId.loads(path.read_text())
    except (OSError, ValueError):
        return None
