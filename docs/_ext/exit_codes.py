"""``.. exit-codes::``: the exit-code table rendered from the code, so it cannot drift.

The codes and their meaning come from ``deeplight_bids.cli.parser.EXIT_CODES_HELP`` (the
text ``deeplight-bids --help`` prints); the error classes that produce each code from the
subclasses of ``deeplight_bids.exceptions.DeepLightBidsError`` (their ``exit_code``);
the signal codes from :class:`deeplight_bids.exceptions.Interrupted` (``128 + signal number``).
"""

import re
import signal

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

_LINE = re.compile(r"^\s+(\d+)\s+(.+?)\s*$")


def parse_exit_codes(text):
    """``[(code, meaning), ...]`` from the ``--help`` epilog (lines ``  N  meaning``)."""
    return [(int(m.group(1)), m.group(2)) for m in map(_LINE.match, text.splitlines()) if m]


def error_classes():
    """``{exit code: [class name, ...]}`` for every user-facing error class."""
    from deeplight_bids import exceptions

    by_code, pending = {}, [exceptions.DeepLightBidsError]
    while pending:
        cls = pending.pop(0)
        # Only the module's own classes: subclasses elsewhere depend on what was imported.
        if cls.__module__ == exceptions.__name__:
            by_code.setdefault(cls.exit_code, []).append(cls.__name__)
        pending.extend(cls.__subclasses__())
    return by_code


def signal_codes():
    """``[(code, meaning, raised as), ...]`` for Ctrl-C and SIGTERM (``128 + signal number``)."""
    from deeplight_bids.exceptions import Interrupted

    return [
        (128 + signal.SIGINT, "interrupted (Ctrl-C): finished runs are kept, a re-run resumes", "KeyboardInterrupt"),
        (
            Interrupted(signal.SIGTERM).exit_code,
            "terminated (SIGTERM, e.g. a SLURM time limit): temporaries removed, finished runs kept, a re-run resumes",
            "Interrupted",
        ),
    ]


class ExitCodes(SphinxDirective):
    """A table: exit code, meaning, error classes (``deeplight_bids.exceptions``)."""

    has_content = False

    def run(self):
        from deeplight_bids.cli.parser import EXIT_CODES_HELP

        codes = parse_exit_codes(EXIT_CODES_HELP)
        if not codes:
            raise self.error("no exit codes found in deeplight_bids.cli.parser.EXIT_CODES_HELP")
        classes = error_classes()
        table = nodes.table(classes=["exit-codes"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (8, 52, 40):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row(["code", "meaning", "raised as"])
        body = nodes.tbody()
        group += body
        for code, meaning in codes:
            names = ", ".join(sorted(set(classes.get(code, []))))
            body += self._row([str(code), meaning, names], literal_last=True)
        for code, meaning, name in signal_codes():
            body += self._row([str(code), meaning, name], literal_last=True)
        return [table]

    @staticmethod
    def _row(cells, literal_last=False):
        row = nodes.row()
        for index, text in enumerate(cells):
            entry = nodes.entry()
            paragraph = nodes.paragraph()
            if literal_last and index == len(cells) - 1 and text:
                paragraph += nodes.literal(text=text)
            else:
                paragraph += nodes.Text(text)
            entry += paragraph
            row += entry
        return row


def setup(app):
    app.add_directive("exit-codes", ExitCodes)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
