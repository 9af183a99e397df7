"""The packet layer both legs use in place of Conch's: faster, AEAD and EtM, strict kex.

`PacketTransport` goes before Conch's SSHServerTransport or SSHClientTransport in a class's
bases. It keeps Conch's key exchange and message dispatch and replaces what is slow or
missing underneath:

- the algorithms of relayd.ssh.packetcrypto (AES-GCM, chacha20-poly1305, EtM HMACs), in place
  of Conch's SSHCiphers;
- receiving: Conch appends every read to one bytes buffer and slices the rest off after
  each packet, copying the remainder once per packet (quadratic in the read size); here a
  read is cut into packets through a memoryview, and only a packet that straddles two
  reads is copied;
- OpenSSH's strict key exchange (kex-strict-*-v00@openssh.com, the Terrapin fix), which
  chacha20-poly1305 and the EtM MACs need: the peer's KEXINIT must come first, nothing
  but key exchange messages may come before the first NEWKEYS, and sequence numbers
  restart at 0 after each NEWKEYS;
- after sending DISCONNECT nothing the peer sends is acted on, and `hang_up` chooses how
  the connection ends (the client leg half-closes);
- no compression: the client leg is a local socket and the job's sshd (HTCondor's
  template) offers none, so zlib would only cost CPU;
- rekeying, which Conch leaves to the peer: a new key exchange after REKEY_BYTES (1 GiB)
  or REKEY_PACKETS (2^28) in either direction under one key, as OpenSSH does, and the
  connection ends rather than let a sequence number wrap under one key (ChaCha20-Poly1305's
  nonce is the sequence number);
- write congestion: the connection is its transport's streaming producer, so `congested`
  hears when more than IO_SIZE waits to be written to the peer, and when it drained. The
  relay then holds back what goes to that peer; a peer that is still sent more than
  CONGESTED_LIMIT meanwhile (answers to requests it floods, while it reads nothing) is
  dropped.
"""

from __future__ import annotations

import struct

from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS, getNS
from twisted.logger import Logger

from relayd.ssh import packetcrypto

# Key exchange messages (RFC 4253 section 12): all that strict kex lets through before
# the first NEWKEYS, with DISCONNECT.
_KEX_MESSAGES = frozenset({transport.MSG_DISCONNECT, transport.MSG_KEXINIT, transport.MSG_NEWKEYS, *range(30, 50)})
_STRICT_CLIENT = b"kex-strict-c-v00@openssh.com"
_STRICT_SERVER = b"kex-strict-s-v00@openssh.com"
# Bytes per read and per send; Twisted's defaults (64 KiB and 128 KiB: two and four
# 32 KiB packets) cost a reactor round and a system call for every few packets.
IO_SIZE = 256 * 1024
CONGESTED_LIMIT = 4 * 1024 * 1024
log = Logger()


class _Algorithms:
    """One key exchange's negotiated algorithms and, once keyed, their sealer and opener.

    Stands where Conch keeps an SSHCiphers (nextEncryptions, currentEncryptions), with
    the attributes Conch reads from it.
    """

    def __init__(self, outCipType: bytes, inCipType: bytes, outMACType: bytes, inMACType: bytes) -> None:
        self.outCipType, self.inCipType = outCipType, inCipType
        self.outMACType, self.inMACType = outMACType, inMACType
        self.encBlockSize = 0  # Conch's client checks it to learn whether keys are set
        self.sealer: packetcrypto.Sealer = packetcrypto.Plain()
        self.opener: packetcrypto.Opener = packetcrypto.Plain()

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes, inInteg: bytes) -> None:
        self.sealer = packetcrypto.sealer(self.outCipType, self.outMACType, outKey, outIV, outInteg)
        self.opener = packetcrypto.opener(self.inCipType, self.inMACType, inKey, inIV, inInteg)
        self.encBlockSize = self.sealer.block


class PacketTransport(transport.SSHTransportBase):
    """The packet layer; list it before Conch's server or client transport in the bases."""

    supportedCiphers = packetcrypto.CIPHERS
    supportedMACs = packetcrypto.MACS
    supportedCompressions = [b"none"]

    _sealer: packetcrypto.Sealer
    _rest = b""  # the start of a packet not yet complete
    _packet_size: int | None = None  # its wire size, once known
    _strict = False
    _initial_kex = True  # until the first NEWKEYS from the peer
    _seen_kexinit = False
    _disconnected = False  # we sent DISCONNECT: nothing the peer sends after it is acted on
    # Rekeying thresholds, per direction and key; class attributes so that the daemon's
    # config (a test's) can lower them.
    rekey_bytes = 1 << 30
    rekey_packets = 1 << 28
    max_packets_per_key = 1 << 31  # never reached unless the peer ignores our KEXINIT
    rekeys = 0  # key re-exchanges completed (either side's)
    _out_bytes = _out_packets = _in_bytes = _in_packets = 0  # under the current keys
    _congested_bytes: int | None = None  # sent since the write buffer passed IO_SIZE

    def connectionMade(self) -> None:
        strict = _STRICT_CLIENT if self.isClient else _STRICT_SERVER
        self.supportedKeyExchanges = [*type(self).supportedKeyExchanges, strict]
        self._sealer = packetcrypto.Plain()
        self.transport.bufferSize = IO_SIZE
        self.transport.SEND_LIMIT = IO_SIZE
        self.transport.registerProducer(self, True)
        super().connectionMade()  # sends our KEXINIT
        self.currentEncryptions = _Algorithms(b"none", b"none", b"none", b"none")

    # -- sending ---------------------------------------------------------------------------

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE and not self._allowedKeyExchangeMessageType(messageType):
            self._blockedByKeyExchange.append((messageType, payload))
            return
        self.transport.writeSequence(self._sealer.seal(self.outgoingPacketSequence, messageType, payload))
        self.outgoingPacketSequence = (self.outgoingPacketSequence + 1) & 0xFFFFFFFF
        self._out_bytes += len(payload)
        self._out_packets += 1
        if messageType == transport.MSG_NEWKEYS:
            # RFC 4253 7.3: what we send after NEWKEYS uses the new keys.
            self._sealer = self.nextEncryptions.sealer
            self._out_bytes = self._out_packets = 0
            if self._strict:
                self.outgoingPacketSequence = 0
        elif messageType != transport.MSG_KEXINIT:
            self._check_volume(self._out_bytes, self._out_packets, "sent")
        if self._congested_bytes is not None and not self._disconnected:
            self._congested_bytes += len(payload)
            if self._congested_bytes > CONGESTED_LIMIT:
                log.warn("{side}: dropped, it reads nothing of what it is sent", side=self._side())
                self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"not reading what it is sent")

    def _check_volume(self, size: int, packets: int, direction: str) -> None:
        """Start a key re-exchange once enough went one way under the current keys; end the
        connection before a sequence number could wrap under them."""
        if packets >= self.max_packets_per_key and not self._disconnected:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"too many packets under one key")
        elif (size >= self.rekey_bytes or packets >= self.rekey_packets) and not self._initial_kex \
                and self._keyExchangeState == self._KEY_EXCHANGE_NONE and not self._disconnected:
            log.info("{side}: key re-exchange after {size} bytes and {packets} packets {direction}",
                     side=self._side(), size=size, packets=packets, direction=direction)
            self.sendKexInit()

    def _side(self) -> str:
        return "upstream connection" if self.isClient else "client connection"

    # -- write congestion (IPushProducer, towards our own transport) ---------------------------

    def pauseProducing(self) -> None:
        self._congested_bytes = 0
        self.congested(True)

    def resumeProducing(self) -> None:
        self._congested_bytes = None
        self.congested(False)

    def stopProducing(self) -> None:
        pass

    def congested(self, congested: bool) -> None:
        """More than IO_SIZE waits to be written to the peer (True), or all of it was (False)."""

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self._disconnected = True
        self.sendPacket(transport.MSG_DISCONNECT, struct.pack(">L", reason) + NS(desc) + NS(b""))
        self.hang_up()

    def hang_up(self) -> None:
        """End the connection once DISCONNECT is on its way."""
        self.unregister_producer()
        self.transport.loseConnection()

    def unregister_producer(self) -> None:
        """Before closing: a paused producer would keep the connection open once all is written."""
        if getattr(self.transport, "producer", None) is self:
            self.transport.unregisterProducer()

    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
        negotiated = self.nextEncryptions
        self.nextEncryptions = _Algorithms(negotiated.outCipType, negotiated.inCipType, negotiated.outMACType,
                                           negotiated.inMACType)
        super()._keySetup(sharedSecret, exchangeHash)

    # -- receiving -------------------------------------------------------------------------

    def getPacket(self) -> None:
        """Called by Conch's dataReceived after the version line: take what followed it."""
        leftover, self.buf = self.buf, b""
        if leftover:
            self._receive(leftover)

    def dataReceived(self, data: bytes) -> None:
        # Conch looks for the version line in all it is given and refuses more than 4 KB before
        # it, so it gets a line at a time: a peer may send its KEXINIT without waiting for ours.
        while data and not self.gotVersion and not self._disconnected:
            line, newline, data = data.partition(b"\n")
            super().dataReceived(line + newline)
        if data and not self._disconnected:
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            if self._rest:
                view = self._finish_rest(view)
                if self._rest:
                    return  # still incomplete: all of `view` went into it
            pos = 0
            while pos < len(view) and not self._disconnected and not self.transport.disconnecting:
                size = self._size(view[pos:])
                if size is None or len(view) - pos < size:
                    break
                self._dispatch_packet(view[pos : pos + size])
                pos += size
            self._rest = view[pos:].tobytes()
        except packetcrypto.BadMac as exc:
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, str(exc).encode())
        except packetcrypto.BadPacket as exc:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, str(exc).encode())

    def _finish_rest(self, view: memoryview) -> memoryview:
        """Complete the packet an earlier read began, copying only its bytes; returns
        what of `view` follows it."""
        while True:
            size = self._size(memoryview(self._rest))
            wanted = self.currentEncryptions.opener.header if size is None else size
            taken = min(wanted - len(self._rest), len(view))
            self._rest += view[:taken]
            view = view[taken:]
            if len(self._rest) < wanted:
                return view
            if size is not None:
                packet, self._rest = self._rest, b""
                self._dispatch_packet(memoryview(packet))
                return view

    def _size(self, view: memoryview) -> int | None:
        """The wire size of the packet `view` starts with; None until its header is there."""
        if self._packet_size is None:
            opener = self.currentEncryptions.opener
            if len(view) < opener.header:
                return None
            self._packet_size = opener.length(self.incomingPacketSequence, view[: opener.header])
        return self._packet_size

    def _dispatch_packet(self, packet: memoryview) -> None:
        seq = self.incomingPacketSequence
        messageNum, payload = self.currentEncryptions.opener.open(seq, packet)
        self._packet_size = None
        self.incomingPacketSequence = (seq + 1) & 0xFFFFFFFF
        self._in_bytes += len(payload)
        self._in_packets += 1
        self.dispatchMessage(messageNum, payload)
        if messageNum != transport.MSG_KEXINIT:
            self._check_volume(self._in_bytes, self._in_packets, "received")

    # -- strict key exchange ---------------------------------------------------------------

    def ssh_KEXINIT(self, packet: bytes) -> None:
        if not self._seen_kexinit:
            self._seen_kexinit = True
            theirs = _STRICT_SERVER if self.isClient else _STRICT_CLIENT
            if theirs in getNS(packet[16:])[0].split(b","):
                if self.incomingPacketSequence != 1:
                    self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                                        b"strict kex: KEXINIT was not the first packet")
                    return
                self._strict = True
        super().ssh_KEXINIT(packet)

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self._strict and self._initial_kex and messageNum not in _KEX_MESSAGES:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                                b"strict kex: unexpected message %d during the key exchange" % messageNum)
            return
        super().dispatchMessage(messageNum, payload)
        if messageNum == transport.MSG_NEWKEYS:
            if not self._initial_kex:
                self.rekeys += 1
            self._initial_kex = False
            self._in_bytes = self._in_packets = 0
            if self._strict:
                self.incomingPacketSequence = 0
