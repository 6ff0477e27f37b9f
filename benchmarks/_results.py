"""Shared helper of the benchmark scripts: replace one ``## Section`` of RESULTS.md."""

import re
from pathlib import Path


def update_section(path, heading, section):
    """Put ``section`` (text starting with ``heading``) into the markdown file ``path``.

    An existing section with the same heading is replaced (up to the next ``## `` heading);
    otherwise the section is appended. Other sections are kept as they are.
    """
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
