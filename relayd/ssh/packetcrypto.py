"""SSH binary packet protection (RFC 4253 section 6) with the algorithms OpenSSH prefers.

Conch offers only CTR/CBC ciphers with encrypt-and-MAC HMACs. This adds the AEAD ciphers
(chacha20-poly1305@openssh.com, aes128-gcm@openssh.com, aes256-gcm@openssh.com) and the
encrypt-then-MAC HMACs (hmac-sha2-256-etm@openssh.com ...), all from `cryptography`.
Conch's CBC ciphers, 3DES and hmac-md5 are left out: OpenSSH has not offered them by
default for years, and HTCondor's sshd template allows only aes*-ctr.

Each direction of a connection has a `Sealer` (outgoing) or an `Opener` (incoming) made
from the negotiated names and the keys derived by the key exchange. Both work on whole
packets with as few copies as Python allows; they hold no I/O and are tested on their own.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from relayd.common.errors import BadPacket

# OpenSSH's PACKET_MAX_SIZE: the largest packet_length a peer may announce.
MAX_PACKET_LENGTH = 256 * 1024
_LENGTH = struct.Struct(">L")
_ZERO_BLOCK = bytes(64)  # one ChaCha20 block
T = TypeVar("T")
_HEADER = struct.Struct(">LBB")  # packet_length, padding_length, message number


class BadMac(BadPacket):
    """The packet's MAC or AEAD tag does not match."""


@dataclass(frozen=True)
class _CipherSpec:
    key_size: int
    iv_size: int
    kind: str  # "ctr", "gcm" or "chacha"


@dataclass(frozen=True)
class _MacSpec:
    hash_name: str
    size: int
    etm: bool


_CIPHERS = {
    b"aes128-gcm@openssh.com": _CipherSpec(16, 12, "gcm"),
    b"aes256-gcm@openssh.com": _CipherSpec(32, 12, "gcm"),
    b"chacha20-poly1305@openssh.com": _CipherSpec(64, 0, "chacha"),
    b"aes128-ctr": _CipherSpec(16, 16, "ctr"),
    b"aes192-ctr": _CipherSpec(24, 16, "ctr"),
    b"aes256-ctr": _CipherSpec(32, 16, "ctr"),
}
_MACS = {
    b"hmac-sha2-256-etm@openssh.com": _MacSpec("sha256", 32, True),
    b"hmac-sha2-512-etm@openssh.com": _MacSpec("sha512", 64, True),
    b"hmac-sha2-256": _MacSpec("sha256", 32, False),
    b"hmac-sha2-512": _MacSpec("sha512", 64, False),
    b"hmac-sha1-etm@openssh.com": _MacSpec("sha1", 20, True),
    b"hmac-sha1": _MacSpec("sha1", 20, False),
}

# In order of preference, which only counts where the relay is the client (the upstream
# leg): AES-GCM is the fastest with AES-NI, SHA-256 the fastest HMAC with SHA extensions.
# A real starter's sshd allows only aes*-ctr with hmac-sha2-256/512, so that pair is the
# one the upstream leg uses on a real pool.
CIPHERS: list[bytes] = list(_CIPHERS)
MACS: list[bytes] = list(_MACS)


def is_aead(cipher: bytes) -> bool:
    """AEAD ciphers authenticate by themselves: the negotiated MAC goes unused."""
    return _CIPHERS[cipher].kind in ("gcm", "chacha")


class Sealer(Protocol):
    block: int

    def seal(self, seq: int, message: int, payload: bytes) -> list[bytes]:
        """The wire bytes of one packet, in pieces to write in order (joined once, by
        the transport's write buffer, not per packet)."""


class Opener(Protocol):
    header: int  # bytes needed before `length` can tell the packet's size

    def length(self, seq: int, head: memoryview) -> int:
        """The wire size of the packet starting with `head`; call once per packet."""

    def open(self, seq: int, packet: memoryview) -> tuple[int, bytes]:
        """(message number, payload after it) of one whole packet; raises BadPacket."""


def _padding(size: int, block: int, unencrypted_length: bool) -> int:
    """The padding a payload of `size` bytes (after the message number) gets: at least 4
    bytes, making the padded part a multiple of the block size; with EtM and AEAD modes
    the length field stays clear and is left out of that sum."""
    padding = block - (size + (2 if unencrypted_length else 6)) % block
    return padding + block if padding < 4 else padding


class _PaddingPool:
    """Random padding, drawn from the kernel 64 KiB at a time: a getrandom call per packet
    was 4% of the relay's time in a bulk transfer. A forked child starts a pool of its own."""

    SIZE = 64 * 1024

    def __init__(self) -> None:
        self._pool = b""
        self._used = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._used = b"", 0

    def take(self, size: int) -> bytes:
        if self._used + size > len(self._pool):
            self._pool, self._used = os.urandom(self.SIZE), 0
        self._used += size
        return self._pool[self._used - size : self._used]


_random_padding = _PaddingPool().take


def _frame_ends(message: int, payload: bytes, block: int, unencrypted_length: bool) -> tuple[bytes, bytes]:
    """What goes before the payload (packet_length, padding_length, message number) and
    after it (random padding, at least 4 bytes).

    Stream ciphers (CTR, ChaCha20) take the three parts one by one, so a 32 KiB payload
    is not copied into a frame.
    """
    padding = _padding(len(payload), block, unencrypted_length)
    return _HEADER.pack(len(payload) + padding + 2, padding, message), _random_padding(padding)


def _frame(message: int, payload: bytes, block: int, unencrypted_length: bool) -> bytes:
    head, tail = _frame_ends(message, payload, block, unencrypted_length)
    return b"".join((head, payload, tail))


def _checked_length(packet_length: int, block: int, unencrypted_length: bool) -> int:
    if not 5 <= packet_length <= MAX_PACKET_LENGTH:
        raise BadPacket(f"bad packet length {packet_length}")
    if (packet_length if unencrypted_length else packet_length + 4) % block:
        raise BadPacket(f"packet length {packet_length} is not a multiple of the block size {block}")
    return packet_length


def _unpad(plain: bytes, start: int, packet_length: int, more: bytes = b"") -> tuple[int, bytes]:
    """(message number, payload) from padding_length, payload and padding at `plain[start:]`,
    continued in `more` where the plain text was decrypted in two parts."""
    padding = plain[start]
    end = start + packet_length - padding
    if padding < 4 or end <= start + 1:
        raise BadPacket("bad padding length")
    if end <= len(plain):
        return plain[start + 1], plain[start + 2 : end]
    return plain[start + 1], b"".join((memoryview(plain)[start + 2 :], memoryview(more)[: end - len(plain)]))


class Plain:
    """No encryption and no MAC: both directions before the first key exchange ends."""

    block = 8
    header = 4

    def __init__(self) -> None:
        self._length = 0

    def seal(self, seq: int, message: int, payload: bytes) -> list[bytes]:
        return [_frame(message, payload, self.block, False)]

    def length(self, seq: int, head: memoryview) -> int:
        self._length = _checked_length(_LENGTH.unpack(head)[0], self.block, False)
        return 4 + self._length

    def open(self, seq: int, packet: memoryview) -> tuple[int, bytes]:
        return _unpad(bytes(packet), 4, self._length)



class _Hmac:
    """HMAC over the sequence number and the packet, keyed once per key exchange."""

    def __init__(self, spec: _MacSpec, key: bytes) -> None:
        self.size = spec.size
        self.etm = spec.etm
        self._keyed = hmac.new(key[: spec.size], digestmod=spec.hash_name)

    def tag(self, seq: int, *parts: bytes | memoryview) -> bytes:
        mac = self._keyed.copy()
        mac.update(_LENGTH.pack(seq))
        for part in parts:
            mac.update(part)
        return mac.digest()

    def check(self, seq: int, tag: memoryview, *parts: bytes | memoryview) -> None:
        if not hmac.compare_digest(self.tag(seq, *parts), tag):
            raise BadMac("bad MAC")


class _CtrSealer:
    block = 16

    def __init__(self, key: bytes, iv: bytes, mac: _Hmac) -> None:
        self._encrypt = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update
        self._mac = mac

    def seal(self, seq: int, message: int, payload: bytes) -> list[bytes]:
        head, tail = _frame_ends(message, payload, self.block, self._mac.etm)
        if self._mac.etm:
            length = head[:4]
            body = [self._encrypt(head[4:]), self._encrypt(payload), self._encrypt(tail)]
            return [length, *body, self._mac.tag(seq, length, *body)]
        tag = self._mac.tag(seq, head, payload, tail)
        return [self._encrypt(head), self._encrypt(payload), self._encrypt(tail), tag]


class _CtrOpener:
    def __init__(self, key: bytes, iv: bytes, mac: _Hmac) -> None:
        self._decrypt = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor().update
        self._mac = mac
        # Encrypt-and-MAC modes encrypt the length: decrypt one block to read it.
        self.header = 4 if mac.etm else 16
        self._first = b""
        self._length = 0

    def length(self, seq: int, head: memoryview) -> int:
        if self._mac.etm:
            self._length = _checked_length(_LENGTH.unpack(head)[0], 16, True)
        else:
            self._first = self._decrypt(head)
            self._length = _checked_length(_LENGTH.unpack_from(self._first)[0], 16, False)
        return 4 + self._length + self._mac.size

    def open(self, seq: int, packet: memoryview) -> tuple[int, bytes]:
        end = 4 + self._length
        if self._mac.etm:
            self._mac.check(seq, packet[end:], packet[:end])
            return _unpad(self._decrypt(packet[4:end]), 0, self._length)
        rest = self._decrypt(packet[16:end])
        self._mac.check(seq, packet[end:], self._first, rest)
        return _unpad(self._first, 4, self._length, rest)


class _GcmNonce:
    """RFC 5647: a fixed 4-byte field and a 64-bit invocation counter, +1 per packet."""

    def __init__(self, iv: bytes) -> None:
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")

    def next(self) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce


class _GcmSealer:
    block = 16

    def __init__(self, key: bytes, iv: bytes, mac: _Hmac | None) -> None:
        self._aead = AESGCM(key)
        self._nonce = _GcmNonce(iv)

    def seal(self, seq: int, message: int, payload: bytes) -> list[bytes]:
        packet = memoryview(_frame(message, payload, self.block, True))
        length = packet[:4].tobytes()
        return [length, self._aead.encrypt(self._nonce.next(), packet[4:], length)]


class _GcmOpener:
    header = 4

    def __init__(self, key: bytes, iv: bytes, mac: _Hmac | None) -> None:
        self._aead = AESGCM(key)
        self._nonce = _GcmNonce(iv)
        self._length = 0

    def length(self, seq: int, head: memoryview) -> int:
        self._length = _checked_length(_LENGTH.unpack(head)[0], 16, True)
        return 4 + self._length + 16

    def open(self, seq: int, packet: memoryview) -> tuple[int, bytes]:
        try:
            plain = self._aead.decrypt(self._nonce.next(), packet[4:], packet[:4])
        except InvalidTag:
            raise BadMac("bad AES-GCM tag") from None
        return _unpad(plain, 0, self._length)


class _ChaChaPoly:
    """OpenSSH's chacha20-poly1305 (PROTOCOL.chacha20poly1305).

    The second half of the key encrypts the length field, the first half the rest, from
    block 1 on; block 0 of the latter is the Poly1305 key; the nonce is the sequence
    number. Contexts are kept and re-aimed with reset_nonce, not rebuilt per packet: one
    reset gives the Poly1305 key (block 0) and leaves the stream at block 1 for the body.
    """

    block = 8
    header = 4

    def __init__(self, key: bytes, iv: bytes, mac: _Hmac | None) -> None:
        nonce = bytes(16)
        self._main = Cipher(algorithms.ChaCha20(key[:32], nonce), None).encryptor()
        self._header = Cipher(algorithms.ChaCha20(key[32:64], nonce), None).encryptor()
        self._length = 0

    @staticmethod
    def _nonce(block: int, seq: int) -> bytes:
        # cryptography takes the block counter (little-endian) and the nonce as 16 bytes.
        return block.to_bytes(8, "little") + seq.to_bytes(8, "big")

    def _poly1305(self, seq: int) -> Poly1305:
        """Poly1305 keyed for packet `seq`; the body's keystream follows."""
        self._main.reset_nonce(self._nonce(0, seq))
        return Poly1305(self._main.update(_ZERO_BLOCK)[:32])

    def _crypt_length(self, seq: int, length: bytes | memoryview) -> bytes:
        self._header.reset_nonce(self._nonce(0, seq))
        return self._header.update(length)

    def seal(self, seq: int, message: int, payload: bytes) -> list[bytes]:
        head, tail = _frame_ends(message, payload, self.block, True)
        poly = self._poly1305(seq)
        pieces = [self._crypt_length(seq, head[:4]), self._main.update(head[4:]), self._main.update(payload),
                  self._main.update(tail)]
        for piece in pieces:
            poly.update(piece)
        return [*pieces, poly.finalize()]

    def length(self, seq: int, head: memoryview) -> int:
        self._length = _checked_length(_LENGTH.unpack(self._crypt_length(seq, head))[0], self.block, True)
        return 4 + self._length + 16

    def open(self, seq: int, packet: memoryview) -> tuple[int, bytes]:
        end = 4 + self._length
        poly = self._poly1305(seq)
        poly.update(packet[:end])
        try:
            poly.verify(packet[end:].tobytes())
        except InvalidSignature:
            raise BadMac("bad Poly1305 tag") from None
        return _unpad(self._main.update(packet[4:end]), 0, self._length)


_SEALERS: dict[str, Callable[..., Sealer]] = {"gcm": _GcmSealer, "chacha": _ChaChaPoly, "ctr": _CtrSealer}
_OPENERS: dict[str, Callable[..., Opener]] = {"gcm": _GcmOpener, "chacha": _ChaChaPoly, "ctr": _CtrOpener}
# Every (block size, length left clear) pair a sealer frames with: Plain, CTR (E&M and EtM),
# AES-GCM, ChaCha20-Poly1305.
_FRAMINGS = ((Plain.block, False), (_CtrSealer.block, False), (_CtrSealer.block, True), (_GcmSealer.block, True),
             (_ChaChaPoly.block, True))


def _fits(size: int) -> bool:
    return all(size + 2 + _padding(size, block, clear) <= MAX_PACKET_LENGTH for block, clear in _FRAMINGS)


# The largest payload (after the message number) that any sealer frames within a peer's
# MAX_PACKET_LENGTH: a message relayed from one leg to the other is re-padded for the other
# leg's cipher and must stay legal there (262,134 bytes: aes*-ctr with an E&M HMAC pads most).
MAX_PAYLOAD = max(size for size in range(MAX_PACKET_LENGTH - 64, MAX_PACKET_LENGTH) if _fits(size))


def _build(classes: dict[str, Callable[..., T]], cipher: bytes, mac: bytes, key: bytes, iv: bytes,
           integrity: bytes) -> T:
    """An instance of the class for `cipher`'s kind, given (key, iv, HMAC or None)."""
    spec = _CIPHERS[cipher]
    hmac_ = None if is_aead(cipher) else _Hmac(_MACS[mac], integrity)
    return classes[spec.kind](key[: spec.key_size], iv[: spec.iv_size], hmac_)


def sealer(cipher: bytes, mac: bytes, key: bytes, iv: bytes, integrity: bytes) -> Sealer:
    """The outgoing side of negotiated `cipher` and `mac`, from the derived keys."""
    return _build(_SEALERS, cipher, mac, key, iv, integrity)


def opener(cipher: bytes, mac: bytes, key: bytes, iv: bytes, integrity: bytes) -> Opener:
    """The incoming side of negotiated `cipher` and `mac`, from the derived keys."""
    return _build(_OPENERS, cipher, mac, key, iv, integrity)
