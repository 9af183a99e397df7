"""The measurements. Contenders run interleaved, sample by sample, so that load from
colleagues on a shared machine hits them alike."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.results import (
    CONTROLMASTER,
    DIRECT,
    DIRECT_PATH,
    DIRECT_TCP,
    FRESH_SSHD,
    IDLE_CPU,
    IDLE_RSS,
    NEGOTIATION_ONLY,
    PER_CLIENT,
    RELAY,
    RELAY_COLD,
    RELAY_MUX,
    TOOL,
    Scenario,
    Series,
)
from bench.rig import CommandFailed, Rig
from relayd.sandbox import pool as sandbox

MiB = 1024 * 1024


def warm_connect(rig: Rig, repeat: int) -> Scenario:
    """`ssh HOST true` with the connection to the job already there.

    The relay as generated (each ssh a client of the relay) and with ssh's ControlMaster in
    front of it (the `ssh_multiplexing: true` opt-in).
    """
    relay, master, fresh, mux = Series(RELAY), Series(CONTROLMASTER), Series(FRESH_SSHD), Series(RELAY_MUX)
    contenders = [(relay, rig.ssh(rig.host, "true")), (master, rig.ssh("direct-cm", "true")),
                  (fresh, rig.ssh("direct", "true")), (mux, rig.ssh_mux("true"))]
    for _, argv in contenders:
        rig.run(argv)
    try:
        for _ in range(repeat):
            for series, argv in contenders:
                series.samples.append(rig.run(argv))
    finally:
        rig.run(rig.ssh_mux("-O", "exit"))
    return Scenario("warm_connect", "warm connect: ssh HOST true", "s", [relay, master, fresh, mux])


def cold_connect(rig: Rig, repeat: int) -> Scenario:
    """The first connection to a job, negotiation included, against the negotiator."""
    relay, tool, negotiation = Series(RELAY_COLD), Series(TOOL), Series(NEGOTIATION_ONLY)
    for _ in range(repeat):
        rig.wait_upstream_closed()
        relay.samples.append(rig.run(rig.ssh(rig.host, "true")))
        tool.samples.append(rig.run(rig.condor_ssh_to_job("true")))
        negotiation.samples.append(rig.run(rig.condor_ssh_to_job(ssh="true")))
    return Scenario("cold_connect", "cold connect: ssh HOST true, negotiating", "s", [relay, tool, negotiation])


def repeated(rig: Rig, repeat: int, negotiation_delay: float) -> Scenario:
    """Connection after connection, with schedd and starter round trips costing time."""
    sandbox.configure_pool(rig.pool_dir, negotiation_delay=negotiation_delay)
    try:
        relay, tool = Series(RELAY), Series(TOOL)
        rig.run(rig.ssh(rig.host, "true"))
        for _ in range(repeat):
            relay.samples.append(rig.run(rig.ssh(rig.host, "true")))
            tool.samples.append(rig.run(rig.condor_ssh_to_job("true")))
    finally:
        sandbox.configure_pool(rig.pool_dir, negotiation_delay=0.0)
    title = f"repeated connections, negotiation costing {negotiation_delay:g} s: time per call"
    return Scenario("repeated", title, "s", [relay, tool])


def bulk(rig: Rig, repeat: int, size: int) -> list[Scenario]:
    """Upload and download `size` bytes of zeros (ssh compresses nothing by default). The direct
    path negotiates a fresh sshd for every ssh: that is in its time."""
    hosts = {RELAY: rig.host, DIRECT: "direct-cm", DIRECT_TCP: "direct-tcp", DIRECT_PATH: rig.direct_host}
    up = {name: Series(name) for name in hosts}
    down = {name: Series(name) for name in hosts}
    for name, host in hosts.items():
        rig.run(rig.ssh(host, "true"))
    for _ in range(repeat):
        for name, host in hosts.items():
            up[name].samples.append(size / MiB / _upload(rig, host, size))
            down[name].samples.append(size / MiB / rig.run(rig.ssh(host, f"head -c {size} /dev/zero")))
    label = f"{size / MiB / 1024:g} GiB" if size >= 1024 * MiB else f"{size / MiB:g} MiB"
    return [Scenario("upload", f"upload {label}: ssh HOST 'cat >/dev/null'", "MiB/s", list(up.values())),
            Scenario("download", f"download {label}: ssh HOST 'head -c N /dev/zero'", "MiB/s", list(down.values()))]


def _upload(rig: Rig, host: str, size: int) -> float:
    source = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    try:
        return rig.run(rig.ssh(host, "cat >/dev/null"), stdin=source.stdout)
    finally:
        assert source.stdout is not None
        source.stdout.close()
        source.wait()


def rsync_tree(rig: Rig, repeat: int, files: int) -> Scenario:
    """rsync -a of a fresh tree of small files, to a new destination each time."""
    tree = _small_file_tree(rig.root / "tree", files)
    contenders = {RELAY: (rig.relay.ssh_config, rig.host), DIRECT: (rig.direct_config, "direct-cm"),
                  DIRECT_TCP: (rig.direct_config, "direct-tcp"), DIRECT_PATH: (rig.relay.ssh_config, rig.direct_host)}
    series = {name: Series(name) for name in contenders}
    for i in range(repeat):
        for n, (name, (config, host)) in enumerate(contenders.items()):
            argv = ["rsync", "-a", "-e", f"ssh -F {config}", f"{tree}/", f"{host}:rsync-{i}-{n}/"]
            series[name].samples.append(rig.run(argv))
    return Scenario("rsync", f"rsync -a of {files} small files (1-16 KiB)", "s", list(series.values()))


def _small_file_tree(root: Path, files: int) -> Path:
    rng = random.Random(6)
    for i in range(files):
        path = root / f"d{i % 20}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1024, 16 * 1024)))
    return root


def concurrent_sessions(rig: Rig, sessions: int) -> Scenario:
    """`sessions` ssh sessions at once on one job (sshd allows 10 per connection)."""
    def one(i: int) -> float:
        return rig.run(rig.ssh(rig.host, f"sleep 1; echo {i}"))

    rig.run(rig.ssh(rig.host, "true"))  # the job's master: the sessions are its mux clients
    start = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(one, range(sessions)))
    elapsed = time.perf_counter() - start
    return Scenario("concurrent", f"{sessions} concurrent sessions of 'sleep 1' on one job: wall time", "s",
                    [Series(RELAY, [elapsed])])


def memory_and_idle_cpu(rig: Rig, clients: int, idle_seconds: float) -> list[Scenario]:
    """RSS idle and with `clients` idle client connections; CPU used while they idle.

    Idle RSS is taken twice: after everything before (the heap keeps what bulk transfers
    grew it to) and on a restarted daemon with one upstream, from which the per-client
    figure is measured (a grown heap would hide what new connections take).
    """
    rig.run(rig.ssh(rig.host, "true"))
    after_load = _rss_kib(rig.relay_pid())
    rig.start_relay(**rig.relay_settings)
    rig.run(rig.ssh(rig.host, "true"))
    pid = rig.relay_pid()
    idle = _rss_kib(pid)
    held = [_idle_client(rig) for _ in range(clients)]
    try:
        for client in held:
            if client.stdout is None or client.stdout.readline() != b"ready\n":
                raise CommandFailed(f"an idle client did not connect: {client.args}")
        loaded = _rss_kib(pid)
        before = _cpu_seconds(pid)
        time.sleep(idle_seconds)
        cpu = _cpu_seconds(pid) - before
    finally:
        for client in held:
            client.terminate()
            client.wait()
    return [
        Scenario("rss", "daemon RSS", "MiB", [Series(IDLE_RSS, [idle / 1024]),
                                             Series(f"with {clients} idle client connections", [loaded / 1024]),
                                             Series("idle after the scenarios above", [after_load / 1024])]),
        Scenario("rss_per_client", "daemon RSS per idle client connection", "KiB",
                 [Series(PER_CLIENT, [(loaded - idle) / clients])]),
        Scenario("idle_cpu", f"daemon CPU over {idle_seconds:g} s with {clients} idle clients", "s",
                 [Series(IDLE_CPU, [cpu])]),
    ]


def _idle_client(rig: Rig) -> subprocess.Popen[bytes]:
    """A connection of its own with no channel, which says `ready` once it is authenticated."""
    argv = ["ssh", "-F", str(rig.relay.ssh_config), "-N", "-o", "PermitLocalCommand=yes", "-o",
            "LocalCommand=echo ready", rig.host]
    return subprocess.Popen(argv, env=rig.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise CommandFailed(f"no VmRSS for pid {pid}")


def _cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, in nanoseconds' resolution (schedstat), where
    /proc/PID/stat counts whole clock ticks (10 ms)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def helper_startup(rig: Rig, repeat: int) -> Scenario:
    """`relayd connect` as the generated ProxyCommand runs it before every ssh connection
    (condor-relay-connect, installed next to relayd): from its start to the hand-over of the
    daemon's socket, on a socket pair standing for ssh's, with the daemon up."""
    helper = [str(Path(rig.relay.relayd).with_name("condor-relay-connect")), "--socket", str(rig.relay.home.socket),
              rig.host, "22"]
    bare = [sys.executable, "-c", "pass"]
    runs = {"relayd connect (to the hand-over)": helper, "python -c pass": bare}
    series = {name: Series(name) for name in runs}
    for _ in range(repeat):
        for name, argv in runs.items():
            ssh_end, helper_end = socket.socketpair()
            start = time.perf_counter()
            subprocess.run(argv, env=rig.env, stdin=helper_end, stdout=helper_end, stderr=subprocess.DEVNULL)
            series[name].samples.append(time.perf_counter() - start)
            ssh_end.close()
            helper_end.close()
    return Scenario("helper", "ProxyCommand helper start-up", "s", list(series.values()))
