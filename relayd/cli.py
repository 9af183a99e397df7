"""The `relayd` command. Subcommands import what they need, so `relayd connect` starts fast."""

from __future__ import annotations

import argparse
import sys


def _relayd_executable() -> str:
    """The absolute path of this relayd, for the generated ProxyCommand."""
    import os
    import shutil
    from pathlib import Path

    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "relayd":
        return os.path.abspath(argv0)
    return shutil.which("relayd") or str(Path(sys.executable).parent / "relayd")


def cmd_run(args: argparse.Namespace) -> int:
    from relayd.paths import default_paths
    from relayd.run import run

    return run(default_paths(), verbose=args.verbose)


def cmd_connect(args: argparse.Namespace) -> int:
    from clientconf.connect import connect

    if args.socket:
        socket_path = args.socket
    else:
        from relayd.paths import default_paths

        socket_path = str(default_paths().socket)
    return connect(socket_path, args.host, args.port, show_progress=sys.stderr.isatty())


def cmd_ssh_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clientconf import sshconfig
    from relayd.config import ConfigError, load_config
    from relayd.paths import default_paths

    paths = default_paths()
    try:
        config = load_config(paths.config_file)
    except ConfigError as exc:
        print(f"relayd: {exc}", file=sys.stderr)
        return 2
    block = sshconfig.render(
        sshconfig.BlockSettings(
            domain=config.domain,
            relayd=_relayd_executable(),
            socket=str(paths.socket),
            known_hosts=str(paths.known_hosts),
        )
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
    connect.set_defaults(func=cmd_connect)

    ssh_config = sub.add_parser("ssh-config", help="print, install or uninstall the ssh_config block")
    ssh_config.add_argument("action", choices=["print", "install", "uninstall"])
    ssh_config.add_argument("--file", help="ssh config file to edit (default: ~/.ssh/config)")
    ssh_config.add_argument("--dry-run", action="store_true", help="show the change as a diff, write nothing")
    ssh_config.set_defaults(func=cmd_ssh_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
