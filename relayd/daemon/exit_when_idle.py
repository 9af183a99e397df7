"""Exit when idle: a daemon started on demand goes away when nobody uses it.

Started by the helper or by systemd, the daemon exits after `exit_when_idle` seconds
with no client connections and no upstreams, so hundreds of users of one access point
cost no memory while they are not connected. The next `ssh` starts it again.

Exiting takes the start lock, as the helper does before it starts a daemon: a helper that
finds the socket gone waits on the lock until this daemon has exited, then starts a new one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from relayd.common import humanize

log = Logger()
LOCK_RETRY_SECONDS = 1.0


class IdleExit:
    """Calls `exit()` once `is_idle()` has held for `seconds()` (the config's `exit_when_idle`,
    read anew at each update since SIGHUP may change it; 0: never)."""

    def __init__(self, reactor, is_idle: Callable[[], bool], seconds: Callable[[], float], lock_path: Path,  # type: ignore[no-untyped-def]
                 exit: Callable[[], None]) -> None:
        self._reactor = reactor
        self._is_idle = is_idle
        self._seconds = seconds
        self._lock_path = lock_path
        self._exit = exit
        self._timer: IDelayedCall | None = None
        self._lock_fd: int | None = None  # held until the process exits

    def update(self) -> None:
        """Re-evaluate after clients or upstreams came or went, or the config changed."""
        seconds = self._seconds()
        if self._is_idle() and seconds > 0:
            if self._timer is None:
                self._timer = self._reactor.callLater(seconds, self._expired)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self._is_idle() or self._lock_fd is not None:
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a helper is starting or reaching us: look again shortly
            os.close(fd)
            self._timer = self._reactor.callLater(LOCK_RETRY_SECONDS, self._expired)
            return
        self._lock_fd = fd
        seconds = self._seconds()
        log.info("no clients or upstreams for {idle}: exiting (exit_when_idle)", idle=humanize.duration(seconds))
        self._exit()
