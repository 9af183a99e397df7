"""Bad input on the daemon's socket: garbage, oversized and half-sent requests, clients
that stall mid-request, flood before the OK or leave during a negotiation, and SSH clients
that speak nonsense after the banner, after key exchange and after authentication. Each
such connection is logged and dropped alone; a session open alongside carries every byte
through."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from harness import EchoSession, RelayProcess, wait_for
from rogue_ssh import MESSAGES, TRANSPORT_CASES

from relayd.common.protocol import format_connect
from relayd.daemon.control import REQUEST_TIMEOUT
from relayd.sandbox import pool as sandbox

MIB = 1024 * 1024
TOKEN = "0" * 32
ROGUE = Path(__file__).parents[1] / "rogue_ssh.py"

# request bytes -> the start of the one reply line the daemon sends before hanging up
BAD_REQUESTS = {
    b"GARBAGE\n": "ERROR unknown request 'GARBAGE'",
    b"\n": "ERROR unknown request ''",
    b"\xff\xfe\x00\x01\n": "ERROR request is not ASCII",
    b"CONNECT job-1.0.condor\n": "ERROR unknown request 'CONNECT'",
    b"CONNECT job\x01.condor 22\n": "ERROR unknown request 'CONNECT'",
    b"CONNECT job-1.0.condor 99999\n": "ERROR bad port '99999'",
    b"CONNECT job-1.0.condor -1\n": "ERROR bad port '-1'",
    b"CONNECT job-1.0.condor 22 extra\n": "ERROR bad CONNECT option 'extra'",
    b"C" * (10 * MIB): "ERROR request line too long",
    f"CAPTURE {TOKEN}\n{{}}\n".encode(): "ERROR capture came without the job's socket",
    f"CAPTURE {TOKEN}\n".encode() + b"x" * MIB: "ERROR capture too large",
    b"CAPTURE short\n": "ERROR unknown request 'CAPTURE'",
}


def assert_nothing_unhandled(relay: RelayProcess) -> None:
    log = relay.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_bad_requests_are_answered_and_dropped_while_a_session_carries_on(relay):
    host = relay.running_job()
    working = EchoSession(relay, host)
    fds_before = relay.open_fds()
    stalled = socket.socket(socket.AF_UNIX)  # half a request, then silence, for the whole test
    stalled.connect(str(relay.home.socket))
    stalled.sendall(b"CONNECT job-1.0.con")
    for request, reply in BAD_REQUESTS.items():
        lines = relay.exchange(request)
        assert len(lines) == 1 and lines[0].startswith(reply), (request[:40], lines)
        working.feed()
    bait, kept = socket.socketpair()
    lines = relay.exchange(f"CAPTURE {TOKEN}\n{{}}\n".encode(), [bait.fileno()])
    assert lines == ["ERROR no negotiation is waiting for this capture"]
    bait.close()
    assert kept.recv(1) == b""  # the daemon closed the socket it was handed
    assert relay.exchange(b"CONNECT job-1.0.condor") == []  # half-sent, then the client hung up
    # a well-formed request for a name that is no job's: OK, and the refusal comes over SSH
    with socket.socket(socket.AF_UNIX) as asking:
        asking.settimeout(20)
        asking.connect(str(relay.home.socket))
        asking.sendall(b"CONNECT www.example.org 22\n")
        assert asking.recv(11) == b"OK\nSSH-2.0-"
    stalled.close()
    working.finish()
    assert relay.ssh(host, "true").returncode == 0
    assert relay.negotiations() == 1
    assert wait_for(lambda: relay.open_fds() <= fds_before, timeout=5), (relay.open_fds(), fds_before)
    log = relay.log()  # a bad job name is logged as a failed connection, the rest as failed requests
    assert log.count("request failed: ") + log.count(": failed (") >= len(BAD_REQUESTS) + 1
    assert_nothing_unhandled(relay)


def test_clients_that_leave_during_negotiation_do_not_disturb_it(relay):
    sandbox.configure_pool(relay.pool_dir, negotiation_delay=1)
    host = relay.running_job()
    leavers = []
    for _ in range(3):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(relay.home.socket))
        sock.sendall(format_connect(host, 22))
        leavers.append(sock)
    assert leavers[0].recv(3) == b"OK\n"
    for sock in leavers:
        sock.close()
    done = relay.ssh(host, "echo reached")
    assert done.returncode == 0 and done.stdout == b"reached\n", done.stderr
    assert relay.negotiations() == 1  # the abandoned negotiation finished and served the next client
    assert not relay.zombies()
    assert_nothing_unhandled(relay)


@pytest.mark.parametrize("cases", [TRANSPORT_CASES, tuple(MESSAGES)], ids=["transport", "connection"])
def test_ssh_clients_speaking_nonsense_are_dropped_alone(relay, cases):
    host = relay.running_job()
    working = EchoSession(relay, host)
    rogue = relay.run([sys.executable, str(ROGUE), str(relay.home.socket), host, *cases], timeout=120)
    assert rogue.returncode == 0, rogue.stderr.decode()
    results = [json.loads(line) for line in rogue.stdout.splitlines()]
    assert [r["case"] for r in results] == list(cases)
    for result in results:
        assert result["dropped"], result
        if result["case"] in MESSAGES:  # dropped by the relay, saying why
            assert result["reason"] and f"dropped a client of job 1.0: {result['reason']}" in relay.log(), result
    assert b"Unhandled Error" not in rogue.stderr, rogue.stderr.decode()
    working.finish()
    assert relay.negotiations() == 1  # the job's connection never went down
    assert_nothing_unhandled(relay)


def read_to_end(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_stalled_requests_time_out_but_negotiations_and_sessions_do_not(relay):
    working = EchoSession(relay, relay.running_job())
    sandbox.configure_pool(relay.pool_dir, negotiation_delay=REQUEST_TIMEOUT + 2)
    slow = subprocess.Popen(relay.ssh_argv(relay.running_job(), "echo reached"), env=relay.home.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bait, kept = socket.socketpair()
    stalled = []
    for partial, fds in [(b"CONNECT job-1.0.con", []), (f"CAPTURE {TOKEN}\n".encode(), []),
                         (f"CAPTURE {TOKEN}\n{{\"ke".encode(), [bait.fileno()])]:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(REQUEST_TIMEOUT * 3)
        sock.connect(str(relay.home.socket))
        socket.send_fds(sock, [partial], fds)
        stalled.append(sock)
    bait.close()
    for sock in stalled:
        assert read_to_end(sock) == f"ERROR no complete request within {REQUEST_TIMEOUT:g} s\n".encode()
        sock.close()
    assert kept.recv(1) == b""  # the half-sent capture's socket was closed too
    out, err = slow.communicate(timeout=120)  # its negotiation outlasted the request timeout
    assert slow.returncode == 0 and out == b"reached\n", err
    working.feed()  # and so did the session's quiet spell
    working.finish()
    assert_nothing_unhandled(relay)


def plain_packet(payload: bytes) -> bytes:
    """An SSH packet as sent before the first key exchange (RFC 4253 6): unencrypted, no MAC."""
    padding = 8 - (5 + len(payload)) % 8
    padding += 8 if padding < 4 else 0
    return struct.pack(">LB", 1 + len(payload) + padding, padding) + payload + bytes(padding)


def name_lists(*names: bytes) -> bytes:
    return b"".join(struct.pack(">L", len(name)) + name for name in names)


IGNORE = plain_packet(b"\x02" + name_lists(b"\xff" * 32 * 1024))  # a misread length field is too large
UNMATCHABLE_KEXINIT = plain_packet(b"\x14" + os.urandom(16) + name_lists(*[b"none-such"] * 10) + bytes(5))


def test_ssh_flooded_while_the_job_is_negotiated_is_read_in_bounded_memory_and_in_order(relay):
    working = EchoSession(relay, relay.running_job())
    sandbox.configure_pool(relay.pool_dir, negotiation_delay=3)
    peak_before = relay.rss_kib("VmHWM")
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(60)
    sock.connect(str(relay.home.socket))
    sock.sendall(format_connect(relay.running_job(), 22) + b"SSH-2.0-flood\r\n")
    replies = sock.makefile("rb")
    assert replies.readline() == b"OK\n"  # at once: SSH starts while the job is negotiated
    sent = 0
    while sent < 32 * MIB:
        sock.sendall(IGNORE)
        sent += len(IGNORE)
    assert relay.exchange(b"STATUS\n")[0].startswith("OK "), "another client was not served"
    working.feed()
    assert relay.rss_kib("VmHWM") - peak_before < 16 * 1024
    # Every flooded packet reached the SSH transport whole and in order: it answers the KEXINIT
    # after them (a misframed packet would end it with "bad packet length" instead).
    sock.sendall(UNMATCHABLE_KEXINIT)
    assert b"couldn't match all kex parts" in replies.read()
    working.finish()
    assert_nothing_unhandled(relay)
