"""The BIDS validator call: ``bids-validator-deno`` on BIDS_DIR before a participant job."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from deeplight_bids.exceptions import InputDataError


def find_bids_validator() -> str | None:
    """Path of ``bids-validator-deno`` (on PATH, or beside the running interpreter), or None."""
    # beside the interpreter too: a venv's bin/ is often not on PATH
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return shutil.which("bids-validator-deno") or (str(beside) if beside.is_file() else None)


def validate_bids(bids_dir: str | os.PathLike[str], log: logging.Logger) -> None:
    """Run bids-validator-deno on BIDS_DIR when installed; errors stop the run.

    Raises
    ------
    deeplight_bids.exceptions.InputDataError
        The validator found errors (one line: their number and the first one).
    """
    exe = find_bids_validator()
    if exe is None:
        log.warning("bids-validator-deno not found: BIDS validation skipped (pip install bids-validator-deno)")
        return
    proc = subprocess.run(
        [exe, str(bids_dir), "--format", "json", "--ignoreWarnings"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode == 0:
        log.info("BIDS validation: no errors")
        return
    try:
        issues = json.loads(proc.stdout)["issues"]["issues"]
        errors = [i for i in issues if i.get("severity") == "error"]
        first = errors[0] if errors else {}
        detail = f"{len(errors)} error(s), first: {first.get('code')} at {first.get('location')}"
    except (json.JSONDecodeError, KeyError, IndexError):
        detail = _validator_crash_line(proc.stderr or proc.stdout)
    raise InputDataError(
        f"{bids_dir}: the BIDS validator found problems ({detail}); run bids-validator-deno "
        f"{bids_dir} to see them, fix them, or pass --skip-bids-validation."
    )


def _validator_crash_line(text):
    """The validator's own error line, without terminal colour codes or deno stack frames."""
    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).strip() for line in str(text).splitlines()]
    lines = [line for line in lines if line and not line.startswith("at ")]
    return next((line for line in lines if "error" in line.lower()), lines[0] if lines else "unknown error")
