"""Log targets: the journal's priority prefixes, and the rotating file of a daemon started on demand."""

from __future__ import annotations

import io
import os
import tempfile

from harness import wait_for
from opshelpers import daemon_log
from twisted.logger import LogLevel

from relayd.daemon.logs import default_target, journal_observer
from relayd.sandbox import pool as sandbox


def test_journal_lines_carry_priorities():
    stream = io.StringIO()
    observe = journal_observer(stream)
    observe({"log_format": "hello {who}", "who": "journal", "log_level": LogLevel.warn, "log_namespace": "relayd.x"})
    observe({"log_format": "two\nlines", "log_level": LogLevel.info, "log_namespace": "relayd.y"})
    assert stream.getvalue() == "<4>[relayd.x] hello journal\n<6>[relayd.y] two\n<6>[relayd.y] lines\n"


def test_default_target(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert default_target("foreground") == "stderr"
    assert default_target("helper") == "file"
    assert default_target("systemd") == "stderr"  # a service without the journal logs to stderr
    with tempfile.TemporaryFile() as journal:  # stands for the journal's socket on stderr
        saved = os.dup(2)
        os.dup2(journal.fileno(), 2)
        try:
            info = os.fstat(2)
            monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
            assert default_target("helper") == "journal"
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def test_helper_started_daemon_logs_to_a_private_file(unstarted_relay):
    relay = unstarted_relay
    sandbox.submit_job(relay.pool_dir, status="running")
    assert relay.ssh("job-1.0.condor", "true").returncode == 0
    assert wait_for(lambda: "job-1.0.condor: closed after" in daemon_log(relay.home)), daemon_log(relay.home)
    log = relay.home.root / "state" / "condor-relay" / "relayd.log"
    assert log.stat().st_mode & 0o777 == 0o600
