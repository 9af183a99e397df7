"""The `relayd` command. Subcommands import what they need, and `relayd connect`, which
runs before every ssh connection, skips even argparse: main() hands it to the helper."""

from __future__ import annotations

import sys

from relayd.common.errors import ConfigError, DaemonError, NotRunning
from relayd.common.paths import Paths, default_paths

TYPE_CHECKING = False  # as typing.TYPE_CHECKING (type checkers honour it) without importing typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from relayd.cli.jobs import JobRow
    from relayd.config import Config

EXIT_NOT_RUNNING = 3  # as `systemctl status` for a stopped unit


def _paths(args: argparse.Namespace) -> Paths:
    paths = default_paths()
    return paths.with_socket(args.socket) if getattr(args, "socket", None) else paths


def cmd_run(args: argparse.Namespace) -> int:
    from relayd.daemon.run import run

    return run(_paths(args), verbose=args.verbose, on_demand=args.on_demand, log_to=args.log_to)


def _load_config(paths: Paths) -> Config:
    """The config, or exit 2 with the message naming file, line and key."""
    from relayd.siteconfig import load_config

    try:
        return load_config(paths.config_file)
    except ConfigError as exc:
        raise SystemExit(f"relayd: {exc}") from None


def _job_rows(config: Config) -> tuple[list[JobRow], list[str]]:
    from relayd.cli.jobs import list_jobs

    rows, errors = list_jobs(config)
    for error in errors:
        print(f"relayd: {error}", file=sys.stderr)
    return rows, errors


def _local_block(paths: Paths, config: Config, hosts: list[str] | None = None) -> str:
    import math

    from clientconf import sshconfig

    return sshconfig.render(
        sshconfig.BlockSettings(
            domain=config.domain,
            helper=sshconfig.helper_executable(),
            socket=str(paths.socket),
            known_hosts=str(paths.known_hosts),
            multiplexing=config.ssh_multiplexing,
            control_persist=math.ceil(config.idle_timeout),
        ),
        hosts,
    )


def cmd_ssh_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clientconf import sshconfig

    paths = _paths(args)
    if args.system:
        return _system_block(args)
    config = _load_config(paths)
    if args.action == "known-hosts":
        from relayd.ssh.relay_key import load_or_create

        load_or_create(paths.host_key, paths.known_hosts, config.domain)
        sys.stdout.write(paths.known_hosts.read_text())
        return 0
    if args.via and args.action != "print":
        print("relayd: --via only prints (the block is for the laptop's ssh config)", file=sys.stderr)
        return 2
    if args.via:
        pinning = {"known_hosts": args.known_hosts} if args.known_hosts else {}
        settings = sshconfig.ViaSettings(config.domain, args.via, sshconfig.relayd_executable(), str(paths.socket),
                                         ssh=args.ssh, **pinning)
        try:
            sys.stdout.write(sshconfig.render_via(settings))
        except ValueError as exc:
            print(f"relayd: {exc}", file=sys.stderr)
            return 2
        return 0
    hosts = None
    if args.jobs:
        from relayd.cli.on_demand import profile_hosts

        hosts = profile_hosts(config) + [row.host for row in _job_rows(config)[0] if row.reachable]
    block = _local_block(paths, config, hosts)
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


def _system_block(args: argparse.Namespace) -> int:
    """--system: the drop-in for every user, from the site config alone (clientconf.dropin)."""
    from pathlib import Path

    from clientconf import dropin
    from relayd.config import ConfigError
    from relayd.siteconfig import load_merged

    if args.action == "known-hosts" or args.via or args.jobs or args.socket:
        print("relayd: --system takes no --via, --jobs or --socket, nor known-hosts (they are per user)",
              file=sys.stderr)
        return 2
    try:
        config = load_merged(None).config
    except ConfigError as exc:
        raise SystemExit(f"relayd: {exc}") from None
    return dropin.command(args.action, config, Path(args.file) if args.file else None, args.dry_run)


def _talks_to_daemon(command: Callable[[argparse.Namespace, str], int]) -> Callable[[argparse.Namespace], int]:
    """A command given the daemon's socket; no daemon, or an error from it, becomes a message."""

    def run(args: argparse.Namespace) -> int:

        try:
            return command(args, str(_paths(args).socket))
        except NotRunning as exc:
            print(exc, file=sys.stderr)
            return EXIT_NOT_RUNNING
        except DaemonError as exc:
            print(f"relayd: {exc}", file=sys.stderr)
            return 1

    return run


@_talks_to_daemon
def cmd_status(args: argparse.Namespace, socket_path: str) -> int:
    import json

    from clientconf.daemonctl import status
    from relayd.cli.status import render

    document = status(socket_path)
    sys.stdout.write(json.dumps(document, indent=2) + "\n" if args.json else render(document))
    return 0


@_talks_to_daemon
def cmd_stop(args: argparse.Namespace, socket_path: str) -> int:
    from clientconf.daemonctl import status, stop

    pid = status(socket_path)["pid"]
    stop(socket_path)
    print(f"relayd (pid {pid}) stopped")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relayd.cli.doctor import default_ssh_config, diagnose, report

    paths = _paths(args)
    ssh_config = Path(args.ssh_config) if args.ssh_config else default_ssh_config()
    findings = diagnose(paths, ssh_config, lambda config: _local_block(paths, config))
    sys.stdout.write(report(findings))
    return 1 if any(f.level == "FAIL" for f in findings) else 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from relayd.cli.jobs import format_rows
    from relayd.cli.on_demand import format_on_demand, on_demand_rows

    config = _load_config(default_paths())
    rows, errors = _job_rows(config)
    if rows:
        sys.stdout.write(format_rows(rows))
    elif not errors:
        print("no jobs in the queue")
    on_demand = on_demand_rows(config)[0] if config.profiles and not errors else []  # the same schedds' errors
    if on_demand:
        sys.stdout.write("\njobs on demand (removed once unused for their profile's linger):\n"
                         + format_on_demand(on_demand))
    return 1 if errors and not rows else 0


def cmd_release(args: argparse.Namespace) -> int:
    from relayd.cli.on_demand import release
    from relayd.common.errors import RelayError

    try:
        lines = release(_load_config(default_paths()), args.profile)
    except RelayError as exc:
        print(f"relayd: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand but `connect`, which main() hands to the helper's own."""
    import argparse

    from clientconf.connect import SUMMARY

    parser = argparse.ArgumentParser(prog="relayd", description="SSH to running HTCondor jobs by host name.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    socket_help = "the daemon's socket (default: $XDG_RUNTIME_DIR/condor-relay/relay.sock)"

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    run.add_argument("--on-demand", action="store_true",
                     help="started by the helper: log to the state dir and exit when idle (exit_when_idle)")
    run.add_argument("--log-to", choices=["stderr", "file", "journal"],
                     help="where logs go (default: the journal under systemd, the file with --on-demand, else stderr)")
    run.add_argument("--socket", help=socket_help)
    run.set_defaults(func=cmd_run)

    sub.add_parser("connect", help=SUMMARY)  # only listed: main() hands `relayd connect` to the helper

    ssh_config = sub.add_parser("ssh-config", help="print, install or uninstall the ssh_config block")
    ssh_config.add_argument("action", choices=["print", "install", "uninstall", "known-hosts"],
                            help="known-hosts prints the line that pins the relay's host key")
    ssh_config.add_argument("--file", help="ssh config file to edit (default: ~/.ssh/config; with --system: "
                                           "/etc/ssh/ssh_config.d/20-condor-relay.conf)")
    ssh_config.add_argument("--system", action="store_true",
                            help="the block for every user (as root), from the site config")
    ssh_config.add_argument("--dry-run", action="store_true", help="show the change as a diff, write nothing")
    ssh_config.add_argument("--jobs", action="store_true",
                            help="add a Host entry per profile and running job (for VS Code's Remote Explorer)")
    ssh_config.add_argument("--via", metavar="ACCESS_POINT",
                            help="print a block for a laptop that reaches this host as ACCESS_POINT over ssh")
    ssh_config.add_argument("--ssh", default="ssh", help="with --via: the laptop's ssh program (default: ssh)")
    ssh_config.add_argument("--known-hosts", help="with --via: the laptop's file pinning the relay's host key "
                                                  "(default: condor-relay_known_hosts in the laptop's ~/.ssh)")
    ssh_config.add_argument("--socket", help=socket_help)
    ssh_config.set_defaults(func=cmd_ssh_config)

    jobs = sub.add_parser("jobs", help="list your jobs with their ssh host names (running first)")
    jobs.set_defaults(func=cmd_jobs)

    release = sub.add_parser("release", help="remove your job of a profile (jobs on demand) at once")
    release.add_argument("profile", help="the profile, as in its host name: gpu, or gpu.<schedd label>")
    release.set_defaults(func=cmd_release)

    status = sub.add_parser("status", help="what the daemon holds: upstreams, clients, traffic")
    status.add_argument("--json", action="store_true", help="the status as JSON")
    status.add_argument("--socket", help=socket_help)
    status.set_defaults(func=cmd_status)

    stop = sub.add_parser("stop", help="stop the daemon (clients are told why)")
    stop.add_argument("--socket", help=socket_help)
    stop.set_defaults(func=cmd_stop)

    doctor = sub.add_parser("doctor", help="check the setup and say what to fix")
    doctor.add_argument("--ssh-config", help="the ssh config file to check (default: ~/.ssh/config)")
    doctor.add_argument("--socket", help=socket_help)
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["connect"]:
        from clientconf.connect import main as connect

        return connect(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
