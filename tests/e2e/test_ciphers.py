"""Every cipher and MAC of relayd.ssh.packetcrypto against real OpenSSH, on both legs.

Client leg: `ssh -c CIPHER` / `-m MAC` through the daemon. Job leg: the upstream transport
against an sshd prepared as the sandbox starter prepares a job's, with its Ciphers and MACs
lines set to the algorithm under test; and with HTCondor's own lines, the pair a real
starter's sshd leaves it.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from harness import Home, RelayProcess, running_relay, sandbox_pool
from twisted.conch.ssh import keys
from twisted.internet.epollreactor import EPollReactor

from relayd.condor.negotiate import Credentials
from relayd.relay.wire import (
    CHANNEL_CLOSE,
    CHANNEL_DATA,
    CHANNEL_EOF,
    CHANNEL_OPEN,
    CHANNEL_OPEN_CONFIRMATION,
    CHANNEL_REQUEST,
)
from relayd.relay.wire import (
    string as _string,
)
from relayd.sandbox import pool as sandbox
from relayd.sandbox.jobuser import JobUser
from relayd.sandbox.layout import PoolLayout
from relayd.sandbox.starter import SSHD, SshdSetup, prepare_sshd_dir
from relayd.ssh import packetcrypto
from relayd.ssh.job_keys import NegotiatedKey
from relayd.ssh.job_transport import UpstreamConnection

AEAD = [c for c in packetcrypto.CIPHERS if packetcrypto.is_aead(c)]
NON_AEAD = [c for c in packetcrypto.CIPHERS if not packetcrypto.is_aead(c)]
DATA = os.urandom(1024 * 1024 + 3)  # 33 packets of 32 KiB each way


def _names(values: list[bytes]) -> list[str]:
    return [v.decode() for v in values]


# -- the client leg: OpenSSH's ssh through the daemon ---------------------------------------


@pytest.fixture(scope="module")
def job_via_relay(tmp_path_factory) -> tuple[RelayProcess, str]:
    """One daemon and one job for all the client-leg tests: (relay, host name)."""
    with sandbox_pool() as pool_dir, running_relay(Home.make(tmp_path_factory.mktemp("ciphers")), pool_dir) as relay:
        cluster, proc = sandbox.submit_job(pool_dir, status="running")
        yield relay, f"job-{cluster}.{proc}.condor"


def _round_trip(job_via_relay: tuple[RelayProcess, str], *options: str) -> str:
    """sha256 a MiB through `ssh -v OPTIONS HOST sha256sum`; returns ssh's log."""
    relay, host = job_via_relay
    done = subprocess.run(relay.ssh_argv("-v", *options, host, "sha256sum"), env=relay.home.env,
                          input=DATA, capture_output=True, timeout=60)
    log = done.stderr.decode(errors="replace")
    assert done.returncode == 0, log
    assert done.stdout.split()[0].decode() == hashlib.sha256(DATA).hexdigest()
    return log


@pytest.mark.parametrize("cipher", _names(packetcrypto.CIPHERS))
def test_client_leg_cipher(job_via_relay, cipher):
    log = _round_trip(job_via_relay, "-c", cipher)
    assert f"kex: client->server cipher: {cipher}" in log


@pytest.mark.parametrize("mac", _names(packetcrypto.MACS))
def test_client_leg_mac(job_via_relay, mac):
    log = _round_trip(job_via_relay, "-c", "aes128-ctr", "-m", mac)
    assert f"kex: client->server cipher: aes128-ctr MAC: {mac}" in log


@pytest.mark.parametrize("cipher", _names([*AEAD, b"aes128-ctr"]))
def test_client_leg_strict_kex_and_rekeys_mid_transfer(job_via_relay, cipher):
    """OpenSSH rekeys every 64 KiB here; with strict kex sequence numbers restart each time."""
    log = _round_trip(job_via_relay, "-vvv", "-c", cipher, "-m", "hmac-sha2-256-etm@openssh.com",
                      "-o", "RekeyLimit=64K")
    assert "will use strict KEX ordering" in log
    assert len(re.findall("SSH2_MSG_KEXINIT sent", log)) > 10
    assert len(re.findall("resetting read seqnr", log)) > 10


# -- the job leg: Conch's client transport against a job's sshd --------------------------------


@pytest.fixture(scope="module")
def job_sshd() -> tuple[JobUser, SshdSetup, Path]:
    """A job's sshd directory, made once (RSA key generation takes a while)."""
    with sandbox_pool() as pool_dir:
        cluster, proc = sandbox.submit_job(pool_dir, status="running")
        layout = PoolLayout(pool_dir)
        ad = sandbox.load_ads(pool_dir)[0]
        user, setup = prepare_sshd_dir(layout, layout.settings(), ad, slot_name=ad["RemoteHost"])
        yield user, setup, layout.scratch_dir(cluster, proc)


def _sshd_config(setup: SshdSetup, ciphers: str | None, macs: str | None) -> Path:
    """The job's sshd_config, with other Ciphers or MACs lines where given."""
    text = (setup.sshd_dir / "sshd_config").read_text()
    if ciphers:
        text = re.sub(r"(?m)^Ciphers .*$", f"Ciphers {ciphers}", text)
    if macs:
        text = re.sub(r"(?m)^MACs .*$", f"MACs {macs}", text)
    path = setup.sshd_dir / f"sshd_config.{ciphers}.{macs}"
    path.write_text(text)
    return path


def _start_sshd(user: JobUser, setup: SshdSetup, scratch: Path, config: Path) -> tuple[socket.socket, subprocess.Popen]:
    """`sshd -i` as the job user on one end of a socket pair; returns the other end."""
    ours, theirs = socket.socketpair()
    as_user = dict(user=user.uid, group=user.gid, extra_groups=list(user.groups)) if os.geteuid() == 0 else {}
    with theirs, open(setup.sshd_dir / "sshd.log", "ab") as log:
        sshd = subprocess.Popen([SSHD, "-i", "-e", "-f", str(config)], stdin=theirs, stdout=theirs, stderr=log,
                                cwd=scratch, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, **as_user)
    return ours, sshd


class _Exec:
    """Runs one command over an UpstreamConnection: open a session, exec, send, collect."""

    def __init__(self, reactor: EPollReactor, command: bytes, data: bytes) -> None:
        self.reactor, self.command, self.data = reactor, command, data
        self.output = bytearray()
        self.connection = UpstreamConnection(reactor, self.on_message, lambda conn, reason: reactor.stop())
        self.failure: object = None

    def start(self, credentials: Credentials) -> None:
        ready = self.connection.start(credentials)
        ready.addCallbacks(self.opened, self.failed)

    def failed(self, failure: object) -> None:
        self.failure = failure
        self.reactor.stop()

    def opened(self, connection: UpstreamConnection) -> None:
        connection.send(CHANNEL_OPEN, _string(b"session") + struct.pack(">LLL", 0, 16 << 20, 32768))

    def on_message(self, connection: UpstreamConnection, msgnum: int, payload: bytes) -> None:
        if msgnum == CHANNEL_OPEN_CONFIRMATION:
            self.server = payload[4:8]
            connection.send(CHANNEL_REQUEST, self.server + _string(b"exec") + b"\0" + _string(self.command))
            for start in range(0, len(self.data), 32768):
                connection.send(CHANNEL_DATA, self.server + _string(self.data[start : start + 32768]))
            connection.send(CHANNEL_EOF, self.server)
        elif msgnum == CHANNEL_DATA:
            self.output += payload[8:]
        elif msgnum == CHANNEL_CLOSE:
            connection.send(CHANNEL_CLOSE, self.server)
            connection.close("done")


def _cat_through_upstream(job_sshd, ciphers: str | None = None, macs: str | None = None) -> UpstreamConnection:
    user, setup, scratch = job_sshd
    sock, sshd = _start_sshd(user, setup, scratch, _sshd_config(setup, ciphers, macs))
    credentials = Credentials(setup.remote_user, keys.Key.fromString(setup.private_key),
                              NegotiatedKey(keys.Key.fromString(setup.public_key)), sock)
    reactor = EPollReactor()
    run = _Exec(reactor, b"cat", DATA)
    reactor.callWhenRunning(run.start, credentials)
    reactor.callLater(30, reactor.stop)
    reactor.run(installSignalHandlers=False)
    sshd.wait(10)
    assert run.failure is None, run.failure
    assert bytes(run.output) == DATA, (setup.sshd_dir / "sshd.log").read_text()[-2000:]
    return run.connection


@pytest.mark.parametrize("cipher", _names(packetcrypto.CIPHERS))
def test_job_leg_cipher(job_sshd, cipher):
    algorithms = _cat_through_upstream(job_sshd, ciphers=cipher)._transport.currentEncryptions  # type: ignore[union-attr]
    assert algorithms.outCipType == algorithms.inCipType == cipher.encode()


@pytest.mark.parametrize("mac", _names(packetcrypto.MACS))
def test_job_leg_mac(job_sshd, mac):
    algorithms = _cat_through_upstream(job_sshd, ciphers="aes128-ctr", macs=mac)._transport.currentEncryptions  # type: ignore[union-attr]
    assert algorithms.outMACType == algorithms.inMACType == mac.encode()


def test_job_leg_with_htcondors_sshd_config_uses_the_fastest_pair_it_allows(job_sshd):
    """HTCondor's template allows aes*-ctr and hmac-sha2-256/512: SHA-256 is the cheaper."""
    algorithms = _cat_through_upstream(job_sshd)._transport.currentEncryptions  # type: ignore[union-attr]
    assert (algorithms.outCipType, algorithms.outMACType) == (b"aes128-ctr", b"hmac-sha2-256")
