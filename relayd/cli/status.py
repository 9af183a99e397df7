"""`relayd status` for people: the daemon's status document as text tables."""

from __future__ import annotations

from typing import Any

from relayd.cli.tables import table
from relayd.common.humanize import duration, size


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
    on_demand = document.get("on_demand", [])  # a daemon from before jobs on demand has none
    lines.append(f"jobs on demand: {len(on_demand)}")
    if on_demand:  # worded as `relayd jobs` words them
        rows = [[j["host"], j["job"], j["profile"], j["state"], str(j["clients"]),
                 "in use" if j["left"] is None else f"removed in {duration(j['left'])}"] for j in on_demand]
        lines += table(["HOST", "JOB", "PROFILE", "STATE", "CLIENTS", "LEFT"], rows, indent="  ")
    clients = document["clients"]
    lines.append(f"clients: {len(clients)}")
    if clients:
        rows = [[c["host"], c["state"], duration(c["age"]), size(c["bytes_to_client"]), size(c["bytes_from_client"])]
                for c in clients]
        lines += table(["HOST", "STATE", "AGE", "TO CLIENT", "FROM CLIENT"], rows, indent="  ")
    return "\n".join(lines) + "\n"
