"""The line protocol on the daemon's unix socket, shared by the daemon, helper and hook.

Requests (one line, client to daemon):
    CONNECT <host> <port> [user=<name>] [wait=<seconds>]
                             the ProxyCommand helper asks for a relayed SSH connection; user is
                             the one ssh connects as (%r, used for EC2 instances), wait how long
                             to wait for an idle job to start
    CAPTURE <token>          the capture hook hands over a negotiated socket; the next line is a
                             JSON object with the keys, sent together with the socket (SCM_RIGHTS)
    HOSTKEY                  ssh's KnownHostsCommand (the helper's --known-hosts) asks for the host
                             key of the job whose socket its ssh was handed (the direct path)
    STATUS                   `relayd status` asks what the daemon holds: one `OK <json>` line
    STOP                     `relayd stop`: the daemon answers OK and shuts down as on SIGTERM
Replies (daemon to client), one line:
    ERROR <text> | OK [<json>]
A well-formed CONNECT is answered OK at once, and the same socket carries SSH from then on
(the helper hands it to ssh); what happens while the job is reached is told through SSH.
A CONNECT for a direct name (job-32.0.direct.condor) is answered once the job is reached:
OK with the job's TCP socket attached (SCM_RIGHTS), which the helper hands to ssh instead.

Stdlib only: the helper imports this on every connection.
"""

from __future__ import annotations

from collections import namedtuple

from relayd.common.errors import BadRequest

MAX_REQUEST_LINE = 1024
MAX_CAPTURE_PAYLOAD = 64 * 1024
_TOKEN_CHARS = frozenset("0123456789abcdef")


# namedtuples, not dataclasses: importing dataclasses costs the helper milliseconds.
class Connect(namedtuple("Connect", "host port user wait", defaults=(None, None))):
    """CONNECT <host> <port> [user=<name>] [wait=<seconds>]"""

    __slots__ = ()


class Capture(namedtuple("Capture", "token")):
    """CAPTURE <token>"""

    __slots__ = ()


class HostKey(namedtuple("HostKey", "")):
    """HOSTKEY"""

    __slots__ = ()


class Status(namedtuple("Status", "")):
    """STATUS"""

    __slots__ = ()


class Stop(namedtuple("Stop", "")):
    """STOP"""

    __slots__ = ()


AnyRequest = Connect | Capture | HostKey | Status | Stop


def parse_request(line: bytes) -> AnyRequest:
    """Parse one request line (without its newline)."""
    if len(line) > MAX_REQUEST_LINE:
        raise BadRequest("request line too long")
    try:
        words = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise BadRequest("request is not ASCII") from None
    if words[0] == "CONNECT" and len(words) >= 3 and words[1] and words[1].isprintable():
        if not words[2].isdigit() or not 0 < int(words[2]) < 65536:
            raise BadRequest(f"bad port {words[2][:10]!r}")
        return Connect(words[1], int(words[2]), **_connect_options(words[3:]))
    if words[0] == "CAPTURE" and len(words) == 2 and 16 <= len(words[1]) <= 64 and set(words[1]) <= _TOKEN_CHARS:
        return Capture(words[1])
    if words == ["HOSTKEY"]:
        return HostKey()
    if words == ["STATUS"]:
        return Status()
    if words == ["STOP"]:
        return Stop()
    raise BadRequest(f"unknown request {words[0][:20]!r}")


def _connect_options(words: list[str]) -> dict[str, object]:
    options: dict[str, object] = {}
    for word in words:
        key, _, value = word.partition("=")
        if key == "user" and value and value.isprintable() and "user" not in options:
            options["user"] = value
        elif key == "wait" and _is_seconds(value) and "wait" not in options:
            options["wait"] = float(value)
        else:
            raise BadRequest(f"bad CONNECT option {word[:30]!r}")
    return options


def _is_seconds(value: str) -> bool:
    try:
        return 0 <= float(value) <= 7 * 86400
    except ValueError:
        return False


def format_connect(host: str, port: int, user: str | None = None, wait: float | None = None) -> bytes:
    """The request line the helper sends; host and user must be single printable words."""
    for what, word in (("host name", host), ("user name", user)):
        if word is not None and (not word or not word.isprintable() or " " in word):
            raise BadRequest(f"bad {what} {word!r}")
    if wait is not None and not _is_seconds(str(wait)):
        raise BadRequest(f"bad wait {wait!r}: seconds from 0 to a week")
    options = (f" user={user}" if user else "") + (f" wait={wait:g}" if wait is not None else "")
    return f"CONNECT {host} {port}{options}\n".encode("ascii", "backslashreplace")


def reply(kind: str, text: str = "") -> bytes:
    """One reply line; newlines in the text are folded so one message stays one line."""
    text = " ".join(text.split())
    return f"{kind} {text}\n".encode() if text else f"{kind}\n".encode()


def json_reply(document: object) -> bytes:
    """An OK line carrying a JSON document (compact JSON never contains a newline)."""
    import json  # noqa: PLC0415 (the daemon's side only; the helper starts without it)

    return b"OK " + json.dumps(document, separators=(",", ":")).encode() + b"\n"
