"""The per-session sshd_config, modelled on HTCondor's
condor_ssh_to_job_sshd_config_template.

Everything not set here keeps OpenSSH's defaults, as on a real pool: TCP
and stream-local forwarding allowed, MaxSessions 10, LoginGraceTime 120.
Differences from HTCondor's template: `UsePrivilegeSeparation` (deprecated,
OpenSSH warns about it) is left out; password and keyboard-interactive
authentication are switched off explicitly and `PidFile none` is set, which
changes nothing for `sshd -i` but keeps a stray sshd from writing a pid file.
"""

from __future__ import annotations

import os
from pathlib import Path

# Where distributions put sftp-server.  The Subsystem must name this external
# program, not internal-sftp: with a forced command in authorized_keys sshd
# runs the forced command for subsystem requests too, passing the configured
# path in SSH_ORIGINAL_COMMAND, and the shell setup then runs it.
_SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                 "/usr/lib/ssh/sftp-server", "/usr/libexec/sftp-server")

_TEMPLATE = """\
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}

# HTCondor injects its shell setup command through authorized_keys
# (command="..."), not ForceCommand; so does the sandbox.

# As a convenience to users, allow remote setting of environment.
# sshd runs as the job's uid, so this is no security concern.
AcceptEnv *

Subsystem       sftp    {sftp_server}

# Do not fail on files inside a tmp-like directory.
StrictModes no

LogLevel DEBUG

X11Forwarding yes
X11UseLocalhost no

Protocol 2
PermitEmptyPasswords no
PasswordAuthentication no
KbdInteractiveAuthentication no
Ciphers aes128-ctr,aes192-ctr,aes256-ctr
MACs hmac-sha2-256,hmac-sha2-512
PermitRootLogin no
PermitUserEnvironment no
GSSAPIAuthentication no
KerberosAuthentication no
HostbasedAuthentication no
IgnoreRhosts yes
IgnoreUserKnownHosts yes
PrintLastLog yes
Compression no
ClientAliveInterval 600
ClientAliveCountMax 0
PidFile none
"""


def find_sftp_server() -> str:
    """The sftp-server binary to name in the Subsystem line."""
    for candidate in _SFTP_SERVERS:
        if os.access(candidate, os.X_OK):
            return candidate
    return "internal-sftp"  # sftp will not work through the forced command, as on HTCondor


def render(host_key: Path, authorized_keys: Path) -> str:
    """The sshd_config text for one sshd session directory."""
    return _TEMPLATE.format(host_key=host_key, authorized_keys=authorized_keys,
                            sftp_server=find_sftp_server())
