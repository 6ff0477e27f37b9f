"""BIDS URIs and DatasetLinks: Sources resolve through OUTPUT_DIR's dataset_description.json,
also after OUTPUT_DIR and its inputs are moved together."""

import json
import shutil

import pytest

from deeplight_bids.derivatives.links import dataset_links, dataset_roots, resolve_uri, source_uri
from deeplight_bids.derivatives.writers import write_dataset_files


def _dataset(folder, kind="raw"):
    folder.mkdir(parents=True, exist_ok=True)
    desc = {"Name": folder.name, "BIDSVersion": "1.10.0"}
    if kind == "derivative":
        desc["DatasetType"] = "derivative"
    (folder / "dataset_description.json").write_text(json.dumps(desc))
    return folder


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


@pytest.fixture
def study(tmp_path):
    """project/{bids, bids/derivatives/fmriprep, out}: raw data, fMRIPrep inside it, outputs beside it."""
    root = tmp_path / "project"
    bids = _dataset(root / "bids")
    fmriprep = _dataset(bids / "derivatives" / "fmriprep", "derivative")
    files = {
        "events": _touch(bids / "sub-05" / "func" / "sub-05_task-motor_events.tsv"),
        "bold": _touch(fmriprep / "sub-05" / "func" / "sub-05_task-motor_desc-preproc_bold.nii.gz"),
    }
    return root, bids, fmriprep, files


def test_names_raw_and_derivatives(tmp_path):
    bids = _dataset(tmp_path / "bids")
    a = _dataset(tmp_path / "a" / "fmriprep", "derivative")
    b = _dataset(tmp_path / "b" / "fmriprep", "derivative")
    odd = _dataset(tmp_path / "my prep:v2", "derivative")
    roots = dataset_roots(bids, [a, b, odd])
    assert list(roots) == ["raw", "fmriprep", "fmriprep-2", "my-prep-v2"]
    assert roots["fmriprep-2"] == b.absolute()
    # a derivatives-only input (BIDS_DIR is fMRIPrep's folder) is named by its folder, once
    assert dataset_roots(a, [a]) == {"fmriprep": a.absolute()}


def test_sources_name_the_deepest_dataset(study):
    _, bids, fmriprep, files = study
    roots = dataset_roots(bids, [fmriprep])
    assert source_uri(files["bold"], roots) == "bids:fmriprep:sub-05/func/sub-05_task-motor_desc-preproc_bold.nii.gz"
    assert source_uri(files["events"], roots) == "bids:raw:sub-05/func/sub-05_task-motor_events.tsv"
    with pytest.raises(ValueError, match="not inside any linked dataset"):
        source_uri(bids.parent / "elsewhere.nii.gz", roots)


def test_links_are_relative_to_output_dir(study):
    root, bids, fmriprep, _ = study
    links = dataset_links(dataset_roots(bids, [fmriprep]), root / "out")
    assert links == {"raw": "../bids", "fmriprep": "../bids/derivatives/fmriprep"}
    assert dataset_links({"raw": root / "my data"}, root / "out") == {"raw": "../my%20data"}


def test_uris_resolve_after_moving_everything_together(study, tmp_path):
    root, bids, fmriprep, files = study
    out = root / "out"
    roots = dataset_roots(bids, [fmriprep])
    write_dataset_files(out, roots)
    uris = [source_uri(files["bold"], roots), source_uri(files["events"], roots)]
    moved = tmp_path / "elsewhere" / "moved-project"
    moved.parent.mkdir()
    shutil.move(root, moved)
    assert not root.exists()
    resolved = [resolve_uri(uri, moved / "out") for uri in uris]
    assert [p.resolve() for p in resolved] == [
        (moved / files["bold"].relative_to(root)).resolve(),
        (moved / files["events"].relative_to(root)).resolve(),
    ]
    assert all(p.is_file() for p in resolved)
    # bids:: is a file of OUTPUT_DIR itself
    assert resolve_uri("bids::dataset_description.json", moved / "out").is_file()


def test_resolve_refuses_what_is_no_local_link(study):
    root, bids, fmriprep, _ = study
    out = root / "out"
    write_dataset_files(out, dataset_roots(bids, [fmriprep]))
    with pytest.raises(ValueError, match="not a BIDS URI"):
        resolve_uri("/abs/path.nii.gz", out)
    with pytest.raises(ValueError, match="no dataset 'other'"):
        resolve_uri("bids:other:sub-05/x.nii.gz", out)
    desc = json.loads((out / "dataset_description.json").read_text())
    desc["DatasetLinks"]["remote"] = "https://example.org/ds"
    (out / "dataset_description.json").write_text(json.dumps(desc))
    with pytest.raises(ValueError, match="not a local dataset"):
        resolve_uri("bids:remote:sub-05/x.nii.gz", out)


def test_description_links_and_no_invented_code_url(study, monkeypatch):
    root, bids, fmriprep, _ = study
    out = root / "out"
    monkeypatch.delenv("DEEPLIGHT_CODE_URL", raising=False)
    write_dataset_files(out, [bids, fmriprep])
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetLinks"] == {"raw": "../bids", "fmriprep": "../bids/derivatives/fmriprep"}
    assert [s["URL"] for s in desc["SourceDatasets"]] == ["../bids", "../bids/derivatives/fmriprep"]
    assert "CodeURL" not in desc["GeneratedBy"][0]
    assert str(root) not in (out / "dataset_description.json").read_text()
    monkeypatch.setenv("DEEPLIGHT_CODE_URL", "https://git.example.org/lab/deeplight-bids")
    out2 = root / "out2"
    write_dataset_files(out2, [bids, fmriprep])
    generated = json.loads((out2 / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert generated["CodeURL"] == "https://git.example.org/lab/deeplight-bids"
