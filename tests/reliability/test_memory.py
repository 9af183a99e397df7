"""Peers that try to make the daemon hold what they send: a job sshd that ignores its window
while ssh is stopped, a client that grants a huge window and reads nothing, a client message
that the job's sshd would take its whole connection down for, and a client that cancels
another client's remote forward. Each is stopped alone, within a bounded memory, while the
other sessions carry on."""

from __future__ import annotations

import getpass
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import EchoSession, wait_for
from netutil import EchoServer

from relayd.sandbox import pool as sandbox

ROGUE_CLIENT = Path(__file__).parents[1] / "rogue_ssh.py"
ROGUE_SSHD = Path(__file__).parents[1] / "rogue_sshd.py"
RSS_LIMIT_KIB = 100 * 1024
JOB_CONNECT = (
    "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
    "s.sendall(b'ping through -R'); print(s.recv(100).decode())"
)


def peak_rss_while(relay, process: subprocess.Popen, seconds: float) -> int:
    """The daemon's largest resident memory (KiB), sampled while `process` runs (at most `seconds`)."""
    peak, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        peak = max(peak, relay.rss_kib())
        time.sleep(0.05)
    return max(peak, relay.rss_kib())


def rogue_client(relay, host: str, case: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROGUE_CLIENT), str(relay.home.socket), host, case],
                            env=relay.home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def report(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


@pytest.fixture
def rogue_sshd(tmp_path):
    host_key = tmp_path / "rogue_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    keypair = tmp_path / "keypair.pem"  # what HTCondor would manage; the rogue takes any key
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keypair)], check=True)
    process = subprocess.Popen([sys.executable, str(ROGUE_SSHD), str(host_key)], stdout=subprocess.PIPE)
    try:
        port = int(process.stdout.readline())
        yield process, port, keypair
    finally:
        process.kill()
        process.wait()


def test_a_job_sshd_that_ignores_the_window_is_dropped_alone(relay, rogue_sshd):
    sshd, port, keypair = rogue_sshd
    relay.stop()
    relay.configure(ec2_port=port)
    relay.start()
    working = EchoSession(relay, relay.running_job())  # another job, through the same daemon
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running", JobUniverse=9,
                                       GridResource="ec2 https://ec2.us-east-1.amazonaws.com/",
                                       EC2RemoteVirtualMachineName="127.0.0.1", EC2KeyPairFile=str(keypair))
    out = relay.home.root / "flood.out"
    with open(out, "wb") as sink:
        ssh = subprocess.Popen(relay.ssh_argv("-l", getpass.getuser(), f"job-{cluster}.{proc}.condor", "flood"),
                               env=relay.home.env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: out.stat().st_size > 0 or ssh.poll() is not None, timeout=20)
        if ssh.poll() is None:
            ssh.send_signal(signal.SIGSTOP)  # reads nothing more, as in the review's experiment
        peak = peak_rss_while(relay, sshd, 3.0)
        assert peak < RSS_LIMIT_KIB, f"daemon grew to {peak} KiB"
        assert sshd.stdout.readline() == b"connection lost\n"  # the rogue leg was dropped
        assert "broke the protocol: peer ignored channel window" in relay.log()
    finally:
        ssh.send_signal(signal.SIGCONT)
        ssh.kill()
        ssh.wait()
    working.feed()
    working.finish()


def test_a_client_that_grants_a_huge_window_and_reads_nothing_holds_little(relay):
    host = relay.running_job()
    working = EchoSession(relay, host)
    rogue = rogue_client(relay, host, "huge-window-unread")
    peak = peak_rss_while(relay, rogue, 10.0)
    assert peak < RSS_LIMIT_KIB, f"daemon grew to {peak} KiB"
    assert report(rogue)["case"] == "huge-window-unread"
    working.feed()
    working.finish()


def test_a_message_the_jobs_sshd_would_refuse_drops_only_its_client(relay):
    host = relay.running_job()
    working = EchoSession(relay, host)  # on the same upstream connection
    result = report(rogue_client(relay, host, "global-request-too-long"))
    assert result["dropped"] and "longer than" in result["reason"], result
    working.feed()
    working.finish()
    assert relay.negotiations() == 1


def test_a_client_cannot_cancel_another_clients_remote_forward(relay):
    host = relay.running_job()
    echo = EchoServer()
    forward = subprocess.Popen(relay.ssh_argv("-N", "-R", f"127.0.0.1:0:127.0.0.1:{echo.port}", host),
                               env=relay.home.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        line = b""
        while b"Allocated port" not in line:
            line = forward.stderr.readline()
            assert line, "ssh -R ended before its forward was set up"
        remote_port = int(line.split()[2])
        result = report(rogue_client(relay, host, f"cancel-tcpip-forward:127.0.0.1:{remote_port}"))
        assert result["reply"] == "failure", result
        done = relay.ssh(host, f"python3 -c \"{JOB_CONNECT}\" {remote_port}")
        assert done.returncode == 0 and done.stdout == b"ping through -R\n", done.stderr
    finally:
        forward.terminate()
        forward.wait(10)
        echo.close()
