"""hpc/babs_deeplight.yaml read by BABS's own code (babs 0.5.4).

BABS declares ``numpy<2`` (it does not use NumPy in the code exercised here), which would
downgrade this project's NumPy, so it is not a test dependency: BABS and its runtime imports
(datalad, datalad-container, filelock, backoff) are installed with pip into a folder of the
pytest cache (once) and BABS runs in a subprocess with that folder first on ``PYTHONPATH``.
The test is skipped only where that installation fails (no package index).

BABS's code loads the YAML (``read_yaml``, ``app_output_settings_from_config``,
``InputDatasets``, ``Container``) and renders the two scripts ``babs init`` writes: the
BIDS-App run script (``Container.generate_bash_run_bidsapp``) and the SLURM job script
(``Container.generate_bash_participant_job``).  The app's arguments in the rendered run script
must be accepted by this app's own argument parser.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from deeplight_bids._version import __version__
from deeplight_bids.cli.parser import build_parser

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "hpc" / "babs_deeplight.yaml"
BABS_VERSION = "0.5.4"
CONTAINER_NAME = "deeplight-bids-" + __version__.replace(".", "-")

RENDER = r"""
import json, sys
from pathlib import Path
import babs
from babs.container import Container
from babs.input_datasets import InputDatasets
from babs.system import System
from babs.utils import app_output_settings_from_config, read_yaml

config_path, out = sys.argv[1], Path(sys.argv[2])
config = read_yaml(config_path)
zip_foldernames, output_dir = app_output_settings_from_config(config)
inputs = InputDatasets("subject", config["input_datasets"])
inputs.update_abs_paths(out / "analysis")  # as babs init does
container = Container(str(out / "container_ds"), sys.argv[3], config_path)
container.generate_bash_run_bidsapp(str(out / "code" / "run_bidsapp.sh"), inputs, "subject")
container.generate_bash_participant_job(str(out / "code" / "participant_job.sh"), inputs, "subject", System("slurm"))
json.dump({"babs": babs.__version__, "zip_foldernames": zip_foldernames, "output_dir": output_dir,
           "inputs": inputs.as_records()}, open(out / "loaded.json", "w"), default=str)
"""


@pytest.fixture(scope="module")
def babs_path(request, tmp_path_factory):
    """A folder holding babs (no dependencies) and the packages it imports; installed once per cache."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    target = Path(cache.mkdir(f"babs-{BABS_VERSION}")) if cache else tmp_path_factory.mktemp(f"babs-{BABS_VERSION}")
    site = target / "site"
    if not (site / "babs").is_dir():
        # into a private folder renamed into place: pytest-xdist workers may get here together
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(staging)]
        for args in (["--no-deps", f"babs=={BABS_VERSION}"], ["datalad", "datalad-container", "filelock", "backoff"]):
            proc = subprocess.run(pip + args, check=False, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                pytest.skip(f"babs {BABS_VERSION} cannot be installed here ({' '.join(args)}): {proc.stderr[-300:]}")
        try:
            staging.rename(site)
        except OSError:  # another worker finished first
            shutil.rmtree(staging, ignore_errors=True)
    return site


@pytest.fixture(scope="module")
def rendered(babs_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("babs")
    env = dict(os.environ, PYTHONPATH=str(babs_path))
    proc = subprocess.run(
        [sys.executable, "-c", RENDER, str(CONFIG), str(out), CONTAINER_NAME],
        cwd=out,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    loaded = json.loads((out / "loaded.json").read_text())
    return loaded, (out / "code" / "run_bidsapp.sh").read_text(), (out / "code" / "participant_job.sh").read_text()


def test_babs_loads_the_config(rendered):
    loaded, _, _ = rendered
    assert loaded["babs"] == BABS_VERSION
    # one zip per participant of the whole output folder, named after the app and its version
    assert loaded["zip_foldernames"] == {"deeplight": __version__.replace(".", "-")}
    assert loaded["output_dir"] == "outputs/deeplight"
    inputs = {d["name"]: d for d in loaded["inputs"]}
    assert list(inputs) == ["BIDS", "fmriprep"]  # the first input is BIDS_DIR
    assert not inputs["BIDS"]["is_zipped"] and inputs["fmriprep"]["is_zipped"]


def _app_arguments(run_script):
    """The app's command line in BABS's run script, with the job's variables filled in."""
    command = re.search(r"^singularity run \\\n(.*?)\n\n", run_script, re.MULTILINE | re.DOTALL).group(1)
    words = shlex.split(command.replace("\\\n", " "))
    image = words.index(f"containers/.datalad/environments/{CONTAINER_NAME}/image")
    return words[:image], words[image + 1 :]


def test_babs_run_script_calls_the_app_with_options_it_accepts(rendered, tmp_path):
    _, run_script, _ = rendered
    singularity_flags, app_args = _app_arguments(run_script)
    assert {"--cleanenv", "--containall", "--writable-tmpfs"} <= set(singularity_flags)
    assert "${PWD}" in singularity_flags[singularity_flags.index("-B") + 1]  # the job's clone is bound
    # the job's clone as BABS lays it out: BIDS, and the participant's fMRIPrep zip unzipped
    clone = tmp_path / "job-1-1-sub-01" / "ds"
    (clone / "inputs" / "data" / "BIDS").mkdir(parents=True)
    (clone / "inputs" / "data" / "fmriprep" / "fmriprep").mkdir(parents=True)
    job = {"${PWD}": str(clone), "${subid}": "sub-01", "${SLURM_CPUS_PER_TASK:-1}": "4"}
    resolved = []
    for word in app_args:
        for var, value in job.items():
            word = word.replace(var, value)
        resolved.append(word)
    assert resolved[:3] == [f"{clone}/inputs/data/BIDS", f"{clone}/outputs/deeplight", "participant"]
    # BABS passes the label with its prefix; the app's parser must accept every option as written
    args = build_parser().parse_args(resolved)
    assert args.participant_label == ["01"]
    assert [str(p) for p in args.derivatives] == [f"{clone}/inputs/data/fmriprep/fmriprep"]
    assert args.skip_bids_validation and args.nprocs == 4
    assert str(args.work_dir) == f"{clone}/.git/tmp/wkdir"
    # the participant's outputs are zipped as sub-XX_deeplight-<version>.zip and scratch removed
    assert '7z a ../"${subid}_deeplight-' + __version__.replace(".", "-") + '.zip" "deeplight"' in run_script
    assert "rm -rf outputs .git/tmp/wkdir" in run_script
    assert subprocess.run(["bash", "-n"], input=run_script, text=True, check=False).returncode == 0


def test_babs_slurm_job_script(rendered):
    _, _, job_script = rendered
    for directive in ("--mem=4G", "--tmp=20G", "--cpus-per-task=4", "--time=04:00:00"):
        assert f"#SBATCH {directive}" in job_script
    assert 'cd "${TMPDIR:-/tmp}"' in job_script
    assert subprocess.run(["bash", "-n"], input=job_script, text=True, check=False).returncode == 0
