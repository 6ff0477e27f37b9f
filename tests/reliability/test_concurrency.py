"""Several participant jobs writing one OUTPUT_DIR at once (SLURM arrays), from a read-only BIDS_DIR."""

import json
import tomllib

from deeplight_bids.derivatives.writers import BIDSIGNORE, dataset_description

from .conftest import run_files


def test_concurrent_jobs_all_complete(concurrent_outputs):
    out, results, _ = concurrent_outputs
    for label, proc in results.items():
        assert proc.returncode == 0, (label, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr
        for path in run_files(out, label, lrp=(label == "01")).values():
            assert path.is_file(), path
        assert json.loads(run_files(out, label)["pred_json"].read_text())["SettingsHash"]


def test_shared_files_not_corrupted(concurrent_outputs, small_dataset):
    out, _, _ = concurrent_outputs
    desc = json.loads((out / "dataset_description.json").read_text())
    sources = [small_dataset.bids_dir, small_dataset.derivatives_dir]
    assert desc == dataset_description(sources, out)
    assert (out / ".bidsignore").read_text() == BIDSIGNORE
    assert (out / "README.md").read_text().startswith("# deeplight-bids outputs\n")
    configs = sorted((out / "logs").glob("config-*.toml"))
    assert len(configs) == 3, configs
    labels = sorted(tomllib.loads(p.read_text())["inputs"]["participant_label"][0] for p in configs)
    assert labels == ["01", "02", "03"]
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".stream.")]
    assert leftovers == []


def test_read_only_bids_dir_works(concurrent_outputs):
    """With a read-only bind mount of BIDS_DIR (when the machine allows one) every job succeeded."""
    _, results, read_only = concurrent_outputs
    if not read_only:
        import pytest

        pytest.skip("no read-only bind mount possible here (test_bad_inputs checks no write is attempted)")
    assert all(proc.returncode == 0 for proc in results.values())
