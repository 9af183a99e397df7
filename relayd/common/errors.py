"""One exception family: every failure relayd reports is a RelayError, and its str() is the
one-line message for the person who reads it (a user's terminal, a log line).

Anything else that escapes is a bug, reported as an internal error. Stdlib only: the
ProxyCommand helper imports this.
"""

from __future__ import annotations


class RelayError(Exception):
    """A failure with a message for people."""


# -- what a user asked for -------------------------------------------------------------------

class BadRequest(RelayError, ValueError):
    """A request line on the daemon's socket that is not part of the protocol."""


class BadHostName(RelayError, ValueError):
    """A host name that is not a job name; the message names the expected form."""


class ConfigError(RelayError, ValueError):
    """A config file that cannot be used; the message names the file, line and key."""


# -- reaching a job ----------------------------------------------------------------------------

class JobUnreachable(RelayError):
    """The job cannot be reached now: its state, a schedd label, an EC2 instance, its sshd.

    `retryable` marks failures condor_ssh_to_job itself would retry with -auto-retry
    (e.g. a job that started running a moment ago).
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class NegotiationFailed(JobUnreachable):
    """condor_ssh_to_job did not hand over a connection; the message carries its own words."""


class HostKeyRefused(JobUnreachable):
    """A job's sshd or EC2 instance presented a key the relay must not trust."""


class LookupFailed(RelayError):
    """The job source could not be asked (schedd or collector unreachable, bad pool dir)."""


# -- the daemon's own ground -----------------------------------------------------------------

class UnusablePath(RelayError):
    """A directory or file of the daemon's that it cannot use; the message says which and why."""


class AlreadyRunning(RelayError):
    """Another relayd listens on the socket."""


class ActivationError(RelayError):
    """systemd passed something this daemon cannot serve."""


class NotRunning(RelayError):
    """No daemon listens on the socket."""


class DaemonError(RelayError):
    """The daemon answered with an error, or not in the protocol."""


class StartFailed(RelayError):
    """The daemon could not be reached or started; the message says why (its own output included)."""


# -- peers that break the protocol ---------------------------------------------------------

class ProtocolViolation(RelayError):
    """A peer sent a connection-layer message that breaks RFC 4254; its connection must go."""


class BadPacket(RelayError):
    """A peer sent a packet that cannot be opened; the connection must end."""
