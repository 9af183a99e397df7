"""Every channel and request ssh sends, through one relay and real OpenSSH on both ends."""

from __future__ import annotations

import hashlib
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import on_terminal, to_file
from netutil import EchoServer, connect_retry, free_port, round_trip, socks5_connect

from relayd.sandbox import pool as sandbox

PAYLOAD = os.urandom(3 * 1024 * 1024 + 11)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def job(relay):
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    ad = next(a for a in sandbox.load_ads(relay.pool_dir) if a["ClusterId"] == cluster)
    return f"job-{cluster}.{proc}.condor", Path(ad["Iwd"])


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def background(relay, *args: str) -> subprocess.Popen:
    return subprocess.Popen(relay.ssh_argv(*args), env=relay.home.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def read_until(stream, pattern: bytes, timeout: float = 20.0) -> re.Match:
    """Read a pipe until `pattern` matches what was read."""
    data = b""
    deadline = time.monotonic() + timeout
    while not (match := re.search(pattern, data)):
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {pattern!r} in {data!r}"
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, f"stream closed; no {pattern!r} in {data!r}"
        data += chunk
    return match


def test_local_forward_carries_bytes_both_ways(relay, job, echo):
    host, _ = job
    port = free_port()
    forward = background(relay, "-N", "-L", f"{port}:127.0.0.1:{echo.port}", host)
    try:
        with connect_retry(("127.0.0.1", port)) as sock:
            assert digest(round_trip(sock, PAYLOAD)) == digest(PAYLOAD)
    finally:
        stop(forward)


def test_dynamic_socks_forward(relay, job, echo):
    host, _ = job
    port = free_port()
    forward = background(relay, "-N", "-D", f"127.0.0.1:{port}", host)
    try:
        socks = [socks5_connect(port, "127.0.0.1", echo.port) for _ in range(3)]
        for sock in socks:
            with sock:
                assert digest(round_trip(sock, PAYLOAD)) == digest(PAYLOAD)
    finally:
        stop(forward)


def test_stdio_forward_with_W(relay, job, echo):
    host, _ = job
    done = relay.run(relay.ssh_argv("-W", f"127.0.0.1:{echo.port}", host), input=PAYLOAD[:65536], timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == PAYLOAD[:65536]


JOB_CONNECT = (
    "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
    "s.sendall(b'ping through -R'); print(s.recv(100).decode())"
)


def test_remote_forward_goes_back_to_the_client_that_asked(relay, job, echo):
    host, _ = job
    forward = background(relay, "-N", "-R", f"0:127.0.0.1:{echo.port}", host)
    try:
        remote_port = int(read_until(forward.stderr, rb"Allocated port (\d+) for remote forward")[1])
        # another client on the same upstream connects to the forwarded port inside the job
        done = relay.ssh(host, f"python3 -c \"{JOB_CONNECT}\" {remote_port}")
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"ping through -R\n" and echo.accepted == 1
    finally:
        stop(forward)
    assert relay.negotiations() == 1


UNIX_ECHO = (
    "import os, socket, sys; p = sys.argv[1]; s = socket.socket(socket.AF_UNIX); s.bind(p); s.listen(); "
    "print('ready', flush=True); c, _ = s.accept(); d = c.recv(100); c.sendall(d.upper()); c.close(); os.unlink(p)"
)


def test_unix_socket_forwarding_both_ways(relay, job, tmp_path):
    host, iwd = job
    # -L to a unix socket in the job (VS Code's remoteServerListenOnSocket)
    remote = iwd / "vscode.sock"
    server = background(relay, host, f"python3 -c \"{UNIX_ECHO}\" {remote}")
    local = tmp_path / "local.sock"
    forward = None
    try:
        read_until(server.stdout, b"ready")
        forward = background(relay, "-N", "-L", f"{local}:{remote}", host)
        with connect_retry(str(local), family=socket.AF_UNIX) as sock:
            sock.sendall(b"hello socket")
            assert sock.recv(100) == b"HELLO SOCKET"
    finally:
        for process in (forward, server):
            if process:
                stop(process)
    # -R from a unix socket in the job to a local TCP server
    echo = EchoServer()
    remote_listen = iwd / "reverse.sock"
    reverse = background(relay, "-N", "-R", f"{remote_listen}:127.0.0.1:{echo.port}", host)
    try:
        script = ("import socket, sys, time; s = socket.socket(socket.AF_UNIX); "
                  "next(i for i in range(100) if s.connect_ex(sys.argv[1]) == 0 or time.sleep(0.1)); "
                  "s.sendall(b'over streamlocal'); print(s.recv(100).decode())")
        done = relay.ssh(host, f"python3 -c \"{script}\" {remote_listen}")
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"over streamlocal\n"
    finally:
        stop(reverse)
        echo.close()


@pytest.fixture
def agents(relay, tmp_path):
    """Start ssh-agents holding one key each, named by its comment: the env for ssh to use it."""
    started: list[subprocess.Popen] = []

    def start(comment: str) -> dict[str, str]:
        key = tmp_path / f"{comment}.key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], check=True)
        agent_sock = tmp_path / f"{comment}.sock"
        started.append(subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL))
        env = dict(relay.home.env, SSH_AUTH_SOCK=str(agent_sock))
        deadline = time.monotonic() + 10
        while not agent_sock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True)
        return env

    yield start
    for agent in started:
        agent.terminate()
        agent.wait()


def test_agent_forwarding_lists_the_clients_key(relay, job, agents):
    host, _ = job
    env = agents("relay-agent-test")
    done = subprocess.run(relay.ssh_argv("-A", host, "ssh-add -l"), env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"relay-agent-test" in done.stdout


@pytest.mark.parametrize("stderr", ["file", "terminal"])
def test_agent_forwarding_after_a_plain_connection(relay, job, agents, stderr):
    host, _ = job
    env = agents("after-plain")
    assert relay.ssh(host, "true").returncode == 0
    run = to_file if stderr == "file" else on_terminal
    done = run(relay.ssh_argv("-A", host, "ssh-add -l"), env)
    assert done.returncode == 0, done.stderr
    assert b"after-plain" in done.stdout and done.stderr == b"", done.stderr
    assert relay.negotiations() == 2  # the forwarding session got a connection of its own
    # and the shared one never had an agent: a later plain session is not handed a dead socket
    later = relay.ssh(host, 'echo "agent=$SSH_AUTH_SOCK"')
    assert later.stdout == b"agent=\n", later.stderr


def test_agent_forwarding_in_a_terminal(relay, job, agents):
    import pty

    host, _ = job
    env = agents("in-a-terminal")
    assert relay.ssh(host, "true").returncode == 0
    controller, terminal = pty.openpty()
    session = subprocess.Popen(relay.ssh_argv("-tt", "-A", host, "ssh-add -l"), env=env, stdin=terminal,
                               stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while select.select([controller], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: ssh closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert session.wait(10) == 0, output
        assert b"in-a-terminal" in output
    finally:
        if session.poll() is None:
            stop(session)
        os.close(controller)


# Lists the agent's keys once it is up, and again after a line on stdin.
LIST_TWICE = "ssh-add -l; echo listed; read line; ssh-add -l; echo listed"


def test_concurrent_clients_each_reach_only_their_own_agent(relay, job, agents):
    host, _ = job
    sessions = {}
    try:
        for name in ("agent-one", "agent-two"):
            env = agents(name)
            sessions[name] = subprocess.Popen(relay.ssh_argv("-A", host, LIST_TWICE), env=env,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            read_until(sessions[name].stdout, b"listed")
        outputs = {}
        for name, session in sessions.items():  # each lists again once both forward their agent
            out, err = session.communicate(b"\n", timeout=30)
            assert session.returncode == 0, err
            outputs[name] = out
        for name, other in (("agent-one", "agent-two"), ("agent-two", "agent-one")):
            assert name.encode() in outputs[name] and other.encode() not in outputs[name], outputs
    finally:
        for session in sessions.values():
            if session.poll() is None:
                stop(session)
    assert relay.negotiations() == 3


def test_a_plain_session_beside_a_forwarding_one_has_no_agent(relay, job, agents):
    host, _ = job
    forwarding = subprocess.Popen(relay.ssh_argv("-A", host, LIST_TWICE), env=agents("forwarded"),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(forwarding.stdout, b"listed")
        plain = relay.ssh(host, 'echo "agent=$SSH_AUTH_SOCK"; ssh-add -l; echo "listed $?"')
        assert plain.stdout.startswith(b"agent=\n") and b"forwarded" not in plain.stdout, plain
        out, err = forwarding.communicate(b"\n", timeout=30)
        assert b"forwarded" in out, err  # its second listing (read_until took the first)
    finally:
        if forwarding.poll() is None:
            stop(forwarding)


DISPLAY_CONNECT = (
    "import os, socket, time; d = os.environ['DISPLAY']; n = int(d.rsplit(':', 1)[1].split('.')[0]); "
    "s = socket.create_connection(('localhost', 6000 + n)); print('connected', d, flush=True); time.sleep(1)"
)


def fake_display(tmp_path: Path, relay) -> tuple[socket.socket, dict[str, str]]:
    """A listening X display on 127.0.0.1 (nothing speaks X on it): the socket and ssh's env."""
    display_listener = socket.socket()
    for number in range(50, 100):
        try:
            display_listener.bind(("127.0.0.1", 6000 + number))
            break
        except OSError:
            continue
    display_listener.listen(4)
    display_listener.settimeout(20)
    env = dict(relay.home.env, DISPLAY=f"127.0.0.1:{number}", XAUTHORITY=str(tmp_path / f"Xauthority{number}"))
    return display_listener, env


def test_x11_forwarding_opens_a_channel_to_the_clients_display(relay, job, tmp_path):
    host, _ = job
    display_listener, env = fake_display(tmp_path, relay)
    session = subprocess.Popen(relay.ssh_argv("-Y", host, f"python3 -c \"{DISPLAY_CONNECT}\""),
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        conn, _ = display_listener.accept()  # the relay routed the job's x11 channel to this client
        conn.close()
        out, err = session.communicate(timeout=30)
        assert b"connected" in out, err
    finally:
        if session.poll() is None:
            session.kill()
        display_listener.close()


def test_concurrent_x11_clients_each_reach_only_their_own_display(relay, job, tmp_path):
    host, _ = job
    command = f"echo up; read line; python3 -c \"{DISPLAY_CONNECT}\""
    displays, sessions = [], []
    try:
        for flag in ("-X", "-Y"):
            display_listener, env = fake_display(tmp_path, relay)
            displays.append(display_listener)
            sessions.append(subprocess.Popen(relay.ssh_argv(flag, host, command), env=env, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            read_until(sessions[-1].stdout, b"up")
        for display_listener, session in zip(displays, sessions):  # the first one asked first
            session.stdin.write(b"\n")
            session.stdin.flush()
            conn, _ = display_listener.accept()
            conn.close()
            out, err = session.communicate(timeout=30)
            assert b"connected" in out, err
        for display_listener in displays:  # nothing reached the other client's display
            display_listener.settimeout(0.5)
            with pytest.raises(socket.timeout):
                display_listener.accept()
        plain = relay.ssh(host, 'echo "display=$DISPLAY"')
        assert plain.stdout == b"display=\n", plain.stderr
    finally:
        for session in sessions:
            if session.poll() is None:
                stop(session)
        for display_listener in displays:
            display_listener.close()


def test_environment_exit_status_and_exit_signal(relay, job):
    host, _ = job
    done = relay.ssh("-o", "SetEnv=RELAY_TEST_VAR=through-the-relay", host, "echo $RELAY_TEST_VAR")
    assert done.stdout == b"through-the-relay\n", done.stderr
    killed = relay.ssh(host, "kill -KILL $$")
    assert killed.returncode == 255  # ssh reports a remote death by signal as 255
    assert relay.ssh("-T", host, "exit 42").returncode == 42


def test_pty_gets_window_size_and_window_changes(relay, job):
    import fcntl
    import pty
    import struct
    import termios

    host, _ = job
    pid, master = pty.fork()
    if pid == 0:
        os.environ.clear()
        os.environ.update(relay.home.env)
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.execvp("ssh", relay.ssh_argv("-tt", host))
    try:
        output = b""

        def expect(pattern: bytes) -> None:
            nonlocal output
            deadline = time.monotonic() + 20
            while not re.search(pattern, output):
                ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
                assert ready, output
                output += os.read(master, 4096)

        os.write(master, b"stty size; echo size-$((1+1))\n")
        expect(rb"30 100\r\n.*size-2")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
        time.sleep(0.5)
        os.write(master, b"stty size; echo again-$((2+1))\n")
        expect(rb"40 132\r\n.*again-3")
        os.write(master, b"exit 5\n")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 5


def test_keepalives_are_answered(relay, job):
    host, _ = job
    done = relay.ssh("-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2", host, "sleep 4; echo alive")
    assert done.returncode == 0 and done.stdout == b"alive\n", done.stderr


def test_job_host_keys_are_not_offered_to_clients(relay, job):
    host, _ = job
    known_hosts = Path(relay.home.env["XDG_STATE_HOME"]) / "condor-relay" / "known_hosts"
    before = known_hosts.read_bytes()
    done = relay.ssh("-o", "UpdateHostKeys=yes", host, "true")
    assert done.returncode == 0, done.stderr
    assert known_hosts.read_bytes() == before


VSCODE_SERVER = """\
python3 - <<'PY'
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"vscode server in the job"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print("listeningOn==%d==" % server.server_address[1], flush=True)
server.serve_forever()
PY
"""


def vscode_window(relay, host: str) -> tuple[subprocess.Popen, int, int]:
    """Start ssh as VS Code Remote-SSH does in local server mode; return (ssh, socks port, server port)."""
    socks_port = free_port()
    window = subprocess.Popen(
        relay.ssh_argv("-T", "-D", str(socks_port), "-o", "ConnectTimeout=15", host, "bash"),
        env=relay.home.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    window.stdin.write(VSCODE_SERVER.encode())
    window.stdin.flush()
    server_port = int(read_until(window.stdout, rb"listeningOn==(\d+)==")[1])
    return window, socks_port, server_port


def http_get_through_socks(socks_port: int, port: int) -> bytes:
    with socks5_connect(socks_port, "127.0.0.1", port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


def test_vscode_remote_ssh_local_server_mode(relay, job):
    host, _ = job
    windows = []
    try:
        for _ in range(2):  # a second window reuses the upstream
            window, socks_port, server_port = vscode_window(relay, host)
            windows.append(window)
            response = http_get_through_socks(socks_port, server_port)
            assert response.startswith(b"HTTP/1.0 200") and response.endswith(b"vscode server in the job")
        assert relay.negotiations() == 1
    finally:
        for window in windows:
            stop(window)


def test_ssh_config_lists_running_jobs_for_vscode(relay, job):
    host, _ = job
    sandbox.submit_job(relay.pool_dir, status="idle")
    printed = relay.run([str(Path(sys.executable).parent / "relayd"), "ssh-config", "print", "--jobs"])
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout.decode()
    assert f"\nHost {host}\n" in text and "job-2.0.condor" not in text
    config = relay.home.root / "with_jobs"
    config.write_text(text)
    done = relay.run(["ssh", "-F", str(config), host, "echo via-explicit-entry"])
    assert done.stdout == b"via-explicit-entry\n", done.stderr
