"""`make demo`: the whole path on the embedded sandbox pool, in a private directory.

Starts relayd against a sandbox pool with one running job, writes an ssh config, and
shows ssh, rsync and scp reaching `job-1.0.condor`. Nothing touches your own ~/.ssh:
HOME and the XDG directories point into a temporary directory removed at the end.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relayd.sandbox import pool as sandbox

BIN = Path(sys.executable).parent


def show(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    print(f"\n$ {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    start = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=cwd)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"demo: the command above failed with exit status {done.returncode}")
    return elapsed


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="cr-demo-"))  # short: ssh's control sockets live below it
    root.chmod(0o711)  # as root, the sandbox's unprivileged job user must reach the pool below
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SSH_", "CONDOR_RELAY"))}
    for name, sub in [("HOME", "home"), ("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"),
                      ("XDG_RUNTIME_DIR", "run"), ("TMP", "tmp")]:
        (root / sub).mkdir(mode=0o700)
        env[name] = str(root / sub)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    pool_dir = root / "pool"
    daemon = None
    try:
        sandbox.create_pool(pool_dir)
        cluster, proc = sandbox.submit_job(pool_dir, status="running")
        host = f"job-{cluster}.{proc}.condor"
        config = root / "config" / "condor-relay" / "config.yaml"
        config.parent.mkdir()
        config.write_text(f"condor_ssh_to_job: {pool_dir}/bin/condor_ssh_to_job\n"
                          f"job_lookup: sandbox\nsandbox_pool: {pool_dir}\n")
        print(f"demo: sandbox pool in {pool_dir} with job {cluster}.{proc} running")
        daemon = subprocess.Popen([str(BIN / "relayd"), "run"], env=env, stderr=open(root / "relayd.log", "w"))
        socket_path = root / "run" / "condor-relay" / "relay.sock"
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"demo: relayd did not start:\n{(root / 'relayd.log').read_text()}")
            time.sleep(0.05)
        ssh_config = root / "ssh_config"
        ssh_config.write_text(subprocess.run([str(BIN / "relayd"), "ssh-config", "print"], env=env, check=True,
                                             capture_output=True, text=True).stdout)
        print(f"demo: relayd is running; the generated ssh config ({ssh_config}):\n")
        print(ssh_config.read_text())
        ssh = ["ssh", "-F", str(ssh_config)]
        first = show(ssh + [host, "pwd; echo $_CONDOR_JOB_PIDS"], env, root)
        second = show(ssh + [host, "pwd; echo $_CONDOR_JOB_PIDS"], env, root)

        tree = root / "tree"
        for i in range(20):
            (tree / f"sub{i % 3}").mkdir(parents=True, exist_ok=True)
            (tree / f"sub{i % 3}" / f"file{i}.txt").write_text(f"file {i}\n" * (i + 1))
        show(["rsync", "-a", "--stats", "-e", f"ssh -F {ssh_config}", f"{tree}/", f"{host}:tree/"], env, root)
        blob = root / "blob.bin"
        blob.write_bytes(os.urandom(8 << 20))
        show(["scp", "-F", str(ssh_config), str(blob), f"{host}:blob.bin"], env, root)
        show(["scp", "-F", str(ssh_config), f"{host}:blob.bin", str(root / "blob.back")], env, root)
        same = hashlib.sha256(blob.read_bytes()).digest() == hashlib.sha256((root / "blob.back").read_bytes()).digest()
        print(f"\ndemo: 8 MiB scp round trip {'matches (sha256)' if same else 'DIFFERS'}")
        negotiations = len((pool_dir / "negotiations.log").read_text().splitlines())
        print(f"demo: first connection (negotiating) {first:.2f} s, second (reusing the relay's connection to the job) {second:.2f} s; "
              f"negotiations: {negotiations}")
        return 0 if same else 1
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(10)
        sandbox.stop_pool(pool_dir)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
