"""deploy/monitoring: the alert rules pass their promtool unit tests, and those tests would catch a broken rule.

``promtool`` ships in Debian's ``prometheus`` package (``make monitoring``).
Each rule has at least one case that fires and one that stays silent: a rule
whose condition is replaced by one that never fires must fail a test, and so
must one replaced by a condition that always fires.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from embedded.monitoring import ALERT_RULES, MONITORING_DIR, PROMETHEUS_CONFIG, render_prometheus_config

RULE_TESTS = sorted((MONITORING_DIR / "tests").glob("*.yml"))
NEVER_FIRES = "vector(1) < 0"
ALWAYS_FIRES = "vector(1)"


def _promtool(*args: str | Path) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make monitoring` installs Debian's prometheus package"
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60)


def _rules() -> list[dict]:
    groups = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_are_valid() -> None:
    checked = _promtool("check", "rules", ALERT_RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_scrape_config_is_valid_as_committed_and_as_rendered_locally(tmp_path: Path) -> None:
    committed = _promtool("check", "config", PROMETHEUS_CONFIG)
    assert committed.returncode == 0, committed.stdout + committed.stderr
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(yaml.safe_dump(render_prometheus_config("127.0.0.1:9091", "127.0.0.1:8080")), encoding="utf-8")
    checked = _promtool("check", "config", rendered)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rule_unit_tests_pass() -> None:
    tested = _promtool("test", "rules", *RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_says_what_it_means_and_what_to_do() -> None:
    for rule in _rules():
        annotations = rule.get("annotations", {})
        missing = {"summary", "description", "runbook_url"} - set(annotations)
        assert not missing, f"{rule['alert']} has no {sorted(missing)}"
        assert rule.get("labels", {}).get("severity") in {"page", "ticket"}, rule["alert"]


@pytest.mark.parametrize("alert", [rule["alert"] for rule in _rules()])
def test_rule_tests_catch_a_rule_that_never_or_always_fires(alert: str, tmp_path: Path) -> None:
    """The rule's firing case fails when it cannot fire, its silent case when it always fires."""
    (tmp_path / "tests").mkdir()
    copies = [Path(shutil.copy(path, tmp_path / "tests" / path.name)) for path in RULE_TESTS]
    tests = [test for path in RULE_TESTS for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]]
    tested_alerts = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert alert in tested_alerts, f"deploy/monitoring/tests has no case for {alert}"
    for broken_condition in (NEVER_FIRES, ALWAYS_FIRES):
        rules = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == alert:
                    rule["expr"] = broken_condition
        (tmp_path / ALERT_RULES.name).write_text(yaml.safe_dump(rules), encoding="utf-8")
        tested = _promtool("test", "rules", *copies)
        assert tested.returncode != 0, f"{alert} with expr {broken_condition!r} still passes every test"
        assert f"alertname: {alert}" in tested.stdout + tested.stderr
