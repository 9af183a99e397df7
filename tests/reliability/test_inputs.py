"""Property-based tests of everything the daemon parses: host names, the helper's request
line (also sent raw to a live daemon), and the YAML config. Every input must give a
result or a clean one-line error -- never another exception, and never a hang (the
deadline fails an example that takes seconds)."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relayd.common.errors import BadHostName, BadRequest, ConfigError
from relayd.common.protocol import (
    MAX_REQUEST_LINE,
    Capture,
    Connect,
    HostKey,
    Status,
    Stop,
    format_connect,
    parse_request,
    reply,
)
from relayd.condor.names import JobName, parse_host
from relayd.config import JOB_LOOKUPS, Config, parse_config

settings.register_profile("relayd", deadline=5000)
settings.load_profile("relayd")

NUMBERS = st.integers(0, 9_999_999_999)
LABELS = st.from_regex(r"[a-z][a-z0-9_-]{0,62}", fullmatch=True)
DOMAINS = st.lists(st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=3).map(
    ".".join)
JOBS = st.builds(JobName, cluster=NUMBERS, proc=NUMBERS, node=st.none() | NUMBERS, label=st.none() | LABELS)
NAME_LIKE = st.text(alphabet="job-0123456789.abcdenrJOB_\u0130\u212a\n ", max_size=300)


def one_line(message: str) -> bool:
    return "\n" not in message and "\r" not in message


@given(JOBS, DOMAINS)
def test_every_job_name_round_trips_in_any_case(job, domain):
    host = job.host(domain)
    assert parse_host(host, domain) == job
    assert parse_host(host.upper() + ".", domain) == job


@given(st.one_of(st.text(max_size=400), NAME_LIKE), DOMAINS)
def test_any_host_name_parses_or_is_refused_in_one_line(host, domain):
    try:
        job = parse_host(host, domain)
    except BadHostName as exc:
        assert one_line(str(exc)) and "expected job-<cluster>" in str(exc)
    else:
        assert parse_host(job.host(domain), domain) == job


REQUEST_WORDS = st.sampled_from([b"CONNECT", b"CAPTURE", b"job-1.0.condor", b"22", b"0", b"65536", b"-1", b"a" * 32,
                                 b"", b"\r", b"\t", b"\x00", b"\xff", b"99999999999999999999"])
REQUEST_LINES = st.one_of(st.binary(max_size=2 * MAX_REQUEST_LINE),
                          st.lists(REQUEST_WORDS | st.binary(max_size=12), max_size=5).map(b" ".join))


@given(REQUEST_LINES)
def test_any_request_line_parses_or_is_refused_in_one_line(line):
    try:
        request = parse_request(line)
    except BadRequest as exc:
        assert one_line(str(exc))
    else:
        assert isinstance(request, (Connect, Capture, HostKey, Status, Stop))
        if isinstance(request, Connect):
            assert 0 < request.port < 65536 and request.host.isprintable() and " " not in request.host


@given(st.text(min_size=1, max_size=2 * MAX_REQUEST_LINE), st.integers(1, 65535))
def test_the_helpers_request_reaches_the_daemon_as_sent(host, port):
    try:
        line = format_connect(host, port)
    except BadRequest:
        assert not host.isprintable() or " " in host
        return
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    try:
        request = parse_request(line[:-1])
    except BadRequest as exc:
        assert len(line) > MAX_REQUEST_LINE and "too long" in str(exc)
        return
    assert request.port == port and (request.host == host or not host.isascii())


@given(st.sampled_from(["PROGRESS", "ERROR", "OK"]), st.text(max_size=200))
def test_every_reply_is_one_line(kind, text):
    line = reply(kind, text)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.startswith(kind.encode())


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(REQUEST_LINES, st.booleans())
def test_the_live_daemon_answers_any_request_with_at_most_one_error(relay, request, newline):
    # Well-formed requests have tests of their own (and a STOP ends the daemon, as asked).
    assume(not _well_formed(request))
    lines = relay.exchange(request + b"\n" * newline)
    assert lines == [] or (len(lines) == 1 and lines[0].startswith("ERROR ")), lines
    assert relay.accepting()


def _well_formed(request: bytes) -> bool:
    """Whether the daemon would take the request's first line as a request."""
    try:
        parse_request(request.split(b"\n", 1)[0].rstrip(b"\r"))
    except BadRequest:
        return False
    return True


CONFIG_KEYS = st.sampled_from([f.name for f in fields(Config)] + ["idel_timeout", "", "Domain", "<<"])
CONFIG_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | st.sampled_from(
        ["sandbox", "none", "htcondor", "condor", "pool.example", "/tmp/pool"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
YAML_FRAGMENTS = st.sampled_from([
    "domain: x\n", "? [a, b]\n: 1\n", "{[1]: 2}\n", "idle_timeout: .nan\n", "idle_timeout: .inf\n",
    "negotiation_timeout: -.inf\n", "domain: !!python/object/apply:os.system [true]\n", "domain: !custom x\n",
    "domain: &a [*a]\n", "*undefined\n", "---\n", "%YAML 1.1\n", "domain: \"con\\ndor\"\n", "- a\n", "\t", "\x00",
    "domain: " + "[" * 1000, "job_lookup: sandbox\n", "sandbox_pool: /p\n", "idle_timeout: 1\n", ": :\n",
    "'\n", "\ufeff", "<<: {domain: y}\n", "domain: 2024-01-01\n", "idle_timeout: !!float 5\n",
])


def check_config(text: str) -> None:
    try:
        config = parse_config(text, Path("c.yaml"))
    except ConfigError as exc:
        assert str(exc).startswith("c.yaml") and one_line(str(exc)), str(exc)
    else:
        assert config.job_lookup in JOB_LOOKUPS
        assert all(0 < t < math.inf for t in (config.idle_timeout, config.negotiation_timeout))
        assert parse_host(f"job-1.0.{config.domain}", config.domain) == JobName(1, 0)  # usable as a suffix


@given(st.dictionaries(CONFIG_KEYS | st.text(max_size=10), CONFIG_VALUES, max_size=6))
def test_any_yaml_mapping_gives_a_config_or_an_error_naming_the_file(mapping):
    check_config(yaml.safe_dump(mapping))


@given(st.one_of(st.text(max_size=300), st.lists(YAML_FRAGMENTS, max_size=6).map("".join)))
def test_any_config_text_gives_a_config_or_an_error_naming_the_file(text):
    check_config(text)
