"""The lookup adapter against recorded ad shapes, and the bindings' failure modes."""

from __future__ import annotations

import classad2
import pytest

from relayd.common.errors import LookupFailed
from relayd.condor.lookup import Action, HTCondorSource, ad_to_dict, assess, job_constraint, left_running
from relayd.condor.names import JobName

NOW = 1_800_000_000

# Shapes as a schedd returns them for the projection relayd asks for (classad2.ClassAd).
RUNNING_AD = {"ClusterId": 32, "ProcId": 0, "JobStatus": 2, "Owner": "alice", "JobUniverse": 5,
              "RemoteHost": "slot1_1@exec.example.org", "EnteredCurrentStatus": NOW - 600, "QDate": NOW - 900,
              "JobCurrentStartDate": NOW - 600}
IDLE_AD = {"ClusterId": 33, "ProcId": 0, "JobStatus": 1, "Owner": "alice", "JobUniverse": 5,
           "EnteredCurrentStatus": NOW - 3700, "QDate": NOW - 3700}
HELD_AD = {"ClusterId": 34, "ProcId": 2, "JobStatus": 5, "Owner": "alice", "JobUniverse": 5,
           "HoldReason": "Error from slot1@exec: memory usage exceeded request_memory",
           "EnteredCurrentStatus": NOW - 60}
EC2_AD = {"ClusterId": 40, "ProcId": 0, "JobStatus": 2, "Owner": "alice", "JobUniverse": 9,
          "GridResource": "ec2 https://ec2.us-east-1.amazonaws.com/", "EC2KeyPairFile": "/home/alice/.ec2/k.pem",
          "EC2RemoteVirtualMachineName": "ec2-3-4-5-6.compute-1.amazonaws.com"}
PARALLEL_AD = {"ClusterId": 50, "ProcId": 0, "JobStatus": 2, "Owner": "alice", "JobUniverse": 11}


def recorded(fields: dict) -> dict:
    return ad_to_dict(classad2.ClassAd(fields))


def test_running_job_is_negotiated():
    assert assess(JobName(32, 0), recorded(RUNNING_AD), NOW).action is Action.NEGOTIATE


def test_idle_job_says_how_long():
    verdict = assess(JobName(33, 0), recorded(IDLE_AD), NOW)
    assert verdict.action is Action.WAIT and verdict.message == "job 33.0 is idle for 1 h 01 min"


def test_held_job_gives_the_reason():
    verdict = assess(JobName(34, 2), recorded(HELD_AD), NOW)
    assert verdict == assess(JobName(34, 2), HELD_AD, NOW)
    assert verdict.message == "job 34.2 is held: Error from slot1@exec: memory usage exceeded request_memory"


def test_ec2_and_parallel_jobs():
    assert assess(JobName(40, 0), recorded(EC2_AD), NOW).action is Action.EC2
    assert "parallel job" in assess(JobName(50, 0), recorded(PARALLEL_AD), NOW).message
    assert assess(JobName(50, 0, node=1), recorded(PARALLEL_AD), NOW).action is Action.NEGOTIATE


def test_missing_job_and_watch_messages():
    assert assess(JobName(9, 0), None).message.startswith("job 9.0 is not in the queue")
    assert left_running(JobName(32, 0), recorded(RUNNING_AD)) is None
    assert left_running(JobName(32, 0), None) == "job 32.0 left the queue (completed or removed); connection closed"
    assert left_running(JobName(34, 2), recorded(HELD_AD)).startswith("job 34.2 is held: Error from slot1")


def test_expression_values_become_strings():
    ad = classad2.ClassAd({"ClusterId": 1, "ProcId": 0})
    ad["HoldReason"] = classad2.ExprTree('strcat("a", "b")')
    assert ad_to_dict(ad)["HoldReason"] in ('strcat("a","b")', 'strcat("a", "b")', "ab")


def test_one_constraint_for_many_jobs():
    jobs = [JobName(1, 0), JobName(2, 3)]
    assert job_constraint(jobs, "alice") == "(ClusterId == 1 && ProcId == 0) || (ClusterId == 2 && ProcId == 3)"
    assert job_constraint(None, "alice") == 'Owner == "alice"'


@pytest.mark.parametrize(
    "source, message",
    [
        (HTCondorSource(), "cannot query the local schedd"),
        (HTCondorSource("ap2.example.org", "127.0.0.1:9"), "cannot reach the collector of pool 127.0.0.1:9"),
    ],
)
def test_unreachable_schedds_give_a_clean_message(source, message):
    with pytest.raises(LookupFailed, match=message):
        source.query([JobName(1, 0)])
