"""The names under which clients pin the relay's host key: shared by the ssh_config the
client side generates and the known_hosts line the daemon writes."""

from __future__ import annotations

HOST_KEY_ALIAS = "condor-relay"  # the generated block's HostKeyAlias (OpenSSH)


def pinned_names(domain: str) -> str:
    """The known_hosts host field: the alias, and the job names' pattern for clients without
    HostKeyAlias, which look the key up by the host name they connect to (job names and profiles)."""
    return f"{HOST_KEY_ALIAS},*.{domain}"
