"""What `relayd doctor` reports: one finding per check, ok, warn or FAIL, with how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "warn" or "FAIL"
    topic: str
    text: str
    fix: str | None = None


def ok(topic: str, text: str) -> Finding:
    return Finding("ok", topic, text)


def warn(topic: str, text: str, fix: str) -> Finding:
    return Finding("warn", topic, text, fix)


def fail(topic: str, text: str, fix: str) -> Finding:
    return Finding("FAIL", topic, text, fix)
