"""condor_ssh_to_job's command line, parsed as SSHToJob::parseArgs does.

HTCondor matches options by prefix in a fixed order (so "-n" is -name, "-s"
is -ssh, "-p" is -pool, and a lone "-" asks for help), parses job ids with
strtol, and connects to the fdpass socket while parsing `-proxy`.  Its
messages and the exit code 2 are reproduced by the caller from
CommandLineError's text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import session

USAGE = """\
Usage: {program} [OPTIONS] {{ cluster | cluster.proc }} [command]

OPTIONS:
 -debug
 -name schedd-name
 -pool pool-name
 -auto-retry               (if job not running yet)
 -remove-on-interrupt      (rm job on ctrl-c)
 -shells shell1,shell2,... (shells to try)
 -ssh <alt ssh command>    (e.g. sftp or scp)
 -keygen-options <keygen options>
 -X                        (enable X11 forwarding)
 -x                        (disable X11 forwarding)
"""


class CommandLineError(Exception):
    """parseArgs failed (exit 2); str() is the exact text the tool prints."""


class HelpRequested(Exception):
    """-help (or anything matching it, such as a lone "-"): print USAGE, exit 0."""


@dataclass
class Options:
    """What the command line asked for (SSHToJob's members)."""

    program: str
    schedd_name: str = ""
    pool_name: str = ""
    ssh: str = "ssh"
    keygen_options: str = ""
    shells: str = field(default_factory=lambda: os.environ.get("SHELL", ""))
    auto_retry: bool = False
    remove_on_interrupt: bool = False
    debug: bool = False
    x_forwarding: bool = False
    proxy_fd: int = -1
    cluster: int = -1
    proc: int = -1
    subproc: int = -1
    remote_args: list[str] = field(default_factory=list)


def _match_prefix(arg: str, option: str) -> bool:
    """HTCondor's match_prefix: equal over the shorter length (so "-n" is -name)."""
    n = min(len(arg), len(option))
    return arg[:n] == option[:n]


def _is_debug_flag(arg: str) -> bool:
    """is_dash_arg_colon_prefix(arg, "debug"): -d, -deb, --debug, -debug:D_FULLDEBUG ..."""
    if not arg.startswith("-"):
        return False
    body = arg[1:]
    exact = body.startswith("-")
    if exact:
        body = body[1:]
    body = body.split(":", 1)[0]
    if not body:
        return False
    return body == "debug" if exact else "debug".startswith(body)


def _strtol(text: str, start: int) -> tuple[int, int]:
    """C strtol(text + start, &end, 10) returning (value as a C int, end index)."""
    i = start
    while i < len(text) and text[i] in " \t\n\v\f\r":
        i += 1
    sign = 1
    if i < len(text) and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    digits_start = i
    while i < len(text) and text[i].isdigit() and text[i].isascii():
        i += 1
    if i == digits_start:
        return 0, start
    value = max(-2**63, min(2**63 - 1, sign * int(text[digits_start:i])))
    return (value + 2**31) % 2**32 - 2**31, i


def parse_args(argv: Sequence[str]) -> Options:
    """SSHToJob::parseArgs, including its prefix matching and messages."""
    opts = Options(program=argv[0] if argv else "condor_ssh_to_job")
    string_options = {"-name": "schedd_name", "-pool": "pool_name", "-ssh": "ssh",
                      "-keygen-options": "keygen_options"}
    i = 1
    while i < len(argv):
        arg = argv[i]
        takes_value = None
        if _is_debug_flag(arg):
            opts.debug = True
        elif _match_prefix(arg, "-help"):
            raise HelpRequested
        elif (name := next((o for o in string_options if _match_prefix(arg, o)), None)):
            takes_value = string_options[name]
        elif _match_prefix(arg, "-auto-retry"):
            opts.auto_retry = True
        elif _match_prefix(arg, "-remove-on-interrupt"):
            opts.remove_on_interrupt = True
        elif _match_prefix(arg, "-shells"):
            takes_value = "shells"
        elif _match_prefix(arg, "-proxy"):
            takes_value = "proxy"
        elif arg == "-X":
            opts.x_forwarding = True
        elif arg == "-x":
            opts.x_forwarding = False
        elif arg == "--":
            i += 1
            break
        elif arg.startswith("-"):
            raise CommandLineError(f"Unrecognized argument: {arg}\n")
        else:
            break
        if takes_value is not None:
            if i + 1 >= len(argv):
                # sic: no newline, as in HTCondor
                raise CommandLineError(f"{arg} requires an argument")
            i += 1
            if takes_value == "proxy":
                opts.proxy_fd = _connect_proxy(argv[i])
            else:
                setattr(opts, takes_value, argv[i])
        i += 1

    if opts.proxy_fd != -1:
        return opts
    if i >= len(argv):
        raise CommandLineError("ERROR: You must specify a job!\n\n")
    job_id = argv[i]
    opts.cluster, end = _strtol(job_id, 0)
    opts.proc = 0
    if end < len(job_id) and job_id[end] == ".":
        opts.proc, end = _strtol(job_id, end + 1)
    if end < len(job_id) and job_id[end] == ".":
        opts.subproc, end = _strtol(job_id, end + 1)
    if end != len(job_id):
        raise CommandLineError(f"Invalid job id: {job_id}\n")
    opts.remote_args = list(argv[i + 1:])
    return opts


def _connect_proxy(name: str) -> int:
    """-proxy's argument: a number is an inherited fd, anything else the fdpass path."""
    fd, end = _strtol(name, 0)
    if end == len(name):
        return fd
    try:
        return session.receive_fd(name)
    except session.SessionError as exc:
        raise CommandLineError(f"{exc}\n") from None
