"""pytest's fixtures for the suite (the library they use is tests/harness.py), and the
final check that the suite leaves no process of its own behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import RELAYD, SUITE_MARK, Home, RelayProcess, running_relay, sandbox_pool, suite_processes, wait_for


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home.make(tmp_path)


@pytest.fixture
def pool():
    with sandbox_pool() as pool_dir:
        yield pool_dir


@pytest.fixture
def relay(home: Home, pool: Path, request):
    with running_relay(home, pool) as relay:
        yield relay
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        sys.stderr.write(f"--- relayd log ---\n{relay.log()}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def unstarted_relay(home: Home, pool: Path):
    """Configured, with its ssh config, but no daemon: the first ssh starts one (relayd connect)."""
    relay = RelayProcess(home, pool)
    relay.configure()
    relay.write_ssh_config()
    yield relay
    subprocess.run([RELAYD, "stop"], env=home.env, capture_output=True, timeout=30)


def pytest_configure(config: pytest.Config) -> None:
    """Mark every process the suite starts (their environment inherits it), so the final
    check can tell them from anyone else's."""
    os.environ[SUITE_MARK] = str(os.getpid())


LINGER_SECONDS = 10.0  # for processes of the last tests to finish on their own


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process the suite started outlives it (and end them)."""
    wait_for(lambda: not suite_processes(), timeout=LINGER_SECONDS)
    survivors = suite_processes()
    if not survivors:
        return
    for pid in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    listing = "\n".join(f"  {pid}: {args}" for pid, args in survivors.items())
    sys.stderr.write(f"\nthe suite left {len(survivors)} process(es) behind (now killed):\n{listing}\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
