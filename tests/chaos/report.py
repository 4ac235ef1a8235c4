"""Per-scenario chaos results: collected during the session, written as JSON and Markdown at its end.

The files land in the session's pytest tmp dir (``<basetemp>/chaos-report/chaos-report.{json,md}``);
the path is printed in the terminal summary. docs/chaos.md quotes the table of a real run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    scenario: str
    mode: str  # "short" | "long"
    requests: int = 0
    succeeded: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    failovers: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    fault_s: float | None = None
    recovery_s: float | None = None
    recovery_meaning: str = ""
    checks: list[Check] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    load_average: tuple[float, float, float] = field(default_factory=lambda: os.getloadavg())

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, bool(ok), detail))

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


class ChaosReport:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.results: list[ScenarioResult] = []

    def add(self, result: ScenarioResult) -> None:
        self.results.append(result)
        self.write()

    def write(self) -> tuple[Path, Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        as_json = self.folder / "chaos-report.json"
        as_md = self.folder / "chaos-report.md"
        as_json.write_text(json.dumps([asdict(r) for r in self.results], indent=2, default=str))
        as_md.write_text(markdown(self.results))
        return as_json, as_md


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(results: list[ScenarioResult]) -> str:
    lines = [
        "# Chaos results",
        "",
        "| scenario | mode | requests | ok | errors by code | timeouts | failovers | p50 / p99 / max ms"
        " | fault s | recovery s | invariants | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        errors = ", ".join(f"{code} {n}" for code, n in sorted(r.errors_by_code.items())) or "none"
        passed = sum(c.ok for c in r.checks)
        failed = ", ".join(c.name for c in r.failed_checks)
        invariants = f"{passed}/{len(r.checks)} ok" + (f" (FAILED: {failed})" if failed else "")
        lines.append(
            f"| {r.scenario} | {r.mode} | {r.requests} | {r.succeeded} | {errors} | {r.timeouts} | {r.failovers}"
            f" | {_ms(r.p50_ms)} / {_ms(r.p99_ms)} / {_ms(r.max_ms)} | {_s(r.fault_s)} | {_s(r.recovery_s)}"
            f" | {invariants} | {r.load_average[0]:.1f} |"
        )
    lines.append("")
    for r in results:
        lines += [f"## {r.scenario} ({r.mode})", ""]
        if r.recovery_meaning:
            lines += [f"Recovery time: {r.recovery_meaning}.", ""]
        for c in r.checks:
            lines.append(f"- [{'x' if c.ok else ' '}] {c.name}" + (f": {c.detail}" if c.detail else ""))
        for key, value in r.notes.items():
            lines.append(f"- {key}: {value}")
        lines.append("")
    return "\n".join(lines)
