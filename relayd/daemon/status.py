"""What the daemon holds right now, as the JSON document `relayd status` shows.

Built from the daemon's JobSession objects and its open socket connections, so it is
always the live state, never a separately kept copy. Durations are in seconds.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from relayd import __version__
from relayd.cli.tables import table
from relayd.common.humanize import duration, size

if TYPE_CHECKING:
    from relayd.daemon.control import ControlConnection
    from relayd.daemon.job_session import JobSession
    from relayd.daemon.service import RelayDaemon


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


def _client(connection: ControlConnection) -> dict[str, Any]:
    traffic = connection.traffic
    return {
        "host": connection.host,
        "state": connection.state,
        "age": _rounded(time.monotonic() - connection.opened),
        "bytes_to_client": traffic.sent if traffic else 0,
        "bytes_from_client": traffic.received if traffic else 0,
    }


def snapshot(daemon: RelayDaemon, asking: ControlConnection | None = None) -> dict[str, Any]:
    """The daemon's state; `asking` (the STATUS request's own connection) is left out."""
    config = daemon.config
    on_demand = daemon.activation != "foreground"
    return {
        "pid": os.getpid(),
        "version": __version__,
        "started": daemon.started,
        "uptime": _rounded(time.time() - daemon.started),
        "socket": str(daemon.paths.socket),
        "config_file": str(daemon.paths.config_file),
        "activation": daemon.activation,
        "exit_when_idle": config.exit_when_idle if on_demand and config.exit_when_idle > 0 else None,
        "negotiations": daemon.negotiations,
        "upstreams": [_upstream(s, config.domain) for s in daemon.jobs.values()],
        "clients": [
            _client(c) for c in sorted(daemon.connections, key=lambda c: c.opened)
            if c is not asking and c.host is not None
        ],
    }


def render(document: dict[str, Any]) -> str:
    """The status document for people (`relayd status` without --json)."""
    how = {"foreground": "run in the foreground", "helper": "started by the helper", "systemd": "started by systemd"}
    started = how.get(document["activation"], document["activation"])
    idle = f"; exits after {duration(document['exit_when_idle'])} idle" if document["exit_when_idle"] else ""
    lines = [
        f"relayd {document['version']}, pid {document['pid']}, up {duration(document['uptime'])} ({started}{idle})",
        f"socket {document['socket']}; {document['negotiations']} negotiation(s) so far",
    ]
    upstreams = document["upstreams"]
    lines.append(f"upstreams: {len(upstreams)}")
    if upstreams:
        header = ["JOB", "SCHEDD", "SLOT", "STATE", "AGE", "IDLE", "CONNS", "CLIENTS", "CHANNELS", "TO JOB",
                  "FROM JOB", "NEGOTIATIONS"]
        rows = [[u["job"], u["schedd"] or "local", u["slot"] or "-", u["state"], duration(u["age"]),
                 duration(u["idle"]), str(u["connections"]), str(u["clients"]), str(u["channels"]),
                 size(u["bytes_to_job"]), size(u["bytes_from_job"]), str(u["negotiations"])] for u in upstreams]
        lines += table(header, rows, indent="  ")
    clients = document["clients"]
    lines.append(f"clients: {len(clients)}")
    if clients:
        rows = [[c["host"], c["state"], duration(c["age"]), size(c["bytes_to_client"]), size(c["bytes_from_client"])]
                for c in clients]
        lines += table(["HOST", "STATE", "AGE", "TO CLIENT", "FROM CLIENT"], rows, indent="  ")
    return "\n".join(lines) + "\n"
