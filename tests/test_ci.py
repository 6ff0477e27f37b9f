"""CI (.ci/run) runs exactly the test command that README.md gives."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_gives_the_test_command_that_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"^(python -m pytest .*)$", ci, flags=re.MULTILINE)
    assert len(commands) == 1, commands
    assert commands[0] in (REPO / "README.md").read_text()


def test_ci_lints_before_testing():
    ci = (REPO / ".ci" / "run").read_text()
    assert 0 <= ci.index("python -m ruff check .") < ci.index("python -m pytest")
