"""Real-pool behaviour on the sandbox pool: schedd labels, lookups, waiting, EC2, slot release."""

from __future__ import annotations

import getpass
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from harness import RELAYD, assert_fails, assert_ssh_fails

from relayd.sandbox import pool as sandbox


def host_of(job: tuple[int, int], label: str | None = None) -> str:
    return f"job-{job[0]}.{job[1]}{'.' + label if label else ''}.condor"


def restart(relay, **settings) -> None:
    relay.stop()
    relay.configure(**settings)
    relay.start()


def test_schedd_labels_pass_name_pool_and_negotiation_options(relay):
    restart(relay, schedds={"ap2": {"name": "sandbox", "pool": "cm.example.org", "shells": "bash"}})
    job = sandbox.submit_job(relay.pool_dir, status="running")
    assert relay.ssh(host_of(job, "ap2"), "true").returncode == 0
    argv = sandbox.read_negotiations(relay.pool_dir)[-1]["argv"]
    assert argv[argv.index("-name") + 1] == "sandbox" and argv[argv.index("-pool") + 1] == "cm.example.org"
    assert argv[argv.index("-shells") + 1] == "bash"
    assert argv[argv.index("-keygen-options") + 1] == "-t ed25519"  # the default: much faster cold connects
    assert_ssh_fails(relay, host_of(job, "ap3"), "unknown schedd label 'ap3' (known labels: ap2)")


def test_a_schedd_the_pool_does_not_have(relay):
    restart(relay, schedds={"gone": {"name": "ap9.example.org"}})
    job = sandbox.submit_job(relay.pool_dir, status="running")
    assert_ssh_fails(relay, host_of(job, "gone"), "schedd 'ap9.example.org' not found")


def test_precise_messages_from_the_lookup(relay):
    done = sandbox.submit_job(relay.pool_dir, status="running")
    sandbox.set_status(relay.pool_dir, *done, "completed")
    assert_ssh_fails(relay, host_of(done), f"job {done[0]}.{done[1]} is not in the queue")
    idle = sandbox.submit_job(relay.pool_dir, status="idle")
    assert_ssh_fails(relay, host_of(idle), "is idle for", "CONDOR_RELAY_WAIT=<seconds>")
    parallel = sandbox.submit_job(relay.pool_dir, status="running", JobUniverse=11)
    assert_ssh_fails(relay, host_of(parallel), "is a parallel job: name a node")
    grid = sandbox.submit_job(relay.pool_dir, status="running", JobUniverse=9, GridResource="batch pbs")
    assert_ssh_fails(relay, host_of(grid), "does not support remote access (grid universe)")
    assert relay.negotiations() == 0


def test_waiting_for_an_idle_job_ends_when_it_runs(relay):
    restart(relay, watch_interval=0.5)
    job = sandbox.submit_job(relay.pool_dir, status="idle")
    flip = threading.Timer(2.0, sandbox.set_status, (relay.pool_dir, *job, "running"))
    flip.start()
    relay.home.env["CONDOR_RELAY_WAIT"] = "60"
    started = time.monotonic()
    try:
        done = relay.ssh(host_of(job), "echo running")
    finally:
        flip.join()
        del relay.home.env["CONDOR_RELAY_WAIT"]
    assert done.returncode == 0 and done.stdout == b"running\n", done.stderr
    assert 1.5 < time.monotonic() - started < 20


def test_waiting_ends_with_the_hold_reason(relay):
    restart(relay, watch_interval=0.5, wait_for_running=60)
    job = sandbox.submit_job(relay.pool_dir, status="idle")
    hold = threading.Timer(1.0, sandbox.set_status, (relay.pool_dir, *job, "held"), {"hold_reason": "over quota"})
    hold.start()
    done = relay.ssh(host_of(job), "true")
    hold.join()
    assert_fails(done, "is held: over quota")


def test_a_job_that_just_started_is_retried_until_its_sshd_can_start(relay):
    sandbox.configure_pool(relay.pool_dir, ssh_ready_delay=3.0)
    job = sandbox.submit_job(relay.pool_dir, status="running")
    done = relay.ssh(host_of(job), "echo ok")
    assert done.returncode == 0 and done.stdout == b"ok\n", done.stderr
    assert relay.negotiations() >= 2  # the first attempts were refused as retryable
    assert f"job {job[0]}.{job[1]}: condor_ssh_to_job refused it (" in relay.log()  # with the tool's reason


def open_session(relay, job) -> subprocess.Popen:
    """An ssh session to the job that is up (its command has started) and stays open."""
    session = subprocess.Popen(relay.ssh_argv(host_of(job), "echo started; sleep 60"), env=relay.home.env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert session.stdout.readline() == b"started\n"
    return session


def test_completed_job_releases_its_slot_and_clients_hear_why(relay):
    restart(relay, watch_interval=0.5)
    job = sandbox.submit_job(relay.pool_dir, status="running")
    session = open_session(relay, job)
    try:
        sandbox.set_status(relay.pool_dir, *job, "completed")  # the job exits; its sshd lives on
        _, err = session.communicate(timeout=15)
    finally:
        session.kill()
    assert session.returncode == 255
    assert f"job {job[0]}.{job[1]} left the queue (completed or removed); connection closed" in err.decode()
    deadline = time.monotonic() + 10
    while sandbox.sshd_pids(relay.pool_dir, *job):  # the relay let go: the slot is free
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_held_job_disconnects_clients_cleanly_and_others_go_on(relay):
    job, other = (sandbox.submit_job(relay.pool_dir, status="running") for _ in range(2))
    session = open_session(relay, job)
    try:
        sandbox.set_status(relay.pool_dir, *job, "held", hold_reason="admin")  # kills the job's sshds
        _, err = session.communicate(timeout=15)
    finally:
        session.kill()
    # the job's sshds died before the watch polled: the schedd is asked why
    assert session.returncode == 255 and f"job {job[0]}.{job[1]} is held: admin; connection closed" in err.decode()
    assert relay.ssh(host_of(other), "true").returncode == 0


# -- EC2 ---------------------------------------------------------------------------------


class InstanceSshd:
    """A real sshd on 127.0.0.1 playing an EC2 instance, with a keypair HTCondor would manage."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o755)
        self.keypair = root / "keypair.pem"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.keypair)], check=True)
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        host_key = self.root / f"host_key_{time.monotonic_ns()}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = self.port or probe.getsockname()[1]
        config = self.root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {self.keypair}.pub\nPidFile none\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory, needed as root
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                        stderr=open(self.root / "sshd.log", "ab"))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, (self.root / "sshd.log").read_text()
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def instance(tmp_path_factory):
    sshd = InstanceSshd(tmp_path_factory.mktemp("ec2") / "instance")
    sshd.start()
    yield sshd
    sshd.stop()


def submit_ec2(relay, instance) -> tuple[int, int]:
    return sandbox.submit_job(relay.pool_dir, status="running", JobUniverse=9,
                              GridResource="ec2 https://ec2.us-east-1.amazonaws.com/",
                              EC2RemoteVirtualMachineName="127.0.0.1", EC2KeyPairFile=str(instance.keypair))


def test_ec2_job_goes_straight_to_its_instance_and_pins_its_key(relay, instance):
    restart(relay, ec2_port=instance.port, idle_timeout=0.5)
    job = submit_ec2(relay, instance)
    me = getpass.getuser()
    done = relay.ssh("-l", me, host_of(job), "echo on-the-instance; whoami")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == ["on-the-instance", me]
    assert relay.negotiations() == 0  # condor_ssh_to_job is not involved
    pins = Path(relay.home.env["XDG_STATE_HOME"]) / "condor-relay" / "ec2_known_hosts"
    assert pins.read_text().startswith(f"[127.0.0.1]:{instance.port} ssh-ed25519 ")
    time.sleep(1.5)  # let the idle upstream go
    instance.stop()
    instance.start()  # same address, new host key: refused
    assert_fails(relay.ssh("-l", me, host_of(job), "true"), "has changed since it was first seen", str(pins))


def test_ec2_job_without_a_managed_keypair(relay, instance):
    job = sandbox.submit_job(relay.pool_dir, status="running", JobUniverse=9, GridResource="ec2 https://x/",
                             EC2RemoteVirtualMachineName="Undefined")
    assert_ssh_fails(relay, host_of(job), "EC2 job whose keypair HTCondor is not managing")


def test_relayd_jobs_lists_reachable_jobs_first(relay):
    idle = sandbox.submit_job(relay.pool_dir, status="idle")
    running = sandbox.submit_job(relay.pool_dir, status="running")
    listed = relay.run([RELAYD, "jobs"])
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == ["HOST", "STATE", "SLOT", "RUNTIME"]
    assert lines[1].startswith(host_of(running)) and "running" in lines[1] and "slot" in lines[1]
    assert lines[2].startswith(host_of(idle)) and "idle" in lines[2]


def test_missing_negotiator_is_named(relay):
    restart(relay, condor_ssh_to_job="/nonexistent/condor_ssh_to_job")
    job = sandbox.submit_job(relay.pool_dir, status="running")
    assert_ssh_fails(relay, host_of(job), "condor_ssh_to_job not found ('/nonexistent/condor_ssh_to_job')")
