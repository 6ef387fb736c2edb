"""`fleet rehearse` names the runbooks' own steps and runs test modules that exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.rehearse import NOT_HERE, STEPS

ROOT = Path(__file__).resolve().parents[2]


def runbook_steps(target: str) -> set[str]:
    return set(re.findall(r"^### (\d+[a-z]?)\. ", (ROOT / "docs" / f"{target}.md").read_text(), re.M))


@pytest.mark.parametrize("target", ["eks", "ecs"])
def test_every_rehearsal_step_names_steps_of_its_runbook(target):
    steps = runbook_steps(target)
    for label in [step.runbook_step for step in STEPS[target]] + NOT_HERE[target]:
        numbers = re.match(r"^([\d, a-z-]+)\. ", label)
        if numbers is None:
            continue  # "service quotas, prices ...": not one step
        for part in re.split(r"[, ]+", numbers.group(1).strip()):
            for end in part.split("-"):
                assert end in steps, f"{label!r} names step {end}, which docs/{target}.md does not have ({steps})"


@pytest.mark.parametrize("target", ["eks", "ecs"])
def test_every_module_the_rehearsal_runs_exists(target):
    runs = [step for step in STEPS[target] if getattr(step.run, "paths", ())]
    assert len(runs) >= 3, "the rehearsal runs test modules (deploy.rehearse._Pytest)"
    for step in runs:
        for path in step.run.paths:
            assert (ROOT / path).is_file(), f"{step.runbook_step}: {path} does not exist"
