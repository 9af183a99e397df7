"""Reaching a job before negotiating: the wait for an idle job, in process with a Clock and
a real sandbox pool's job table (the lookups run in line instead of in a thread)."""

from __future__ import annotations

from harness import sandbox_pool
from twisted.internet import defer, task

from relayd.common.errors import JobUnreachable
from relayd.condor.names import JobName
from relayd.condor.reach import LegRequest, Reacher
from relayd.config import Config
from relayd.sandbox import pool as sandbox


def in_line(call, *args):  # noqa: ANN001, ANN002
    return defer.maybeDeferred(call, *args)

def reacher_on(pool_dir, clock):  # noqa: ANN001
    config = Config(job_lookup="sandbox", sandbox_pool=str(pool_dir))
    return Reacher(clock, config, paths=None, captures=None, run_blocking=in_line)


def test_a_wait_reports_every_30_s_and_ends_with_how_long_it_waited():
    clock = task.Clock()
    with sandbox_pool() as pool_dir:
        cluster, proc = sandbox.submit_job(pool_dir, status="idle")
        said: list[str] = []
        leg = defer.ensureDeferred(reacher_on(pool_dir, clock).open_leg(
            LegRequest(JobName(cluster, proc), wait=75), said.append, True))
        for _ in range(16):
            clock.advance(5)
        failure = []
        leg.addErrback(failure.append)
        assert failure and failure[0].check(JobUnreachable)
        assert str(failure[0].value) == f"job {cluster}.{proc} is still idle after waiting 1 min 15 s"
        waited = ("0.0 s", "30 s", "1 min 00 s")
        assert said == [f"job {cluster}.{proc} is idle, waiting: {t} of 1 min 15 s" for t in waited]


def test_a_job_held_while_waited_for_ends_the_wait_with_its_reason():
    clock = task.Clock()
    with sandbox_pool() as pool_dir:
        cluster, proc = sandbox.submit_job(pool_dir, status="idle")
        leg = defer.ensureDeferred(reacher_on(pool_dir, clock).open_leg(
            LegRequest(JobName(cluster, proc), wait=600), lambda text: None, True))
        clock.advance(5)
        sandbox.set_status(pool_dir, cluster, proc, "held", hold_reason="over quota")
        clock.advance(5)
        failure = []
        leg.addErrback(failure.append)
        assert failure and str(failure[0].value) == f"job {cluster}.{proc} is held: over quota"
        assert failure[0].check(JobUnreachable)
