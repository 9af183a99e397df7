"""The `relayd` command. Subcommands import what they need, so `relayd connect` starts fast."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from relayd.paths import Paths, default_paths

if TYPE_CHECKING:
    from relayd.config import Config
    from relayd.listing import JobRow


def _relayd_executable() -> str:
    """The absolute path of this relayd, for the generated ProxyCommand."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "relayd":
        return os.path.abspath(argv0)
    return shutil.which("relayd") or str(Path(sys.executable).parent / "relayd")


def cmd_run(args: argparse.Namespace) -> int:
    from relayd.run import run

    return run(default_paths(), verbose=args.verbose)


def cmd_connect(args: argparse.Namespace) -> int:
    from clientconf.connect import connect

    socket_path = args.socket or str(default_paths().socket)
    return connect(socket_path, args.host, args.port, show_progress=sys.stderr.isatty(), user=args.user)


def _load_config(paths: Paths) -> Config:
    """The config, or exit 2 with the message naming file, line and key."""
    from relayd.config import ConfigError, load_config

    try:
        return load_config(paths.config_file)
    except ConfigError as exc:
        raise SystemExit(f"relayd: {exc}") from None


def _job_rows(config: Config) -> tuple[list[JobRow], list[str]]:
    from relayd.listing import list_jobs

    rows, errors = list_jobs(config)
    for error in errors:
        print(f"relayd: {error}", file=sys.stderr)
    return rows, errors


def cmd_ssh_config(args: argparse.Namespace) -> int:
    from clientconf import sshconfig

    paths = default_paths()
    config = _load_config(paths)
    hosts = [row.host for row in _job_rows(config)[0] if row.reachable] if args.jobs else None
    block = sshconfig.render(
        sshconfig.BlockSettings(
            domain=config.domain,
            relayd=_relayd_executable(),
            socket=str(paths.socket),
            known_hosts=str(paths.known_hosts),
        ),
        hosts,
    )
    if args.action == "print":
        sys.stdout.write(block)
        return 0
    target = Path(args.file) if args.file else Path.home() / ".ssh" / "config"
    old = target.read_text() if target.exists() else ""
    new = sshconfig.with_block(old, block) if args.action == "install" else sshconfig.without_block(old)
    if args.dry_run:
        sys.stdout.write(sshconfig.diff(target, old, new) or f"{target}: already up to date\n")
        return 0
    if new == old:
        print(f"{target}: already up to date")
        return 0
    sshconfig.write_atomically(target, new)
    print(f"{target}: {'installed' if args.action == 'install' else 'removed'} the condor-relay block")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from relayd.listing import format_rows

    rows, errors = _job_rows(_load_config(default_paths()))
    if rows:
        sys.stdout.write(format_rows(rows))
    elif not errors:
        print("no jobs in the queue")
    return 1 if errors and not rows else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayd", description="SSH to running HTCondor jobs by host name.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    run.set_defaults(func=cmd_run)

    connect = sub.add_parser("connect", help="ProxyCommand helper (used by the generated ssh_config)")
    connect.add_argument("host")
    connect.add_argument("port", nargs="?", type=int, default=22)
    connect.add_argument("--socket", help="the daemon's socket (default: from XDG_RUNTIME_DIR)")
    connect.add_argument("--user", help="the user ssh connects as (%%r); used for EC2 instances")
    connect.set_defaults(func=cmd_connect)

    jobs = sub.add_parser("jobs", help="list your jobs with their ssh host names (running first)")
    jobs.set_defaults(func=cmd_jobs)

    ssh_config = sub.add_parser("ssh-config", help="print, install or uninstall the ssh_config block")
    ssh_config.add_argument("action", choices=["print", "install", "uninstall"])
    ssh_config.add_argument("--file", help="ssh config file to edit (default: ~/.ssh/config)")
    ssh_config.add_argument("--dry-run", action="store_true", help="show the change as a diff, write nothing")
    ssh_config.add_argument("--jobs", action="store_true",
                            help="add a Host entry per running job (for VS Code's Remote Explorer)")
    ssh_config.set_defaults(func=cmd_ssh_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
