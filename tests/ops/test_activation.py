"""Socket activation: the daemon serves the socket systemd passes (LISTEN_FDS/LISTEN_PID, fd 3)."""

from __future__ import annotations

import socket
import subprocess
import sys

from harness import RELAYD, wait_for
from opshelpers import daemon_log, status

from relayd.common.paths import private_dir
from relayd.sandbox import pool as sandbox

# What systemd does between fork and exec: the socket becomes fd 3, LISTEN_PID is the child's pid.
LAUNCHER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "os.dup2(fd, 3)\n"
    "os.close(fd)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def bind_like_systemd(path) -> socket.socket:
    private_dir(path.parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    path.chmod(0o600)
    listener.listen(64)
    return listener


def activate(relay, listener: socket.socket) -> subprocess.Popen:
    # As a systemd service: stderr is not a terminal, logs go to it (no JOURNAL_STREAM here).
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, str(listener.fileno()), RELAYD, "run", "--log-to", "file"],
                            env=relay.home.env, pass_fds=(listener.fileno(),), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_socket_activation_serves_exits_idle_and_leaves_the_socket(unstarted_relay):
    relay = unstarted_relay
    relay.configure(exit_when_idle=1, idle_timeout=0.5)
    sandbox.submit_job(relay.pool_dir, status="running")
    listener = bind_like_systemd(relay.home.socket)
    with listener:
        daemon = activate(relay, listener)
        try:
            done = relay.ssh("job-1.0.condor", "echo activated")
            assert done.returncode == 0 and done.stdout == b"activated\n", done.stderr
            document = status(relay.home)
            assert document is not None and document["activation"] == "systemd"
            assert document["socket"] == str(relay.home.socket) and document["pid"] == daemon.pid
            assert daemon.wait(timeout=15) == 0
        finally:
            daemon.kill()
        assert "exiting (exit_when_idle)" in daemon_log(relay.home)
        assert relay.home.socket.exists()  # systemd's socket stays for the next start
        # A connection made while no daemon runs waits in the socket's queue, as under systemd,
        # and the next activation serves it.
        waiting = subprocess.Popen(relay.ssh_argv("job-1.0.condor", "echo queued"), env=relay.home.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert not wait_for(lambda: waiting.poll() is not None, timeout=0.5)
        daemon = activate(relay, listener)
        try:
            out, err = waiting.communicate(timeout=30)
            assert waiting.returncode == 0 and out == b"queued\n", err
        finally:
            daemon.terminate()
            daemon.wait(timeout=15)
        assert relay.home.socket.exists()


def test_activation_with_two_sockets_is_refused(unstarted_relay):
    relay = unstarted_relay
    env = dict(relay.home.env, LISTEN_FDS="2")
    launcher = "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[1], sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", launcher, RELAYD, "run"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert "systemd passed 2 sockets" in done.stderr
