"""An access point set up by its administrator: the wheel built with `python -m build`,
installed by contrib/install-system.sh into a fresh venv (the /opt/condor-relay layout, in
a temp dir), the site config and the system-wide ssh_config block; then two real
unprivileged users using it at the same time against one sandbox pool.

The system block is rendered by `relayd ssh-config install --system --file` into a temp
drop-in directory, never into /etc/ssh/ssh_config.d: each user's ssh gets `-F` a file
standing in for /etc/ssh/ssh_config, which reads the user's ~/.ssh/config first and then
includes the drop-ins, in ssh's own order. Root only (users, runuser-like switches).
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                                reason="creates users and a system-wide install (root, /usr/bin/python3)")

ROOT = Path(__file__).resolve().parents[2]
USERS = ("condor-relay-u1", "condor-relay-u2")
POOL_GROUP = "condor-relay-ap"  # the users' access to the sandbox pool, which stands in for the schedd
SYSTEM_PYTHON = "/usr/bin/python3"  # every user can run it (the test's own interpreter may not be)


@dataclass
class Install:
    base: Path
    prefix: Path
    bindir: Path
    dropin_dir: Path
    site_config: Path
    ssh_config: Path  # stands in for /etc/ssh/ssh_config
    pool: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": f"{self.bindir}:/usr/bin:/bin", "CONDOR_RELAY_SITE_CONFIG": str(self.site_config),
                "LANG": "C.UTF-8", **extra}


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    install: Install
    runtime_dir: Path | None = None  # /run/user/<uid>, as logind makes it; XDG_RUNTIME_DIR stays unset

    def run(self, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        env = self.install.env(HOME=str(self.home), USER=self.name, LOGNAME=self.name) | kw.pop("env", {})
        groups = [grp.getgrnam(POOL_GROUP).gr_gid]
        return subprocess.run(argv, env=env, user=self.uid, group=self.gid, extra_groups=groups, cwd=self.home,
                              capture_output=True, timeout=timeout, stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)

    def ssh(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["ssh", "-F", str(self.install.ssh_config), *args], **kw)

    def submit(self) -> str:
        """A running job of this user's (Owner is the submitter, as on a schedd); its host name."""
        done = self.run([str(self.install.prefix / "bin" / "python"), "-m", "relayd.sandbox", "submit",
                         str(self.install.pool), "--status", "running"], check=True, text=True)
        return f"job-{done.stdout.split()[-1]}.condor"

    @property
    def state(self) -> Path:
        return self.home / ".local" / "state" / "condor-relay"

    @property
    def socket(self) -> Path:
        return (self.runtime_dir / "condor-relay" if self.runtime_dir else self.state / "run") / "relay.sock"

    def processes(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and entry.stat().st_uid == self.uid:
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


def _ensure_user(name: str) -> None:
    """Create the account once (idempotent), in the pool group."""
    try:
        grp.getgrnam(POOL_GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", POOL_GROUP], check=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    subprocess.run(["usermod", "--append", "--groups", POOL_GROUP, name], check=True)


def _fresh_home(name: str) -> Path:
    """The user's home without any relay state, config or ssh config (as a new user has it)."""
    home = Path(pwd.getpwnam(name).pw_dir)
    for leftover in (".local", ".config", ".ssh", ".cache"):
        shutil.rmtree(home / leftover, ignore_errors=True)
    return home


def _share_pool(pool: Path) -> None:
    """Let the pool group's members write the job table, as their condor_submit would."""
    gid = grp.getgrnam(POOL_GROUP).gr_gid
    for name in ("jobs.lock", "negotiations.log"):
        (pool / name).touch()
    for path in [pool, *pool.rglob("*")]:
        os.chown(path, -1, gid)
        if path.is_dir():
            path.chmod(0o2775)
        elif path.name in ("jobs.lock", "negotiations.log", "jobs.yaml"):
            path.chmod(0o664)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built by the standard front end as a packager builds it."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    return next(out.glob("condor_relay-*.whl"))


@pytest.fixture(scope="module")
def install(wheel) -> Iterator[Install]:
    base = Path(tempfile.mkdtemp(prefix="condor-relay-deploy-"))
    base.chmod(0o755)
    site = base / "etc" / "condor-relay" / "config.yaml"
    inst = Install(base, base / "opt" / "condor-relay", base / "bin", base / "ssh_config.d", site,
                   base / "ssh_config", base / "pool")
    try:
        for name in USERS:
            _ensure_user(name)
        python = str(inst.prefix / "bin" / "python")
        env = inst.env()
        done = subprocess.run(["sh", str(ROOT / "contrib" / "install-system.sh"), "install", str(wheel)],
                              env={**os.environ, **env, "PREFIX": str(inst.prefix), "BINDIR": str(inst.bindir),
                                   "UNITDIR": str(base / "systemd-user"), "PYTHON": SYSTEM_PYTHON,
                                   "SSH_DROPIN": str(inst.dropin_dir / "20-condor-relay.conf")},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        subprocess.run([python, "-m", "relayd.sandbox", "init", str(inst.pool)], check=True, capture_output=True)
        _share_pool(inst.pool)
        site.parent.mkdir(parents=True)
        site.write_text(f"condor_ssh_to_job: {inst.pool}/bin/condor_ssh_to_job\njob_lookup: sandbox\n"
                        f"sandbox_pool: {inst.pool}\nexit_when_idle: 120\n")
        site.chmod(0o644)
        # ssh reads the user's file, then the system one, which includes the drop-ins at its top.
        inst.ssh_config.write_text(f"Include ~/.ssh/config\nInclude {inst.dropin_dir}/*.conf\n")
        yield inst
    finally:
        pool = base / "pool"
        if (pool / "jobs.yaml").exists():
            subprocess.run([str(inst.prefix / "bin" / "python"), "-m", "relayd.sandbox", "stop", str(pool)],
                           capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def users(install) -> Iterator[list[User]]:
    """Both users, with no relay state; the first with /run/user/<uid> (as logind makes it)."""
    found = []
    for index, name in enumerate(USERS):
        entry = pwd.getpwnam(name)
        user = User(name, entry.pw_uid, entry.pw_gid, _fresh_home(name), install)
        if index == 0:
            user.runtime_dir = Path(f"/run/user/{entry.pw_uid}")
            user.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chown(user.runtime_dir, entry.pw_uid, entry.pw_gid)
        found.append(user)
    try:
        yield found
    finally:
        for user in found:
            user.run([str(install.bindir / "relayd"), "stop"], timeout=30)
        subprocess.run([str(install.prefix / "bin" / "python"), "-m", "relayd.sandbox", "stop", str(install.pool)],
                       capture_output=True, timeout=60)
        for user in found:
            for pid in user.processes():  # none should be left; the test says so below
                os.kill(pid, signal.SIGKILL)
            if user.runtime_dir:
                shutil.rmtree(user.runtime_dir, ignore_errors=True)


def _session(user: User, results: dict[str, object]) -> None:
    """One user's first day: ssh with no relay state, rsync both ways, their own daemon."""
    host = user.submit()
    first = user.ssh(host, "echo $USER; pwd")
    results["first"] = first
    payload = os.urandom(3 * 1024 * 1024)
    source = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chown(source, user.uid, user.gid)
        (source / "data.bin").write_bytes(payload)
        os.chown(source / "data.bin", user.uid, user.gid)
        rsh = f"ssh -F {user.install.ssh_config}"
        results["up"] = user.run(["rsync", "-a", "-e", rsh, str(source / "data.bin"), f"{host}:data.bin"])
        results["remote"] = user.ssh(host, "sha256sum data.bin")
        results["down"] = user.run(["rsync", "-a", "-e", rsh, f"{host}:data.bin", str(source / "back.bin")])
        back = source / "back.bin"
        results["back"] = hashlib.sha256(back.read_bytes()).hexdigest() if back.exists() else None
    finally:
        shutil.rmtree(source, ignore_errors=True)
    results["sha256"] = hashlib.sha256(payload).hexdigest()
    results["host"] = host


def test_two_users_share_the_system_install_each_with_their_own_daemon(install, users):
    results: dict[str, dict[str, object]] = {user.name: {} for user in users}
    threads = [threading.Thread(target=_session, args=(user, results[user.name])) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    for user in users:
        got = results[user.name]
        first = got["first"]
        assert first.returncode == 0, first.stderr.decode()  # no relay state before: the pin came in time
        name, cwd = first.stdout.decode().split()
        assert name == user.name and cwd.startswith(str(install.pool / "execute")), first.stdout
        for step in ("up", "remote", "down"):
            assert got[step].returncode == 0, (step, got[step].stderr.decode())
        assert got["remote"].stdout.decode().split()[0] == got["sha256"] == got["back"]
        status = user.run([str(install.bindir / "relayd"), "status", "--json"], text=True)
        assert status.returncode == 0, status.stderr
        document = json.loads(status.stdout)
        assert document["activation"] == "helper"
        assert document["socket"] == str(user.socket)
        assert Path(f"/proc/{document['pid']}").stat().st_uid == user.uid
        assert (user.state / "known_hosts").stat().st_uid == user.uid
    # the daemons' sockets: u1's in /run/user/<uid> (XDG_RUNTIME_DIR unset), u2's in its state dir
    assert users[0].socket.parent.parent == users[0].runtime_dir
    assert users[1].socket.is_relative_to(users[1].home)


def test_users_cannot_reach_each_others_socket_state_or_jobs(install, users):
    one, two = users
    host_two = two.submit()
    assert two.ssh(host_two, "true").returncode == 0  # starts two's daemon
    host_one = one.submit()
    assert one.ssh(host_one, "true").returncode == 0
    # the helper pointed at the other user's socket: refused before a byte is sent
    stolen = one.ssh("-o", f"ProxyCommand {install.bindir}/condor-relay-connect --socket {two.socket} %h %p",
                     host_two, "true")
    assert stolen.returncode == 255
    assert f"cannot reach the relay daemon at {two.socket}: Permission denied" in stolen.stderr.decode()
    for path in (two.state / "host_key", two.state / "known_hosts", two.state / "relayd.log"):
        peek = one.run(["cat", str(path)])
        assert peek.returncode != 0 and b"Permission denied" in peek.stderr, path
    probe = one.run([SYSTEM_PYTHON, "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({str(two.socket)!r})"])
    assert b"PermissionError" in probe.stderr
    # the other user's job, through one's own daemon: the schedd's answer
    other = one.ssh(host_two, "true")
    assert other.returncode == 255
    assert f"{one.name} is not authorized for access to the starter" in other.stderr.decode()


def test_doctor_says_which_block_ssh_uses(install, users):
    one = users[0]
    relayd = str(install.bindir / "relayd")
    doctor = one.run([relayd, "doctor", "--ssh-config", str(install.ssh_config)], text=True)
    assert "ok    ssh-config: ssh uses the system-wide block" in doctor.stdout, doctor.stdout
    assert "has no condor-relay block" not in doctor.stdout
    assert f"sandbox_pool = {install.pool} (site: {install.site_config}:3)" in doctor.stdout
    # the user's own block comes first (ssh reads ~/.ssh/config before the system files) and wins
    assert one.run([relayd, "ssh-config", "install"]).returncode == 0
    host = one.submit()
    done = one.ssh("-v", host, "true")
    assert done.returncode == 0, done.stderr.decode()
    assert f"--socket {one.socket}" in done.stderr.decode()  # ssh ran the user's ProxyCommand
    doctor = one.run([relayd, "doctor", "--ssh-config", str(install.ssh_config)], text=True)
    assert "ok    ssh-config: ssh uses your own block" in doctor.stdout, doctor.stdout


def test_no_process_left_after_stop(install, users):
    one = users[0]
    assert one.ssh(one.submit(), "true").returncode == 0
    assert one.run([str(install.bindir / "relayd"), "stop"]).returncode == 0
    subprocess.run([str(install.prefix / "bin" / "python"), "-m", "relayd.sandbox", "stop", str(install.pool)],
                   capture_output=True, timeout=60)
    assert wait_for(lambda: not one.processes(), 10), one.processes()


def test_install_upgrade_and_remove_leave_nothing_behind(wheel, tmp_path):
    tmp_path.chmod(0o755)
    layout = {"PREFIX": tmp_path / "opt", "BINDIR": tmp_path / "bin", "UNITDIR": tmp_path / "units",
              "SSH_DROPIN": tmp_path / "ssh_config.d" / "20-condor-relay.conf"}
    env = {**os.environ, "PYTHON": SYSTEM_PYTHON, "CONDOR_RELAY_SITE_CONFIG": "none",
           **{key: str(value) for key, value in layout.items()}}

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(ROOT / "contrib" / "install-system.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=600)

    assert script("upgrade", str(wheel)).returncode == 1  # nothing to upgrade yet
    for step in ("install", "upgrade"):
        done = script(step, str(wheel))
        assert done.returncode == 0, done.stderr
        helper = layout["PREFIX"] / "bin" / "condor-relay-connect"
        assert os.readlink(layout["BINDIR"] / "condor-relay-connect") == str(helper)
        assert f"ProxyCommand {helper} --user %r %h %p" in layout["SSH_DROPIN"].read_text()
        service = (layout["UNITDIR"] / "condor-relay.service").read_text()
        assert f"ExecStart={layout['BINDIR']}/relayd run\n" in service
    done = script("remove")
    assert done.returncode == 0, done.stderr
    assert not layout["SSH_DROPIN"].exists() and not layout["PREFIX"].exists()
    assert not list(layout["BINDIR"].iterdir()) and not list(layout["UNITDIR"].iterdir())
