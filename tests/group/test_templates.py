"""Templates: the TemplateFlow path (staged TEMPLATEFLOW_HOME) and the offline fallback.

``templateflow`` reads ``TEMPLATEFLOW_HOME`` when imported, so each case runs in a fresh
interpreter with the variable set.
"""

import json
import os
import subprocess
import sys

import pytest

from .conftest import stage_templateflow_home

SCRIPT = r"""
import json, warnings
import numpy as np
from deeplight_bids.group.templates import load_templates, TemplateFallbackWarning
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tpl = load_templates()
mask = np.asarray(tpl.mask.dataobj)
print(json.dumps({
    "source": tpl.source, "files": {k: str(v) for k, v in tpl.files.items()},
    "t1w_shape": list(tpl.t1w.shape), "mask_shape": list(mask.shape),
    "affine_ok": bool(np.allclose(tpl.t1w.affine, REFERENCE_AFFINE) and np.allclose(tpl.mask.affine, REFERENCE_AFFINE)),
    "ref_shape": list(REFERENCE_SHAPE), "mask_values": sorted(int(v) for v in np.unique(mask)),
    "mask_fraction": float((mask > 0).mean()), "t1w_std": float(np.asarray(tpl.t1w.dataobj).std()),
    "warnings": [str(w.message) for w in caught if issubclass(w.category, TemplateFallbackWarning)],
}))
"""


def _run(home):
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_templateflow_path_with_staged_home(tmp_path):
    home = stage_templateflow_home(tmp_path / "tf")
    info, _ = _run(home)
    assert info["source"] == "templateflow"
    assert info["warnings"] == []
    assert info["files"]["t1w"] == str(home / "tpl-MNI152NLin6Asym" / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz")
    assert info["files"]["mask"] == str(
        home / "tpl-MNI152NLin6Asym" / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"
    )
    assert info["t1w_shape"] == info["ref_shape"] == info["mask_shape"] and info["affine_ok"]


@pytest.mark.slow  # a fresh interpreter with TemplateFlow unreachable
def test_offline_fallback_to_nilearn(tmp_path):
    home = tmp_path / "empty"
    home.mkdir()
    info, stderr = _run(home)
    assert info["source"] == "nilearn"
    assert len(info["warnings"]) == 1 and "TemplateFlow" in info["warnings"][0] and "nilearn" in info["warnings"][0]
    assert "WARNING" in stderr or info["warnings"]
    assert info["t1w_shape"] == info["ref_shape"] == info["mask_shape"] and info["affine_ok"]
    assert info["mask_values"] == [0, 1]
    assert 0.1 < info["mask_fraction"] < 0.5  # a brain, not an empty or full box
    assert info["t1w_std"] > 0


def test_without_download_templateflow_is_never_asked(tmp_path, monkeypatch):
    """``download=False`` (the demo's group level, offline by design): the files under TEMPLATEFLOW_HOME when there,
    else nilearn's MNI152 at once, without the few seconds a network probe waits for its refusal."""
    from deeplight_bids.group import templates
    from deeplight_bids.prepare import spaces

    def refuse(*args, **kwargs):
        raise AssertionError("TemplateFlow was asked")

    monkeypatch.setattr(spaces, "templateflow_get", refuse)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    with pytest.warns(templates.TemplateFallbackWarning, match="is missing"):
        assert templates.load_templates(download=False).source == "nilearn"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(stage_templateflow_home(tmp_path / "tf")))
    assert templates.load_templates(download=False).source == "templateflow"
