"""CI (.ci/run) runs exactly the test command that README.md gives, and that command works as root
without sudo (a fresh machine) and as a user through sudo."""

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- test-command:"


def readme_test_command():
    """The lines of the fenced block right after README.md's test-command marker."""
    text = (REPO / "README.md").read_text()
    assert text.count(MARKER) == 1, "README.md needs exactly one test-command marker"
    block = re.search(re.escape(MARKER) + r".*?-->\n```bash\n(.*?)\n```", text, flags=re.DOTALL)
    assert block, "the test-command marker must be followed by a ```bash block"
    return block.group(1).splitlines()


def test_readme_test_command_has_its_three_steps():
    lines = readme_test_command()
    assert len(lines) == 3, lines
    assert "apt-get update" in lines[0] and "apt-get install" in lines[0]
    assert "sudo apt-get" not in lines[0], "a fresh machine has no sudo: the prefix must be empty as root"
    assert lines[1].startswith("python3 -m venv .venv") and "pip install '.[test]'" in lines[1]
    assert lines[2].startswith("python -m pytest ")


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    positions = []
    for line in readme_test_command():
        # A line of .ci/run is the README line itself, or the README line followed by `|| die ...`
        # (under `set -e` a failure inside an &&-list would otherwise not stop the script).
        hits = [i for i, ci in enumerate(ci_lines) if ci == line or ci.startswith(line + " || die ")]
        assert len(hits) == 1, f".ci/run must run this README line once, verbatim: {line}"
        positions.append(hits[0])
    assert positions == sorted(positions), "the README lines run in their order"
    # Nothing else runs pytest in CI.
    assert len([ci for ci in ci_lines if ci.startswith("python -m pytest")]) == 1


def test_docs_quick_start_gives_the_same_test_command():
    index = (REPO / "docs" / "index.rst").read_text().splitlines()
    stripped = [line.strip() for line in index]
    for line in readme_test_command():
        assert line in stripped, f"docs/index.rst must give the README's test command line: {line}"


def test_ci_lints_before_testing():
    ci = (REPO / ".ci" / "run").read_text()
    assert 0 <= ci.index("python -m ruff check .") < ci.index("python -m pytest")


def _run_first_line(tmp_path, with_sudo):
    """Run README's first line in bash with a PATH holding only fake apt-get (and sudo)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls.log"
    (fake / "apt-get").write_text(f'#!{shutil.which("bash")}\necho "apt-get $*" >> {log}\n')
    if with_sudo:
        (fake / "sudo").write_text(f'#!{shutil.which("bash")}\necho "sudo $1" >> {log}\nexec "$@"\n')
    for script in fake.iterdir():
        script.chmod(0o755)
    result = subprocess.run(
        [shutil.which("bash"), "-c", readme_test_command()[0]],
        env={"PATH": str(fake), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


def test_first_line_without_sudo_calls_apt_get_directly(tmp_path):
    """As root on a fresh machine: no sudo on PATH, apt-get update then install, unprefixed."""
    calls = _run_first_line(tmp_path, with_sudo=False)
    assert calls[0] == "apt-get update"
    assert calls[1].startswith("apt-get install -y ") and "chromium" in calls[1] and "slurm-wlm" in calls[1]
    assert len(calls) == 2


def test_first_line_with_sudo_goes_through_sudo(tmp_path):
    """As a user with sudo: both apt-get calls go through sudo."""
    calls = _run_first_line(tmp_path, with_sudo=True)
    assert calls == [
        "sudo apt-get",
        "apt-get update",
        "sudo apt-get",
        calls[3],
    ]
    assert calls[3].startswith("apt-get install -y ")


def test_first_line_stops_when_apt_get_update_fails(tmp_path):
    """No install from stale package lists: a failed update stops the line with its status."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls.log"
    (fake / "apt-get").write_text(f'#!{shutil.which("bash")}\necho "apt-get $1" >> {log}\n[ "$1" != update ]\n')
    (fake / "apt-get").chmod(0o755)
    result = subprocess.run(
        [shutil.which("bash"), "-c", readme_test_command()[0]],
        env={"PATH": str(fake), "HOME": str(tmp_path)},
        check=False,
    )
    assert result.returncode != 0
    assert log.read_text().splitlines() == ["apt-get update"]
