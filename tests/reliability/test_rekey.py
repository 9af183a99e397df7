"""Rekeying by volume, which Conch leaves to the peer: with the threshold lowered through
the daemon's config, a transfer through real ssh and sshd rekeys both legs many times and
every byte arrives."""

from __future__ import annotations

import hashlib
import os

REKEY_BYTES = 4 * 1024 * 1024
PAYLOAD = os.urandom(48 * 1024 * 1024 + 5)


def test_both_legs_rekey_by_volume_and_the_bytes_arrive(relay):
    relay.stop()
    relay.configure(rekey_bytes=REKEY_BYTES)
    relay.start()
    host = relay.running_job()
    up = relay.ssh(host, "cat > upload.bin && sha256sum upload.bin", input=PAYLOAD, timeout=120)
    assert up.returncode == 0, up.stderr
    assert up.stdout.split()[0].decode() == hashlib.sha256(PAYLOAD).hexdigest()
    down = relay.ssh(host, "cat upload.bin", timeout=120)
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(down.stdout).digest() == hashlib.sha256(PAYLOAD).digest()
    log = relay.log()
    # each direction of each transfer: at least one rekey per REKEY_BYTES, on both legs
    expected = 2 * (len(PAYLOAD) // REKEY_BYTES) * 3 // 4
    for side in ("client connection", "upstream connection"):
        assert log.count(f"{side}: key re-exchange after") >= expected, (side, log[-3000:])
    # Conch's client transport calls connectionSecure at every NEWKEYS: a re-key must not ask
    # the job's sshd for the userauth service again (it answers UNIMPLEMENTED).
    assert "unimplemented" not in log, log[-3000:]
