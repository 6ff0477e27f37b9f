"""Run bids-validator-deno on an output folder (shared by the output-validity tests)."""

import json
import subprocess

import pytest

from deeplight_bids.bids.validate import find_bids_validator


def validator_errors(folder):
    """``(errors, returncode)``: ``[(code, location), ...]`` of the validator's error-level issues."""
    exe = find_bids_validator()
    if exe is None:
        pytest.fail("bids-validator-deno is not installed: pip install '.[test]'")
    proc = subprocess.run([exe, str(folder), "--format", "json"], capture_output=True, text=True, timeout=300)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    return [(i["code"], i.get("location")) for i in issues if i.get("severity") == "error"], proc.returncode
