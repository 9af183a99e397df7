"""The user's YAML config, validated on load so mistakes are named with their line."""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from relayd.common.errors import ConfigError
from relayd.condor.profiles import Profile, parse_profiles

JOB_LOOKUPS = ("htcondor", "sandbox", "none")
LABEL_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,62}", re.ASCII)  # as in host names


@dataclass(frozen=True)
class ScheddConfig:
    """Which schedd (and pool) a host-name label means, and how to negotiate there."""

    name: str | None = None  # None: the local schedd
    pool: str | None = None  # None: the local pool
    shells: str | None = None  # passed as -shells
    keygen_options: str | None = None  # passed as -keygen-options; None: the global value


@dataclass(frozen=True)
class Config:
    condor_ssh_to_job: str = "condor_ssh_to_job"
    job_lookup: str = "htcondor"
    domain: str = "condor"
    idle_timeout: float = 30.0
    ssh_multiplexing: bool = False  # opt-in: ssh's ControlMaster in front (a later -A/-X then follows the master)
    negotiation_timeout: float = 120.0
    sandbox_pool: str | None = None
    schedds: dict[str, ScheddConfig] = field(default_factory=dict)
    shells: str | None = None
    # The starter appends these to its ssh-keygen call; ed25519 keys make a cold connect
    # several times faster than the default RSA-3072 (see README, Performance).
    keygen_options: str | None = "-t ed25519"
    wait_for_running: float = 0.0
    running_grace: float = 20.0
    watch_interval: float = 15.0
    ec2_user: str | None = None
    ec2_port: int = 22  # the instances' sshd port; other values are for tests
    exit_when_idle: float = 600.0  # started on demand: exit after this long without clients or upstreams; 0: never
    rekey_bytes: int = 1 << 30  # bytes each way under one key before a rekey (sshtransport); lower for tests
    profiles: dict[str, Profile] = field(default_factory=dict)  # jobs on demand (relayd.condor.profiles)
    heartbeat_interval: float = 60.0  # how often the daemon refreshes its on-demand jobs' heartbeat

    def negotiator_path(self) -> str | None:
        """The negotiator executable as an absolute path, or None when not found."""
        found = shutil.which(os.path.expanduser(self.condor_ssh_to_job))
        return os.path.abspath(found) if found else None

    def schedd(self, label: str | None) -> ScheddConfig:
        """The schedd a host-name label names (None: the `default` entry, else local).

        Per-schedd shells and keygen_options fall back to the global ones.
        """
        key = label or "default"
        if key not in self.schedds:
            if label is not None:
                known = ", ".join(sorted(k for k in self.schedds if k != "default")) or "none configured"
                raise KeyError(f"unknown schedd label {label!r} (known labels: {known})")
            found = ScheddConfig()
        else:
            found = self.schedds[key]
        return ScheddConfig(
            name=found.name,
            pool=found.pool,
            shells=found.shells if found.shells is not None else self.shells,
            keygen_options=found.keygen_options if found.keygen_options is not None else self.keygen_options,
        )


_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "condor_ssh_to_job": (str,),
    "job_lookup": (str,),
    "domain": (str,),
    "idle_timeout": _NUMBER,
    "ssh_multiplexing": (bool,),
    "negotiation_timeout": _NUMBER,
    "sandbox_pool": (str,),
    "schedds": (dict,),
    "shells": (str,),
    "keygen_options": (str,),
    "wait_for_running": _NUMBER,
    "running_grace": _NUMBER,
    "watch_interval": _NUMBER,
    "ec2_user": (str,),
    "ec2_port": (int,),
    "exit_when_idle": _NUMBER,
    "rekey_bytes": (int,),
    "profiles": (dict,),
    "heartbeat_interval": _NUMBER,
}
_POSITIVE = ("idle_timeout", "negotiation_timeout", "watch_interval", "ec2_port", "rekey_bytes", "heartbeat_interval")
_NOT_NEGATIVE = ("wait_for_running", "running_grace", "exit_when_idle")
_SCHEDD_KEYS = {f.name for f in fields(ScheddConfig)}


def _fail(path: Path, node: yaml.Node | None, message: str) -> ConfigError:
    where = f"{path}:{node.start_mark.line + 1}" if node is not None else str(path)
    return ConfigError(f"{where}: {message}")


def _kind(expected: tuple[type, ...]) -> str:
    kinds = {str: "a string", dict: "a mapping", bool: "true or false"}
    return kinds.get(expected[0], "a number" if float in expected else "a whole number")


def _load(path: Path, node: yaml.Node) -> Any:
    """The Python value of one node; a tag such as !!python/object is an error, not a crash."""
    try:
        return yaml.safe_load(yaml.serialize(node))
    except (yaml.YAMLError, RecursionError) as exc:
        raise _invalid_yaml(path, exc) from None


def _value(path: Path, key: str, node: yaml.Node, expected: tuple[type, ...]) -> Any:
    value = _load(path, node)
    if value is None and key in ("keygen_options", "shells", "ec2_user", "sandbox_pool"):
        return None  # an explicit null turns an optional setting off
    if isinstance(value, bool) is not (bool in expected) or not isinstance(value, expected):
        raise _fail(path, node, f"{key} must be {_kind(expected)}, not {value!r}")
    return value


def _mapping(path: Path, node: yaml.Node, what: str) -> list[tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise _fail(path, node, f"{what} must be a mapping")
    return node.value


def _parse_schedds(path: Path, node: yaml.Node) -> dict[str, ScheddConfig]:
    schedds = {}
    for label_node, entry_node in _mapping(path, node, "schedds"):
        label = label_node.value
        if not isinstance(label_node, yaml.ScalarNode) or not LABEL_PATTERN.fullmatch(label):
            raise _fail(path, label_node, f"schedd label {label!r} must be lower-case letters, digits, - or _, "
                                          "starting with a letter (it becomes part of host names)")
        values = {}
        for key_node, value_node in _mapping(path, entry_node, f"schedds.{label}"):
            key = key_node.value
            if not isinstance(key_node, yaml.ScalarNode) or key not in _SCHEDD_KEYS:
                raise _fail(path, key_node, f"unknown key {key!r} in schedds.{label} "
                                            f"(known keys: {', '.join(sorted(_SCHEDD_KEYS))})")
            value = _load(path, value_node)
            if value is not None and not isinstance(value, str):
                raise _fail(path, value_node, f"schedds.{label}.{key} must be a string, not {value!r}")
            values[key] = value
        schedds[label] = ScheddConfig(**values)
    return schedds


def parse_values(text: str, path: Path) -> tuple[dict[str, Any], dict[str, yaml.Node]]:
    """The keys config text sets, each validated on its own, and the node of each (its line)."""
    try:
        root = yaml.compose(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _invalid_yaml(path, exc) from None
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise _fail(path, root, "the config must be a mapping of keys to values")
    values: dict[str, Any] = {}
    nodes: dict[str, yaml.Node] = {}
    for key_node, value_node in root.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _fail(path, key_node, "keys must be plain names")
        key = key_node.value
        if key not in _TYPES:
            raise _fail(path, key_node, f"unknown key {key!r} (known keys: {', '.join(sorted(_TYPES))})")
        nodes[key] = value_node
        if key == "schedds":
            values[key] = _parse_schedds(path, value_node)
        elif key == "profiles":
            values[key] = parse_profiles(path, value_node)
        else:
            values[key] = _value(path, key, value_node, _TYPES[key])
    return values, nodes


def parse_config(text: str, path: Path) -> Config:
    """Parse and validate config text; raises ConfigError naming the line at fault."""
    values, nodes = parse_values(text, path)
    return make_config(values, {key: (path, node) for key, node in nodes.items()}, path)


def make_config(values: dict[str, Any], origins: dict[str, tuple[Path, yaml.Node]], path: Path) -> Config:
    """A Config of `values` checked as a whole; a fault names the file and line its key came
    from (`origins`), or `path` for a key left at its default."""
    config = Config(**values)
    _check_values(config, path, origins)
    return config


def _check_values(config: Config, path: Path, origins: dict[str, tuple[Path, yaml.Node]]) -> None:
    def at(key: str) -> tuple[Path, yaml.Node | None]:
        return origins.get(key, (path, None))

    if config.job_lookup not in JOB_LOOKUPS:
        raise _fail(*at("job_lookup"), f"job_lookup must be one of {', '.join(JOB_LOOKUPS)}")
    if config.job_lookup == "sandbox" and not config.sandbox_pool:
        raise _fail(*at("job_lookup"), "job_lookup: sandbox needs sandbox_pool (the pool directory)")
    for key in _POSITIVE:
        if not 0 < getattr(config, key) < math.inf:  # false for NaN too, which stalls the reactor's timers
            raise _fail(*at(key), f"{key} must be a finite number greater than 0")
    for key in _NOT_NEGATIVE:
        if not 0 <= getattr(config, key) < math.inf:
            raise _fail(*at(key), f"{key} must be a finite number, 0 or more")
    domain = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*", re.ASCII)
    if len(config.domain) > 253 or not domain.fullmatch(config.domain):  # it goes into ssh_config as it is
        raise _fail(*at("domain"), "domain must be a lower-case DNS suffix such as 'condor'")


def _invalid_yaml(path: Path, exc: Exception) -> ConfigError:
    """For text PyYAML cannot take: bad syntax, an unknown tag, or nesting deeper than Python's stack."""
    mark = getattr(exc, "problem_mark", None)
    line = f":{mark.line + 1}" if mark else ""
    problem = "nested too deeply" if isinstance(exc, RecursionError) else getattr(exc, "problem", None) or exc
    return ConfigError(f"{path}{line}: not valid YAML ({str(problem).splitlines()[0]})")
