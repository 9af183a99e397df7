"""`make rpm` builds the EL package with rpmbuild (installed from Debian's `rpm` package
here), and its payload is a working system install: the venv under /opt/condor-relay with
every dependency, no trace of the build root, the commands in /usr/bin, the user units,
the site config as a config file, and the scriptlets that write and remove the drop-in."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (shutil.which("rpmbuild") and shutil.which("rpm2archive")),
                                reason="rpmbuild not installed (Debian: apt-get install rpm)")


@pytest.fixture(scope="module")
def rpm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rpm")
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "rpm", f"DIST={out}/dist", f"RPM_TOPDIR={out}/top",
                           f"RPM_SRC={out}/src"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return next((out / "top" / "RPMS").glob("*/condor-relay-*.rpm"))


def test_rpm_payload_is_a_working_system_install(rpm, tmp_path):
    archive = subprocess.run(["rpm2archive", "-"], stdin=rpm.open("rb"), capture_output=True, check=True).stdout
    subprocess.run(["tar", "-xzf", "-", "-C", str(tmp_path)], input=archive, check=True)
    venv = tmp_path / "opt" / "condor-relay"
    assert (venv / "bin" / "relayd").read_text().startswith("#!/opt/condor-relay/bin/python\n")
    stale = subprocess.run(["grep", "-rlI", "BUILDROOT", str(venv)], capture_output=True, text=True).stdout
    assert not stale, stale
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import relayd.sandbox, clientconf.connect, twisted.conch, cryptography, yaml, htcondor2;"
                            "import importlib.resources as r;"
                            "print(r.files('relayd.sandbox').joinpath('shell_setup.sh').is_file())"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert probe.stdout == "True\n", probe.stderr
    for command in ("relayd", "condor-relay-connect", "condor-relay-capture"):
        assert os.readlink(tmp_path / "usr" / "bin" / command) == f"/opt/condor-relay/bin/{command}"
    units = tmp_path / "usr" / "lib" / "systemd" / "user"
    assert "ExecStart=/usr/bin/relayd run\n" in (units / "condor-relay.service").read_text()
    assert "ListenStream=%t/condor-relay/relay.sock\n" in (units / "condor-relay.socket").read_text()
    query = subprocess.run(["rpm", "-qp", "--configfiles", "--scripts", str(rpm)], capture_output=True, text=True)
    assert "/etc/condor-relay/config.yaml" in query.stdout
    assert "/usr/bin/relayd ssh-config install --system" in query.stdout
    assert "/usr/bin/relayd ssh-config uninstall --system" in query.stdout
