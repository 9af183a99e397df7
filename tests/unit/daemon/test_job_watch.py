"""The job watch, in process with a Clock and a job source that answers from a dict (lookups
block, so the daemon runs them in a thread; here they run in line)."""

from __future__ import annotations

from twisted.internet import defer, task

from relayd.common.jobstates import HELD, IDLE, RUNNING
from relayd.condor.names import JobName
from relayd.daemon.job_watch import JobWatcher

INTERVAL = 15.0


def in_line(call, *args):  # noqa: ANN001, ANN002
    return defer.maybeDeferred(call, *args)


class Source:
    """A schedd's answers: one ad per job, changed by the test; counts the queries."""

    def __init__(self, **ads: dict) -> None:
        self.ads = ads
        self.queries = 0

    def query(self, jobs):  # noqa: ANN001
        self.queries += 1
        return [dict(ad, ClusterId=job.cluster, ProcId=job.proc) for job in jobs if (ad := self.ads.get(job.job_id))]


class Session:
    def __init__(self, job: JobName) -> None:
        self.job, self.ready, self.closed, self.reason = job, True, False, None

    def close(self, reason: str) -> None:
        self.closed, self.reason = True, reason


def test_the_watch_closes_a_job_that_left_running_and_stops_with_no_session():
    clock = task.Clock()
    one, two = Session(JobName(1, 0)), Session(JobName(2, 0))
    source = Source(**{"1.0": {"JobStatus": RUNNING}, "2.0": {"JobStatus": RUNNING}})
    sessions = [one, two]
    watcher = JobWatcher(clock, INTERVAL, lambda: [s for s in sessions if not s.closed], lambda label: source,
                         run_blocking=in_line)
    watcher.wake()
    clock.advance(INTERVAL)
    assert source.queries == 1 and not one.closed and not two.closed  # one query for both jobs
    source.ads["1.0"] = {"JobStatus": HELD, "HoldReason": "over memory"}
    clock.advance(INTERVAL)
    assert one.reason == "job 1.0 is held: over memory; connection closed" and not two.closed
    del source.ads["2.0"]
    clock.advance(INTERVAL)
    assert two.reason == "job 2.0 left the queue (completed or removed); connection closed"
    clock.advance(INTERVAL)  # nothing left to watch: the loop stops, an idle daemon does nothing
    queries = source.queries
    clock.advance(INTERVAL * 10)
    assert source.queries == queries and not clock.getDelayedCalls()


def test_an_evicted_job_says_so():
    clock = task.Clock()
    session = Session(JobName(3, 0))
    source = Source(**{"3.0": {"JobStatus": IDLE}})
    JobWatcher(clock, INTERVAL, lambda: [session], lambda label: source, run_blocking=in_line).wake()
    clock.advance(INTERVAL)
    assert session.reason == "job 3.0 was evicted or vacated and is idle again; connection closed"



def test_why_lost_asks_until_the_schedd_knows_and_gives_up_on_a_job_still_running():
    clock = task.Clock()
    source = Source(**{"4.0": {"JobStatus": RUNNING}, "5.0": {"JobStatus": RUNNING}})
    watcher = JobWatcher(clock, INTERVAL, lambda: [], lambda label: source, run_blocking=in_line)
    held, running = defer.ensureDeferred(watcher.why_lost(JobName(4, 0))), defer.ensureDeferred(
        watcher.why_lost(JobName(5, 0)))
    clock.advance(0)
    clock.advance(0.5)  # the schedd learns of the hold a moment after the sshd died
    source.ads["4.0"] = {"JobStatus": HELD, "HoldReason": "policy"}
    for _ in range(10):
        clock.advance(0.5)
    assert held.result == "job 4.0 is held: policy; connection closed"
    assert running.result is None  # still Running: "connection lost" is all there is to say
