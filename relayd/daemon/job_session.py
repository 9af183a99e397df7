"""What the daemon holds for one job: its relay, its upstream legs and its clients.

The first client to ask for a job starts the session; clients that ask meanwhile wait
for the same negotiation. More legs are negotiated only when sshd's MaxSessions is
reached, and for each client whose session forwards its agent or X11 (a leg of its own,
closed as soon as that client is done with it). Legs close when unused for
`idle_timeout` (the first one once no client is attached), because a live sshd keeps the
job's slot claimed even after the job exits. The first leg's clock starts at the job's
last channel, not at its last client: an ssh ControlMaster stays attached
`ControlPersist` seconds after its last session, and the slot should not wait for both.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd.common.errors import JobUnreachable, ProtocolViolation, RelayError
from relayd.condor.names import JobName
from relayd.condor.negotiate import Credentials
from relayd.condor.reach import Progress
from relayd.relay.core import Relay
from relayd.relay.state import Client, ClientLink, Leg
from relayd.ssh.job_transport import UpstreamConnection
from relayd.ssh.traffic import Traffic

log = Logger()

# Seconds before a failed extra leg is negotiated again, while sessions wait for it.
LEG_RETRY_DELAYS = (1.0, 3.0)
OpenLeg = Callable[[Progress, bool], Awaitable[Credentials]]  # (progress, first leg?) -> credentials
# Why the job's connection was lost, as the schedd tells it (None: it still runs, or cannot say).
ExplainLoss = Callable[[JobName], Awaitable["str | None"]]


class JobSession:
    def __init__(
        self,
        job: JobName,
        open_leg: OpenLeg,
        reactor,  # type: ignore[no-untyped-def]
        idle_timeout: float,
        on_closed: Callable[[JobSession], None],
        max_sessions: int = 10,
        explain_loss: ExplainLoss | None = None,
        new_connection: Callable[..., UpstreamConnection] = UpstreamConnection,
    ) -> None:
        self.job = job
        self.created = time.monotonic()
        self.negotiations = 0
        self.closed = False
        self.ec2_user: str | None = None  # set when the job's legs go straight to an EC2 instance
        self.slot: str | None = None  # RemoteHost from the job lookup, for status
        self.traffic = Traffic()  # shared by every leg
        self._open_leg = open_leg
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._on_closed = on_closed
        self._explain_loss = explain_loss
        self._new_connection = new_connection  # (reactor, on_message, on_lost, traffic): a leg to be started
        self._connections: dict[Leg, UpstreamConnection] = {}
        self._legs: dict[UpstreamConnection, Leg] = {}
        self._timers: dict[Leg, object] = {}
        self._quiet_since = 0.0  # when the job last had no channels
        self._waiters: list[tuple[defer.Deferred[JobSession], Progress]] = []
        self.ready = False
        self.relay = Relay(self._need_leg, self._leg_idle, max_sessions=max_sessions)

    # -- becoming ready ---------------------------------------------------------------------

    def start(self) -> None:
        defer.ensureDeferred(self._first_leg())

    def wait_ready(self, progress: Progress) -> defer.Deferred[JobSession]:
        """Fires when the first leg is up (at once if it is), or fails with its reason."""
        if self.ready:
            return defer.succeed(self)
        waiter: defer.Deferred[JobSession] = defer.Deferred()
        self._waiters.append((waiter, progress))
        return waiter

    def _progress(self, text: str) -> None:
        for _, progress in self._waiters:
            progress(text)

    async def _first_leg(self) -> None:
        try:
            await self._add_leg(first=True)
        except Exception as exc:
            result = Failure()
            if not isinstance(exc, RelayError):
                log.failure("connecting to job {job} failed", result, job=self.job.job_id)
            self._finish(f"could not connect: {exc}")
            for waiter, _ in self._waiters:
                waiter.errback(result)
        else:
            self.ready = True
            self._quiet_since = self._reactor.seconds()
            self._arm_timer(self.relay.legs[0])
            for waiter, _ in self._waiters:
                waiter.callback(self)
        self._waiters.clear()

    async def _add_leg(self, first: bool, owner: Client | None = None) -> None:
        self.negotiations += 1
        credentials = await self._open_leg(self._progress, first)
        connection = self._new_connection(self._reactor, self._from_job, self._leg_lost, self.traffic)
        try:
            await connection.start(credentials)
        except JobUnreachable as exc:
            raise JobUnreachable(f"job {self.job.job_id}: {exc}") from None
        if self.closed:
            connection.close("relay no longer needs this connection")
            return
        leg = self.relay.add_leg(connection, owner)
        if leg is None:
            connection.close("its client left")
            return
        connection.on_congestion = lambda _, congested: self.relay.congested(leg, congested)
        self._connections[leg] = connection
        self._legs[connection] = leg
        log.info("job {job}: upstream connection {n} ready", job=self.job.job_id, n=len(self._connections))

    def _need_leg(self, owner: Client | None) -> None:
        """Negotiate one more leg: shared when every shared leg has MaxSessions sessions, or
        owned by a client whose session forwards its agent or X11. A failed negotiation is
        tried again (LEG_RETRY_DELAYS) while sessions still wait for it: in a burst of
        sessions one may fail where the job is fine, and its sessions should not."""
        async def add() -> None:
            for delay in (*LEG_RETRY_DELAYS, None):
                try:
                    await self._add_leg(first=False, owner=owner)
                    return
                except Exception as exc:
                    if delay is None or self.closed or not self.relay.waiting(owner):
                        log.warn("job {job}: another upstream connection failed: {exc}", job=self.job.job_id,
                                 exc=exc)
                        self.relay.leg_failed(str(exc), owner)
                        return
                    log.warn("job {job}: another upstream connection failed ({exc}); trying again in {delay:g} s",
                             job=self.job.job_id, exc=exc, delay=delay)
                await task.deferLater(self._reactor, delay, lambda: None)

        defer.ensureDeferred(add())

    # -- traffic ------------------------------------------------------------------------------

    def _from_job(self, connection: UpstreamConnection, msgnum: int, payload: bytes) -> None:
        try:
            self.relay.from_leg(self._legs[connection], msgnum, payload)
        except ProtocolViolation as exc:
            log.error("job {job}'s sshd broke the protocol: {exc}", job=self.job.job_id, exc=exc)
            connection.close("protocol error")

    def attach(self, link: ClientLink) -> Client:
        if self.relay.legs:
            self._cancel_timer(self.relay.legs[0])
        return self.relay.attach(link)

    def detach(self, client: Client) -> None:
        self.relay.detach(client)
        if not self.relay.clients and self.relay.legs:
            quiet = 0.0 if self.relay.channels else self._reactor.seconds() - self._quiet_since
            self._arm_timer(self.relay.legs[0], max(0.0, self._idle_timeout - quiet))

    # -- ending -------------------------------------------------------------------------------

    def _leg_lost(self, connection: UpstreamConnection, reason: str | None) -> None:
        leg = self._legs.pop(connection, None)
        if leg is None:
            return  # it was closed before it became a leg
        del self._connections[leg]
        self._cancel_timer(leg)
        if self.closed:
            return
        legs = self.relay.legs
        if legs and leg is legs[0]:
            detail = f": {reason}" if reason else ""
            defer.ensureDeferred(self._close_explained(f"connection to job {self.job.job_id} lost{detail}"))
        else:
            self.relay.remove_leg(leg)

    async def _close_explained(self, fallback: str) -> None:
        """Close with the job's own story when the schedd has one: a vacate, hold or remove
        kills the job's sshds before the watch polls, and "lost" alone tells the user nothing."""
        reason = None
        if self._explain_loss is not None:
            try:
                reason = await self._explain_loss(self.job)
            except Exception:
                log.failure("asking why job {job}'s connection was lost", job=self.job.job_id)
        self.close(reason or fallback)

    def close(self, reason: str) -> None:
        """Disconnect every client (telling them why) and every leg."""
        if self.closed:
            return
        for connection in list(self._connections.values()):
            connection.close(reason)
        self.relay.shutdown(reason)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.closed = True
        for leg in list(self._timers):
            self._cancel_timer(leg)
        log.info("job {job}: session closed ({reason})", job=self.job.job_id, reason=reason)
        self._on_closed(self)

    # -- idle timers ------------------------------------------------------------------------

    def _leg_idle(self, leg: Leg) -> None:
        if not self.relay.channels:
            self._quiet_since = self._reactor.seconds()
        if leg not in self.relay.legs:  # an owned leg its client is done with: no one else may use it
            self._connections[leg].close("its client is done with it")
        elif leg is not self.relay.legs[0]:
            self._arm_timer(leg)

    def _arm_timer(self, leg: Leg, delay: float | None = None) -> None:
        self._cancel_timer(leg)
        seconds = self._idle_timeout if delay is None else delay
        self._timers[leg] = self._reactor.callLater(seconds, self._idle_expired, leg)

    def _cancel_timer(self, leg: Leg) -> None:
        timer = self._timers.pop(leg, None)
        if timer is not None and timer.active():  # type: ignore[attr-defined]
            timer.cancel()  # type: ignore[attr-defined]

    def _idle_expired(self, leg: Leg) -> None:
        self._timers.pop(leg, None)
        legs = self.relay.legs
        if leg not in legs:
            return
        if leg is legs[0]:
            if not self.relay.clients:
                self.close(f"unused for {self._idle_timeout:g} s")
        elif not leg.channels:
            self.relay.remove_leg(leg)
            self._connections[leg].close(f"unused for {self._idle_timeout:g} s")  # _leg_lost cleans up
