"""The user's YAML config, validated on load so mistakes are named with their line."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

JOB_LOOKUPS = ("htcondor", "sandbox", "none")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, line and key."""


@dataclass(frozen=True)
class Config:
    condor_ssh_to_job: str = "condor_ssh_to_job"
    job_lookup: str = "htcondor"
    domain: str = "condor"
    idle_timeout: float = 30.0
    negotiation_timeout: float = 120.0
    sandbox_pool: str | None = None
    exit_when_idle: float = 600.0  # started on demand: exit after this long without clients or upstreams; 0: never

    def negotiator_path(self) -> str | None:
        """The negotiator executable as an absolute path, or None when not found."""
        found = shutil.which(os.path.expanduser(self.condor_ssh_to_job))
        return os.path.abspath(found) if found else None


_TYPES: dict[str, tuple[type, ...]] = {
    "condor_ssh_to_job": (str,),
    "job_lookup": (str,),
    "domain": (str,),
    "idle_timeout": (int, float),
    "negotiation_timeout": (int, float),
    "sandbox_pool": (str,),
    "exit_when_idle": (int, float),
}


def _fail(path: Path, node: yaml.Node | None, message: str) -> ConfigError:
    where = f"{path}:{node.start_mark.line + 1}" if node is not None else str(path)
    return ConfigError(f"{where}: {message}")


def parse_config(text: str, path: Path) -> Config:
    """Parse and validate config text; raises ConfigError naming the line at fault."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if root is None:
        return Config()
    if not isinstance(root, yaml.MappingNode):
        raise _fail(path, root, "the config must be a mapping of keys to values")
    known = {f.name for f in fields(Config)}
    values: dict[str, object] = {}
    for key_node, value_node in root.value:
        key = key_node.value
        if key not in known:
            raise _fail(path, key_node, f"unknown key {key!r} (known keys: {', '.join(sorted(known))})")
        value = yaml.safe_load(yaml.serialize(value_node))
        expected = _TYPES[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            kind = "number" if float in expected else "string"
            raise _fail(path, value_node, f"{key} must be a {kind}, not {value!r}")
        values[key] = value
    config = Config(**values)  # type: ignore[arg-type]
    _check_values(config, path, root)
    return config


def _check_values(config: Config, path: Path, root: yaml.MappingNode) -> None:
    nodes = {k.value: v for k, v in root.value}
    if config.job_lookup not in JOB_LOOKUPS:
        raise _fail(path, nodes.get("job_lookup"), f"job_lookup must be one of {', '.join(JOB_LOOKUPS)}")
    if config.job_lookup == "sandbox" and not config.sandbox_pool:
        raise _fail(path, nodes.get("job_lookup"), "job_lookup: sandbox needs sandbox_pool (the pool directory)")
    for key in ("idle_timeout", "negotiation_timeout"):
        if getattr(config, key) <= 0:
            raise _fail(path, nodes.get(key), f"{key} must be greater than 0")
    if config.exit_when_idle < 0:
        raise _fail(path, nodes.get("exit_when_idle"), "exit_when_idle must be 0 (never) or more seconds")
    if not config.domain or config.domain.startswith(".") or " " in config.domain:
        raise _fail(path, nodes.get("domain"), "domain must be a DNS suffix such as 'condor'")


def load_config(path: Path) -> Config:
    """Load the config file; a missing file means all defaults."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_config(text, path)
