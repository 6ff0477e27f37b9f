#!/usr/bin/env python3
"""Print the Debian mirror that this machine's apt sources use for SUITE (default bookworm).

Reads ``/etc/apt/sources.list``, ``/etc/apt/sources.list.d/*.list`` (one-line format) and
``/etc/apt/sources.list.d/*.sources`` (deb822), and prints the first ``deb`` URI whose
suites include SUITE exactly (not ``SUITE-security`` or ``SUITE-updates``).  Exit 1 if none.
"""

import re
import sys
from pathlib import Path

APT = Path("/etc/apt")


def one_line_entries(text):
    for line in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            yield line[1], [line[2]]


def deb822_entries(text):
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"])[0].lower() != "no":
            for uri in fields.get("uris", []):
                yield uri, fields.get("suites", [])


def main(suite="bookworm"):
    files = [APT / "sources.list"] + sorted((APT / "sources.list.d").glob("*.list"))
    entries = []
    for path in files:
        if path.is_file():
            entries += one_line_entries(path.read_text(errors="replace"))
    for path in sorted((APT / "sources.list.d").glob("*.sources")):
        entries += deb822_entries(path.read_text(errors="replace"))
    for uri, suites in entries:
        if suite in suites:
            print(uri)
            return 0
    print(f"no apt source with suite {suite!r} in {APT}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
