"""What a bench run measured: series of samples per scenario, and the issue's targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Series:
    """Repeated samples of one contender (the relay, OpenSSH, condor_ssh_to_job...)."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Scenario:
    """One comparison; `series[0]` is the relay."""

    key: str
    title: str
    unit: str
    series: list[Series]

    def get(self, name: str) -> Series:
        return next(s for s in self.series if s.name == name)


@dataclass(frozen=True)
class Target:
    """A bound on a ratio of medians (or on one median when `reference` is None)."""

    text: str
    scenario: str
    subject: str
    reference: str | None
    limit: float
    higher_is_better: bool

    def measured(self, scenarios: dict[str, Scenario] | None) -> bool:
        """Whether `scenarios` has the series this target compares (an older run may lack one)."""
        if scenarios is None or self.scenario not in scenarios:
            return False
        names = {s.name for s in scenarios[self.scenario].series}
        return self.subject in names and (self.reference is None or self.reference in names)

    def value(self, scenarios: dict[str, Scenario]) -> float:
        scenario = scenarios[self.scenario]
        subject = scenario.get(self.subject).median
        return subject if self.reference is None else subject / scenario.get(self.reference).median

    def met(self, scenarios: dict[str, Scenario]) -> bool:
        value = self.value(scenarios)
        return value >= self.limit if self.higher_is_better else value <= self.limit


# Series names used by the scenarios and the targets.
RELAY = "relay"  # through the generated block as installed: each ssh a client of the relay
RELAY_COLD = "relay, first connection"
RELAY_MUX = "relay behind ssh's ControlMaster (ssh_multiplexing: true)"
CONTROLMASTER = "OpenSSH ControlMaster"
FRESH_SSHD = "OpenSSH, fresh sshd -i"
DIRECT = "direct OpenSSH"
# The same sshd on a loopback TCP socket, as the starter runs the job's sshd: the relay's
# upstream leg and the direct path reach it that way; DIRECT's pipes cost less per byte.
DIRECT_TCP = "direct OpenSSH, sshd on TCP"
DIRECT_PATH = "relayd direct path (job-N.M.direct.condor)"
TOOL = "condor_ssh_to_job JOB true"
NEGOTIATION_ONLY = "negotiation only (-ssh true)"
IDLE_RSS = "idle daemon"
PER_CLIENT = "per idle client connection"
IDLE_CPU = "daemon with idle clients"

TARGETS = [
    Target("warm connect <= 2x OpenSSH ControlMaster", "warm_connect", RELAY, CONTROLMASTER, 2.0, False),
    Target("cold connect within 10% of condor_ssh_to_job", "cold_connect", RELAY_COLD, TOOL, 1.1, False),
    Target("repeated connections >= 10x faster than condor_ssh_to_job", "repeated", TOOL, RELAY, 10, True),
    Target("1 GiB upload >= 0.8x direct OpenSSH", "upload", RELAY, DIRECT, 0.8, True),
    Target("1 GiB download >= 0.8x direct OpenSSH", "download", RELAY, DIRECT, 0.8, True),
    Target("rsync of 1000 small files within 1.2x direct OpenSSH", "rsync", RELAY, DIRECT, 1.2, False),
    Target("1 GiB upload, direct path >= 0.95x direct OpenSSH", "upload", DIRECT_PATH, DIRECT, 0.95, True),
    Target("1 GiB download, direct path >= 0.95x direct OpenSSH", "download", DIRECT_PATH, DIRECT, 0.95, True),
    Target("1 GiB upload >= 0.8x direct OpenSSH, sshd on TCP", "upload", RELAY, DIRECT_TCP, 0.8, True),
    Target("1 GiB download >= 0.8x direct OpenSSH, sshd on TCP", "download", RELAY, DIRECT_TCP, 0.8, True),
    Target("rsync within 1.2x direct OpenSSH, sshd on TCP", "rsync", RELAY, DIRECT_TCP, 1.2, False),
    Target("direct path upload >= 0.95x direct OpenSSH, sshd on TCP", "upload", DIRECT_PATH, DIRECT_TCP, 0.95,
           True),
    Target("direct path download >= 0.95x direct OpenSSH, sshd on TCP", "download", DIRECT_PATH, DIRECT_TCP, 0.95,
           True),
    Target("idle daemon RSS < 60 MiB", "rss", IDLE_RSS, None, 60, False),
    Target("< 200 KiB per idle client connection", "rss_per_client", PER_CLIENT, None, 200, False),
    Target("no CPU when idle (30 s)", "idle_cpu", IDLE_CPU, None, 0.01, False),
]
