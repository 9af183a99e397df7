"""The account sandbox jobs run under, and switching to it.

HTCondor never runs a job as root: the starter switches to the job owner (or
a slot user) before it runs the job, the sshd setup script and sshd.  The
sandbox does the same: when its tools run as root, everything on the "execute
side" runs as an unprivileged job user (pool setting `job_user`); otherwise it
runs as the calling user, which is what a personal HTCondor pool does.
"""

from __future__ import annotations

import grp
import os
import pickle
import pwd
import subprocess
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

DEFAULT_JOB_USER = "condor-relay-job"
# On hosts whose /dev/pts is mounted without gid=5, a non-root sshd can only
# chgrp a new terminal to "tty" (as OpenSSH insists) if the user is a member.
TTY_GROUP = "tty"

T = TypeVar("T")


class JobUserError(RuntimeError):
    """The job account is missing or unusable."""


@dataclass(frozen=True)
class JobUser:
    """An account resolved once, before any fork, so children need no NSS lookups."""

    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]

    @classmethod
    def from_passwd(cls, entry: pwd.struct_passwd) -> JobUser:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, groups)


def current_user_name() -> str:
    """The name HTCondor's my_username() reports: the real uid's passwd entry."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "unknown"


def resolve_job_user(configured: str) -> JobUser:
    """The account jobs run as: `configured` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return JobUser.from_passwd(pwd.getpwuid(os.geteuid()))
    try:
        return JobUser.from_passwd(pwd.getpwnam(configured))
    except KeyError:
        raise JobUserError(
            f"job user {configured!r} does not exist; run "
            f"`python -m relayd.sandbox init` as root to create it") from None


def ensure_job_user(name: str) -> JobUser:
    """Create the job account if missing and make sure it is in group tty (root only)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", "--shell", "/bin/bash", name],
                       check=True)
    if name not in grp.getgrnam(TTY_GROUP).gr_mem:
        subprocess.run(["usermod", "--append", "--groups", TTY_GROUP, name], check=True)
    return JobUser.from_passwd(pwd.getpwnam(name))


def drop_privileges(user: JobUser) -> None:
    """Become `user` for good (supplementary groups, gid, then uid); call only in a child."""
    if os.geteuid() != 0 or user.uid == 0:
        return
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)


def run_as(user: JobUser, func: Callable[..., T], *args: Any) -> T:
    """Run func(*args) as `user` in a forked child and return its result.

    The result or exception travels back pickled through a pipe.  Without a
    uid switch the call happens in-process, which is what a non-root pool
    does all the time.
    """
    if os.geteuid() == user.uid:
        return func(*args)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            drop_privileges(user)
            payload = pickle.dumps((True, func(*args)))
        except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
            try:
                payload = pickle.dumps((False, exc))
            except Exception:  # noqa: BLE001 - an unpicklable exception
                payload = pickle.dumps((False, RuntimeError(traceback.format_exc())))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    os.waitpid(pid, 0)
    if not payload:
        raise RuntimeError(f"child running as {user.name} died without a result")
    ok, value = pickle.loads(payload)
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
