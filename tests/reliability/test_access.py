"""Who can get in, and where keys live: another uid is refused on every request, private
files are private (and fixed or refused when found otherwise), job keys never reach the
disk outside condor_ssh_to_job's own session dir, and only the negotiated host key is
trusted upstream."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from harness import RELAYD, VENV_BIN, RelayProcess, assert_fails, negotiator_environments, wait_for

from relayd.condor.capture_hook import PID_ENV, SOCKET_ENV, TOKEN_ENV
from relayd.sandbox import pool as sandbox
from relayd.sandbox import session, sshcmd
from relayd.sandbox.starter import SSH_KEYGEN

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user")


def negotiation_token(pool_dir: Path) -> str | None:
    """The capture token in the environment of this pool's running condor_ssh_to_job."""
    tokens = [environ[TOKEN_ENV] for environ in negotiator_environments(pool_dir).values() if TOKEN_ENV in environ]
    return tokens[0] if tokens else None


def open_socket_to_everyone(relay: RelayProcess) -> None:
    """Loosen the directory and socket modes so that only SO_PEERCRED stands in the way."""
    relay.home.socket.parent.chmod(0o755)
    relay.home.socket.chmod(0o666)


@needs_root
def test_capture_from_another_uid_is_refused_and_the_negotiation_goes_on(relay):
    sandbox.configure_pool(relay.pool_dir, negotiation_delay=2)
    host = relay.running_job()
    legit = subprocess.Popen(relay.ssh_argv(host, "echo reached"), env=relay.home.env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: negotiation_token(relay.pool_dir)), "no negotiation under way"
    open_socket_to_everyone(relay)
    # Another user who learnt the live token offers its own socket and keys as the capture.
    capture = f"CAPTURE {negotiation_token(relay.pool_dir)}\n".encode() + json.dumps(
        {"user": "intruder", "private_key": "x", "server_key": "y"}).encode() + b"\n"
    probe = (
        "import os, socket, sys\n"
        f"os.chdir({str(relay.home.socket.parent)!r})\n"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "bait, _ = socket.socketpair()\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect('relay.sock')\n"
        "s.settimeout(10)\n"
        "try:\n"
        f"    socket.send_fds(s, [{capture!r}], [bait.fileno()])\n"
        "    sys.stdout.write(repr(s.recv(100)) if s.recv(100, socket.MSG_PEEK) else 'refused')\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    sys.stdout.write('refused')\n"
    )
    refused = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert refused.stdout == "refused", (refused.stdout, refused.stderr)
    assert f"refused a connection from uid {NOBODY}" in relay.log()
    out, err = legit.communicate(timeout=60)
    assert legit.returncode == 0 and out == b"reached\n", err  # the real capture still got through
    assert relay.negotiations() == 1


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_wrong_modes_found_at_start_are_fixed_and_reported(home, pool):
    relay = RelayProcess(home, pool)
    relay.configure()
    state = Path(home.env["XDG_STATE_HOME"]) / "condor-relay"
    runtime = home.socket.parent
    for directory in (state, runtime):
        directory.mkdir()
        directory.chmod(0o755)
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(state / "host_key")], check=True)
    (state / "host_key").chmod(0o644)
    relay.start()
    try:
        assert mode(state) == mode(runtime) == 0o700
        assert mode(state / "host_key") == mode(state / "known_hosts") == mode(home.socket) == 0o600
        log = relay.log()
        assert f"{state} had mode 755; changed it to 700" in log
        assert f"{runtime} had mode 755; changed it to 700" in log
        assert f"the host key {state / 'host_key'} had mode 644; changed it to 600" in log
        assert relay.ssh(relay.running_job(), "true").returncode == 0  # the user's own key was kept
    finally:
        relay.stop()


@needs_root
def test_state_dir_of_another_user_is_refused(home, pool):
    relay = RelayProcess(home, pool)
    relay.configure()
    state = Path(home.env["XDG_STATE_HOME"]) / "condor-relay"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    done = relay.run([RELAYD, "run"], timeout=30)
    assert done.returncode == 1
    assert f"relayd: {state} belongs to uid {NOBODY}, not to this user".encode() in done.stderr, done.stderr
    assert list(state.iterdir()) == []


def key_body(private_key: bytes) -> bytes:
    """A line from the middle of a PEM private key: present wherever the key was written."""
    return private_key.splitlines()[2]


def files_under(*roots: Path) -> list[Path]:
    return [path for root in roots for path in root.rglob("*") if path.is_file() and not path.is_symlink()]


def test_job_keys_never_reach_the_disk_outside_the_tools_session_dir(relay):
    # condor_ssh_to_job ignores a $TMP longer than 50 characters, so give it a short one.
    tmp = Path(tempfile.mkdtemp(prefix="cr-tmp-"))
    relay.home.env["TMP"] = str(tmp)
    relay.stop()
    relay.start()
    sandbox.configure_pool(relay.pool_dir, negotiation_delay=1)
    host = relay.running_job()
    session_dirs: set[Path] = set()
    ssh = subprocess.Popen(relay.ssh_argv(host, "sleep 3"), env=relay.home.env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: session_dirs.update(tmp.glob("*.condor_ssh_to_job_*")) or session_dirs)
    # while the upstream is up, the starter's copy of the job key exists in the job's sandbox
    starter_key = Path(sandbox.load_ads(relay.pool_dir)[-1]["Iwd"]) / ".condor_ssh_to_job_1" / "sshkey"
    assert wait_for(starter_key.exists)
    job_key = starter_key.read_bytes()
    _, err = ssh.communicate(timeout=60)
    assert ssh.returncode == 0, err
    try:
        assert list(tmp.iterdir()) == []  # the tool removed its session dir, as the hook left it
        for path in files_under(relay.home.root, tmp):
            content = path.read_bytes()
            assert key_body(job_key) not in content, path
            assert b"PRIVATE KEY" not in content or path.name == "host_key", path
    finally:
        tmp.rmdir()


def test_capture_hook_leaves_the_session_dir_as_it_found_it(tmp_path):
    """The hook only reads condor_ssh_to_job's files; the tool removes them afterwards."""
    session_dir = tmp_path / "user.condor_ssh_to_job_1"
    session_dir.mkdir(mode=0o700)
    keygen = tmp_path / "generated"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(keygen)], check=True)
    private_key, public_key = keygen.read_bytes(), keygen.with_name("generated.pub").read_bytes()
    key_file, known_hosts = session.write_client_files(session_dir, private_key, public_key)
    fdpass = session.listen_fdpass(session_dir / "fdpass")
    daemon = socket.socket(socket.AF_UNIX)
    daemon.bind(str(tmp_path / "relay.sock"))
    daemon.listen()
    job_end, relay_end = socket.socketpair()

    def snapshot() -> dict[str, tuple[int, int, float, bytes]]:
        return {p.name: (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime,
                         p.read_bytes() if p.is_file() else b"") for p in session_dir.iterdir()}

    before = snapshot()
    macros = sshcmd.Macros(proxy_command=sshcmd.proxy_command("condor_ssh_to_job", str(fdpass.getsockname()), False),
                           remote_user="condor-user", remote_host="exec.example", key_file=str(key_file),
                           known_hosts=str(known_hosts))
    hook = subprocess.Popen(sshcmd.build(str(VENV_BIN / "condor-relay-capture"), macros, False, []),
                            env=dict(os.environ, **{SOCKET_ENV: str(tmp_path / "relay.sock"), TOKEN_ENV: "ab" * 16,
                                                     PID_ENV: str(os.getpid())}),
                            stderr=subprocess.PIPE)
    for listener in (fdpass, daemon):
        listener.settimeout(30)
    with fdpass.accept()[0] as proxy:
        session.send_fd(proxy, relay_end.fileno())
    with daemon.accept()[0] as conn:
        conn.settimeout(30)
        data, fds, _, _ = socket.recv_fds(conn, 64 * 1024, 1)
        while data.count(b"\n") < 2:
            data += conn.recv(64 * 1024)
        conn.sendall(b"OK\n")
    assert hook.wait(30) == 0, hook.stderr.read()
    assert snapshot() == before
    request, payload, _ = data.split(b"\n")
    assert request == b"CAPTURE " + b"ab" * 16
    assert json.loads(payload) == {"user": "condor-user", "private_key": private_key.decode(),
                                   "server_key": public_key.decode().strip()}
    with socket.socket(fileno=fds[0]) as captured:
        captured.sendall(b"ping")
        assert job_end.recv(4) == b"ping"  # the very socket condor_ssh_to_job passed
    for sock in (fdpass, daemon, job_end, relay_end):
        sock.close()


def test_job_sshd_with_another_host_key_is_refused(relay):
    host = relay.running_job()
    sandbox.configure_pool(relay.pool_dir, negotiation_fault="wrong_host_key")
    done = relay.ssh(host, "true")
    assert done.returncode == 255
    assert_fails(done, "job 1.0: the job's sshd presented a host key other than the negotiated one; refused")
    sandbox.configure_pool(relay.pool_dir, negotiation_fault="")
    assert relay.ssh(host, "true").returncode == 0
