"""`fleet rehearse eks|ecs` covers the Graviton (arm64) images, and runs them only when asked (--arm64)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from deploy import rehearse


@pytest.mark.parametrize("target", ["eks", "ecs"])
def test_each_runbook_rehearsal_builds_the_arm64_images_and_asks_the_arm64_server(target: str):
    arm64 = [step for step in rehearse.STEPS[target] if step.arm64]
    assert [step.run is rehearse._arm64_images for step in arm64] == [True, False]
    assert arm64[1].run.paths == ("tests/containers/test_arm64_images.py",)
    images_step = next(step for step in rehearse.STEPS[target] if step.run is rehearse._images)
    assert arm64[0].runbook_step == images_step.runbook_step  # the runbook's image-building step


def _fake_steps(ran: list[str]) -> list[rehearse.Step]:
    return [rehearse.Step("1. Images", "amd64", lambda: ran.append("amd64")),
            rehearse.Step("1. Images", "arm64", lambda: ran.append("arm64"), arm64=True)]


def test_the_arm64_steps_are_opt_in(monkeypatch: pytest.MonkeyPatch):
    ran: list[str] = []
    monkeypatch.setitem(rehearse.STEPS, "ecs", _fake_steps(ran))
    result = CliRunner().invoke(rehearse.rehearse, ["ecs"])
    assert result.exit_code == 0, result.output
    assert ran == ["amd64"]
    assert "opt-in" in result.output and "fleet rehearse ecs --arm64" in result.output


def test_with_arm64_the_arm64_steps_run_in_order(monkeypatch: pytest.MonkeyPatch):
    ran: list[str] = []
    monkeypatch.setitem(rehearse.STEPS, "eks", _fake_steps(ran))
    result = CliRunner().invoke(rehearse.rehearse, ["eks", "--arm64"])
    assert result.exit_code == 0, result.output
    assert ran == ["amd64", "arm64"]
    assert "opt-in" not in result.output
