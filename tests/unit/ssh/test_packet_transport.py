"""The packet layer without sockets: sealing and opening, cutting reads into packets, strict kex."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.conch.ssh import keys
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from relayd.ssh import packetcrypto
from relayd.ssh.client_transport import DISCONNECT_LINGER, ClientTransport, ClientTransportFactory
from relayd.ssh.packet_transport import PacketTransport, _Algorithms

PAIRS = [(c, b"hmac-sha2-256") for c in packetcrypto.CIPHERS] + [(b"aes128-ctr", m) for m in packetcrypto.MACS]
KEY, IV, INTEGRITY = os.urandom(64), os.urandom(16), os.urandom(64)


def _keyed(cipher: bytes, mac: bytes) -> _Algorithms:
    """Both directions keyed alike, so that `opener` opens what `sealer` sealed."""
    algorithms = _Algorithms(cipher, cipher, mac, mac)
    algorithms.setKeys(IV, KEY, IV, KEY, INTEGRITY, INTEGRITY)
    return algorithms


def _open(opener: packetcrypto.Opener, seq: int, packet: bytes) -> tuple[int, bytes]:
    view = memoryview(packet)
    assert opener.length(seq, view[: opener.header]) == len(packet)
    return opener.open(seq, view)


@pytest.mark.parametrize(("cipher", "mac"), PAIRS)
def test_seal_then_open(cipher, mac):
    algorithms = _keyed(cipher, mac)
    for seq, size in enumerate([0, 1, 15, 16, 17, 32768, 100_000]):
        payload = os.urandom(size)
        packet = b"".join(algorithms.sealer.seal(seq, 94, payload))
        assert _open(algorithms.opener, seq, packet) == (94, payload)


@pytest.mark.parametrize(("cipher", "mac"), PAIRS)
def test_a_flipped_bit_is_refused(cipher, mac):
    algorithms = _keyed(cipher, mac)
    packet = bytearray(b"".join(algorithms.sealer.seal(7, 94, b"x" * 1000)))
    packet[-20] ^= 1  # in the MAC or tag, or just before it
    with pytest.raises(packetcrypto.BadMac):
        _open(algorithms.opener, 7, bytes(packet))


@pytest.mark.parametrize(("cipher", "mac"), PAIRS)
def test_a_packet_out_of_order_is_refused(cipher, mac):
    algorithms = _keyed(cipher, mac)
    algorithms.sealer.seal(0, 94, b"y" * 100)
    second = b"".join(algorithms.sealer.seal(1, 94, b"y" * 100))
    with pytest.raises(packetcrypto.BadPacket):
        _open(algorithms.opener, 0, second)


def test_an_oversized_length_is_refused_before_reading_on():
    opener = packetcrypto.Plain()
    with pytest.raises(packetcrypto.BadPacket, match="bad packet length"):
        opener.length(0, memoryview((packetcrypto.MAX_PACKET_LENGTH + 8).to_bytes(4, "big")))


class _Recorder(PacketTransport):
    """A transport past its version exchange that records the messages it receives."""

    def __init__(self, algorithms: _Algorithms) -> None:
        self.transport = StringTransport()
        self.gotVersion = True
        self.currentEncryptions = algorithms
        self._sealer = algorithms.sealer
        self.messages: list[tuple[int, bytes]] = []

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.messages.append((messageNum, payload))


@settings(max_examples=60, deadline=None)
@given(pair=st.sampled_from(PAIRS), sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 300_000), max_size=12))
def test_reads_cut_anywhere_give_the_same_packets(pair, sizes, cuts):
    sender = _keyed(*pair)
    payloads = [os.urandom(size) for size in sizes]
    stream = b"".join(b"".join(sender.sealer.seal(seq, 94, p)) for seq, p in enumerate(payloads))
    receiver = _Recorder(_keyed(*pair))
    bounds = [0, *sorted(c for c in cuts if c < len(stream)), len(stream)]
    for start, end in zip(bounds, bounds[1:]):
        receiver.dataReceived(stream[start:end])
    assert receiver.messages == [(94, p) for p in payloads]
    assert receiver.incomingPacketSequence == len(payloads)


def test_a_bad_mac_disconnects_and_dispatches_nothing_more():
    sender = _keyed(b"aes128-gcm@openssh.com", b"hmac-sha2-256")
    good = b"".join(sender.sealer.seal(0, 94, b"first"))
    bad = bytearray(b"".join(sender.sealer.seal(1, 94, b"second")))
    bad[-1] ^= 1
    third = b"".join(sender.sealer.seal(2, 94, b"third"))
    receiver = _Recorder(_keyed(b"aes128-gcm@openssh.com", b"hmac-sha2-256"))
    receiver.dataReceived(good + bytes(bad) + third)
    assert receiver.messages == [(94, b"first")]
    assert receiver.transport.disconnecting


def test_one_byte_at_a_time():
    sender = _keyed(b"aes128-ctr", b"hmac-sha2-512")
    payloads = [b"", b"a" * 40, b"b" * 5000]
    stream = b"".join(b"".join(sender.sealer.seal(seq, 94, p)) for seq, p in enumerate(payloads))
    receiver = _Recorder(_keyed(b"aes128-ctr", b"hmac-sha2-512"))
    for i in range(len(stream)):
        receiver.dataReceived(stream[i : i + 1])
    assert receiver.messages == [(94, p) for p in payloads]


def _plain(message: int, payload: bytes) -> bytes:
    return b"".join(packetcrypto.Plain().seal(0, message, payload))


def _kexinit(*kex: bytes) -> bytes:
    lists = [b",".join(kex), b"ssh-ed25519", b"aes128-ctr", b"aes128-ctr", b"hmac-sha2-256", b"hmac-sha2-256",
             b"none", b"none", b"", b""]
    return _plain(20, os.urandom(16) + b"".join(len(n).to_bytes(4, "big") + n for n in lists) + bytes(5))


class _HalfClosable(StringTransport):
    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


HOST_KEY = keys.Key(ed25519.Ed25519PrivateKey.generate())


def _server_fed(*packets: bytes, clock: Clock | None = None) -> ClientTransport:
    """The client leg's transport after an OpenSSH banner and `packets`, in one read."""
    server = ClientTransportFactory(clock or Clock(), HOST_KEY).buildProtocol(None)
    server.makeConnection(_HalfClosable())
    server.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n" + b"".join(packets))
    return server


IGNORE = _plain(2, b"\0\0\0\0")
STRICT_KEXINIT = _kexinit(b"curve25519-sha256", b"kex-strict-c-v00@openssh.com")


def test_strict_kex_refuses_anything_but_key_exchange_before_newkeys():
    wrote = _server_fed(STRICT_KEXINIT, IGNORE).transport
    assert wrote.write_closed and b"strict kex: unexpected message 2" in wrote.value()


def test_strict_kex_refuses_a_kexinit_that_is_not_the_first_packet():
    wrote = _server_fed(IGNORE, STRICT_KEXINIT).transport
    assert wrote.write_closed and b"KEXINIT was not the first packet" in wrote.value()


def test_a_disconnected_client_is_half_closed_and_ignored_until_it_hangs_up_or_lingers():
    clock = Clock()
    server = _server_fed(IGNORE, STRICT_KEXINIT, clock=clock)
    wrote = server.transport
    assert wrote.write_closed and not wrote.disconnecting  # ssh can still write, and read the reason
    sent = wrote.value()
    server.dataReceived(_kexinit(b"curve25519-sha256") + b"\xff" * 4096)  # a bad length, were it read
    assert wrote.value() == sent  # acted on nothing
    clock.advance(DISCONNECT_LINGER)
    assert wrote.disconnected  # aborted: a client that reads nothing cannot hold the relay's unsent bytes


def test_packets_in_the_read_with_the_banner_do_not_count_as_an_overlong_version():
    wrote = _server_fed(*[IGNORE] * 1000, _kexinit(b"curve25519-sha256")).transport
    assert not wrote.write_closed and b"kex-strict-s-v00@openssh.com" in wrote.value()


def test_without_strict_kex_a_message_before_kexinit_is_tolerated():
    wrote = _server_fed(IGNORE, _kexinit(b"curve25519-sha256")).transport
    assert not wrote.write_closed and b"kex-strict-s-v00@openssh.com" in wrote.value()


def _after_key_exchange(**limits: int) -> _Recorder:
    receiver = _Recorder(_keyed(b"aes128-gcm@openssh.com", b"hmac-sha2-256"))
    receiver._initial_kex = False
    for name, value in limits.items():
        setattr(receiver, name, value)
    return receiver


def test_a_key_re_exchange_starts_after_rekey_bytes_received():
    sender = _keyed(b"aes128-gcm@openssh.com", b"hmac-sha2-256")
    receiver = _after_key_exchange(rekey_bytes=10_000)
    receiver.dataReceived(b"".join(b"".join(sender.sealer.seal(seq, 94, b"x" * 4000)) for seq in range(2)))
    assert receiver._keyExchangeState == receiver._KEY_EXCHANGE_NONE
    receiver.dataReceived(b"".join(sender.sealer.seal(2, 94, b"x" * 4000)))
    assert receiver._keyExchangeState == receiver._KEY_EXCHANGE_REQUESTED  # our KEXINIT went out
    opener = _keyed(b"aes128-gcm@openssh.com", b"hmac-sha2-256").opener
    assert _open(opener, 0, receiver.transport.value())[0] == 20


def test_a_peer_that_never_rekeys_is_dropped_before_a_sequence_number_wraps():
    sender = _keyed(b"aes128-gcm@openssh.com", b"hmac-sha2-256")
    receiver = _after_key_exchange(max_packets_per_key=3)
    receiver._keyExchangeState = receiver._KEY_EXCHANGE_REQUESTED  # our KEXINIT is unanswered
    receiver.dataReceived(b"".join(b"".join(sender.sealer.seal(seq, 94, b"x")) for seq in range(5)))
    assert len(receiver.messages) == 3 and receiver.transport.disconnecting


def test_a_peer_still_sent_a_lot_while_it_reads_nothing_is_dropped():
    peer = _after_key_exchange()
    peer.pauseProducing()  # its socket's write buffer passed IO_SIZE
    for _ in range(4 * 32):
        peer.sendPacket(82, b"x" * 32768)  # e.g. answers to requests it floods
    assert not peer.transport.disconnecting
    peer.resumeProducing()  # drained: the count starts again
    peer.pauseProducing()
    for _ in range(4 * 32 + 1):
        peer.sendPacket(82, b"x" * 32768)
    assert peer.transport.disconnecting
