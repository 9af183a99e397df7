"""The sandbox pool: condor_ssh_to_job's contract, reproduced with real sshd processes.

Every test drives the pool's bin/condor_ssh_to_job as a user (or relayd)
would, with its own HOME and TMP; ssh always gets `-F /dev/null` so nothing
depends on the real ~/.ssh.  Fast keys (-keygen-options "-t ed25519") are used
except where the default RSA key is the point.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from harness import wait_for

from relayd.sandbox import (
    PoolError,
    configure_pool,
    create_pool,
    job_pids,
    load_ads,
    read_negotiations,
    set_status,
    sshd_pids,
    stop_pool,
    submit_cluster,
    submit_job,
)
from relayd.sandbox.condor_args import ArgsError, join_system, split_v2_quoted, split_v2_raw
from relayd.sandbox.jobuser import DEFAULT_JOB_USER, current_user_name
from relayd.sandbox.layout import PoolLayout
from relayd.sandbox.schedd import ScheddError, get_job_connect_info

FAST = ["-keygen-options", "-t ed25519"]
SSH = ["-ssh", "ssh -F /dev/null"]
JOB_USER = DEFAULT_JOB_USER if os.geteuid() == 0 else current_user_name()


@pytest.fixture
def pool():
    """A fresh pool in a directory the job user can traverse (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="sandbox-pool-", dir="/tmp"))
    root.chmod(0o755)
    create_pool(root, retry_delay=0.2)
    try:
        yield root
    finally:
        stop_pool(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def client_env(tmp_path, monkeypatch):
    """Own HOME, and a short TMP so session directories land where we can watch them."""
    home = tmp_path / "home"
    home.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir="/tmp"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMP", str(tmp))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tool(pool: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(pool / "bin" / "condor_ssh_to_job"), *args],
                          capture_output=True, text=True, timeout=30, **kwargs)


def session_dirs(tmp: Path) -> list[Path]:
    return list(tmp.glob("*.condor_ssh_to_job_*"))


# --- a negotiation end to end -----------------------------------------------------------

def test_command_runs_in_job_sandbox_next_to_the_job(pool):
    cluster, proc = submit_job(pool, Environment={"JOB_MARKER": "it's here"})
    command = 'pwd; echo $_CONDOR_JOB_PIDS; echo "$JOB_MARKER"; id -un; echo $_CONDOR_SLOT_NAME'
    result = tool(pool, *SSH, *FAST, f"{cluster}.{proc}", command)
    assert result.returncode == 0, result.stderr
    cwd, pids, marker, user, slot = result.stdout.splitlines()
    ad, = load_ads(pool)
    assert cwd == ad["Iwd"] == str(pool / "execute" / "dir_1_0")
    assert [int(pids)] == job_pids(pool, cluster, proc)
    assert Path(f"/proc/{pids}/cmdline").read_bytes().split(b"\0")[1] == b"infinity"
    assert Path(f"/proc/{pids}/cwd").resolve() == Path(cwd)
    assert os.stat(f"/proc/{pids}").st_uid == pwd.getpwnam(JOB_USER).pw_uid
    assert marker == "it's here"
    assert user == JOB_USER
    assert slot == ad["RemoteHost"] == "slot1_1@sandbox.local"


def test_remote_exit_status_is_the_tools_exit_status(pool):
    submit_job(pool)
    assert tool(pool, *SSH, *FAST, "1", "exit 7").returncode == 7


def test_interactive_session_gets_a_terminal_and_the_welcome(pool):
    submit_job(pool)
    result = tool(pool, "-ssh", "ssh -F /dev/null -tt", *FAST, "1.0", input="tty\nexit 3\n")
    assert result.returncode == 3
    assert "Welcome to slot1_1@sandbox.local!" in result.stdout
    assert f"Your condor job is running with pid(s) {job_pids(pool, 1, 0)[0]}." in result.stdout
    assert re.search(r"^/dev/pts/\d+\r?$", result.stdout, re.M)


def test_file_transfer_tools_work_through_the_forced_command(pool, tmp_path):
    submit_job(pool)
    sandbox = pool / "execute" / "dir_1_0"
    local = tmp_path / "payload.txt"
    local.write_text("payload\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {local} via-sftp.txt\n")
    assert tool(pool, "-ssh", f"sftp -F /dev/null -b {batch}", *FAST, "1.0").returncode == 0
    assert tool(pool, "-ssh", "scp -F /dev/null", *FAST, "1.0",
                str(local), "remote:via-scp.txt").returncode == 0
    rsh = f"{pool}/bin/condor_ssh_to_job -ssh 'ssh -F /dev/null' -keygen-options '-t ed25519'"
    rsync = subprocess.run(["rsync", "-a", "-e", rsh, str(local), "1.0:via-rsync.txt"],
                           capture_output=True, text=True, timeout=30)
    assert rsync.returncode == 0, rsync.stderr
    for name in ("via-sftp.txt", "via-scp.txt", "via-rsync.txt"):
        assert (sandbox / name).read_text() == "payload\n"


HOOK = textwrap.dedent("""\
    #!{python}
    # A capture hook: what relayd runs as `-ssh`.  Records what it got, then
    # takes the TCP socket from fdpass and reads the sshd's banner.
    import array, json, os, shlex, socket, stat, sys
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("-o"))
    fdpass = shlex.split(opts["ProxyCommand"])[-1]
    key, known_hosts = opts["IdentityFile"], opts["UserKnownHostsFile"]
    out = {{"argv": sys.argv,
           "key_mode": stat.S_IMODE(os.stat(key).st_mode),
           "known_hosts_mode": stat.S_IMODE(os.stat(known_hosts).st_mode),
           "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(key)).st_mode),
           "key": open(key).read(), "known_hosts": open(known_hosts).read()}}
    with socket.socket(socket.AF_UNIX) as unix:
        unix.connect(fdpass)
        fds = array.array("i")
        data, anc, _, _ = unix.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
        fds.frombytes(anc[0][2])
    out["byte"] = data.hex()
    ssh = socket.socket(fileno=fds[0])
    out["family"] = ssh.family.name
    out["banner"] = ssh.recv(64).decode()
    try:
        socket.socket(socket.AF_UNIX).connect(fdpass)
        out["second_connect"] = "accepted"
    except OSError:
        out["second_connect"] = "refused"
    json.dump(out, open(os.environ["HOOK_OUT"], "w"))
    sys.exit(5)
    """)


@pytest.fixture
def hook(tmp_path, monkeypatch):
    path = tmp_path / "capture-hook"
    path.write_text(HOOK.format(python=sys.executable))
    path.chmod(0o755)
    out = tmp_path / "hook.json"
    monkeypatch.setenv("HOOK_OUT", str(out))
    return path, out


def test_capture_hook_gets_documented_argv_keys_and_the_sshd_socket(pool, hook, client_env):
    path, out = hook
    submit_job(pool)
    result = tool(pool, "-ssh", f"{path} --hook-flag", "-X", *FAST, "1.0", "arg one", "%u")
    assert result.returncode == 5, result.stderr
    got = json.loads(out.read_text())
    session = Path(got["argv"][4].split("=", 1)[1]).parent
    assert re.fullmatch(rf"{current_user_name()}\.condor_ssh_to_job_[0-9a-f]+", session.name)
    assert session.parent == client_env
    tool_path = pool / "bin" / "condor_ssh_to_job"
    assert got["argv"][1:] == [
        "--hook-flag", "-X",
        f"-oUser={JOB_USER}",
        f"-oIdentityFile={session}/ssh_key",
        "-oStrictHostKeyChecking=yes",
        f"-oUserKnownHostsFile={session}/known_hosts",
        f"-oGlobalKnownHostsFile={session}/known_hosts",
        f'-oProxyCommand="{tool_path}" "-proxy" "{session}/fdpass"',
        "condor-job.sandbox.local",
        "arg one", "%u",
    ]
    assert (got["dir_mode"], got["key_mode"], got["known_hosts_mode"]) == (0o700, 0o400, 0o600)
    assert got["key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert got["known_hosts"].startswith("* ssh-ed25519 ")
    assert got["byte"] == "00"
    assert got["family"] == "AF_INET"
    assert got["banner"].startswith("SSH-2.0-OpenSSH")
    assert got["second_connect"] == "refused"
    assert not session.exists()
    assert session_dirs(client_env) == []


def test_default_key_is_rsa_and_ssh_gets_minus_S_none(pool, hook, tmp_path):
    path, out = hook
    ssh_named = tmp_path / "bin" / "ssh"  # the template depends on the basename
    ssh_named.parent.mkdir()
    ssh_named.symlink_to(path)
    submit_job(pool)
    assert tool(pool, "-ssh", str(ssh_named), "1.0").returncode == 5
    got = json.loads(out.read_text())
    assert got["argv"][1:3] == ["-S", "none"]
    assert got["known_hosts"].startswith("* ssh-rsa ")


def test_scp_template_has_no_host_word(pool, hook, tmp_path):
    path, out = hook
    scp_named = tmp_path / "bin" / "scp"
    scp_named.parent.mkdir()
    scp_named.symlink_to(path)
    submit_job(pool)
    assert tool(pool, "-ssh", str(scp_named), *FAST, "1.0", "a", "remote:b").returncode == 5
    argv = json.loads(out.read_text())["argv"]
    assert argv[-3].startswith("-oProxyCommand=") and argv[-2:] == ["a", "remote:b"]


# --- messages and exit codes ------------------------------------------------------------

@pytest.mark.parametrize("args, stderr", [
    (["1.x"], "Invalid job id: 1.x\n"),
    (["x"], "Invalid job id: x\n"),
    (["-frobnicate", "1"], "Unrecognized argument: -frobnicate\n"),
    ([], "ERROR: You must specify a job!\n\n"),
    (["-name"], "-name requires an argument"),
])
def test_command_line_errors_exit_2(pool, args, stderr):
    result = tool(pool, *args)
    assert (result.returncode, result.stderr) == (2, stderr)


def test_help_prints_usage_and_exits_0(pool):
    result = tool(pool, "-help")
    assert result.returncode == 0
    assert result.stderr.startswith(f"Usage: {pool}/bin/condor_ssh_to_job [OPTIONS]")


def test_missing_and_finished_jobs(pool):
    submit_job(pool)
    set_status(pool, 1, 0, "completed")
    for job in ("1.0", "42"):
        result = tool(pool, job)
        assert (result.returncode, result.stderr) == (
            1, "Unable to fetch job ad; is it still in the queue?\n")


def test_idle_job_only_suggests_auto_retry(pool):
    submit_job(pool, status="idle")
    result = tool(pool, "1.0")
    assert (result.returncode, result.stderr) == (
        1, "(Use -auto-retry to keep trying periodically.)\n")


def test_held_job_reports_its_reason(pool):
    submit_job(pool, status="held", HoldReason="Disk quota exceeded")
    result = tool(pool, "1.0")
    assert (result.returncode, result.stderr) == (
        1, 'The job is on hold: "Disk quota exceeded".\n')


def test_unknown_schedd_name(pool):
    submit_job(pool)
    result = tool(pool, "-name", "elsewhere", "1.0")
    assert (result.returncode, result.stderr) == (
        1, "No such schedd named elsewhere in local pool\n")
    result = tool(pool, "-pool", "cm.example.org", "-name", "elsewhere", "1.0")
    assert result.stderr == "No such schedd named elsewhere in pool cm.example.org\n"
    assert tool(pool, "-name", "sandbox", *SSH, *FAST, "1.0", "true").returncode == 0


def test_universes_without_remote_access(pool):
    submit_job(pool, JobUniverse=9, GridResource="batch slurm")
    submit_job(pool, JobUniverse=11)
    assert tool(pool, "1.0").stderr == "Job 1.0 does not support remote access.\n"
    assert tool(pool, "2.0").stderr == (
        "This is a parallel job.  Please specify job 2.0.X where X is an integer from 0 to 1.\n")
    node = tool(pool, *SSH, *FAST, "2.0.1", "echo $_CONDOR_SLOT_NAME")
    assert node.stdout == "slot2_2@sandbox.local\n"


def test_ec2_jobs(pool, tmp_path, monkeypatch):
    ec2 = "ec2 https://ec2.amazonaws.com/"
    submit_job(pool, JobUniverse=9, GridResource=ec2)
    submit_job(pool, JobUniverse=9, GridResource=ec2, EC2KeyPairFile="/keys/kp",
               EC2RemoteVirtualMachineName="ec2-1-2-3-4.compute.amazonaws.com")
    result = tool(pool, "1.0")
    assert (result.returncode, result.stderr) == (
        1, "ERROR: You can not SSH to an EC2 job whose keypair HTCondor is not managing.\n")
    fake = tmp_path / "fakebin" / "ssh"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@"\nexit 4\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    result = tool(pool, "-ssh", "ignored", "2.0", "uptime")
    assert (result.returncode, result.stdout) == (
        4, "-i /keys/kp ec2-1-2-3-4.compute.amazonaws.com uptime\n")


def test_other_users_are_refused_by_the_schedd(pool):
    submit_job(pool, Owner="alice")
    layout = PoolLayout(pool)
    with pytest.raises(ScheddError) as refused:
        get_job_connect_info(layout, layout.settings(), 1, 0, -1, "mallory")
    assert refused.value.message == (
        "mallory is not authorized for access to the starter for job 1.0")
    assert get_job_connect_info(layout, layout.settings(), 1, 0, -1, "alice")[0]


def test_auto_retry_waits_for_the_job_to_start(pool):
    submit_job(pool, status="idle")
    starter = threading.Timer(0.5, set_status, (pool, 1, 0, "running"))
    starter.start()
    result = tool(pool, "-auto-retry", *SSH, *FAST, "1.0", "echo started")
    starter.join()
    assert (result.returncode, result.stdout) == (0, "started\n")
    assert result.stderr == "Waiting for job to start...\n"


def test_just_started_job_fails_retryably_for_ssh_ready_delay(pool):
    configure_pool(pool, ssh_ready_delay=2.0)  # EnteredCurrentStatus has 1 s resolution
    submit_job(pool)
    result = tool(pool, "1.0")
    assert result.stderr == "(Use -auto-retry to keep trying periodically.)\n"
    result = tool(pool, "-auto-retry", *SSH, *FAST, "1.0", "true")
    assert (result.returncode, result.stderr) == (0, "Waiting for job to start...\n")


def test_remove_on_interrupt_removes_the_job(pool):
    submit_job(pool)
    proc = subprocess.Popen([str(pool / "bin" / "condor_ssh_to_job"), "-remove-on-interrupt",
                             *SSH, *FAST, "1.0", "sleep 30"],
                            stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: sshd_pids(pool, 1, 0))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert stderr.startswith("Interrupted by signal 15 (SIGTERM), removing job 1.0...\n")
    assert load_ads(pool) == []
    assert load_ads(pool, include_history=True)[0]["JobStatus"] == 3


# --- the pool ---------------------------------------------------------------------------

def _sleeping_session(pool: Path) -> subprocess.Popen:
    """A user's condor_ssh_to_job session to job 1.0 that sleeps, holding its sshd."""
    return subprocess.Popen([str(pool / "bin" / "condor_ssh_to_job"), *SSH, *FAST, "1.0", "sleep 30"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_leaving_running_kills_the_job_and_its_sshds(pool, client_env):
    submit_job(pool)
    job_pid, = job_pids(pool, 1, 0)
    session = _sleeping_session(pool)
    assert wait_for(lambda: sshd_pids(pool, 1, 0))
    sshd_pid, = sshd_pids(pool, 1, 0)
    sshd_dir = pool / "execute" / "dir_1_0" / ".condor_ssh_to_job_1"
    assert (sshd_dir / "sshd_config").exists()
    set_status(pool, 1, 0, "removed")
    assert session.wait(timeout=10) == 255  # ssh: connection closed
    for pid in (job_pid, sshd_pid):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert sshd_pids(pool, 1, 0) == [] and job_pids(pool, 1, 0) == []
    assert wait_for(lambda: not sshd_dir.exists())  # the starter removes an sshd's directory
    assert wait_for(lambda: session_dirs(client_env) == [])
    ad, = load_ads(pool, include_history=True)
    assert ad["JobStatus"] == 3 and ad["LastRemoteHost"] == "slot1_1@sandbox.local"


def test_a_completed_job_leaves_its_sshds_running(pool, client_env):
    """As on a real pool: the job exits, its sshds (and so the slot's claim) live on."""
    submit_job(pool)
    session = _sleeping_session(pool)
    try:
        assert wait_for(lambda: sshd_pids(pool, 1, 0))
        set_status(pool, 1, 0, "completed")
        assert job_pids(pool, 1, 0) == [] and len(sshd_pids(pool, 1, 0)) == 1
        assert session.poll() is None
    finally:
        session.kill()
        session.wait()


def test_hold_and_release_cycle(pool):
    submit_job(pool)
    set_status(pool, 1, 0, "held", hold_reason="Policy")
    ad, = load_ads(pool)
    assert (ad["JobStatus"], ad["HoldReason"]) == (5, "Policy")
    assert job_pids(pool, 1, 0) == [] and "RemoteHost" not in ad
    set_status(pool, 1, 0, "running")
    ad, = load_ads(pool)
    assert ad["JobStatus"] == 2 and ad["LastHoldReason"] == "Policy" and "HoldReason" not in ad
    assert len(job_pids(pool, 1, 0)) == 1
    with pytest.raises(PoolError):
        set_status(pool, 7, 0, "held")
    with pytest.raises(ValueError):
        set_status(pool, 1, 0, "running", hold_reason="nonsense")


def test_jobs_yaml_holds_classads_and_pool_settings(pool):
    ids = submit_cluster(pool, 2, "idle", Environment={"A": "1"})
    assert ids == [(1, 0), (1, 1)]
    table = yaml.safe_load((pool / "jobs.yaml").read_text())
    assert table["pool"]["schedd_name"] == "sandbox"
    assert table["pool"]["job_user"] == DEFAULT_JOB_USER
    ad = table["jobs"][1]
    assert {k: ad[k] for k in ("ClusterId", "ProcId", "JobStatus", "JobUniverse", "Owner")} == {
        "ClusterId": 1, "ProcId": 1, "JobStatus": 1, "JobUniverse": 5,
        "Owner": current_user_name()}
    assert ad["Environment"] == {"A": "1"} and ad["QDate"] <= ad["EnteredCurrentStatus"]
    sandbox = Path(ad["Iwd"])
    assert sandbox == pool / "execute" / "dir_1_1"
    assert sandbox.stat().st_uid == pwd.getpwnam(JOB_USER).pw_uid


def test_concurrent_submits_lose_nothing(pool):
    cli = [sys.executable, "-m", "relayd.sandbox", "submit", str(pool), "--status", "idle"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen(cli, stdout=subprocess.PIPE, text=True, env=env) for _ in range(8)]
    printed = sorted(p.communicate(timeout=30)[0].strip() for p in procs)
    assert printed == sorted(f"{c}.0" for c in range(1, 9))
    assert sorted(ad["ClusterId"] for ad in load_ads(pool)) == list(range(1, 9))


def test_cli_init_submit_set_list_stop(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="sandbox-cli-", dir="/tmp"))
    root.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "relayd.sandbox", *args], env=env,
                              capture_output=True, text=True, timeout=30, check=True)
        return done.stdout

    try:
        cli("init", str(root / "pool"), "--negotiation-delay", "0.1")
        pool_dir = root / "pool"
        assert cli("submit", str(pool_dir), "--count", "2") == "1.0\n1.1\n"
        assert cli("submit", str(pool_dir), "--status", "held", "--hold-reason", "why") == "2.0\n"
        listing = cli("list", str(pool_dir))
        assert re.search(r"^2\.0 .* held .* why$", listing, re.M)
        cli("set", str(pool_dir), "1", "--status", "idle")
        assert [ad["JobStatus"] for ad in load_ads(pool_dir)] == [1, 1, 5]
        cli("set", str(pool_dir), "1.1", "--status", "running")
        assert job_pids(pool_dir, 1, 1)
        wrapper = (pool_dir / "bin" / "condor_ssh_to_job").read_text()
        assert f"CONDOR_RELAY_SANDBOX={pool_dir}" in wrapper
        assert f"exec {sys.executable} -m relayd.sandbox.ssh_to_job \"$@\"" in wrapper
        cli("stop", str(pool_dir))
        assert job_pids(pool_dir, 1, 1) == []
    finally:
        stop_pool(root / "pool")
        shutil.rmtree(root, ignore_errors=True)


def test_negotiations_log_records_every_call(pool):
    submit_job(pool)
    tool(pool, "-name", "sandbox", "-pool", "cm.example.org", *SSH, *FAST, "1.0", "true")
    tool(pool, "1.x")
    calls = read_negotiations(pool)
    assert [c["argv"][1:] for c in calls] == [
        ["-name", "sandbox", "-pool", "cm.example.org", *SSH, *FAST, "1.0", "true"], ["1.x"]]
    proxies = [c for c in read_negotiations(pool, include_proxy=True) if c not in calls]
    assert len(proxies) == 1 and proxies[0]["argv"][1] == "-proxy"
    line = (pool / "negotiations.log").read_text().splitlines()[0]
    assert set(json.loads(line)) == {"time", "pid", "uid", "argv"}


def test_negotiation_delay_is_honoured(pool):
    configure_pool(pool, negotiation_delay=0.5)
    submit_job(pool)
    started = time.monotonic()
    assert tool(pool, *SSH, *FAST, "1.0", "true").returncode == 0
    assert time.monotonic() - started >= 0.5


def test_stop_kills_every_process_of_the_pool(pool):
    submit_cluster(pool, 2)
    pids = job_pids(pool, 1, 0) + job_pids(pool, 1, 1)
    assert len(pids) == 2
    stop_pool(pool)
    assert job_pids(pool, 1, 0) == job_pids(pool, 1, 1) == []


# --- HTCondor's argument syntax ---------------------------------------------------------

def test_v2_argument_syntax():
    assert split_v2_raw("ssh  -F '/dev/null' 'it''s' ''") == ["ssh", "-F", "/dev/null", "it's", ""]
    assert split_v2_quoted('"a ""b"" c"') == ["a", '"b"', "c"]
    with pytest.raises(ArgsError, match="Unbalanced quote starting here: 'x"):
        split_v2_raw("a 'x")
    assert join_system(['a"b', "$HOME", "`x`", "c\\d"]) == '"a\\"b" "\\$HOME" "\\`x\\`" "c\\\\d"'


def test_keygen_options_are_split_like_htcondor(pool):
    submit_job(pool)
    result = tool(pool, "-keygen-options", "-t 'ed25519", *SSH, "1.0", "true")
    assert result.returncode == 1
    assert result.stderr == (
        "slot1_1@sandbox.local: Failed to produce ssh-keygen arg list: "
        "Unbalanced quote starting here: 'ed25519\n")
    assert stat.S_ISDIR((pool / "execute" / "dir_1_0").stat().st_mode)
