"""Command line for sandbox pools: init, submit, set, list, stop.

    python -m relayd.sandbox init DIR [--job-user NAME] [--negotiation-delay S] ...
    python -m relayd.sandbox submit DIR [--count N] [--status running|idle|held] ...
    python -m relayd.sandbox set DIR JOBID --status STATUS [--hold-reason TEXT]
    python -m relayd.sandbox list DIR [--all]
    python -m relayd.sandbox stop DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from relayd.common.jobstates import HELD, STATUS_NAMES, UNIVERSE_BY_NAME, UNIVERSE_NAMES

from .jobuser import DEFAULT_JOB_USER, JobUserError
from .layout import SETTABLE_STATUSES, PoolError, PoolSettings
from .pool import create_pool, load_ads, set_status, stop_pool, submit_cluster

_SET_STATUSES = tuple(STATUS_NAMES[code] for code in SETTABLE_STATUSES)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m relayd.sandbox",
                                     description="Manage a sandbox HTCondor pool.")
    commands = parser.add_subparsers(dest="command", required=True)

    defaults = PoolSettings()
    init = commands.add_parser("init", help="create a pool directory")
    init.add_argument("dir")
    init.add_argument("--job-user", default=DEFAULT_JOB_USER,
                      help="account jobs run as when the tools run as root (created if missing)")
    init.add_argument("--negotiation-delay", type=float, default=defaults.negotiation_delay,
                      help="seconds each negotiation waits before START_SSHD")
    init.add_argument("--ssh-ready-delay", type=float, default=defaults.ssh_ready_delay,
                      help="seconds after a job starts during which ssh_to_job must retry")
    init.add_argument("--retry-delay", type=float, default=defaults.retry_delay,
                      help="seconds between -auto-retry attempts")
    init.add_argument("--schedd-name", default=defaults.schedd_name)
    init.add_argument("--exec-host", default=defaults.exec_host)
    init.add_argument("--start-delay", type=float, default=defaults.start_delay,
                      help="seconds before the negotiator starts a job on demand")

    submit = commands.add_parser("submit", help="submit jobs; prints their ids")
    submit.add_argument("dir")
    submit.add_argument("--count", type=int, default=1)
    submit.add_argument("--status", choices=("running", "idle", "held"), default="running")
    submit.add_argument("--hold-reason")
    submit.add_argument("--universe", choices=tuple(UNIVERSE_BY_NAME), default="vanilla")
    submit.add_argument("--nodes", type=int, help="nodes of a parallel job (default 2)")
    submit.add_argument("--owner")
    submit.add_argument("--iwd", help="job working directory (default: its sandbox)")
    submit.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    submit.add_argument("--grid-resource", help='e.g. "ec2 https://ec2.amazonaws.com/"')
    submit.add_argument("--ec2-vm-name", help="EC2RemoteVirtualMachineName")
    submit.add_argument("--ec2-keypair-file", help="EC2KeyPairFile")

    set_ = commands.add_parser("set", help="change the status of a job (or of a whole cluster)")
    set_.add_argument("dir")
    set_.add_argument("jobid", help="C.P, or C for every job of cluster C")
    set_.add_argument("--status", choices=_SET_STATUSES, required=True)
    set_.add_argument("--hold-reason")

    list_ = commands.add_parser("list", help="show the queue")
    list_.add_argument("dir")
    list_.add_argument("--all", action="store_true", help="include removed and completed jobs")

    stop = commands.add_parser("stop", help="kill every job process and sshd of the pool")
    stop.add_argument("dir")
    return parser


def _submit_attrs(args: argparse.Namespace) -> dict[str, Any]:
    attrs: dict[str, Any] = {"JobUniverse": UNIVERSE_BY_NAME[args.universe]}
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--env wants NAME=VALUE, not {item!r}")
        env[name] = value
    optional = {"HoldReason": args.hold_reason, "MaxHosts": args.nodes, "Owner": args.owner,
                "Iwd": args.iwd, "GridResource": args.grid_resource,
                "EC2RemoteVirtualMachineName": args.ec2_vm_name,
                "EC2KeyPairFile": args.ec2_keypair_file}
    attrs.update({k: v for k, v in optional.items() if v is not None})
    if env:
        attrs["Environment"] = env
    return attrs


def _set(args: argparse.Namespace) -> None:
    cluster_text, _, proc_text = args.jobid.partition(".")
    cluster = int(cluster_text)
    if proc_text:
        procs = [int(proc_text)]
    else:
        procs = [ad["ProcId"] for ad in load_ads(args.dir) if ad["ClusterId"] == cluster]
        if not procs:
            raise PoolError(f"No jobs in cluster {cluster}")
    for proc in procs:
        set_status(args.dir, cluster, proc, args.status, args.hold_reason)


def _list(args: argparse.Namespace) -> None:
    rows = [("ID", "OWNER", "STATUS", "SINCE", "UNIVERSE", "SLOT", "HOLD_REASON")]
    for ad in load_ads(args.dir, include_history=args.all):
        status, universe = ad.get("JobStatus", 0), ad.get("JobUniverse", 0)
        since = time.strftime("%m/%d %H:%M", time.localtime(ad.get("EnteredCurrentStatus", 0)))
        rows.append((f"{ad['ClusterId']}.{ad['ProcId']}", str(ad.get("Owner", "")),
                     STATUS_NAMES.get(status, "?"), since, UNIVERSE_NAMES.get(universe, "?"),
                     ad.get("RemoteHost", "-"), ad.get("HoldReason", "") if status == HELD else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            print(create_pool(args.dir, job_user=args.job_user,
                              negotiation_delay=args.negotiation_delay,
                              ssh_ready_delay=args.ssh_ready_delay, retry_delay=args.retry_delay,
                              schedd_name=args.schedd_name, exec_host=args.exec_host,
                              start_delay=args.start_delay))
        elif args.command == "submit":
            for cluster, proc in submit_cluster(args.dir, args.count, args.status,
                                                **_submit_attrs(args)):
                print(f"{cluster}.{proc}")
        elif args.command == "set":
            _set(args)
        elif args.command == "list":
            _list(args)
        else:
            stop_pool(args.dir)
    except (PoolError, JobUserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
