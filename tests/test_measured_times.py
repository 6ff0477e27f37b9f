"""Each measured time has one place, benchmarks/RESULTS.md; the README and the docs link to it."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASURED_TIME = re.compile(r"\b\d+ min \d+ s\b")  # how RESULTS.md writes a measured wall time


def _anchor(heading):
    return "#" + re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def test_readme_and_docs_carry_no_copy_of_a_measured_time():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.rst"))]
    copies = {p.name: MEASURED_TIME.findall(p.read_text()) for p in pages}
    assert {name: found for name, found in copies.items() if found} == {}


def test_results_hold_the_demo_and_test_suite_times_and_readme_links_them():
    results = (REPO / "benchmarks" / "RESULTS.md").read_text()
    headings = re.findall(r"^#+ (.+)$", results, flags=re.MULTILINE)
    readme = (REPO / "README.md").read_text()
    for heading in ("Whole demo", "Test suite"):
        assert heading in headings
        section = results.split(f"# {heading}\n", 1)[1].split("\n## ", 1)[0]
        assert MEASURED_TIME.search(section), f"RESULTS.md '{heading}' gives no measured time"
        assert f"(benchmarks/RESULTS.md{_anchor(heading)})" in readme
