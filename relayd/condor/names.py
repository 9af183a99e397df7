"""The host-name grammar: `job-<cluster>[.<proc>[.<node>]][.<label>].<domain>`.

Stdlib only (the ProxyCommand helper may import it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relayd.common.errors import BadHostName

_LABEL = r"[a-z][a-z0-9_-]{0,62}"
_NUMBER = r"(?:0|[1-9][0-9]{0,9})"


@dataclass(frozen=True)
class JobName:
    cluster: int
    proc: int = 0
    node: int | None = None
    label: str | None = None

    @property
    def job_id(self) -> str:
        """The job id as condor_ssh_to_job takes it: C.P or C.P.N."""
        base = f"{self.cluster}.{self.proc}"
        return base if self.node is None else f"{base}.{self.node}"

    def host(self, domain: str) -> str:
        parts = [f"job-{self.job_id}"] + ([self.label] if self.label else []) + [domain]
        return ".".join(parts)


def expected_form(domain: str) -> str:
    return f"job-<cluster>[.<proc>[.<node>]][.<schedd label>].{domain}"


def parse_host(host: str, domain: str) -> JobName:
    """Parse a host name such as `job-32.0.condor` into a JobName.

    Raises BadHostName with a one-line message for anything else.
    """
    pattern = (
        rf"job-(?P<cluster>{_NUMBER})(?:\.(?P<proc>{_NUMBER})(?:\.(?P<node>{_NUMBER}))?)?"
        rf"(?:\.(?P<label>{_LABEL}))?\.{re.escape(domain.lower())}"
    )
    match = re.fullmatch(pattern, host.lower().rstrip("."), flags=re.ASCII)
    if not match or len(host) > 253:
        shown = host if len(host) <= 80 else host[:77] + "..."
        raise BadHostName(f"{shown!r} is not a job name; expected {expected_form(domain)}, e.g. job-32.0.{domain}")
    node = match["node"]
    return JobName(
        cluster=int(match["cluster"]),
        proc=int(match["proc"] or 0),
        node=int(node) if node is not None else None,
        label=match["label"],
    )


@dataclass(frozen=True)
class ProfileName:
    """`<profile>[.<schedd label>].<domain>`: a job on demand (relayd.condor.profiles)."""

    profile: str
    label: str | None = None

    def host(self, domain: str) -> str:
        return ".".join([self.profile] + ([self.label] if self.label else []) + [domain])


def parse_profile_host(host: str, domain: str) -> ProfileName | None:
    """A profile's host name such as `gpu.condor` or `gpu.ap2.condor`; None for anything
    else, job names (`job-...`) included, which parse_host takes."""
    pattern = rf"(?P<profile>{_LABEL})(?:\.(?P<label>{_LABEL}))?\.{re.escape(domain.lower())}"
    match = re.fullmatch(pattern, host.lower().rstrip("."), flags=re.ASCII)
    if not match or match["profile"].startswith("job-") or len(host) > 253:
        return None
    return ProfileName(match["profile"], match["label"])


DIRECT_LABEL = "direct"  # job-32.0.direct.condor: the job's own sshd, with no relay in the data path


def parse_direct(host: str, domain: str) -> JobName | None:
    """The job of a direct-path name (`job-32.0[.<label>].direct.<domain>`), None for any other."""
    suffix = f".{DIRECT_LABEL}.{domain.lower()}"
    name = host.lower().rstrip(".")
    if not name.endswith(suffix):
        return None
    return parse_host(name[: -len(suffix)] + f".{domain.lower()}", domain)
