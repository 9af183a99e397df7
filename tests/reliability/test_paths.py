"""Files and processes another user or a hostile job could subvert: a runtime directory
someone else can replace, a listener that is not the daemon, symlinks where the relay
writes, a negotiator's child that keeps its pipes, and escape sequences from HTCondor."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import RELAYD, VENV_BIN, Home, RelayProcess, assert_fails, wait_for
from opshelpers import alive, daemon_log

from relayd.condor.capture_hook import PID_ENV, SOCKET_ENV, TOKEN_ENV
from relayd.sandbox import session, sshcmd
from relayd.sandbox.starter import SSH_KEYGEN

NOBODY = 65534  # a real second user, as in test_security_access
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user")


class FallbackHome(Home):
    """A Home whose daemon socket is the state dir's fallback, not $XDG_RUNTIME_DIR's."""

    @property
    def socket(self) -> Path:
        return Path(self.env["XDG_STATE_HOME"]) / "condor-relay" / "run" / "relay.sock"


@needs_root
def test_runtime_dir_under_another_users_directory_falls_back_to_the_state_dir(home, pool):
    shared = home.root / "shared"  # e.g. a /tmp/xdg-$USER another user created first
    shared.mkdir(mode=0o755)
    os.chown(shared, NOBODY, NOBODY)
    xdg = shared / "xdg"
    xdg.mkdir(mode=0o700)  # ours, but its parent is not
    home.env["XDG_RUNTIME_DIR"] = str(xdg)
    relay = RelayProcess(FallbackHome(home.root, home.env), pool)
    relay.configure()
    try:
        relay.start()
        wanted = xdg / "condor-relay"
        fallback = relay.home.socket
        assert f"runtime directory: {wanted} is not safe ({shared} belongs to uid {NOBODY}); using {fallback.parent} " \
               "instead" in relay.log()
        assert not wanted.exists()
        assert f"--socket {fallback}" in relay.ssh_config.read_text()
        host = relay.running_job()
        done = relay.ssh(host, "echo through the fallback")
        assert done.returncode == 0 and done.stdout == b"through the fallback\n", done.stderr
        # The helper without --socket computes the same path with the same rule.
        done = relay.ssh("-o", f"ProxyCommand={VENV_BIN / 'condor-relay-connect'} --no-start %h %p", host, "echo same")
        assert done.returncode == 0 and done.stdout == b"same\n", done.stderr
        doctor = relay.run([RELAYD, "doctor", "--ssh-config", str(relay.ssh_config)], timeout=60)
        assert f"warn  runtime dir: {wanted} is not safe ({shared} belongs to uid {NOBODY})".encode() in doctor.stdout
    finally:
        relay.stop()


@needs_root
def test_the_helper_starting_the_daemon_in_the_fallback_makes_the_state_dir_private_at_once(home, pool):
    """The fallback runtime dir is inside the state dir: the helper creates the state dir 0700
    first, so the daemon has no mode to correct (it used to log "had mode 755" at every first
    start; seen on a real pool)."""
    shared = home.root / "shared"
    shared.mkdir(mode=0o755)
    os.chown(shared, NOBODY, NOBODY)
    (shared / "xdg").mkdir(mode=0o700)
    home.env["XDG_RUNTIME_DIR"] = str(shared / "xdg")
    relay = RelayProcess(FallbackHome(home.root, home.env), pool)
    relay.configure()
    relay.write_ssh_config()
    state = Path(home.env["XDG_STATE_HOME"]) / "condor-relay"
    try:
        assert not relay.home.socket.parent.exists()
        done = relay.ssh(relay.running_job(), "true")  # the helper starts the daemon
        assert done.returncode == 0, done.stderr
        assert state.stat().st_mode & 0o777 == 0o700
        assert "had mode" not in daemon_log(relay.home), daemon_log(relay.home)
    finally:
        subprocess.run([RELAYD, "stop"], env=relay.home.env, capture_output=True, timeout=30)


def run_hook(tmp_path: Path, daemon_pid: int) -> subprocess.CompletedProcess:
    """The capture hook, run as condor_ssh_to_job runs it, against whatever listens at
    tmp_path/relay.sock, told that the daemon's pid is `daemon_pid`."""
    session_dir = tmp_path / "user.condor_ssh_to_job_1"
    session_dir.mkdir(mode=0o700)
    keygen = tmp_path / "generated"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(keygen)], check=True)
    key_file, known_hosts = session.write_client_files(session_dir, keygen.read_bytes(),
                                                       keygen.with_name("generated.pub").read_bytes())
    fdpass = session.listen_fdpass(session_dir / "fdpass")
    fdpass.settimeout(30)
    job_end, relay_end = socket.socketpair()
    macros = sshcmd.Macros(proxy_command=sshcmd.proxy_command("condor_ssh_to_job", str(fdpass.getsockname()), False),
                           remote_user="condor-user", remote_host="exec.example", key_file=str(key_file),
                           known_hosts=str(known_hosts))
    env = dict(os.environ, **{SOCKET_ENV: str(tmp_path / "relay.sock"), TOKEN_ENV: "ab" * 16,
                              PID_ENV: str(daemon_pid)})
    hook = subprocess.Popen(sshcmd.build(str(VENV_BIN / "condor-relay-capture"), macros, False, []), env=env,
                            stderr=subprocess.PIPE, text=True)
    with fdpass.accept()[0] as proxy:
        session.send_fd(proxy, relay_end.fileno())
    _, err = hook.communicate(timeout=30)
    for sock in (fdpass, job_end, relay_end):
        sock.close()
    return subprocess.CompletedProcess(hook.args, hook.returncode, "", err)


def test_capture_hook_sends_nothing_to_a_listener_of_another_pid(tmp_path):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "relay.sock"))
    listener.listen()
    listener.settimeout(30)
    with listener:
        done = run_hook(tmp_path, os.getppid())  # the "daemon" that started it is not this listener
        with listener.accept()[0] as conn:
            conn.settimeout(10)
            received = conn.recv(65536)
    assert done.returncode == 1, done.stderr
    assert received == b""  # no token, no keys, no socket
    assert (f"condor-relay-capture: {tmp_path / 'relay.sock'} is served by pid {os.getpid()}, not by the relayd that "
            f"started this negotiation (pid {os.getppid()}); nothing sent") in done.stderr


LISTEN_AS_NOBODY = (  # binds where only we may, then listens as another uid, which SO_PEERCRED records
    "import os, socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.bind(sys.argv[1])\n"
    f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
    "s.listen()\n"
    "print('listening', flush=True)\n"
    "s.settimeout(30)\n"
    "conn, _ = s.accept()\n"
    "conn.settimeout(10)\n"
    "print(len(conn.recv(65536)), flush=True)\n"
)


@needs_root
def test_capture_hook_sends_nothing_to_a_listener_of_another_uid(tmp_path):
    listener = subprocess.Popen([sys.executable, "-c", LISTEN_AS_NOBODY, str(tmp_path / "relay.sock")],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline() == "listening\n"
        done = run_hook(tmp_path, listener.pid)
        received = listener.communicate(timeout=30)[0]
    finally:
        listener.kill()
        listener.wait()
    assert done.returncode == 1, done.stderr
    assert received == "0\n"
    assert f"is served by uid {NOBODY}, not by this user (uid 0); nothing sent" in done.stderr


@needs_root
def test_the_helper_sends_nothing_to_a_listener_of_another_uid(home, tmp_path):
    listener = subprocess.Popen([sys.executable, "-c", LISTEN_AS_NOBODY, str(tmp_path / "relay.sock")],
                                stdout=subprocess.PIPE, text=True)
    proxy = f"{VENV_BIN / 'condor-relay-connect'} --no-start --socket {tmp_path / 'relay.sock'} %h %p"
    try:
        assert listener.stdout.readline() == "listening\n"
        done = subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ProxyCommand={proxy}", "-o", "ProxyUseFdpass=yes",
                               "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'kh'}",
                               "job-1.0.condor", "true"],
                              env=home.env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        received = listener.communicate(timeout=30)[0]
    finally:
        listener.kill()
        listener.wait()
    assert done.returncode == 255
    assert received == "0\n"
    assert (f"condor-relay: {tmp_path / 'relay.sock'} is served by uid {NOBODY}, not by you (uid 0); nothing sent"
            in done.stderr.splitlines()), done.stderr


def test_start_output_symlink_is_not_followed(unstarted_relay):
    relay = unstarted_relay
    runtime = relay.home.socket.parent
    runtime.mkdir(mode=0o700)
    victim = relay.home.root / "victim"
    victim.write_text("precious\n")
    (runtime / "start.out").symlink_to(victim)
    host = relay.running_job()
    done = relay.ssh(host, "echo started")
    assert done.returncode == 0 and done.stdout == b"started\n", done.stderr
    assert victim.read_text() == "precious\n"
    assert not (runtime / "start.out").is_symlink() and (runtime / "start.out").is_file()


def test_symlinks_in_the_state_dir_are_replaced_not_written_through(home, pool):
    state = Path(home.env["XDG_STATE_HOME"]) / "condor-relay"
    state.mkdir(mode=0o700)
    victims = {name: home.root / f"victim-{name}" for name in ("known_hosts", "known_hosts.tmp", "relayd.log")}
    for name, victim in victims.items():
        victim.write_text("precious\n")
        (state / name).symlink_to(victim)
    relay = RelayProcess(home, pool)
    relay.configure()
    daemon = subprocess.Popen([RELAYD, "run", "--log-to", "file"], env=home.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for(relay.accepting, timeout=20), daemon_log(home)
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n", name
    assert not (state / "known_hosts").is_symlink() and (state / "known_hosts").read_text().startswith("condor-relay,")
    assert not (state / "relayd.log").is_symlink() and "relayd listening on" in daemon_log(home)


DETACHING_NEGOTIATOR = """#!{python}
import os, subprocess, sys, time
# A child in a session of its own (out of the tool's process group) that keeps the tool's
# stdout and stderr open, then the tool hangs.
child = subprocess.Popen(["sleep", "120"], start_new_session=True)
with open({pidfile!r}, "w") as out:
    out.write(str(child.pid))
time.sleep(120)
"""


def test_negotiation_ends_at_its_timeout_whatever_a_detached_child_holds(home, pool, tmp_path):
    pidfile = tmp_path / "child.pid"
    negotiator = tmp_path / "condor_ssh_to_job"
    negotiator.write_text(DETACHING_NEGOTIATOR.format(python=sys.executable, pidfile=str(pidfile)))
    negotiator.chmod(0o755)
    relay = RelayProcess(home, pool)
    relay.configure(condor_ssh_to_job=str(negotiator), negotiation_timeout=2)
    try:
        relay.start()
        host = relay.running_job()
        started = time.monotonic()
        done = relay.ssh(host, "true", timeout=30)
        took = time.monotonic() - started
        assert_fails(done, f"condor_ssh_to_job did not finish within 2 s for job {host[4:-7]}")
        assert took < 2 + 4, took
        child = int(pidfile.read_text())
        assert alive(child)  # it still holds the pipes: the negotiation did not wait for it
        relay.configure()  # the real negotiator again: the daemon serves the next client
        relay.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "config reloaded" in relay.log())
        done = relay.ssh(host, "echo served")
        assert done.returncode == 0 and done.stdout == b"served\n", done.stderr
    finally:
        relay.stop()
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


HOSTILE_REASON = "\x1b]0;owned\x07disk\x1b[2J quota\rexceeded\x9b31m\nsee\tadmin"


@pytest.mark.parametrize("lookup", ["sandbox", "none"])
def test_control_characters_in_a_hold_reason_do_not_reach_the_terminal(home, pool, lookup):
    relay = RelayProcess(home, pool)
    relay.configure(job_lookup=lookup)
    try:
        relay.start()
        host = relay.running_job()
        subprocess.run([sys.executable, "-m", "relayd.sandbox", "set", str(pool), host[4:-7], "--status", "held",
                        "--hold-reason", HOSTILE_REASON], check=True, env=home.env)
        done = relay.ssh(host, "true")
        # from the job lookup, or from condor_ssh_to_job's stderr when lookups are off
        expected = ("job 1.0 is held: ]0;owneddisk[2J quota; exceeded31m; see admin" if lookup == "sandbox"
                    else 'job 1.0: The job is on hold: "]0;owneddisk[2J quota; exceeded31m; see admin".')
        assert_fails(done, expected)
        err = done.stderr.decode()
        assert not any(c in err for c in "\x1b\x07\x9b\t"), repr(err)
    finally:
        relay.stop()
