"""Jobs on demand in the daemon, in process with a Clock and a schedd that answers from a dict
(its calls block, so the daemon runs them in a thread; here they run in line): a wait for a
job ends with its last client, and the job's linger runs from that client's departure."""

from __future__ import annotations

import time

import pytest
from twisted.internet import defer, task

from relayd.common.jobstates import IDLE, RUNNING
from relayd.condor.names import JobName, ProfileName
from relayd.condor.profiles import PROFILE_ATTR, Profile
from relayd.config import Config
from relayd.daemon.on_demand import OnDemand

LINGER = 10.0
CPU = ProfileName("cpu")


class Schedd:
    """The relay's jobs in a queue the test changes (relayd.condor.submit.JobSubmitter)."""

    def __init__(self) -> None:
        self.ads: dict[int, dict] = {}
        self.removed: list[tuple[str, str]] = []

    def submit(self, description: dict[str, str]) -> JobName:
        cluster = len(self.ads) + len(self.removed) + 1
        self.ads[cluster] = {"ClusterId": cluster, "ProcId": 0, "JobStatus": IDLE, "QDate": time.time(),
                             PROFILE_ATTR: description[f"MY.{PROFILE_ATTR}"].strip('"')}
        return JobName(cluster, 0)

    def find(self, profile: str | None = None) -> list[dict]:
        return [dict(ad) for ad in self.ads.values() if profile in (None, ad[PROFILE_ATTR])]

    def edit(self, jobs, attr: str, value: str) -> None:  # noqa: ANN001
        pass

    def remove(self, jobs, reason: str) -> None:  # noqa: ANN001
        for job in jobs:
            if self.ads.pop(job.cluster, None) is not None:
                self.removed.append((job.job_id, reason))

    def never_matches(self, job: JobName) -> str | None:
        return None


class InLine(OnDemand):
    def _blocking(self, call, *args):  # noqa: ANN001, ANN002
        return defer.maybeDeferred(call, *args)

    def _background(self, call, *args) -> None:  # noqa: ANN001, ANN002
        call(*args)


@pytest.fixture
def pool():
    clock, schedd = task.Clock(), Schedd()
    config = Config(job_lookup="sandbox", profiles={"cpu": Profile("cpu", linger=LINGER)}, watch_interval=2.0)
    on_demand = InLine(clock, config, lambda label: schedd, {}.get, lambda: None)
    yield clock, schedd, on_demand
    on_demand.stop()


def client(on_demand: OnDemand) -> tuple[defer.Deferred, list[str]]:
    """A connection to cpu.condor waiting for its job: the Deferred of resolve, and what it was told."""
    told: list[str] = []
    return defer.ensureDeferred(on_demand.resolve(CPU, told.append)), told


def leave(waiting: defer.Deferred) -> None:
    """Its client leaves: relayd.daemon.control cancels the connect."""
    waiting.cancel()
    failures: list = []
    waiting.addErrback(failures.append)
    assert failures and failures[0].check(defer.CancelledError)


def test_the_wait_stops_with_its_last_client_and_the_linger_counts_from_there(pool):
    clock, schedd, on_demand = pool
    waiting, told = client(on_demand)
    [ad] = schedd.ads.values()
    clock.advance(30)  # a long wait in the queue: no clock runs while someone waits
    assert not waiting.called and schedd.ads and "waiting for a slot" in told[-1]
    leave(waiting)
    clock.advance(LINGER - 1)
    assert schedd.ads and not schedd.removed  # no longer waited for, still queued
    clock.advance(1)
    assert schedd.removed == [(f"{ad['ClusterId']}.0", f"condor-relay: no client for {LINGER:g} s")]


def test_a_client_that_joined_the_wait_keeps_it_when_the_first_leaves(pool):
    clock, schedd, on_demand = pool
    first, _ = client(on_demand)
    clock.advance(5)
    second, _ = client(on_demand)
    leave(first)
    clock.advance(LINGER * 3)
    assert not second.called and len(schedd.ads) == 1  # still waited for, not released
    [ad] = schedd.ads.values()
    ad["JobStatus"], ad["RemoteHost"] = RUNNING, "slot1@node"
    clock.advance(2)
    assert second.result == JobName(ad["ClusterId"], 0) and not schedd.removed


def test_a_client_back_within_the_linger_finds_the_same_queued_job(pool):
    clock, schedd, on_demand = pool
    first, _ = client(on_demand)
    leave(first)
    clock.advance(LINGER - 2)
    again, told = client(on_demand)
    assert len(schedd.ads) == 1 and not schedd.removed and "submitted" not in told[-1]
    clock.advance(LINGER * 2)
    assert not again.called and len(schedd.ads) == 1 and not schedd.removed


def test_time_left_counts_the_linger_only_without_clients(pool):
    clock, schedd, on_demand = pool
    waiting, _ = client(on_demand)
    [(key, held)] = on_demand.jobs.items()
    clock.advance(30)
    assert on_demand.time_left(key, held) is None  # waited for
    leave(waiting)
    clock.advance(4)
    assert on_demand.time_left(key, held) == LINGER - 4
