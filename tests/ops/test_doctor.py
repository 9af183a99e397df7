"""`relayd doctor`: a good setup passes; a broken one gets a finding and a fix for each fault."""

from __future__ import annotations

import subprocess

from harness import RELAYD


def doctor(relay) -> subprocess.CompletedProcess:
    return subprocess.run([RELAYD, "doctor", "--ssh-config", str(relay.ssh_config)], env=relay.home.env,
                          capture_output=True, text=True, timeout=60)


def test_doctor_passes_a_working_setup(relay):
    done = doctor(relay)
    assert done.returncode == 0, done.stdout
    assert done.stdout.endswith("all good\n"), done.stdout
    assert "ProxyUseFdpass supported" in done.stdout
    assert f"running, pid {relay.process.pid}" in done.stdout


def test_doctor_names_each_fault_of_a_broken_setup(relay):
    state = relay.home.config_file.parent.parent.parent / "state" / "condor-relay"
    (state / "host_key").chmod(0o644)
    relay.ssh_config.write_text(relay.ssh_config.read_text().replace("StrictHostKeyChecking yes", "Compression yes"))
    typo_line = len(relay.home.config_file.read_text().splitlines()) + 1
    relay.home.config_file.write_text(relay.home.config_file.read_text() + "idle_timout: 3\n")
    done = doctor(relay)
    out = done.stdout
    assert done.returncode == 1, out
    assert f"FAIL  config: {relay.home.config_file}:{typo_line}: unknown key 'idle_timout'" in out
    assert "the condor-relay block in" in out and "is stale" in out
    assert "fix: relayd ssh-config install\n" in out  # the block is where install puts it by default
    assert f"FAIL  host key: {state / 'host_key'} has mode 644, not 600" in out
    assert f"fix: chmod 600 {state / 'host_key'}" in out
    # with the config broken, defaults apply: no condor_ssh_to_job on PATH, no htcondor schedd
    assert "FAIL  condor_ssh_to_job: 'condor_ssh_to_job' not found on PATH" in out
    assert "FAIL  job lookup: " in out


def test_doctor_warns_when_ssh_uses_another_proxycommand(relay):
    block = relay.ssh_config.read_text()
    relay.ssh_config.write_text("Host *.condor\n    ProxyCommand nc %h %p\n\n" + block)
    out = doctor(relay).stdout
    assert "for job-1.0.condor ssh uses another ProxyCommand (nc %h %p)" in out
    assert "fix: move the condor-relay block to the top of" in out
