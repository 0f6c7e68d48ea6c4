"""The repository keeps its promises: CI runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_opens_with_two_commands_run_app_and_run_tests():
    commands = _readme_commands()[:2]
    assert "python app.py" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _readme_commands()[1]
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_requirements_pin_the_cpu_torch_and_everything_else():
    reqs = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert "torch==2.13.0" in reqs
    assert all("==" in line for line in reqs), reqs


def test_readme_figures_are_generated_from_results_json():
    from training import report

    assert report.main(["--check"]) == 0, "run python -m training.report"
