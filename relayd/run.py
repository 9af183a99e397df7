"""`relayd run`: the daemon in the foreground, logging to stderr."""

from __future__ import annotations

import sys

from relayd.config import ConfigError, load_config
from relayd.paths import Paths


def _start_logging(verbose: bool) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.debug if verbose else LogLevel.info
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    # Conch logs each key exchange and connection at info level; keep it quiet unless asked.
    if not verbose:
        predicate.setLogLevelForNamespace("relayd.ssh", LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run(paths: Paths, verbose: bool = False) -> int:
    try:
        config = load_config(paths.config_file)
    except ConfigError as exc:
        print(f"relayd: {exc}", file=sys.stderr)
        return 2
    from twisted.internet import reactor

    from relayd.daemon import AlreadyRunning, RelayDaemon

    _start_logging(verbose)
    daemon = RelayDaemon(reactor, config, paths)
    try:
        daemon.listen()
    except AlreadyRunning as exc:
        print(f"relayd: {exc}", file=sys.stderr)
        return 1

    # Twisted's own signal handling: SIGINT and SIGTERM stop the reactor (closing the
    # sessions first), and its SIGCHLD handling reaps condor_ssh_to_job; without it a
    # negotiation whose tool closed its pipes before exiting never learnt that it ended.
    reactor.addSystemEventTrigger("before", "shutdown", daemon.stop)
    reactor.run()
    return 0
