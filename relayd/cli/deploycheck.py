"""`relayd doctor`'s checks of a system-wide install: where each config value comes from
(the site's file, the user's, or the default), and which condor-relay block ssh uses (the
user's own or the administrator's drop-in)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import fields
from pathlib import Path

from relayd.cli.findings import Finding, fail, ok, warn
from relayd.common.paths import Paths
from relayd.config import Config, ConfigError
from relayd.siteconfig import DEFAULT, SITE_FAULT, load_merged, site_config_path

USER_BLOCK = "user"
SYSTEM_BLOCK = "system"


def check_config_sources(paths: Paths) -> tuple[Config, list[Finding]]:
    """The effective config (defaults when broken) and one finding per key saying where its
    value comes from."""
    try:
        merged = load_merged(paths.config_file)
    except ConfigError as exc:
        fix = ("the administrator corrects it; meanwhile CONDOR_RELAY_SITE_CONFIG=none skips it"
               if SITE_FAULT in str(exc) else "correct the file; relayd will not start until then")
        return Config(), [fail("config", str(exc), fix)]
    site = site_config_path()
    files = [f"{p} ({'valid' if p.exists() else 'absent'})" for p in (paths.config_file, site) if p is not None]
    findings = [ok("config", " over ".join(files))]
    for name in sorted(merged.origins):
        origin = _origin(merged.origins[name], site)
        findings.append(ok("config", f"{name} = {_value(merged.config, name)} ({origin})"))
    return merged.config, findings


def _origin(origin: str, site: Path | None) -> str:
    if origin == DEFAULT:
        return DEFAULT
    return f"{'site' if site is not None and origin.startswith(f'{site}:') else 'yours'}: {origin}"


def _value(config: Config, name: str) -> str:
    if name.startswith("schedds."):
        found = config.schedds[name.partition(".")[2]]
        return ", ".join(f"{f.name}={getattr(found, f.name)}" for f in fields(found) if getattr(found, f.name))
    if name.startswith("profiles."):
        profile = config.profiles[name.partition(".")[2]]
        return f"submit={profile.submit}, linger={profile.linger:g}, max_lifetime={profile.max_lifetime}"
    value = getattr(config, name)
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _proxy_command(block: str) -> str:
    return next(line.strip()[len("ProxyCommand "):] for line in block.splitlines()
                if line.strip().startswith("ProxyCommand "))


def ssh_reads_by_default() -> Path:
    """The user's file ssh reads without -F: under the passwd home, whatever $HOME says."""
    import pwd

    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "config"


def block_in_use(ssh_config: Path | None, user_block: str, system_block: str, domain: str) -> str | None:
    """USER_BLOCK or SYSTEM_BLOCK, whichever ssh takes for job names (reading `ssh_config`
    alone, or the user's and system files as ssh does by default), else None."""
    argv = ["ssh", *(["-F", str(ssh_config)] if ssh_config else []), "-G", f"job-1.0.{domain}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    proxy = next((line[len("proxycommand "):] for line in done.stdout.splitlines()
                  if line.startswith("proxycommand ")), None)
    return {_proxy_command(user_block): USER_BLOCK, _proxy_command(system_block): SYSTEM_BLOCK}.get(proxy or "")


def check_system_block(paths: Paths, in_use: str | None) -> list[Finding]:
    """What to say about the block in use when it is the system one, or when the user's own
    wins over an installed system one."""
    from clientconf import dropin

    if in_use == SYSTEM_BLOCK:
        findings = [ok("ssh-config", f"ssh uses the system-wide block ({dropin.DROPIN}, installed by the "
                                      "administrator); 'relayd ssh-config install' would put yours before it")]
        pinned = Path(os.path.expanduser(dropin.KNOWN_HOSTS))
        if pinned != paths.known_hosts:
            findings.append(warn("ssh-config", f"the system-wide block reads the relay's pin from {pinned}, "
                                                f"but your state dir keeps it in {paths.known_hosts}",
                                  "relayd ssh-config install (your own block names your files)"))
        return findings
    if in_use == USER_BLOCK:
        before = f" (it comes before the system-wide {dropin.DROPIN})" if dropin.DROPIN.exists() else ""
        return [ok("ssh-config", f"ssh uses your own block{before}")]
    return []


def block_file(ssh_config: Path, in_use: str | None, default: Path) -> Path:
    """The file to check the user's block in: `ssh_config`, or the user's own file when ssh
    takes the user's block through a file that includes it (as the system one does)."""
    from clientconf.sshconfig import BEGIN

    try:
        holds = BEGIN in ssh_config.read_text()
    except OSError:
        holds = False
    return default if in_use == USER_BLOCK and not holds else ssh_config
