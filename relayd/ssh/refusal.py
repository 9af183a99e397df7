"""`python -m relayd.ssh.refusal MESSAGE`: tell an ssh client over SSH why it cannot connect.

The helper runs this when it fails before the daemon could take the connection (no daemon
could be started, a bad request): on its stdin/stdout, which are ssh's connection, it
does the key exchange as the relay (the same host key, so ssh's pin holds), shows MESSAGE
as a banner and disconnects with it as the reason. Without it ssh would print OpenSSH's
own `mm_receive_fd` / `proxy dialer` lines after, or instead of, the helper's stderr,
which ssh sends to /dev/null behind ControlPersist. Only the failure path pays for the
imports.
"""

from __future__ import annotations

import sys

from twisted.internet import protocol, stdio

from relayd.common.errors import ConfigError, UnusablePath

REFUSAL_SECONDS = 20.0  # the client has this long to hear the reason


class _Ended(protocol.Protocol):
    """Wraps the refusing transport so that the process ends with the connection."""

    def __init__(self, inner: protocol.Protocol, reactor) -> None:  # type: ignore[no-untyped-def]
        self._inner = inner
        self._reactor = reactor

    def makeConnection(self, transport) -> None:  # type: ignore[no-untyped-def]
        self._inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self._inner.dataReceived(data)

    def connectionLost(self, reason=protocol.connectionDone) -> None:  # type: ignore[no-untyped-def]
        self._inner.connectionLost(reason)
        if self._reactor.running:
            self._reactor.stop()


def serve(message: str) -> int:
    """Refuse the SSH client on stdin/stdout with `message`."""
    from twisted.internet import reactor

    from relayd.common.paths import default_paths, private_dir
    from relayd.config import Config
    from relayd.siteconfig import load_config
    from relayd.ssh.client_transport import ClientTransportFactory
    from relayd.ssh.relay_key import load_or_create

    paths = default_paths()
    try:
        domain = load_config(paths.config_file).domain
    except ConfigError:  # often why the daemon could not start; the pin's name matters little here
        domain = Config().domain
    try:
        private_dir(paths.state_dir)
        key = load_or_create(paths.host_key, paths.known_hosts, domain)
    except (UnusablePath, OSError) as exc:
        sys.stderr.write(f"condor-relay: {message}\ncondor-relay: (and the relay's host key: {exc})\n")
        return 255
    factory = ClientTransportFactory(reactor, key)
    factory.doStart()
    ssh = factory.buildProtocol(None)
    stdio.StandardIO(_Ended(ssh, reactor), reactor=reactor)
    ssh.refuse(message)
    reactor.callLater(REFUSAL_SECONDS, reactor.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(serve(" ".join(sys.argv[1:])))
