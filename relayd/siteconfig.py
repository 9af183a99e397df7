"""The administrator's site configuration under each user's own, merged key by key.

An access point's administrator sets the site's defaults once (schedd labels, the
negotiator, the domain, timeouts) in /etc/condor-relay/config.yaml, or the file named by
CONDOR_RELAY_SITE_CONFIG (`none`: no site file). Every key a user's file sets replaces the
site's; `schedds` and `profiles` merge entry by entry, so a user may add a schedd without copying the
site's. Each effective value keeps where it came from, for `relayd doctor`.

A broken site file stops relayd as a broken user file does, with the file and line and a
word that it is the administrator's to fix (the helper and `relayd doctor` show it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from relayd.config import Config, ConfigError, make_config, parse_values

SITE_CONFIG = Path("/etc/condor-relay/config.yaml")
SITE_CONFIG_ENV = "CONDOR_RELAY_SITE_CONFIG"
SITE_FAULT = "in the site configuration: tell the administrator of this host"
DEFAULT = "default"


def site_config_path() -> Path | None:
    """The site file: $CONDOR_RELAY_SITE_CONFIG (`none` or empty: no site file), else /etc's."""
    given = os.environ.get(SITE_CONFIG_ENV)
    if given is None:
        return SITE_CONFIG
    return None if given in ("", "none") else Path(given)


@dataclass(frozen=True)
class Layer:
    """The keys one file sets, with the YAML node of each (for its line)."""

    path: Path
    values: dict[str, Any]
    nodes: dict[str, yaml.Node]

    def where(self, key: str) -> str:
        return f"{self.path}:{self.nodes[key].start_mark.line + 1}"


@dataclass(frozen=True)
class Merged:
    """The effective config, and for each key (schedds: each `schedds.<label>`) where its value
    comes from: `<file>:<line>` or `default`."""

    config: Config
    origins: dict[str, str]


def read_layer(path: Path) -> Layer:
    """The keys set in `path` (none when it does not exist); raises ConfigError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Layer(path, {}, {})
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return Layer(path, *parse_values(text, path))


def merge(site: Layer | None, user: Layer) -> Merged:
    """`user` over `site`; raises ConfigError naming the file and line of a faulty key."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    nodes: dict[str, tuple[Path, yaml.Node]] = {}
    for layer in (site, user):
        if layer is None:
            continue
        for key, value in layer.values.items():
            nodes[key] = (layer.path, layer.nodes[key])
            if key in ("schedds", "profiles"):  # merged entry by entry
                values[key] = {**values.get(key, {}), **value}
                origins.update({f"{key}.{label}": layer.where(key) for label in value})
            else:
                values[key] = value
                origins[key] = layer.where(key)
    for name in (f.name for f in fields(Config)):
        if name not in ("schedds", "profiles"):
            origins.setdefault(name, DEFAULT)
    try:
        config = make_config(values, nodes, user.path)
    except ConfigError as exc:
        faulty_site = site is not None and str(exc).startswith(f"{site.path}:")
        raise ConfigError(f"{exc} ({SITE_FAULT})" if faulty_site else str(exc)) from None
    return Merged(config, origins)


def load_merged(user_path: Path | None) -> Merged:
    """The effective config for a user whose own file is `user_path` (None: the site's
    alone, which the system-wide ssh_config drop-in is rendered from); raises ConfigError."""
    site_path = site_config_path()
    site = None
    if site_path is not None:
        try:
            site = read_layer(site_path)
        except ConfigError as exc:
            raise ConfigError(f"{exc} ({SITE_FAULT})") from None
    user = read_layer(user_path) if user_path is not None else Layer(site_path or SITE_CONFIG, {}, {})
    return merge(site, user)


def load_config(path: Path) -> Config:
    """The user's config file over the site's, key by key; a missing file means defaults."""
    return load_merged(path).config
