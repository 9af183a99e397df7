"""Profiles for jobs on demand: the config section, host names, the submit description and
the marks, checked against the htcondor2 bindings' real objects (htcondor2.Submit,
classad2.ClassAd), which work without a schedd."""

from __future__ import annotations

import time
from pathlib import Path

import classad2
import htcondor2
import pytest

from relayd.common.errors import ConfigError
from relayd.condor.names import ProfileName, parse_host, parse_profile_host
from relayd.condor.profiles import Profile, heartbeat_timeout, marks_constraint, submit_description
from relayd.condor.submit import make_submit, requirement_clauses, unmatched_clause
from relayd.config import parse_config
from relayd.siteconfig import load_merged

CONFIG = """\
profiles:
  gpu:
    submit: {request_gpus: 1, request_memory: 8GB, container_image: "docker://pytorch/pytorch"}
    linger: 300
    max_lifetime: 28800
  cpu:
    submit:
      request_cpus: 4
"""


def test_profiles_parse_with_defaults():
    config = parse_config(CONFIG, Path("c.yaml"))
    assert config.profiles["gpu"] == Profile("gpu", {"request_gpus": "1", "request_memory": "8GB",
                                                     "container_image": "docker://pytorch/pytorch"}, 300.0, 28800.0)
    assert config.profiles["cpu"].linger == 600.0 and config.profiles["cpu"].max_lifetime is None


@pytest.mark.parametrize("text, line, message", [
    ("profiles: [gpu]\n", 1, "profiles must be a mapping"),
    ("profiles:\n  Job-1: {}\n", 2, "profile name 'Job-1' must be lower-case"),
    ("profiles:\n  job-x: {}\n", 2, "not with job-"),
    ("profiles:\n  gpu:\n    lingr: 5\n", 3, "unknown key 'lingr' in profiles.gpu"),
    ("profiles:\n  gpu:\n    linger: -1\n", 3, "profiles.gpu.linger must be a number of seconds greater than 0"),
    ("profiles:\n  gpu:\n    submit:\n      queue: 3\n", 4, "may not set queue"),
    ("profiles:\n  gpu:\n    submit:\n      MY.CondorRelayHeartbeat: 3\n", 4, "may not set MY.CondorRelayHeartbeat"),
    ("profiles:\n  gpu:\n    submit:\n      request_gpus: [1]\n", 4, "must be a single value"),
    ("profiles:\n  gpu:\n    submit:\n      'bad key': 1\n", 4, "is not a submit-description key"),
    ("heartbeat_interval: 0\n", 1, "heartbeat_interval must be a finite number greater than 0"),
])
def test_profile_errors_name_file_and_line(text, line, message):
    with pytest.raises(ConfigError, match=rf"^c\.yaml:{line}: .*{message}"):
        parse_config(text, Path("c.yaml"))


def test_profiles_merge_from_the_site_config_entry_by_entry(tmp_path, monkeypatch):
    site, user = tmp_path / "site.yaml", tmp_path / "user.yaml"
    site.write_text("profiles:\n  gpu: {submit: {request_gpus: 1}}\n  cpu: {linger: 60}\n")
    user.write_text("profiles:\n  cpu: {linger: 30}\n")
    monkeypatch.setenv("CONDOR_RELAY_SITE_CONFIG", str(site))
    merged = load_merged(user)
    assert sorted(merged.config.profiles) == ["cpu", "gpu"] and merged.config.profiles["cpu"].linger == 30
    assert merged.origins["profiles.gpu"] == f"{site}:2" and merged.origins["profiles.cpu"] == f"{user}:2"


@pytest.mark.parametrize("host, name", [
    ("gpu.condor", ProfileName("gpu")),
    ("GPU.ap2.condor.", ProfileName("gpu", "ap2")),
    ("job-32.condor", None),  # job names keep their form
    ("job-32.0.ap2.condor", None),
    ("a.b.c.condor", None),
    ("gpu.example", None),
])
def test_profile_host_names(host, name):
    assert parse_profile_host(host, "condor") == name


def test_job_names_are_not_profiles():
    assert parse_host("job-32.0.ap2.condor", "condor").cluster == 32


def test_the_submit_description_is_marked_and_accepted_by_htcondor2():
    profile = Profile("gpu", {"request_gpus": "1", "request_memory": "8GB"}, linger=300, max_lifetime=3600)
    description = submit_description(profile, heartbeat_interval=60, now=1000.0)
    submit = make_submit(description)
    assert isinstance(submit, htcondor2.Submit) and submit.getSubmitMethod() == 100
    assert submit["request_gpus"] == "1" and submit["executable"] == "/bin/sleep"
    assert submit["batch_name"] == "condor-relay-gpu" and submit["allowed_job_duration"] == "3600"
    assert submit["MY.CondorRelayProfile"] == '"gpu"' and submit["MY.CondorRelayHeartbeat"] == "1000"
    assert "InteractiveJob" not in str(submit)  # a job that completes with its last sshd could not be reused
    # periodic_remove, evaluated by classad2 as the schedd would
    ad = classad2.ClassAd({"CondorRelayHeartbeat": int(time.time())})
    remove = classad2.ExprTree(description["periodic_remove"])
    assert remove.eval(ad) is False
    ad["CondorRelayHeartbeat"] = int(time.time()) - heartbeat_timeout(60) - 1
    assert remove.eval(ad) is True


def test_the_marks_constraint_finds_only_the_relay_s_jobs_of_the_owner():
    ours = classad2.ClassAd({"Owner": "alice", "JobSubmitMethod": 100, "CondorRelayProfile": "gpu"})
    others = [classad2.ClassAd({"Owner": "bob", "JobSubmitMethod": 100, "CondorRelayProfile": "gpu"}),
              classad2.ClassAd({"Owner": "alice", "JobSubmitMethod": 2}),
              classad2.ClassAd({"Owner": "alice", "JobSubmitMethod": 100, "CondorRelayProfile": "cpu"})]
    constraint = classad2.ExprTree(marks_constraint("alice", "gpu"))
    assert constraint.eval(ours) is True
    assert [constraint.eval(ad) for ad in others] == [False, False, False]


def test_requirement_clauses():
    assert requirement_clauses('((TARGET.Arch == "X86_64")) && (TARGET.GPUs >= RequestGPUs)') == [
        'TARGET.Arch == "X86_64"', "TARGET.GPUs >= RequestGPUs"]
    assert requirement_clauses('(a && "x)") && b') == ['a && "x)"', "b"]
    assert requirement_clauses("(a) || (b)") == ["(a) || (b)"]


def _job(requirements: str, **attrs) -> classad2.ClassAd:
    job = classad2.ClassAd({"RequestCpus": 1, "RequestGPUs": 1, **attrs})
    job["Requirements"] = classad2.ExprTree(requirements)
    return job


REQUIREMENTS = '(TARGET.Arch == "X86_64") && (TARGET.GPUs >= RequestGPUs) && (TARGET.Cpus >= RequestCpus)'


def test_a_request_no_slot_can_ever_match_names_the_clause():
    slots = [classad2.ClassAd({"Arch": "X86_64", "Cpus": 4, "GPUs": 0}),
             classad2.ClassAd({"Arch": "X86_64", "Cpus": 8, "GPUs": 0, "PartitionableSlot": True,
                               "TotalSlotGPUs": 0})]
    assert unmatched_clause(_job(REQUIREMENTS), slots) == "0 of 2 slots satisfy TARGET.GPUs >= RequestGPUs"


def test_a_busy_partitionable_slot_is_judged_by_its_total():
    busy = classad2.ClassAd({"Arch": "X86_64", "Cpus": 0, "GPUs": 0, "PartitionableSlot": True,
                             "TotalSlotCpus": 16, "TotalSlotGPUs": 2})
    assert unmatched_clause(_job(REQUIREMENTS), [busy]) is None


def test_no_slots_known_is_no_reason_to_give_up():
    assert unmatched_clause(_job(REQUIREMENTS), []) is None


def test_the_htcondor2_submitter_without_a_schedd_says_so():
    from relayd.common.errors import LookupFailed
    from relayd.condor.names import JobName
    from relayd.condor.submit import HTCondorSubmitter

    submitter = HTCondorSubmitter()
    with pytest.raises(LookupFailed, match=r"^cannot submit \(the local schedd\): "):
        submitter.submit(submit_description(Profile("gpu"), 60, time.time()))
    with pytest.raises(LookupFailed, match=r"^cannot edit jobs \(the local schedd\): "):
        submitter.edit([JobName(1, 0)], "CondorRelayHeartbeat", "1")


class _RecordingSchedd:
    """Stands for htcondor2.Schedd where the bindings' own behaviour is not what is tested."""

    def __init__(self, missing: set[str] = frozenset()) -> None:
        self.acts: list[tuple] = []
        self.edits: list[str] = []
        self.missing = missing

    def act(self, action, spec, reason=None):  # noqa: ANN001
        self.acts.append((action, spec, reason))

    def edit(self, job, attr, value, flags=None):  # noqa: ANN001
        if job in self.missing:  # the schedd's own words for a job no longer in the queue
            raise RuntimeError(f"Unable to commit transaction:Modifying attribute {attr} in nonexistent job {job}")
        self.edits.append(job)


def test_the_removal_reason_reaches_the_schedd_as_htcondor2_keeps_it(monkeypatch):
    import htcondor2

    from relayd.condor.names import JobName
    from relayd.condor.submit import HTCondorSubmitter

    schedd = _RecordingSchedd()
    submitter = HTCondorSubmitter()
    monkeypatch.setattr(submitter, "_schedd", lambda: schedd)
    submitter.remove([JobName(5, 0)], "condor-relay: no client for 10 min")
    # htcondor2 25.14's Schedd.act keeps a reason only as a (text, code) tuple; a str is dropped
    assert schedd.acts == [(htcondor2.JobAction.Remove, ["5.0"], ("condor-relay: no client for 10 min", 0))]


def test_editing_a_job_that_left_the_queue_is_not_an_error(monkeypatch):
    from relayd.common.errors import LookupFailed
    from relayd.condor.names import JobName
    from relayd.condor.submit import HTCondorSubmitter

    schedd = _RecordingSchedd(missing={"6.0"})
    submitter = HTCondorSubmitter()
    monkeypatch.setattr(submitter, "_schedd", lambda: schedd)
    submitter.edit([JobName(6, 0), JobName(7, 0)], "CondorRelayIdleSince", "0")
    assert schedd.edits == ["7.0"]
    schedd.edit = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("permission denied"))
    with pytest.raises(LookupFailed, match="permission denied"):
        submitter.edit([JobName(7, 0)], "CondorRelayIdleSince", "0")
