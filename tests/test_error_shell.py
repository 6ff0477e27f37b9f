"""The command lines' one error shell (:func:`deeplight_bids.runtime.run_guarded`)."""

import io
import signal

from deeplight_bids.exceptions import EXIT_INTERRUPTED, EXIT_OUTPUT, Interrupted, OutputError
from deeplight_bids.runtime import run_guarded


def _run(job, **kwargs):
    err = io.StringIO()
    code = run_guarded(job, "prog", "re-run to resume.", stderr=err, **kwargs)
    return code, err.getvalue()


def _raise(exc):
    def job():
        raise exc

    return job


def test_each_failure_is_one_line_and_its_exit_code():
    assert _run(lambda: None) == (0, "")
    code, text = _run(_raise(OutputError("/out: cannot write here; choose another OUTPUT_DIR.")))
    assert (code, text) == (EXIT_OUTPUT, "prog: error: /out: cannot write here; choose another OUTPUT_DIR.\n")
    code, text = _run(_raise(KeyboardInterrupt()))
    assert (code, text) == (EXIT_INTERRUPTED, "prog: interrupted; re-run to resume.\n")
    code, text = _run(_raise(PermissionError(13, "Permission denied", "/out/x.tsv")), output_name="OUTPUT_BIDS_DIR")
    assert code == EXIT_OUTPUT
    assert (
        text
        == "prog: error: /out/x.tsv: Permission denied; check free disk space and permissions of OUTPUT_BIDS_DIR.\n"
    )
    code, text = _run(_raise(ZeroDivisionError("x")))
    assert (code, text.count("\n")) == (1, 1) and "internal error (ZeroDivisionError)" in text


def test_sigterm_says_temporaries_are_removed_only_where_they_are():
    code, text = _run(_raise(Interrupted(signal.SIGTERM)))
    assert code == 128 + signal.SIGTERM
    assert text == "prog: terminated by signal SIGTERM; temporary files removed, re-run to resume.\n"
    _, text = _run(_raise(Interrupted(signal.SIGTERM)), removes_temporaries=False)
    assert text == "prog: terminated by signal SIGTERM; re-run to resume.\n"
