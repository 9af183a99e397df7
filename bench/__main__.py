"""`python -m bench` (`make bench`): relayd against what a user would otherwise use.

Everything runs against one sandbox-pool job in a private temp dir, on this machine, in
this run; each scenario interleaves its contenders. Prints a Markdown table of medians
and the targets, and writes it with the raw samples as JSON and as a PNG.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench import report, scenarios
from bench.results import Scenario
from bench.rig import RELAYD, Rig

GiB = 1024 * 1024 * 1024


def _meta(args: argparse.Namespace) -> dict[str, object]:
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "machine": platform.platform(), "python": platform.python_version(), "openssh": ssh,
            "relayd": args.relayd, "repeat": args.repeat, "bulk_bytes": args.bulk_bytes}


def run(args: argparse.Namespace) -> dict[str, Scenario]:
    rig = Rig(args.relayd)
    results: list[Scenario] = []
    try:
        # The generated block as users get it (each ssh a client of the relay); a short
        # idle_timeout lets the cold-connect samples start from no upstream quickly.
        rig.start_relay(idle_timeout=3)

        def warm(measure):  # type: ignore[no-untyped-def]
            """Throughput with every contender's connection kept between samples, as direct
            OpenSSH's ControlMaster keeps its own: the 3 s idle_timeout would make the relay
            and the direct path negotiate again inside the samples."""
            rig.set_idle_timeout(120)
            rig.wait_upstream_closed()  # the job's next session is opened under the new setting
            try:
                return measure()
            finally:
                rig.set_idle_timeout(3)
                rig.close_direct_master()

        steps = [
            lambda: [scenarios.helper_startup(rig, args.repeat * 2)],
            lambda: [scenarios.warm_connect(rig, args.repeat * 2)],
            lambda: [scenarios.cold_connect(rig, args.repeat * 2)],  # key generation time varies a lot
            lambda: [scenarios.repeated(rig, args.repeat, negotiation_delay=0.5)],
            lambda: warm(lambda: [*scenarios.bulk(rig, max(1, args.repeat // 2), args.bulk_bytes),
                                  scenarios.rsync_tree(rig, max(1, args.repeat // 2), files=1000)]),
            lambda: [scenarios.concurrent_sessions(rig, 100)],
            lambda: scenarios.memory_and_idle_cpu(rig, clients=100, idle_seconds=args.idle_seconds),
        ]
        for step in steps:
            for scenario in step():
                print(f"bench: {scenario.title}: " + ", ".join(
                    f"{s.name} {s.median:.4g} {scenario.unit}" for s in scenario.series), flush=True)
                results.append(scenario)
    finally:
        rig.close()
    return {s.key: s for s in results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="directory for bench.{json,md,png}")
    parser.add_argument("--before", type=Path, help="an earlier bench.json to compare against (a 'before' column)")
    parser.add_argument("--relayd", default=RELAYD, help="the relayd executable to measure (default: this venv's)")
    parser.add_argument("--repeat", type=int, default=6, help="samples per contender (more for quick scenarios)")
    parser.add_argument("--bulk-bytes", type=int, default=GiB, help="bytes per upload and download")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="how long to watch the idle daemon's CPU")
    parser.add_argument("--report", type=Path, help="measure nothing: report this earlier bench.json again")
    args = parser.parse_args(argv)
    found = report.load(args.report) if args.report else run(args)
    before = report.load(args.before) if args.before else None
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:  # first: the measurements outlive any failure to render them
        report.write_json(args.out / "bench.json", found, _meta(args))
    table = report.markdown(found, before)
    (args.out / "bench.md").write_text(table)
    report.plot(args.out / "bench.png", found, before)
    print("\n" + table)
    print(f"bench: wrote {args.out}/bench.json, bench.md and bench.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
