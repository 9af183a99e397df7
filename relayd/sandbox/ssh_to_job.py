"""condor_ssh_to_job for a sandbox pool: the real tool's command line, messages
and exit codes, with the schedd and starter answered locally (schedd.py,
starter.py) instead of over CEDAR.

Run through a pool's bin/condor_ssh_to_job, which sets CONDOR_RELAY_SANDBOX
to the pool directory and CONDOR_RELAY_SANDBOX_ARGV0 to the name it was
invoked by (the real tool puts its argv[0] into the ProxyCommand).
Exit codes: 2 for command-line errors, 1 for failures (and for an ssh that
died by a signal), otherwise ssh's own exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from relayd.common.jobstates import HELD, RUNNING

from . import schedd, session, sshcmd
from .condor_args import join_for_display
from .jobuser import JobUserError, current_user_name
from .layout import ARGV0_ENV, POOL_ENV, PoolError, PoolLayout, PoolSettings
from .pool import set_status
from .starter import SSH_KEYGEN, StarterError, start_sshd
from .tool_args import USAGE, CommandLineError, HelpRequested, Options, parse_args

_RETRY_DELAY_CAP = 30  # after 5 minutes of retries HTCondor slows down to every 30 s


def _err(message: str) -> None:
    sys.stderr.write(message)
    sys.stderr.flush()


def _debug_line(message: str) -> None:
    """A -debug line, in the format of HTCondor's tool dprintf."""
    _err(time.strftime("%m/%d/%y %H:%M:%S ") + message + "\n")


class SshAttempts:
    """execute_ssh_retry / execute_ssh: one or more attempts to reach the job."""

    def __init__(self, opts: Options, layout: PoolLayout | None) -> None:
        self.opts = opts
        self.layout = layout
        self.could_be_ec2_job = True
        self.retry_sensible = False
        self.settings = PoolSettings()  # replaced by the pool's at each attempt

    def debug(self, message: str) -> None:
        if self.opts.debug:
            _debug_line(message)

    def run(self) -> int:
        """The process exit code."""
        attempt = 0
        delay = 0.0
        while attempt == 0 or self.opts.auto_retry:
            if attempt > 0:
                if attempt == 1:
                    _err("Waiting for job to start...\n")
                    delay = self.settings.retry_delay
                if delay < _RETRY_DELAY_CAP and delay * attempt >= 300:
                    delay = _RETRY_DELAY_CAP
                time.sleep(delay)
            status = self.execute_ssh()
            if status is not None:
                return status if status >= 0 else 1  # killed by a signal
            if not self.retry_sensible:
                return 1
            attempt += 1
        _err("(Use -auto-retry to keep trying periodically.)\n")
        return 1

    def execute_ssh(self) -> int | None:
        """One attempt: ssh's exit status (negative: killed by that signal), or None."""
        layout = self.layout
        try:
            if layout is None:
                raise PoolError(f"{POOL_ENV} is not set")
            settings = self.settings = layout.settings()
        except PoolError:
            _err("ERROR: Can't find address of local schedd\n")
            return None
        opts = self.opts
        error = schedd.locate_error(settings, opts.schedd_name, opts.pool_name)
        if error:
            _err(error + "\n")
            return None
        if settings.negotiation_fault == "hang":
            _hang()

        if self.could_be_ec2_job:
            ad = schedd.fetch_job_ad(layout, opts.cluster, opts.proc)
            if ad is None:
                _err("Unable to fetch job ad; is it still in the queue?\n")
                return None
            status = ad.get("JobStatus")
            if not isinstance(status, int):
                _err("Can't get job status\n")
                return None
            if status == HELD:
                reason = ad.get("HoldReason")
                _err(f'The job is on hold: "{reason}".\n' if isinstance(reason, str)
                     else "The job is on hold for an unknown reason.\n")
                return None
            grid_resource = ad.get("GridResource")
            if isinstance(grid_resource, str) and grid_resource.startswith("ec2"):
                return self._ssh_to_ec2(ad, status)
        self.could_be_ec2_job = False

        self.retry_sensible = False
        try:
            slot, ad = schedd.get_job_connect_info(layout, settings, opts.cluster,
                                                   opts.proc, opts.subproc, current_user_name())
        except schedd.ScheddError as exc:
            self.retry_sensible = exc.retry
            if not exc.retry:
                _err(exc.message + "\n")
            if exc.job_status == HELD:
                self.retry_sensible = False
                _err(f'Job is held: "{exc.hold_reason}".\n')
            return None
        self.debug(f"Got connect info for starter in slot {slot}")

        try:
            session_dir = session.make_session_dir(current_user_name())
        except session.SessionError as exc:
            _err(f"{exc}\n")
            return None
        try:
            return self._start_and_run(layout, settings, slot, ad, session_dir)
        finally:
            session.remove_session_dir(session_dir)

    def _start_and_run(self, layout: PoolLayout, settings: PoolSettings, slot: str,
                       ad: dict[str, Any], session_dir: Path) -> int | None:
        opts = self.opts
        time.sleep(settings.negotiation_delay)
        try:
            sshd = start_sshd(layout, settings, ad, slot, opts.keygen_options, opts.shells)
        except StarterError as exc:
            self.retry_sensible = exc.retry
            if not exc.retry or not opts.auto_retry or opts.debug:
                _err(f"{slot}: {exc.message}\n")
            return None
        except (JobUserError, OSError) as exc:
            _err(f"{slot}: {exc}\n")
            return None
        with sshd.sock:
            if settings.negotiation_fault == "no_socket":
                return 0
            server_key = (_unrelated_public_key() if settings.negotiation_fault == "wrong_host_key"
                          else sshd.public_server_key)
            try:
                key_file, known_hosts = session.write_client_files(
                    session_dir, sshd.private_client_key, server_key)
                fdpass_path = session_dir / "fdpass"
                fdpass = session.listen_fdpass(fdpass_path)
            except OSError as exc:
                _err(f"Failed to create {exc.filename}: {exc.strerror}\n")
                return None
            except session.SessionError as exc:
                _err(f"{exc}\n")
                return None
            with fdpass:
                macros = sshcmd.Macros(
                    proxy_command=sshcmd.proxy_command(opts.program, str(fdpass_path), opts.debug),
                    remote_user=sshd.remote_user, remote_host=slot.rpartition("@")[2],
                    key_file=str(key_file), known_hosts=str(known_hosts))
                try:
                    argv = sshcmd.build(opts.ssh, macros, opts.x_forwarding, opts.remote_args)
                except sshcmd.SshCommandError as exc:
                    _err(f"{exc}\n")
                    return None
                self.debug(f"Executing ssh command: {join_for_display(argv)}")
                return session.run_serving_fdpass(argv, fdpass, sshd.sock, self.debug)

    def _ssh_to_ec2(self, ad: dict[str, Any], status: int) -> int | None:
        """EC2 jobs: ssh straight to the instance with the managed key pair, ignoring -ssh."""
        vm_name = ad.get("EC2RemoteVirtualMachineName")
        key_pair = ad.get("EC2KeyPairFile")
        if not (isinstance(vm_name, str) and isinstance(key_pair, str)):
            if status != RUNNING:
                self.retry_sensible = True
            else:
                _err("ERROR: You can not SSH to an EC2 job whose keypair HTCondor "
                     "is not managing.\n")
                self.retry_sensible = False
            return None
        if status != RUNNING:
            self.retry_sensible = True
            return None
        try:
            return subprocess.call(["ssh", "-i", key_pair, vm_name, *self.opts.remote_args])
        except OSError as exc:
            _err(f"Error executing SSH: {exc.strerror}\n")
            return 1


def _hang() -> NoReturn:
    """negotiation_fault "hang": wait forever, with a child in our process group."""
    subprocess.Popen(["sleep", "infinity"])
    while True:
        time.sleep(3600)


def _unrelated_public_key() -> bytes:
    """negotiation_fault "wrong_host_key": a fresh public key that no sshd holds."""
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "key"
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)], check=True)
        return key.with_name("key.pub").read_bytes()


def _log_invocation(layout: PoolLayout | None, argv: list[str]) -> None:
    """Append this call to negotiations.log (one JSON object per line)."""
    if layout is None:
        return
    line = json.dumps({"time": time.time(), "pid": os.getpid(), "uid": os.getuid(),
                       "argv": argv}) + "\n"
    try:
        fd = os.open(layout.negotiations_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with os.fdopen(fd, "w") as log:
            log.write(line)
    except OSError as exc:
        _err(f"condor_ssh_to_job (sandbox): cannot record this call in "
             f"{layout.negotiations_log}: {exc.strerror}\n")


def _install_remove_on_interrupt(layout: PoolLayout | None, cluster: int, proc: int) -> None:
    """-remove-on-interrupt: on INT/HUP/TERM/QUIT, condor_rm the job and exit 1."""
    def handler(signum: int, _frame: FrameType | None) -> None:
        _err(f"Interrupted by signal {signum} ({signal.Signals(signum).name}), "
             f"removing job {cluster}.{proc}...\n")
        try:
            if layout is None:
                raise PoolError(f"{POOL_ENV} is not set")
            set_status(layout.root, cluster, proc, "removed")
        except PoolError as exc:
            _err(f"condor_rm: {exc}\n")
        os._exit(1)

    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; argv defaults to the process's arguments (without argv[0])."""
    # Like the C++ tool, die quietly on Ctrl-C instead of raising KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    program = os.environ.pop(ARGV0_ENV, None) or sys.argv[0]
    full_argv = [program, *(sys.argv[1:] if argv is None else argv)]
    pool_dir = os.environ.get(POOL_ENV)
    layout = PoolLayout(pool_dir) if pool_dir else None
    _log_invocation(layout, full_argv)
    try:
        opts = parse_args(full_argv)
    except HelpRequested:
        _err(USAGE.format(program=program))
        return 0
    except CommandLineError as exc:
        _err(str(exc))
        return 2

    if opts.proxy_fd != -1:
        if opts.debug:
            _debug_line(f"Setting up ssh proxy on file descriptor {opts.proxy_fd}")
        try:
            session.proxy(opts.proxy_fd)
        except session.SessionError as exc:
            _err(f"ssh proxy communication failure: {exc}\n")
            return 1
        return 0

    if opts.remove_on_interrupt:
        _install_remove_on_interrupt(layout, opts.cluster, opts.proc)
    return SshAttempts(opts, layout).run()


if __name__ == "__main__":
    sys.exit(main())
