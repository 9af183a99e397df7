"""What the daemon holds right now, as the JSON document `relayd status` shows.

Built from the daemon's JobSession objects, its jobs on demand and its open socket
connections, so it is always the live state, never a separately kept copy. Durations are in seconds.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from relayd import __version__
from relayd.common.jobstates import STATUS_NAMES
from relayd.condor.names import ProfileName, parse_profile_host

if TYPE_CHECKING:
    from relayd.common.paths import Paths
    from relayd.daemon.job_session import JobSession
    from relayd.daemon.on_demand import OnDemand
    from relayd.ssh.traffic import Traffic


def _rounded(seconds: float) -> float:
    return round(seconds, 1)


def _upstream(session: JobSession, domain: str) -> dict[str, Any]:
    legs = session.relay.legs
    return {
        "job": session.job.job_id,
        "host": session.job.host(domain),
        "schedd": session.job.label,  # a schedd label from the host name; None: the local schedd
        "slot": session.slot,
        "state": "ready" if legs else "negotiating",
        "age": _rounded(time.monotonic() - session.created),
        "idle": _rounded(session.traffic.idle_seconds()),
        "connections": len(legs),
        "clients": session.relay.clients,
        "channels": session.relay.channels,
        "bytes_to_job": session.traffic.sent,
        "bytes_from_job": session.traffic.received,
        "negotiations": session.negotiations,
    }


class ClientView(Protocol):
    """What the snapshot reads of a client's connection on the socket."""

    host: str | None
    state: str
    opened: float  # time.monotonic() when it connected

    @property
    def traffic(self) -> Traffic | None: ...


def _client(connection: ClientView) -> dict[str, Any]:
    traffic = connection.traffic
    return {
        "host": connection.host,
        "state": connection.state,
        "age": _rounded(time.monotonic() - connection.opened),
        "bytes_to_client": traffic.sent if traffic else 0,
        "bytes_from_client": traffic.received if traffic else 0,
    }


def _on_demand(on_demand: OnDemand, clients: list[ClientView], domain: str) -> list[dict[str, Any]]:
    """The jobs on demand the daemon holds, with the connections that asked for their profile
    (waiting or connected) and the seconds left before an unused one is removed (None: in use)."""
    names = (parse_profile_host(c.host, domain) for c in clients if c.host is not None)
    asking = Counter((name.profile, name.label) for name in names if name is not None)
    rows = []
    for key, held in on_demand.jobs.items():
        left = on_demand.time_left(key, held)
        rows.append({
            "host": ProfileName(held.profile, key[1]).host(domain),
            "profile": held.profile,
            "schedd": key[1],
            "job": held.job.job_id,
            "state": STATUS_NAMES.get(held.status, str(held.status)),
            "clients": asking[key],
            "left": None if left is None else _rounded(left),
        })
    return sorted(rows, key=lambda row: row["host"])


def snapshot(*, started: float, activation: str, paths: Paths, domain: str, exit_when_idle: float | None,
             negotiations: int, sessions: list[JobSession], clients: list[ClientView],
             on_demand: OnDemand) -> dict[str, Any]:
    """The daemon's state: its job sessions, its jobs on demand and its SSH clients."""
    return {
        "pid": os.getpid(),
        "version": __version__,
        "started": started,
        "uptime": _rounded(time.time() - started),
        "socket": str(paths.socket),
        "config_file": str(paths.config_file),
        "activation": activation,
        "exit_when_idle": exit_when_idle,
        "negotiations": negotiations,
        "upstreams": [_upstream(session, domain) for session in sessions],
        "on_demand": _on_demand(on_demand, clients, domain),
        "clients": [_client(c) for c in sorted(clients, key=lambda c: c.opened)],
    }
