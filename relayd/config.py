"""The user's YAML config, validated on load so mistakes are named with their line."""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

JOB_LOOKUPS = ("htcondor", "sandbox", "none")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")


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
}


def _fail(path: Path, node: yaml.Node | None, message: str) -> ConfigError:
    where = f"{path}:{node.start_mark.line + 1}" if node is not None else str(path)
    return ConfigError(f"{where}: {message}")


def parse_config(text: str, path: Path) -> Config:
    """Parse and validate config text; raises ConfigError naming the line at fault."""
    try:
        root = yaml.compose(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _invalid_yaml(path, exc) from None
    if root is None:
        return Config()
    if not isinstance(root, yaml.MappingNode):
        raise _fail(path, root, "the config must be a mapping of keys to values")
    known = {f.name for f in fields(Config)}
    values: dict[str, object] = {}
    for key_node, value_node in root.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _fail(path, key_node, "keys must be plain names")
        key = key_node.value
        if key not in known:
            raise _fail(path, key_node, f"unknown key {key!r} (known keys: {', '.join(sorted(known))})")
        try:
            value = yaml.safe_load(yaml.serialize(value_node))
        except (yaml.YAMLError, RecursionError) as exc:  # e.g. a tag such as !!python/object
            raise _invalid_yaml(path, exc) from None
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
        if not 0 < getattr(config, key) < math.inf:  # false for NaN too, which stalls the reactor's timers
            raise _fail(path, nodes.get(key), f"{key} must be a finite number greater than 0")
    if len(config.domain) > 253 or not _DOMAIN.fullmatch(config.domain):  # it goes into ssh_config as it is
        raise _fail(path, nodes.get("domain"), "domain must be a DNS suffix such as 'condor'")


def _invalid_yaml(path: Path, exc: Exception) -> ConfigError:
    """For text PyYAML cannot take: bad syntax, an unknown tag, or nesting deeper than Python's stack."""
    mark = getattr(exc, "problem_mark", None)
    line = f":{mark.line + 1}" if mark else ""
    problem = "nested too deeply" if isinstance(exc, RecursionError) else getattr(exc, "problem", None) or exc
    return ConfigError(f"{path}{line}: not valid YAML ({str(problem).splitlines()[0]})")


def load_config(path: Path) -> Config:
    """Load the config file; a missing file means all defaults."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_config(text, path)
