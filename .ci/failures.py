"""Print the failed and erroring tests of a pytest JUnit XML file, a few lines each.

.ci/run calls this after the container's log so that CI's tail shows which tests failed.
Usage: python .ci/failures.py JUNIT_XML
"""

import sys
import xml.etree.ElementTree as ET

MAX_LINES = 25


def main(path):
    tree = ET.parse(path)
    failed = 0
    for case in tree.iter("testcase"):
        for kind in ("failure", "error"):
            for problem in case.findall(kind):
                failed += 1
                name = f"{case.get('classname')}::{case.get('name')}"
                print(f"{kind.upper()}: {name} ({case.get('time')} s)")
                message = (problem.get("message") or "").strip()
                if message:
                    print("  " + message.splitlines()[0][:300])
                # The end of the traceback says where and why; the start repeats the test's code.
                lines = (problem.text or "").rstrip().splitlines()[-MAX_LINES:]
                print("\n".join("    " + line[:300] for line in lines))
    print(f"{failed} failed or erroring test(s) in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
