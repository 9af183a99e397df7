"""The administrator's site config under the user's, the system-wide block's rendering
and installation (into temp files, never /etc/ssh), and check-system.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from harness import RELAYD, assert_ssh_fails

from clientconf import dropin
from relayd.config import ConfigError
from relayd.siteconfig import SITE_FAULT, load_merged

ROOT = Path(__file__).resolve().parents[2]
SITE = """\
domain: condor
keygen_options: -t rsa
idle_timeout: 45
schedds:
  default: {name: ap1.example.org}
  ap2: {name: ap2.example.org, pool: cm.example.org}
"""


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    monkeypatch.setenv("CONDOR_RELAY_SITE_CONFIG", str(path))
    return path


def test_user_config_overrides_the_site_key_by_key(tmp_path, site):
    user = tmp_path / "user.yaml"
    user.write_text("keygen_options: null\nschedds:\n  ap3: {name: ap3.example.org}\n  ap2: {name: mine.example.org}\n")
    merged = load_merged(user)
    config = merged.config
    assert (config.domain, config.idle_timeout, config.keygen_options) == ("condor", 45, None)
    assert {label: s.name for label, s in config.schedds.items()} == {
        "default": "ap1.example.org", "ap2": "mine.example.org", "ap3": "ap3.example.org"}
    assert config.schedds["ap2"].pool is None  # a label the user sets is the user's entry, whole
    assert merged.origins["idle_timeout"] == f"{site}:3"
    assert merged.origins["keygen_options"] == f"{user}:1"
    assert merged.origins["schedds.default"] == f"{site}:5"
    assert merged.origins["schedds.ap2"] == merged.origins["schedds.ap3"] == f"{user}:3"
    assert merged.origins["watch_interval"] == "default"


def test_a_fault_names_the_file_its_key_came_from(tmp_path, site):
    site.write_text("job_lookup: sandbox\n")
    user = tmp_path / "user.yaml"
    with pytest.raises(ConfigError, match=rf"^{site}:1: job_lookup: sandbox needs sandbox_pool .*\({SITE_FAULT}\)$"):
        load_merged(user)
    user.write_text("sandbox_pool: /pools/mine\n")
    assert load_merged(user).config.sandbox_pool == "/pools/mine"  # the user completes the site's setting
    user.write_text("sandbox_pool: /pools/mine\nidle_timeout: -1\n")
    with pytest.raises(ConfigError, match=rf"^{user}:2: idle_timeout must be .* greater than 0$"):
        load_merged(user)  # the user's own mistake, without a word about the administrator


def test_a_broken_site_file_is_named_with_its_line_to_every_user(unstarted_relay, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("domain: condor\nidle_timout: 3\n")
    env = {**unstarted_relay.home.env, "CONDOR_RELAY_SITE_CONFIG": str(site)}
    host = unstarted_relay.running_job()
    assert_ssh_fails(unstarted_relay, host, f"{site}:2: unknown key 'idle_timout'", SITE_FAULT, env=env)
    doctor = subprocess.run([RELAYD, "doctor", "--ssh-config", str(unstarted_relay.ssh_config)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 1
    assert f"FAIL  config: {site}:2: unknown key 'idle_timout'" in doctor.stdout, doctor.stdout
    assert "fix: the administrator corrects it; meanwhile CONDOR_RELAY_SITE_CONFIG=none skips it" in doctor.stdout
    site.write_text("domain: condor\nidle_timeout: [\n")  # not even YAML
    assert_ssh_fails(unstarted_relay, host, f"{site}:3: not valid YAML", env=env)
    # the way out the message gives: without the site file the user's own config serves
    done = subprocess.run(unstarted_relay.ssh_argv(host, "echo ok"), env={**env, "CONDOR_RELAY_SITE_CONFIG": "none"},
                          capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout == b"ok\n", done.stderr


def test_doctor_shows_where_each_value_comes_from(unstarted_relay, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("exit_when_idle: 60\nwatch_interval: 5\n")
    with unstarted_relay.home.config_file.open("a") as user:
        user.write("watch_interval: 7\n")
    line = len(unstarted_relay.home.config_file.read_text().splitlines())
    env = {**unstarted_relay.home.env, "CONDOR_RELAY_SITE_CONFIG": str(site)}
    out = subprocess.run([RELAYD, "doctor", "--ssh-config", str(unstarted_relay.ssh_config)], env=env,
                         capture_output=True, text=True, timeout=60).stdout
    assert f"ok    config: {unstarted_relay.home.config_file} (valid) over {site} (valid)" in out, out
    assert f"ok    config: exit_when_idle = 60 (site: {site}:1)" in out
    assert f"ok    config: watch_interval = 7 (yours: {unstarted_relay.home.config_file}:{line})" in out
    assert "ok    config: idle_timeout = 30 (default)" in out
    assert "ok    ssh-config: ssh uses your own block" in out
    assert out.endswith("all good\n"), out


def test_system_block_install_uninstall_and_dry_run(tmp_path, site):
    target = tmp_path / "ssh_config.d" / "20-condor-relay.conf"
    relayd = [RELAYD, "ssh-config"]
    env = {**os.environ, "CONDOR_RELAY_SITE_CONFIG": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*relayd, *args, "--system", "--file", str(target)], env=env, capture_output=True,
                              text=True, timeout=30)

    dry = run("install", "--dry-run")
    assert dry.returncode == 0 and "+    ProxyCommand " in dry.stdout and not target.exists()
    assert run("install").returncode == 0
    text = target.read_text()
    assert oct(target.stat().st_mode & 0o777) == "0o644"  # every user's ssh reads it
    assert "--socket" not in text and str(Path.home()) not in text  # nothing of the user who ran it
    assert "UserKnownHostsFile ~/.local/state/condor-relay/known_hosts\n" in text
    assert text == subprocess.run([*relayd, "print", "--system"], env=env, capture_output=True, text=True).stdout
    # ssh reads it as a drop-in: its ProxyCommand is the helper without a socket
    got = subprocess.run(["ssh", "-F", str(target), "-G", "job-3.0.condor"], capture_output=True, text=True).stdout
    assert f"proxycommand {dropin.render(load_merged(None).config).split('ProxyCommand ')[1].splitlines()[0]}" in got
    assert run("install").stdout.endswith("already up to date\n")
    assert run("uninstall").returncode == 0 and not target.exists()
    refused = subprocess.run([*relayd, "install", "--system", "--jobs"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--system takes no" in refused.stderr


def test_install_says_what_to_do_when_ssh_config_has_no_include(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("# Debian's\nInclude /etc/ssh/ssh_config.d/*.conf\nHost *\n    SendEnv LANG\n")
    assert dropin.include_problem(config) is None
    config.write_text("Host *\n    SendEnv LANG\nInclude /etc/ssh/ssh_config.d/*.conf\n")
    problem = dropin.include_problem(config)
    assert problem is not None and "Include /etc/ssh/ssh_config.d/*.conf' at its top" in problem
    assert f"relayd ssh-config install --system --file {config}" in problem
    config.write_text("Include ssh_config.d/*.conf\n")  # relative: to the file's directory
    assert dropin.include_problem(config, tmp_path / "ssh_config.d") is None


def _path_without(tmp_path: Path, missing: str) -> str:
    """A PATH with what check-system.sh runs, but not `missing`, and a recording apt-get
    (in a directory every user can enter)."""
    bindir = Path(tempfile.mkdtemp(prefix="condor-relay-bin-"))
    bindir.chmod(0o755)
    for name in ("ssh", "scp", "sftp", "ssh-keygen", "rsync", "xauth", "python3", "id", "sed", "sh"):
        if name != missing:
            os.symlink("/usr/bin/python3" if name == "python3" else shutil.which(name), bindir / name)
    log = tmp_path / "apt.log"
    (bindir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >>{log}\n')
    (bindir / "apt-get").chmod(0o755)
    return str(bindir)


@pytest.mark.skipif(os.geteuid() != 0, reason="installs as root")
def test_check_system_installs_what_is_missing_as_root_and_says_how_otherwise(tmp_path):
    path = _path_without(tmp_path, "rsync")
    script = str(ROOT / "contrib" / "check-system.sh")
    done = subprocess.run(["sh", script], env={"PATH": path}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "apt.log").read_text() == "update -qq\ninstall -y rsync\n"
    # as a user: from a copy that user can read (a checkout may sit in a private directory)
    shared = Path(tempfile.mkdtemp(prefix="condor-relay-check-"))
    shared.chmod(0o755)
    shutil.copy(script, shared / "check-system.sh")
    try:
        nobody = subprocess.run(["sh", str(shared / "check-system.sh")], env={"PATH": path}, capture_output=True,
                                text=True, timeout=30, user="nobody", cwd="/")
    finally:
        shutil.rmtree(shared)
    assert nobody.returncode == 1
    assert "install them with: sudo apt-get install -y rsync" in nobody.stderr
    assert (tmp_path / "apt.log").read_text().count("install") == 1  # not run for a user
    shutil.rmtree(path)
