"""Building the ssh command line exactly as condor_ssh_to_job does.

The `-ssh` value is split into words; its first word picks the template
(config SSH_TO_JOB_<basename>_CMD, here read from the environment as
`_CONDOR_SSH_TO_JOB_<basename>_CMD`, the way HTCondor lets the environment
override configuration).  The default template is

    "<arg0> [-S none ]-oUser=%u -oIdentityFile=%i -oStrictHostKeyChecking=yes
     -oUserKnownHostsFile=%k -oGlobalKnownHostsFile=%k -oProxyCommand=%x[ condor-job.%h]"

(`-S none` only for ssh, the host word left out for scp).  It is split as a
quoted V2 string, the remaining -ssh words go in after arg0, then -X, then
the %-macros are expanded word by word, and the user's trailing arguments
are appended unexpanded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .condor_args import ArgsError, join_system, split_v2_quoted, split_v2_raw


class SshCommandError(Exception):
    """The command cannot be built; str() is the real tool's message (no newline)."""


@dataclass(frozen=True)
class Macros:
    """Values of the template's %-macros."""

    proxy_command: str   # %x
    remote_user: str     # %u
    remote_host: str     # %h
    key_file: str        # %i
    known_hosts: str     # %k


def proxy_command(program: str, fdpass: str, debug: bool) -> str:
    """%x: the tool itself in -proxy mode, each word double-quoted."""
    return join_system([program, *(["-debug"] if debug else []), "-proxy", fdpass])


def build(ssh_option: str, macros: Macros, x_forwarding: bool,
          user_args: Sequence[str]) -> list[str]:
    """The argv to run for `-ssh ssh_option` (default "ssh")."""
    try:
        ssh_words = split_v2_raw(ssh_option)
    except ArgsError as exc:
        raise SshCommandError(f"Failed to parse ssh options ({ssh_option}): {exc}") from None
    if not ssh_words:
        raise SshCommandError(f"Failed to parse ssh options ({ssh_option}): ")
    arg0 = ssh_words[0]
    basename = os.path.basename(arg0)
    param_name = f"SSH_TO_JOB_{basename}_CMD"
    default = ('"{} {}-oUser=%u -oIdentityFile=%i -oStrictHostKeyChecking=yes '
               '-oUserKnownHostsFile=%k -oGlobalKnownHostsFile=%k -oProxyCommand=%x{}"').format(
        arg0, "-S none " if basename == "ssh" else "",
        "" if basename == "scp" else " condor-job.%h")
    template = os.environ.get(f"_CONDOR_{param_name}", default)
    try:
        words = split_v2_quoted(template)
    except ArgsError as exc:
        raise SshCommandError(f"Error parsing configuration {param_name}: {exc}") from None
    extra = ssh_words[1:]
    words[1:1] = extra
    if x_forwarding:
        words.insert(1 + len(extra), "-X")
    return [_expand(word, macros, template) for word in words] + list(user_args)


def _expand(word: str, macros: Macros, template: str) -> str:
    values = {"%": "%", "x": macros.proxy_command, "u": macros.remote_user,
              "h": macros.remote_host, "i": macros.key_file, "k": macros.known_hosts}
    out = []
    i = 0
    while i < len(word):
        if word[i] != "%":
            out.append(word[i])
            i += 1
            continue
        key = word[i + 1:i + 2]
        if key not in values:
            raise SshCommandError(f"Unexpected %{key or ' '} in ssh command: {template}")
        out.append(values[key])
        i += 2
    return "".join(out)
