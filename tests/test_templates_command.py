"""``deeplight-bids templates {list,fetch}``: every TemplateFlow file either level reads, and an offline
node that then uses them (a local TEMPLATEFLOW_HOME of small valid files; no internet here)."""

import json
import os
import subprocess
import sys

import pytest

from deeplight_bids.cli.main import run as cli
from deeplight_bids.group import templates
from deeplight_bids.prepare import spaces

from .group.conftest import stage_templateflow_home
from .prepare import synthetic_warp
from .prepare.test_spaces import _table_with


@pytest.fixture
def online(monkeypatch, tmp_path):
    """A TemplateFlow that "downloads" into $TEMPLATEFLOW_HOME what it is asked for (as templateflow.api.get)."""
    staged = stage_templateflow_home(tmp_path / "server")
    xfm_source = synthetic_warp.write_itk_displacement_h5(tmp_path / "x.h5", synthetic_warp.forward, spacing=16.0)
    _table_with(monkeypatch, xfm_source)  # the checksum table names this synthetic transform
    home = tmp_path / "templateflow"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    asked = []

    def get(template, **query):
        asked.append((template, query.get("suffix"), query.get("desc")))
        if query.get("suffix") == "xfm":
            source = xfm_source
            target = home / f"tpl-{template}" / spaces.KNOWN_SPACES["MNI152NLin2009cAsym"].transform.filename
        else:
            key = "mask" if query.get("desc") == "brain" else "t1w"
            source, target = staged / templates.FILE_NAMES[key], home / templates.FILE_NAMES[key]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        return target  # templateflow_get returns a Path

    monkeypatch.setattr(spaces, "templateflow_get", get)
    return home, asked


def _offline(monkeypatch):
    def get(template, **query):
        raise ConnectionError("Max retries exceeded (NameResolutionError(...))")  # what requests raises here

    monkeypatch.setattr(spaces, "templateflow_get", get)


def test_fetch_gets_the_transform_and_the_group_templates(online, capsys):
    home, asked = online
    assert cli(["templates", "fetch"]) == 0
    out = capsys.readouterr().out
    assert sorted(asked) == [
        ("MNI152NLin6Asym", "T1w", None),
        ("MNI152NLin6Asym", "mask", "brain"),
        ("MNI152NLin6Asym", "xfm", None),
    ]
    lines = [line for line in out.splitlines() if "fetched, verified" in line]
    assert len(lines) == 3, out
    assert any("transform" in line and line.startswith("participant") for line in lines)
    assert any("T1w" in line and line.startswith("group") for line in lines)
    assert any("brain mask" in line and line.startswith("group") for line in lines)
    for name in templates.FILE_NAMES.values():
        assert (home / name).is_file()
    # a second fetch and list find everything present: no download
    asked.clear()
    assert cli(["templates", "list"]) == 0
    assert cli(["templates", "fetch"]) == 0
    assert asked == []
    assert capsys.readouterr().out.count("present, verified") == 6


def test_offline_fetch_names_every_missing_file_without_a_repr(monkeypatch, tmp_path, capsys):
    _offline(monkeypatch)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    assert cli(["templates", "fetch"]) == 3
    err = capsys.readouterr().err
    assert spaces.MNI2009C_TO_6ASYM.filename in err and "res-02_T1w" in err and "brain_mask" in err
    assert "Traceback" not in err and "NameResolutionError" not in err and "https://" not in err


def test_list_refuses_a_template_on_another_grid(online, capsys):
    import nibabel as nib
    import numpy as np

    home, _ = online
    assert cli(["templates", "fetch"]) == 0
    nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4)).to_filename(home / templates.FILE_NAMES["mask"])
    assert cli(["templates", "list"]) == 3
    err = capsys.readouterr().err
    assert "expected (91, 109, 91), 2 mm" in err and "templates fetch" in err


SCRIPT = r"""
import json, logging, sys, warnings
from deeplight_bids.exceptions import LoggedWarning
warnings.simplefilter("ignore", LoggedWarning)  # as the command line (runtime.py): the log line says it
from deeplight_bids.prepare import spaces
def offline(template, **query):
    raise ConnectionError("no network on this node")
spaces.templateflow_get = offline
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from deeplight_bids.group.templates import load_templates
tpl = load_templates()
print(json.dumps(tpl.provenance()))
"""


def _load_offline(home):
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_offline_node_after_fetch_uses_templateflow(online, capsys):
    """The folder ``fetch`` filled, copied to an offline node: the group templates come from it."""
    home, _ = online
    assert cli(["templates", "fetch"]) == 0
    provenance, stderr = _load_offline(home)
    assert provenance["Source"] == "templateflow"
    assert provenance["Files"] == {key: str(home / name) for key, name in templates.FILE_NAMES.items()}
    assert "nilearn" not in stderr


def test_offline_node_without_templates_says_one_plain_line(tmp_path):
    """The real TemplateFlow client, offline (a proxy that refuses every connection, as a node without
    internet): no ``Downloading <url>`` line, no urllib3 repr, one plain line on what is used instead."""
    script = SCRIPT.replace("spaces.templateflow_get = offline\n", "")
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(tmp_path / "empty"), "HTTPS_PROXY": "http://127.0.0.1:9"}
    env.update(HTTP_PROXY=env["HTTPS_PROXY"], https_proxy=env["HTTPS_PROXY"], http_proxy=env["HTTPS_PROXY"])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    provenance, stderr = json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr
    assert provenance["Source"] == "nilearn"
    lines = [line for line in stderr.splitlines() if "templates:" in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("INFO ")  # offline is the normal case on compute nodes: not an alarm
    assert "nilearn" in lines[0] and "deeplight-bids templates fetch" in lines[0] and "TEMPLATEFLOW_HOME" in lines[0]
    assert "https://" not in stderr and "Error(" not in stderr and "Downloading" not in stderr
