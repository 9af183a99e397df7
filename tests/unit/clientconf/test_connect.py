"""The helper runs before every ssh connection: it must stay stdlib-only and quick to start."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import RELAYD

from clientconf.connect import _parse, main

HELPER = str(Path(RELAYD).with_name("condor-relay-connect"))  # what the generated ProxyCommand runs
# Each costs the helper a millisecond or more (socket.py builds enums, re compiles its parser).
SLOW = {"argparse", "dataclasses", "enum", "json", "pathlib", "re", "shutil", "socket", "subprocess", "typing"}


def _imported(argv: list[str], cwd: Path, **streams: object) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The run of `python -X importtime ARGV` and the modules it imported."""
    streams.setdefault("stdout", subprocess.PIPE)
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], stderr=subprocess.PIPE, text=True, cwd=cwd,
                          **streams)
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    return done, {line.rsplit("|", 1)[1].strip() for line in lines[1:]}


@pytest.mark.parametrize("helper", [
    [HELPER],
    ["-c", "import sys; from relayd.cli.main import main; sys.exit(main(sys.argv[1:]))", "connect"],  # `relayd connect`
], ids=["condor-relay-connect", "relayd connect"])
def test_the_helper_imports_only_light_standard_modules(relay, tmp_path, helper):
    """On its path to success, as ssh runs it: stdin and stdout one socket that takes the descriptor."""
    host = relay.running_job()
    ssh_end, helper_end = socket.socketpair()
    with ssh_end, helper_end:
        done, modules = _imported([*helper, "--socket", str(relay.home.socket), host, "22"], tmp_path,
                                  stdin=helper_end, stdout=helper_end)
        assert done.returncode == 0, done.stderr
        _, fds, _, _ = socket.recv_fds(ssh_end, 1, 1)
        with socket.socket(fileno=fds[0]) as relayed:
            assert relayed.recv(8) == b"SSH-2.0-"  # the daemon's SSH, on the very socket it said OK on
    new = modules - _imported(["-c", "pass"], tmp_path)[1]  # beyond what the interpreter's start-up imports
    ours = {"relayd", "clientconf"}
    assert {m for m in new if m.split(".")[0] not in sys.stdlib_module_names | ours} == set()
    assert {m for m in new if m.split(".")[0] in ours} - {"relayd.cli", "relayd.cli.main"} == {
        "relayd", "relayd.common", "relayd.common.errors", "relayd.common.humanize", "relayd.common.paths", "relayd.common.peercred", "relayd.common.protocol",
        "clientconf", "clientconf.autostart", "clientconf.connect", "clientconf.progress",
    }
    assert new & SLOW == set()


@pytest.mark.parametrize(("argv", "error"), [
    ([], "the following arguments are required: host"),
    (["h", "0"], "argument port: invalid port '0' (1 to 65535)"),
    (["h", "22", "x"], "unrecognized arguments: x"),
    (["--sock", "s", "h"], "unrecognized argument: --sock"),
    (["--stdio=1", "h"], "unrecognized argument: --stdio=1"),
    (["h", "--user"], "argument --user: expected one argument"),
])
def test_bad_command_lines_exit_2_with_the_usage(capsys, argv, error):
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "usage: relayd connect [-h] [--socket SOCKET] [--stdio] [--no-start] [--user USER] [--known-hosts] host [port]",
        f"relayd connect: error: {error}",
    ]


def test_options_go_anywhere_in_either_form(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _parse(["--user=-me", "job-1.0.condor", "--socket=absent.sock", "--no-start", "--", "22"])
    assert args == (("job-1.0.condor", 22, str(tmp_path / "absent.sock"), False, False, "-me", False))
    assert _parse(["--user", "u", "h", "--stdio", "--socket", "s"]).user == "u"
    assert main(["--help"]) == 0
    assert "--no-start       fail instead of starting the daemon" in capsys.readouterr().out


# -- handing the connection over: pass the socket to OpenSSH, copy for everyone else ----------

def _helper(relay, host: str, stdin, stdout) -> subprocess.Popen:
    return subprocess.Popen([HELPER, "--socket", str(relay.home.socket), host, "22"], env=relay.home.env,
                            stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)


def _stop(helper: subprocess.Popen) -> None:
    helper.kill()
    helper.wait()
    for pipe in (helper.stdin, helper.stdout, helper.stderr):
        if pipe is not None:
            pipe.close()


def _read_version(read) -> bytes:
    """The relay's SSH version line, read through `read`."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = read(1)
        assert chunk, "the connection ended before the relay's version line"
        line += chunk
    return line


def test_the_helper_copies_for_a_client_that_gives_it_pipes_and_exits_when_the_client_closes(relay):
    """As paramiko, asyncssh, sshj and Windows' ssh start it; the client's EOF reaches the relay."""
    helper = _helper(relay, relay.running_job(), subprocess.PIPE, subprocess.PIPE)
    try:
        assert _read_version(helper.stdout.read).startswith(b"SSH-2.0-")
        helper.stdin.close()  # the half-close reaches the relay, which hangs up: the helper ends
        helper.stdout.read()  # the rest of what the relay sent (its KEXINIT), up to its end
        assert helper.wait(10) == 0, helper.stderr.read()
    finally:
        _stop(helper)


def test_the_helper_copies_for_a_socketpair_its_client_already_wrote_to(relay):
    """One socketpair end as stdin and stdout, as libssh gives, whose client speaks first: the
    byte that carries a descriptor would be taken as SSH data, so the helper must copy."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(b"SSH-2.0-libssh_0.10\r\n")
        helper = _helper(relay, relay.running_job(), theirs, theirs)
        theirs.close()
        try:
            message, fds, _, _ = socket.recv_fds(ours, 64, 4)
            assert (message[:8], fds) == (b"SSH-2.0-", [])
            ours.shutdown(socket.SHUT_WR)
            assert helper.wait(10) == 0, helper.stderr.read()
        finally:
            _stop(helper)


def test_the_helper_passes_the_socket_to_a_waiting_openssh(relay):
    """ProxyUseFdpass: one silent socketpair end as stdin and stdout; the relay comes as a descriptor."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        helper = _helper(relay, relay.running_job(), theirs, theirs)
        theirs.close()
        try:
            message, fds, _, _ = socket.recv_fds(ours, 1, 1)
            assert (message, len(fds)) == (b"\0", 1)
            assert helper.wait(10) == 0, helper.stderr.read()
            with socket.socket(fileno=fds[0]) as relayed:
                assert _read_version(relayed.recv).startswith(b"SSH-2.0-")
        finally:
            _stop(helper)
