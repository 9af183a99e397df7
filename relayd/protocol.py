"""The line protocol on the daemon's unix socket, shared by the daemon, helper and hook.

Requests (one line, client to daemon):
    CONNECT <host> <port>    the ProxyCommand helper asks for a relayed SSH connection
    CAPTURE <token>          the capture hook hands over a negotiated socket; the next line is a
                             JSON object with the keys, sent together with the socket (SCM_RIGHTS)
Replies (daemon to client), any number of PROGRESS lines, then OK or ERROR:
    PROGRESS <text> | ERROR <text> | OK
After OK to a CONNECT, the same socket carries SSH; the helper hands it to ssh.

Stdlib only: the helper imports this on every connection.
"""

from __future__ import annotations

from collections import namedtuple

MAX_REQUEST_LINE = 1024
MAX_CAPTURE_PAYLOAD = 64 * 1024
_TOKEN_CHARS = frozenset("0123456789abcdef")


class BadRequest(ValueError):
    """A request line that is not part of the protocol."""


# namedtuples, not dataclasses: importing dataclasses costs the helper milliseconds.
class Connect(namedtuple("Connect", "host port")):
    """CONNECT <host> <port>"""

    __slots__ = ()


class Capture(namedtuple("Capture", "token")):
    """CAPTURE <token>"""

    __slots__ = ()


def parse_request(line: bytes) -> Connect | Capture:
    """Parse one request line (without its newline)."""
    if len(line) > MAX_REQUEST_LINE:
        raise BadRequest("request line too long")
    try:
        words = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise BadRequest("request is not ASCII") from None
    if words[0] == "CONNECT" and len(words) == 3 and words[1] and words[1].isprintable():
        if not words[2].isdigit() or not 0 < int(words[2]) < 65536:
            raise BadRequest(f"bad port {words[2][:10]!r}")
        return Connect(words[1], int(words[2]))
    if words[0] == "CAPTURE" and len(words) == 2 and 16 <= len(words[1]) <= 64 and set(words[1]) <= _TOKEN_CHARS:
        return Capture(words[1])
    raise BadRequest(f"unknown request {words[0][:20]!r}")


def format_connect(host: str, port: int) -> bytes:
    """The request line the helper sends; the host must be a single printable word."""
    if not host or not host.isprintable() or " " in host:
        raise BadRequest(f"bad host name {host!r}")
    return f"CONNECT {host} {port}\n".encode("ascii", "backslashreplace")


def reply(kind: str, text: str = "") -> bytes:
    """One reply line; newlines in the text are folded so one message stays one line."""
    text = " ".join(text.split())
    return f"{kind} {text}\n".encode() if text else f"{kind}\n".encode()
