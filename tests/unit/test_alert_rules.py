"""The alerting rules fire when they should and only then: deploy/prometheus/alerts.test.yml under promtool.

promtool comes with Debian's ``prometheus`` package; .ci/run installs it and runs the same two commands, so
CI runs them for real. Here they are skipped, with the reason, where promtool is missing. What needs no
promtool runs everywhere: every rule has a case where it fires and a case where it must not.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/alerts.yml"
RULE_TESTS = ROOT / "deploy/prometheus/alerts.test.yml"
# Labels that tell one alert of a rule from another (the grouping of its expression).
DISTINCT = ("pool", "program", "channel", "target", "operation", "route", "instance")

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (apt-get install prometheus); .ci/run installs it and runs these checks",
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False)


@needs_promtool
def test_promtool_accepts_the_rules():
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_every_rule_test_case_passes():
    tested = _promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


@cache
def _rules() -> list[str]:
    document = yaml.safe_load(RULES.read_text())
    return [rule["alert"] for group in document["groups"] for rule in group["rules"]]


@cache
def _cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    document = yaml.safe_load(RULE_TESTS.read_text())
    return [(group, case) for group in document["tests"] for case in group.get("alert_rule_test", [])]


def _series_labels(group: dict[str, Any]) -> list[dict[str, str]]:
    labels = []
    for series in group["input_series"]:
        body = series["series"].partition("{")[2].rstrip("}")
        pairs = (item.split("=", 1) for item in body.split(", ") if "=" in item)
        labels.append({name.strip(): value.strip().strip('"') for name, value in pairs})
    return labels


def _has_a_silent_alternative(group: dict[str, Any], case: dict[str, Any]) -> bool:
    """The case expects no alert, or the group feeds a series its expected alerts leave out (p2 beside p1)."""
    expected = [alert["exp_labels"] for alert in case.get("exp_alerts") or []]
    if not expected:
        return True
    for label in DISTINCT:
        alerted = {str(alert[label]) for alert in expected if label in alert}
        fed = {series[label] for series in _series_labels(group) if label in series}
        if alerted and fed - alerted:
            return True
    return False


@pytest.mark.parametrize("alert", _rules())
def test_every_rule_has_a_case_where_it_fires_and_one_where_it_must_not(alert):
    cases = [(group, case) for group, case in _cases() if case["alertname"] == alert]
    assert any(case.get("exp_alerts") for _, case in cases), f"{alert}: no case where it fires"
    assert any(_has_a_silent_alternative(group, case) for group, case in cases), (
        f"{alert}: no case where it must not fire"
    )


def test_the_rule_tests_name_only_rules_that_exist_and_cover_each_of_them():
    named = {case["alertname"] for _, case in _cases()}
    assert named == set(_rules())
