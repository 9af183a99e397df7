"""Profiles for jobs on demand: what `ssh gpu.condor` submits, and the marks that find it again.

A profile is a submit description (request_cpus, request_memory, request_gpus,
requirements, container_image, ...), how long the job lingers after its last client, and
its maximum lifetime (allowed_job_duration). The relay adds what makes the job its own:
JobBatchName, `MY.CondorRelayProfile`, a JobSubmitMethod of 100 or more (free for tools),
and a heartbeat attribute with a periodic_remove, so that the schedd removes the job by
itself once the daemon stops refreshing it (see ../shared docs: Schedd.edit with SetDirty).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relayd.common.errors import ConfigError

PROFILE_ATTR = "CondorRelayProfile"  # the profile's name, in the job ad
HEARTBEAT_ATTR = "CondorRelayHeartbeat"  # time() of the daemon's last heartbeat
IDLE_SINCE_ATTR = "CondorRelayIdleSince"  # when its last client left (0: in use), for `relayd jobs`
LINGER_ATTR = "CondorRelayLinger"  # the profile's linger, so `relayd jobs` can say the time left
SUBMIT_METHOD = 100  # JobSubmitMethod values of 100 and more are free for tools
BATCH_PREFIX = "condor-relay-"
DEFAULT_LINGER = 600.0
HEARTBEAT_MISSES = 5  # periodic_remove fires after this many heartbeat intervals without one

PROFILE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}", re.ASCII)  # a host-name label, as schedd labels
_SUBMIT_KEY = re.compile(r"[A-Za-z_+][A-Za-z0-9_.+]{0,99}", re.ASCII)
# Keys the relay sets itself: a profile may not change how its jobs are found or removed.
_RESERVED = {"batch_name", "jobbatchname", "queue", "periodic_remove", "allowed_job_duration"}
PROFILE_KEYS = ("submit", "linger", "max_lifetime")
_DEFAULT_SUBMIT = {"universe": "vanilla", "executable": "/bin/sleep", "arguments": "infinity",
                   "transfer_executable": "false", "should_transfer_files": "IF_NEEDED"}


@dataclass(frozen=True)
class Profile:
    name: str
    submit: dict[str, str] = field(default_factory=dict)
    linger: float = DEFAULT_LINGER
    max_lifetime: float | None = None


def submit_description(profile: Profile, heartbeat_interval: float, now: float) -> dict[str, str]:
    """The submit description of one job of `profile`: its keys over a job that sleeps, plus the marks.

    The job's process only sleeps: users reach it through condor_ssh_to_job, which needs a
    running job, and not an InteractiveJob, whose job completes when its last sshd exits."""
    description = {**_DEFAULT_SUBMIT, **profile.submit}
    description.update({
        "batch_name": f"{BATCH_PREFIX}{profile.name}",
        f"MY.{PROFILE_ATTR}": f'"{profile.name}"',
        f"MY.{HEARTBEAT_ATTR}": str(int(now)),
        f"MY.{IDLE_SINCE_ATTR}": "0",
        f"MY.{LINGER_ATTR}": str(int(profile.linger)),
        "periodic_remove": f"(time() - {HEARTBEAT_ATTR}) > {heartbeat_timeout(heartbeat_interval)}",
    })
    if profile.max_lifetime is not None:
        description["allowed_job_duration"] = str(int(profile.max_lifetime))
    return description


def heartbeat_timeout(interval: float) -> int:
    """Seconds without a heartbeat after which the schedd removes the job."""
    return max(1, math.ceil(interval * HEARTBEAT_MISSES))


def marks_constraint(owner: str, profile: str | None = None) -> str:
    """The constraint for the relay's jobs of one owner (and profile)."""
    text = f'{PROFILE_ATTR} =!= undefined && JobSubmitMethod >= {SUBMIT_METHOD} && Owner == "{owner}"'
    return text if profile is None else f'{text} && {PROFILE_ATTR} == "{profile}"'


# -- the `profiles:` section of a config file -------------------------------------------------


def _fail(path: Path, node: yaml.Node, message: str) -> ConfigError:
    return ConfigError(f"{path}:{node.start_mark.line + 1}: {message}")


def parse_profiles(path: Path, node: yaml.Node) -> dict[str, Profile]:
    """`profiles:` as Profiles; raises ConfigError naming the file and line at fault."""
    if not isinstance(node, yaml.MappingNode):
        raise _fail(path, node, "profiles must be a mapping of profile names to profiles")
    profiles = {}
    for name_node, entry_node in node.value:
        name = name_node.value
        if (not isinstance(name_node, yaml.ScalarNode) or not PROFILE_NAME.fullmatch(name)
                or name.startswith("job-")):
            raise _fail(path, name_node, f"profile name {name!r} must be lower-case letters, digits, - or _, "
                                         "starting with a letter and not with job- (it becomes a host name)")
        if not isinstance(entry_node, yaml.MappingNode):
            raise _fail(path, entry_node, f"profiles.{name} must be a mapping (submit, linger, max_lifetime)")
        values: dict[str, Any] = {}
        for key_node, value_node in entry_node.value:
            key = key_node.value
            if not isinstance(key_node, yaml.ScalarNode) or key not in PROFILE_KEYS:
                raise _fail(path, key_node, f"unknown key {key!r} in profiles.{name} "
                                            f"(known keys: {', '.join(PROFILE_KEYS)})")
            if key == "submit":
                values[key] = _parse_submit(path, value_node, name)
            else:
                values[key] = _seconds(path, value_node, f"profiles.{name}.{key}")
        profiles[name] = Profile(name, **values)
    return profiles


def _seconds(path: Path, node: yaml.Node, what: str) -> float:
    value = yaml.safe_load(yaml.serialize(node)) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise _fail(path, node, f"{what} must be a number of seconds greater than 0")
    return float(value)


def _parse_submit(path: Path, node: yaml.Node, name: str) -> dict[str, str]:
    if not isinstance(node, yaml.MappingNode):
        raise _fail(path, node, f"profiles.{name}.submit must be a mapping of submit-description keys to values")
    submit = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if not isinstance(key_node, yaml.ScalarNode) or not _SUBMIT_KEY.fullmatch(str(key)):
            raise _fail(path, key_node, f"{key!r} in profiles.{name}.submit is not a submit-description key")
        if key.lower() in _RESERVED or key.lower().startswith("my.condorrelay"):
            raise _fail(path, key_node, f"profiles.{name}.submit may not set {key} (the relay sets it; "
                                        "use linger and max_lifetime)")
        if not isinstance(value_node, yaml.ScalarNode):
            raise _fail(path, value_node, f"profiles.{name}.submit.{key} must be a single value")
        value = yaml.safe_load(yaml.serialize(value_node))
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if value is None or "\n" in text:
            raise _fail(path, value_node, f"profiles.{name}.submit.{key} must be a one-line value")
        submit[key] = text
    return submit
