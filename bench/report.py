"""Turning a bench run into a Markdown table, a JSON file and a small PNG of the targets."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bench.results import TARGETS, Scenario, Series, Target

_SCORE_RANGE = (0.1, 100.0)


def load(path: Path) -> dict[str, Scenario]:
    data = json.loads(path.read_text())
    return {s["key"]: Scenario(s["key"], s["title"], s["unit"], [Series(**x) for x in s["series"]])
            for s in data["scenarios"]}


def write_json(path: Path, scenarios: dict[str, Scenario], meta: dict[str, object]) -> None:
    path.write_text(json.dumps({"meta": meta, "scenarios": [asdict(s) for s in scenarios.values()]}, indent=1) + "\n")


def _number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def _before_median(before: dict[str, Scenario] | None, scenario: Scenario, series: Series) -> str:
    if before is None or scenario.key not in before:
        return ""
    match = [s for s in before[scenario.key].series if s.name == series.name]
    return _number(match[0].median, scenario.unit) if match else "-"


def _target_value(target: Target, scenarios: dict[str, Scenario] | None) -> str:
    if not target.measured(scenarios):
        return "-" if scenarios is not None else ""
    value = target.value(scenarios)
    if target.reference is None:
        return _number(value, scenarios[target.scenario].unit)
    return f"{value:.2f}x"


def markdown(scenarios: dict[str, Scenario], before: dict[str, Scenario] | None = None) -> str:
    """Medians per scenario and contender, then the targets; `before` adds a column."""
    head = "| scenario | contender | median | runs |" + (" before |" if before else "")
    rule = "| --- | --- | ---: | ---: |" + (" ---: |" if before else "")
    lines = [head, rule]
    for scenario in scenarios.values():
        for i, series in enumerate(scenario.series):
            cells = [scenario.title if i == 0 else "", series.name, _number(series.median, scenario.unit),
                     str(len(series.samples))]
            if before:
                cells.append(_before_median(before, scenario, series))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| target | " + ("before | " if before else "") + "now | met |",
              "| --- | " + ("---: | " if before else "") + "---: | --- |"]
    for target in TARGETS:
        if not target.measured(scenarios):
            continue
        cells = [target.text] + ([_target_value(target, before)] if before else [])
        cells += [_target_value(target, scenarios), "yes" if target.met(scenarios) else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _score(target: Target, scenarios: dict[str, Scenario]) -> float:
    """How many times better than its bound a result is (1 = exactly on target)."""
    value = target.value(scenarios)
    ratio = value / target.limit if target.higher_is_better else (target.limit / value if value else _SCORE_RANGE[1])
    return min(max(ratio, _SCORE_RANGE[0]), _SCORE_RANGE[1])


def plot(path: Path, scenarios: dict[str, Scenario], before: dict[str, Scenario] | None = None) -> None:
    """One bar per target: result relative to its bound, log scale; right of 1 = met."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in TARGETS if t.measured(scenarios)]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(targets) + 1.1), dpi=100)
    height = 0.38 if before else 0.7
    for i, target in enumerate(reversed(targets)):
        bars = [(scenarios, "now", "#2b7bba" if target.met(scenarios) else "#d9534f", "black")]
        if before and target.measured(before):
            bars.append((before, "before", "#bbbbbb", "#555555"))
        for j, (results, label, color, text_color) in enumerate(bars):
            y = i + height / 2 - j * height if len(bars) > 1 else i
            score = _score(target, results)
            ax.barh(y, score, height, color=color, label=label if i == 0 else None)
            inside = score >= _SCORE_RANGE[1] / 2  # no room to the right: write on the bar
            ax.text(score / 1.05 if inside else score * 1.05, y, _target_value(target, results), va="center",
                    ha="right" if inside else "left", fontsize=7, color="white" if inside else text_color)
    ax.axvline(1, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(*_SCORE_RANGE)
    ax.set_yticks(range(len(targets)), [t.text for t in reversed(targets)], fontsize=8)
    ax.set_xlabel("result relative to the target (right of the line: met)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    if before:
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
