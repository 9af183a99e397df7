"""`relayd doctor`: check everything a working `ssh job-1.0.condor` depends on, say what to fix.

Each check gives one finding: ok, warn (works, but not as it should) or FAIL (will not
work). The exit status is 1 when anything failed.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
from pathlib import Path
from typing import Callable, Iterator

from relayd.cli.findings import Finding, fail, ok, warn
from relayd.common.errors import DaemonError, JobUnreachable, NotRunning
from relayd.common.paths import Paths, unsafe_dir
from relayd.config import Config

MIN_OPENSSH = (6, 5)  # ProxyUseFdpass
LOOKUP_TIMEOUT_SECONDS = 15.0


def check_ssh_client() -> Iterator[Finding]:
    try:
        done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        yield fail("ssh", f"cannot run ssh ({exc})", "install the OpenSSH client (Debian: openssh-client)")
        return
    banner = (done.stderr or done.stdout).strip()
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", banner)
    if not match:
        yield warn("ssh", f"not OpenSSH ({banner!r})", "the generated config is written for OpenSSH")
        return
    version = (int(match[1]), int(match[2]))
    if version < MIN_OPENSSH:
        yield fail("ssh", f"{banner}: too old for ProxyUseFdpass", "use OpenSSH 6.5 or newer")
        return
    probe = subprocess.run(["ssh", "-F", os.devnull, "-o", "ProxyUseFdpass=yes", "-G", "probe.invalid"],
                           capture_output=True, text=True, timeout=10)
    if probe.returncode != 0 or "proxyusefdpass yes" not in probe.stdout:
        yield fail("ssh", f"{banner} does not accept ProxyUseFdpass", "use an OpenSSH client built with fd passing")
    else:
        yield ok("ssh", f"{banner}, ProxyUseFdpass supported")


def check_ssh_config(ssh_config: Path, expected_block: str, domain: str, socket_path: str) -> Iterator[Finding]:
    """The managed block is installed, current, and what ssh really uses for job hosts."""
    from clientconf.sshconfig import BEGIN, END

    install = f"relayd ssh-config install{'' if ssh_config == default_ssh_config() else f' --file {ssh_config}'}"
    try:
        text = ssh_config.read_text()
    except OSError:
        text = ""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        yield warn("ssh-config", f"{ssh_config} has no condor-relay block", install)
        return
    if text[start : end + len(END)] + "\n" != expected_block:
        stale = f"the condor-relay block in {ssh_config} is stale (differs from what relayd generates now)"
        yield warn("ssh-config", stale, install)
    else:
        yield ok("ssh-config", f"{ssh_config} has the current condor-relay block")
    probe = subprocess.run(["ssh", "-F", str(ssh_config), "-G", f"job-1.0.{domain}"], capture_output=True, text=True,
                           timeout=10)
    proxy = next((line[len("proxycommand "):] for line in probe.stdout.splitlines()
                  if line.startswith("proxycommand ")), "")
    if probe.returncode != 0:
        yield fail("ssh-config", f"ssh cannot read {ssh_config}: {probe.stderr.strip()}", f"correct {ssh_config}")
    elif "connect" not in proxy or socket_path not in proxy:
        yield warn("ssh-config", f"for job-1.0.{domain} ssh uses another ProxyCommand ({proxy or 'none'})",
                    f"move the condor-relay block to the top of {ssh_config} ({install})")


def default_ssh_config() -> Path:
    return Path.home() / ".ssh" / "config"


def check_negotiator(config: Config) -> Iterator[Finding]:
    from relayd.condor.negotiate import hook_path

    tool = config.negotiator_path()
    if tool is None:
        yield fail("condor_ssh_to_job", f"{config.condor_ssh_to_job!r} not found on PATH",
                    "install HTCondor's tools, or set condor_ssh_to_job in the config")
    else:
        yield ok("condor_ssh_to_job", tool)
    try:
        yield ok("capture hook", hook_path())
    except JobUnreachable as exc:
        yield fail("capture hook", str(exc), "reinstall condor-relay")


def _with_timeout(call: Callable[[], object], seconds: float) -> object:
    """`call()` in a thread; raises TimeoutError if it has not returned in time (it may hang)."""
    result: list[object] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # reported to the caller
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if errors:
        raise errors[0]
    return result[0] if result else None


def check_job_lookup(config: Config) -> Iterator[Finding]:
    """Ask the job source about a job that cannot exist: it must answer, not fail."""
    from relayd.condor.names import JobName
    from relayd.condor.sources import make_source

    if config.job_lookup == "none":
        yield ok("job lookup", "job_lookup: none (condor_ssh_to_job's own messages only)")
        return
    fix = ("check that the schedd runs and this host may query it (condor_q), or set job_lookup: none"
           if config.job_lookup == "htcondor" else "check sandbox_pool in the config")
    try:
        source = make_source(config, config.schedd(None))
        assert source is not None
        _with_timeout(lambda: source.query([JobName(cluster=0)]), LOOKUP_TIMEOUT_SECONDS)
    except ImportError as exc:
        yield fail("job lookup", f"the htcondor bindings are not installed ({exc})",
                    "pip install htcondor next to relayd, or set job_lookup: none")
    except Exception as exc:
        yield fail("job lookup", f"job_lookup: {config.job_lookup}: {exc}", fix)
    else:
        yield ok("job lookup", f"job_lookup: {config.job_lookup} answers")


def _mode_finding(topic: str, path: Path, mode: int, fix: str) -> Finding | None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if info.st_uid != os.getuid():
        return fail(topic, f"{path} belongs to uid {info.st_uid}, not to you", f"remove it ({fix})")
    if stat.S_IMODE(info.st_mode) & ~mode:
        return fail(topic, f"{path} has mode {stat.S_IMODE(info.st_mode):o}, not {mode:o}", f"chmod {mode:o} {path}")
    return ok(topic, f"{path} ({mode:o})")


def check_runtime_dir(paths: Paths) -> Finding:
    """Whether another user could replace the socket's directory, and why the fallback is used."""
    if paths.runtime_fallback:
        return warn("runtime dir", paths.runtime_fallback,
                     "point XDG_RUNTIME_DIR at a directory only you (and root) can change, e.g. /run/user/<uid>; "
                     "run `relayd ssh-config install` again after changing it")
    why = unsafe_dir(str(paths.runtime_dir))
    if why is not None:
        return fail("runtime dir", f"{paths.runtime_dir} is not safe ({why})",
                     "use a socket in a directory only you (and root) can change")
    return ok("runtime dir", f"{paths.runtime_dir}: no other user can replace it")


def check_permissions(paths: Paths, domain: str) -> Iterator[Finding]:
    restart = "relayd recreates it"
    yield check_runtime_dir(paths)
    for topic, path, mode in (
        ("state dir", paths.state_dir, 0o700),
        ("host key", paths.host_key, 0o600),
        ("runtime dir", paths.runtime_dir, 0o700),
        ("socket", paths.socket, 0o600),
    ):
        finding = _mode_finding(topic, path, mode, restart)
        if finding is not None:
            yield finding
    if paths.host_key.exists() and paths.known_hosts.exists():
        from twisted.conch.ssh import keys

        from relayd.ssh.relay_key import pin_line

        try:
            public = keys.Key.fromFile(str(paths.host_key)).public()
        except Exception as exc:
            yield fail("host key", f"{paths.host_key} cannot be read ({exc})", f"remove {paths.host_key}; {restart}")
            return
        if paths.known_hosts.read_text() != pin_line(public, domain):
            yield warn("known_hosts", f"{paths.known_hosts} does not pin the current host key",
                        "start relayd once (it rewrites the file)")


def check_daemon(socket_path: str) -> Finding:
    from clientconf.daemonctl import status
    from relayd.common.humanize import duration

    try:
        document = status(socket_path)
    except NotRunning:
        return ok("daemon", "not running; the next ssh to a job starts it")
    except DaemonError as exc:
        return fail("daemon", str(exc), "relayd stop, then let the next ssh start it")
    return ok("daemon", f"running, pid {document.get('pid')}, up {duration(float(document.get('uptime', 0)))}, "
                         f"{len(document.get('upstreams', []))} upstream(s)")


def diagnose(paths: Paths, ssh_config: Path, block_for: Callable[[Config], str]) -> list[Finding]:
    """Every finding, in the order a user should look at them."""
    from clientconf import dropin
    from relayd.cli import deploycheck

    config, findings = deploycheck.check_config_sources(paths)
    findings += check_ssh_client()
    given = None if ssh_config == deploycheck.ssh_reads_by_default() else ssh_config
    in_use = deploycheck.block_in_use(given, block_for(config), dropin.render(config), config.domain)
    if in_use != deploycheck.SYSTEM_BLOCK:
        checked = deploycheck.block_file(ssh_config, in_use, default_ssh_config())
        findings += check_ssh_config(checked, block_for(config), config.domain, str(paths.socket))
    findings += deploycheck.check_system_block(paths, in_use)
    findings += [*check_negotiator(config), *check_job_lookup(config), *check_permissions(paths, config.domain)]
    findings.append(check_daemon(str(paths.socket)))
    return findings


def report(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"{finding.level:<5} {finding.topic}: {finding.text}")
        if finding.fix:
            lines.append(f"      fix: {finding.fix}")
    failed = sum(f.level == "FAIL" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    lines.append("all good" if not failed and not warned else f"{failed} problem(s), {warned} warning(s)")
    return "\n".join(lines) + "\n"
