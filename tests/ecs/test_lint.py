"""cfn-lint passes on every ECS template, and the one rule we ignore hides nothing but what it should."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ECS = Path(__file__).resolve().parents[2] / "ecs"
CONFIG = ECS / ".cfnlintrc"
TEMPLATES = sorted((ECS / "templates").glob("*.yaml"))
CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")


def _lint(*args: str) -> list[dict]:
    result = subprocess.run([CFN_LINT, "--format", "json", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def test_there_are_templates_to_lint():
    assert [t.name for t in TEMPLATES] == ["adfilter-fleet.yaml"]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_cfn_lint_reports_no_errors_and_no_warnings(template):
    assert _lint("--config-file", str(CONFIG), "--", str(template)) == []


def test_every_ignored_rule_in_cfnlintrc_has_its_reason_above_it():
    lines = CONFIG.read_text().splitlines()
    start = lines.index("ignore_checks:")
    for number, line in enumerate(lines[start + 1:], start + 1):
        if line.strip().startswith("- "):
            assert lines[number - 1].strip().startswith("#"), f"no reason above {line.strip()}"


def test_the_ignored_w1030_fires_only_on_subnet_lists_guarded_by_the_template_rules():
    """Without the ignore, W1030 appears only where an empty subnet default meets an existing VPC, the
    case the template's Rules section rejects at create time."""
    findings = _lint("--regions", "us-east-1", "--", str(ECS / "templates" / "adfilter-fleet.yaml"))
    places = {(f["Rule"]["Id"], f["Location"]["Path"][1], f["Location"]["Path"][3]) for f in findings}
    assert places == {("W1030", "LoadBalancer", "Subnets"), ("W1030", "Service", "NetworkConfiguration")}
