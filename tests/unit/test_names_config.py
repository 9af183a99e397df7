"""Host names, the config file, the socket protocol and the ssh_config block."""

from pathlib import Path

import pytest

from clientconf import sshconfig
from relayd.common.errors import BadHostName, BadRequest, ConfigError
from relayd.common.protocol import Capture, Connect, format_connect, parse_request
from relayd.condor.names import JobName, parse_host
from relayd.config import Config, parse_config


@pytest.mark.parametrize(
    "host, job",
    [
        ("job-32.condor", JobName(32, 0)),
        ("job-32.0.condor", JobName(32, 0)),
        ("JOB-32.1.condor.", JobName(32, 1)),
        ("job-32.0.3.condor", JobName(32, 0, 3)),
        ("job-32.0.ap2.condor", JobName(32, 0, label="ap2")),
        ("job-32.0.3.ap2.condor", JobName(32, 0, 3, "ap2")),
    ],
)
def test_job_names(host, job):
    assert parse_host(host, "condor") == job


@pytest.mark.parametrize("host", ["job-.condor", "job-1.0", "job-01.0.condor", "job-1.0.condor.evil", "host.condor",
                                  "job-1.0.1.2.condor", "job-99999999999.condor", "job-1 .condor"])
def test_bad_names_name_the_expected_form(host):
    with pytest.raises(BadHostName, match=r"expected job-<cluster>\[\.<proc>\[\.<node>\]\]"):
        parse_host(host, "condor")


def test_domain_with_dots():
    assert parse_host("job-5.0.pool.example", "pool.example") == JobName(5, 0)


def test_config_defaults_and_errors_with_lines():
    assert parse_config("", Path("c.yaml")) == Config()
    assert parse_config("idle_timeout: 5\njob_lookup: none\n", Path("c.yaml")).idle_timeout == 5
    with pytest.raises(ConfigError, match=r"c.yaml:2: unknown key 'idel_timeout'"):
        parse_config("domain: condor\nidel_timeout: 5\n", Path("c.yaml"))
    with pytest.raises(ConfigError, match=r"c.yaml:1: idle_timeout must be a number"):
        parse_config("idle_timeout: soon\n", Path("c.yaml"))
    with pytest.raises(ConfigError, match=r"job_lookup must be one of"):
        parse_config("job_lookup: ldap\n", Path("c.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("a: [\n", Path("c.yaml"))


def test_request_lines():
    assert parse_request(b"CONNECT job-1.0.condor 22") == Connect("job-1.0.condor", 22)
    assert parse_request(b"CAPTURE " + b"ab" * 16) == Capture("ab" * 16)
    assert format_connect("job-1.0.condor", 22) == b"CONNECT job-1.0.condor 22\n"
    for bad in [b"", b"CONNECT", b"CONNECT a 0", b"CONNECT a 70000", b"CONNECT a b c", b"\xff", b"CAPTURE xyz",
                b"X" * 2000]:
        with pytest.raises(BadRequest):
            parse_request(bad)
    with pytest.raises(BadRequest):
        format_connect("two words", 22)


def test_ssh_config_block_is_replaced_in_place_at_the_top():
    settings = sshconfig.BlockSettings("condor", "/opt/cr bin/condor-relay-connect",
                                       "/run/user/1/condor-relay/relay.sock", "/s/kh")
    block = sshconfig.render(settings)
    proxy = ("ProxyCommand '/opt/cr bin/condor-relay-connect' --socket /run/user/1/condor-relay/relay.sock"
             " --user %r %h %p")
    assert proxy in block
    assert "ProxyUseFdpass yes" in block and "Host *.condor" in block
    assert "    Ciphers aes128-gcm@openssh.com," in block  # the cipher relayd runs fastest
    user = "Host *\n    User me\n"
    installed = sshconfig.with_block(user, block)
    assert installed.startswith(sshconfig.BEGIN) and installed.endswith(user)
    assert sshconfig.with_block(installed, block) == installed
    assert sshconfig.without_block(installed) == user


def test_ssh_config_block_shares_through_the_relay_and_multiplexes_only_when_asked():
    def block(socket: str, **settings: object) -> str:
        """The relayed entry (the direct path's comes before it)."""
        rendered = sshconfig.render(sshconfig.BlockSettings("condor", "/r", socket, "/kh", **settings))
        return rendered[rendered.index("Host *.condor"):]

    default = block("/run/user/1/condor-relay/relay.sock")
    assert "\n    ControlMaster no\n    ControlPath none\n" in default and "ControlPersist" not in default
    shared = block("/run/user/1/condor-relay/relay.sock", multiplexing=True, control_persist=45)
    assert "    ControlMaster auto\n    ControlPath /run/user/1/condor-relay/mux-%C\n    ControlPersist 45\n" in shared
    deep = "/" + "d" * 60 + "/condor-relay/relay.sock"  # with ssh's 40-character hash and temp suffix: too long
    assert "too long a path for ssh's control sockets\n    ControlMaster no\n" in block(deep, multiplexing=True)
    assert "would change in a ControlPath\n    ControlMaster no\n" in block("/home/a b/relay.sock", multiplexing=True)
    assert "would change in a ControlPath" in block("/home/100%/relay.sock", multiplexing=True)


def test_ssh_config_block_has_the_direct_path_first_where_the_runtime_dir_allows():
    def block(socket: str) -> str:
        return sshconfig.render(sshconfig.BlockSettings("condor", "/r", socket, "/kh"))

    direct = block("/run/user/1/condor-relay/relay.sock")
    assert direct.index("Host job-*.direct.condor\n") < direct.index("Host *.condor\n")
    assert "    IdentityAgent /run/user/1/condor-relay/agent.sock\n" in direct
    assert "    KnownHostsCommand /r --socket /run/user/1/condor-relay/relay.sock --known-hosts %H\n" in direct
    assert "    ControlPath /run/user/1/condor-relay/direct-%C\n" in direct
    assert "too long a path" in block("/" + "d" * 60 + "/condor-relay/relay.sock")
    assert "direct" not in block("/home/a b/relay.sock") and "direct" not in block("")


def test_ssh_multiplexing_is_true_or_false(tmp_path):
    assert parse_config("ssh_multiplexing: false\n", tmp_path / "c.yaml").ssh_multiplexing is False
    with pytest.raises(ConfigError, match=r"c.yaml:1: ssh_multiplexing must be true or false, not 1"):
        parse_config("ssh_multiplexing: 1\n", tmp_path / "c.yaml")
