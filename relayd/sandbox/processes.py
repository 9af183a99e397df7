"""Detached processes (job processes and sshds) and killing them reliably.

A starter's children outlive any one condor_ssh_to_job call, so the sandbox
starts them fully detached (new session, double fork: init reaps them, no
zombie lingers in whichever process created them).  Pids are recorded with
the kernel's start time so a recycled pid is never mistaken for our process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from .jobuser import JobUser, drop_privileges


@dataclass(frozen=True)
class ProcessId:
    """A pid plus its start time (clock ticks since boot, /proc/PID/stat field 22)."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        stat = _read_stat(pid)
        return None if stat is None else cls(pid, stat[1])

    def alive(self) -> bool:
        stat = _read_stat(self.pid)
        return stat is not None and stat[1] == self.start_time and stat[0] != "Z"

    def dumps(self) -> str:
        return f"{self.pid} {self.start_time}\n"

    @classmethod
    def loads(cls, text: str) -> ProcessId:
        pid, start = text.split()
        return cls(int(pid), int(start))


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, start time, ppid) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[19]), int(fields[1])


def spawn_detached(argv: Sequence[str], *, user: JobUser, cwd: str | os.PathLike[str],
                   env: Mapping[str, str], stdio: tuple[int, int, int],
                   remove_on_exit: Path | None = None) -> ProcessId:
    """Start argv as `user` in its own session, detached from the caller.

    stdio are the fds to install as 0, 1, 2.  With remove_on_exit, a small
    watcher (as `user`) waits for the program and then deletes that directory,
    as the starter removes an sshd's directory when the sshd exits.
    Raises OSError if the program cannot be executed.
    """
    report_r, report_w = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.close(report_r)
            # The caller's Python handlers (e.g. -remove-on-interrupt's) are not ours.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()
            if os.fork() == 0:
                _become_program(argv, user, cwd, env, stdio, report_w, remove_on_exit)
        finally:
            os._exit(0)
    os.close(report_w)
    with os.fdopen(report_r, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(first, 0)
    # Lines: the program's pid and, if something failed, error messages.
    lines = [line for line in report.splitlines() if line]
    pids = [int(line) for line in lines if line.isdigit()]
    errors = [line for line in lines if not line.isdigit()]
    if errors or not pids:
        raise OSError("; ".join(errors) or f"failed to start {argv[0]}")
    process = ProcessId.of(pids[0])
    if process is None:
        raise OSError(f"{argv[0]} exited immediately")
    return process


def _become_program(argv: Sequence[str], user: JobUser, cwd: str | os.PathLike[str],
                    env: Mapping[str, str], stdio: tuple[int, int, int], report_w: int,
                    remove_on_exit: Path | None) -> NoReturn:
    """Second fork of spawn_detached: exec argv directly, or fork it and watch it."""
    try:
        drop_privileges(user)
        if remove_on_exit is None:
            os.write(report_w, f"{os.getpid()}\n".encode())
            _exec(argv, cwd, env, stdio, report_w)
        program = os.fork()
        if program == 0:
            _exec(argv, cwd, env, stdio, report_w)
        os.write(report_w, f"{program}\n".encode())
        os.close(report_w)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, _max_fd())  # never hold the sshd's socket open
        os.waitpid(program, 0)
        shutil.rmtree(remove_on_exit, ignore_errors=True)
    except BaseException as exc:  # noqa: BLE001 - report, never unwind into the caller's code
        with contextlib.suppress(OSError):  # already closed if the watcher failed
            os.write(report_w, f"\n{exc}\n".encode())
    os._exit(0)


def _exec(argv: Sequence[str], cwd: str | os.PathLike[str], env: Mapping[str, str],
          stdio: tuple[int, int, int], report_w: int) -> NoReturn:
    """Install stdio, close everything else except the close-on-exec report pipe, exec."""
    try:
        # Undo Python's SIG_IGN for these (exec keeps ignored signals ignored),
        # as subprocess's restore_signals does: a job must see default dispositions.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        saved = [os.dup(fd) for fd in stdio]
        for target, fd in enumerate(saved):
            os.dup2(fd, target)
        os.set_inheritable(report_w, False)
        os.closerange(3, report_w)
        os.closerange(report_w + 1, _max_fd())
        os.chdir(cwd)
        os.execve(argv[0], list(argv), dict(env))
    except BaseException as exc:  # noqa: BLE001
        os.write(report_w, f"\n{argv[0]}: {exc}\n".encode())
    os._exit(127)


def _max_fd() -> int:
    return os.sysconf("SC_OPEN_MAX")


def kill_tree(process: ProcessId) -> None:
    """SIGKILL a process and all its descendants (as vacate kills a job's family).

    The tree is frozen with SIGSTOP first so nothing can fork away while we
    collect it; descendants are found through /proc parent links because
    sshd's session children start sessions of their own.
    """
    if not process.alive():
        return
    frozen: set[int] = set()
    frontier = {process.pid}
    while frontier:
        for pid in frontier:
            _signal(pid, signal.SIGSTOP)
        frozen |= frontier
        frontier = {pid for pid, ppid in _parent_links() if ppid in frozen} - frozen
    for pid in frozen:
        _signal(pid, signal.SIGKILL)


def sessions_under(directory: Path) -> list[ProcessId]:
    """Session leaders whose command line names a path inside `directory`: the sessions an
    sshd started there, which live on as orphans when that sshd has gone."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                args = file.read().split(b"\0")
            if os.getsid(pid) != pid:
                continue
        except OSError:
            continue
        if any(arg.decode(errors="replace").startswith(prefix) for arg in args):
            process = ProcessId.of(pid)
            if process is not None:
                found.append(process)
    return found


def _parent_links() -> list[tuple[int, int]]:
    links = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None:
                links.append((int(entry), stat[2]))
    return links


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(processes: Sequence[ProcessId], timeout: float = 5.0) -> bool:
    """Wait until none of processes is alive; True if they all went."""
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
