"""`relayd run`: the daemon, in the foreground, started by the helper, or by systemd.

SIGTERM, SIGINT and `relayd stop` close every client with a reason and exit; SIGHUP reloads the config
(a broken one is logged and the running one kept). Started on demand (by the helper or
by socket activation), the daemon also exits when idle (relayd.daemon.exit_when_idle).
"""

from __future__ import annotations

import signal
import sys
import time

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from relayd.common.errors import ActivationError, AlreadyRunning, ConfigError, UnusablePath
from relayd.common.paths import Paths
from relayd.daemon.activation import systemd_socket
from relayd.siteconfig import load_config

SHUTDOWN_GRACE_SECONDS = 3.0  # for disconnect messages to reach the clients
log = Logger()


def run(paths: Paths, verbose: bool = False, on_demand: bool = False, log_to: str | None = None) -> int:
    try:
        config = load_config(paths.config_file)
        passed = systemd_socket()
    except (ConfigError, ActivationError) as exc:
        print(f"relayd: {exc}", file=sys.stderr)
        return 2
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    from relayd.daemon.exit_when_idle import IdleExit
    from relayd.daemon.logs import default_target, start_logging
    from relayd.daemon.service import RelayDaemon

    if passed is not None:
        paths = paths.with_socket(passed.path)
    started_by = "systemd" if passed else "helper" if on_demand else "foreground"
    start_logging(log_to or default_target(started_by), verbose, paths.log_file)
    if paths.runtime_fallback:
        log.warn("runtime directory: {why}", why=paths.runtime_fallback)
    try:
        daemon = RelayDaemon(reactor, config, paths)
        daemon.activation = started_by
        if passed is not None:
            daemon.adopt(passed.fd)
        else:
            daemon.listen()
    except (AlreadyRunning, UnusablePath, CannotListenError) as exc:
        print(f"relayd: {exc}", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", lambda: ensureDeferred(_close_clients(reactor, daemon)))
    if started_by != "foreground":
        idle = IdleExit(reactor, daemon.is_idle, lambda: daemon.config.exit_when_idle, paths.start_lock, reactor.stop)
        daemon.on_idle_change = idle.update
        idle.update()

    def reload() -> None:
        try:
            new = load_config(paths.config_file)
        except ConfigError as exc:
            log.error("config not reloaded, keeping the running one: {error}", error=str(exc))
            return
        daemon.reload(new)
        daemon.on_idle_change()
        log.info("config reloaded from {path}", path=str(paths.config_file))

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
    # Twisted's own handlers: SIGTERM and SIGINT stop the reactor (running the trigger above),
    # and SIGCHLD reaps condor_ssh_to_job; without it a negotiation can miss its tool's exit.
    reactor.run()
    return 0


async def _close_clients(reactor, daemon) -> None:  # type: ignore[no-untyped-def]
    """Before the reactor stops: tell every client why, then give the words time to arrive."""
    stopped = daemon.stop()
    deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
    while daemon.connections and time.monotonic() < deadline:
        await deferLater(reactor, 0.05)
    await stopped
