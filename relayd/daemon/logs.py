"""Where the daemon's twisted.logger events go: stderr, a rotating file, or the journal.

In the foreground people watch stderr; a daemon the helper started has no terminal, so it
writes `relayd.log` in the state dir (rotated, a few MiB at most); under systemd stderr is
the journal, which takes `<priority>` prefixes and adds its own timestamps.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import provider

# Conch's transports log through a class attribute Logger, which takes the namespace of the
# class it is read from (relayd.upstream._UpstreamTransport, ...), whatever namespace it was given.
CONCH_NAMESPACES = ("relayd.ssh.client_transport", "relayd.ssh.job_transport")
ROTATE_BYTES = 1024 * 1024
ROTATED_FILES = 4

# syslog priorities, as sd-daemon(3) prefixes read by the journal
_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2}


def stderr_is_journal() -> bool:
    """Whether systemd connected stderr to the journal (JOURNAL_STREAM names its device:inode)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(2)
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def default_target(started_by: str) -> str:
    """The journal under systemd, the log file when started by the helper, else stderr."""
    if stderr_is_journal():
        return "journal"
    return "file" if started_by == "helper" else "stderr"


def journal_observer(stream: TextIO) -> ILogObserver:
    """One journal entry per line, with the event's priority."""

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        priority = _PRIORITY.get(event.get("log_level", LogLevel.info), 6)
        namespace = event.get("log_namespace", "-")
        stream.write("".join(f"<{priority}>[{namespace}] {line}\n" for line in text.splitlines() if line.strip()))
        stream.flush()

    return observe


class _PrivateLogFile(LogFile):
    """Twisted's rotating LogFile, but it never writes through a symlink at the log's path:
    one found there is removed and the log created anew (0600)."""

    def _openFile(self) -> None:
        self.closed = False
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            os.unlink(self.path)
            fd = os.open(self.path, flags | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "rb+", 0)
        self.size = self._file.seek(0, 2)


def start_logging(target: str, verbose: bool, log_file: Path) -> None:
    """Send every log event at info level (debug with `verbose`) to `target`."""
    if target == "journal":
        observer = journal_observer(sys.stderr)
    elif target == "file":
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        rotating = _PrivateLogFile(log_file.name, str(log_file.parent), rotateLength=ROTATE_BYTES,
                                   maxRotatedFiles=ROTATED_FILES, defaultMode=0o600)
        observer = textFileLogObserver(rotating)
    else:
        observer = textFileLogObserver(sys.stderr)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug if verbose else LogLevel.info)
    # Conch logs each key exchange and connection at info level; keep it quiet unless asked
    # (the daemon logs one line per connection).
    if not verbose:
        for namespace in CONCH_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])], redirectStandardIO=False)
