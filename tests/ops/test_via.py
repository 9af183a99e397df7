"""Laptop mode: a laptop with only OpenSSH reaches jobs through an outer ssh to the access point.

A second sshd (`sshd -i`, run by the laptop's ProxyCommand, with its own config and an
authorized key made here) plays the access point; the via block from `relayd ssh-config
print --via` and the pinned host key make `ssh` and `rsync` reach the job through it.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from clientconf.sshconfig import ViaSettings, render_via
from relayd.sandbox import pool as sandbox

SSHD = "/usr/sbin/sshd"


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture
def laptop(relay, tmp_path):
    """An ssh config for a 'laptop' whose `ap` host is an sshd -i acting as the access point."""
    ap = tmp_path / "ap"
    ap.mkdir()
    ap_host_key = keygen(ap / "host_key")
    (ap / "authorized_keys").write_text(keygen(ap / "laptop_key") + "\n")
    env = relay.home.env
    # The access point's sessions get the test's XDG dirs, as the user's own login would.
    xdg = " ".join(f"{k}={env[k]}" for k in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR", "TMP"))
    (ap / "sshd_config").write_text(
        f"HostKey {ap / 'host_key'}\nAuthorizedKeysFile {ap / 'authorized_keys'}\nPidFile none\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n"
        f"PermitRootLogin prohibit-password\nLogLevel ERROR\nSetEnv {xdg}\n"
    )
    (ap / "known_hosts").write_text(f"ap-test {ap_host_key}\n")
    config = tmp_path / "laptop_ssh_config"
    config.write_text(
        f"Host ap\n    ProxyCommand {SSHD} -i -f {ap / 'sshd_config'}\n    User {getpass.getuser()}\n"
        f"    IdentityFile {ap / 'laptop_key'}\n    IdentitiesOnly yes\n    HostKeyAlias ap-test\n"
        f"    UserKnownHostsFile {ap / 'known_hosts'}\n    StrictHostKeyChecking yes\n    BatchMode yes\n\n"
    )
    # The laptop's ssh program: plain ssh, but never the real ~/.ssh/config.
    laptop_ssh = tmp_path / "laptop-ssh"
    laptop_ssh.write_text(f'#!/bin/sh\nexec ssh -F {config} "$@"\n')
    laptop_ssh.chmod(0o755)
    known_hosts = tmp_path / "laptop_known_hosts"
    block = relay.run(["relayd", "ssh-config", "print", "--via", "ap", "--ssh", str(laptop_ssh),
                       "--known-hosts", str(known_hosts)], check=True).stdout.decode()
    with config.open("a") as out:
        out.write(block)
    # Pin the relay's host key as the block's comment says, through the access point.
    fetch = next(line for line in block.splitlines() if "ssh-config known-hosts" in line)
    pinned = subprocess.run(fetch.lstrip("# ").split(" > ")[0], shell=True, env=env, capture_output=True,
                            timeout=30, check=True).stdout
    assert pinned.startswith(b"condor-relay,*.condor ssh-ed25519 ")
    known_hosts.write_bytes(pinned)
    return config


def test_ssh_and_rsync_through_the_access_point(relay, laptop, tmp_path):
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    host = f"job-{cluster}.{proc}.condor"
    data = os.urandom(3 * 1024 * 1024)
    done = relay.run(["ssh", "-F", str(laptop), host, "cat > data.bin; sha256sum data.bin; pwd"], input=data)
    assert done.returncode == 0, done.stderr
    digest, cwd = done.stdout.decode().splitlines()
    assert digest.split()[0] == hashlib.sha256(data).hexdigest()
    assert cwd == sandbox.load_ads(relay.pool_dir)[0]["Iwd"]

    local = tmp_path / "fetched"
    done = relay.run(["rsync", "-a", "-e", f"ssh -F {laptop}", f"{host}:data.bin", str(local) + "/"])
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256((local / "data.bin").read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert relay.negotiations() == 1  # both went through the one upstream


def test_a_wrong_pinned_key_is_refused(relay, laptop, tmp_path):
    sandbox.submit_job(relay.pool_dir, status="running")
    other = keygen(tmp_path / "other_key")
    (tmp_path / "laptop_known_hosts").write_text(f"condor-relay {other}\n")
    done = relay.run(["ssh", "-F", str(laptop), "job-1.0.condor", "true"], stdin=subprocess.DEVNULL)
    assert done.returncode == 255
    assert b"HOST IDENTIFICATION HAS CHANGED" in done.stderr or b"Host key verification failed" in done.stderr


@pytest.mark.parametrize(
    ("relayd", "ssh", "expected"),
    [
        ("/opt/relay/bin/relayd", "ssh", "ProxyCommand ssh -T ap /opt/relay/bin/relayd connect --stdio"),
        ("/opt/my relay/bin/relayd", "C:/Program Files/OpenSSH/ssh.exe",
         "ProxyCommand \"C:/Program Files/OpenSSH/ssh.exe\" -T ap \"'/opt/my relay/bin/relayd'\" connect --stdio"),
    ],
)
def test_via_block_quotes_for_sh_and_windows(relayd, ssh, expected):
    block = render_via(ViaSettings("condor", "ap", relayd, "/run/user/1000/condor-relay/relay.sock", ssh=ssh))
    assert expected in block
    assert "ProxyUseFdpass" not in block  # not on Windows, and no descriptor crosses ssh


@pytest.mark.parametrize("access_point", ["a$b", "a%b", 'a"b', "a\\b"])
def test_via_block_refuses_what_cannot_be_quoted_everywhere(access_point):
    with pytest.raises(ValueError, match="cannot be quoted"):
        render_via(ViaSettings("condor", access_point, "/opt/relayd", "/run/relay.sock"))
