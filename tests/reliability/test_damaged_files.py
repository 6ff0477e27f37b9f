"""Damaged files (issue 30): every kind of file the app writes, truncated, emptied or replaced by another file type.

One finished OUTPUT_DIR (sub-01 with LRP, quality, GLM; then the group level) is the
reference.  Each round copies it (hard links kept, as ``cp -a`` keeps them), damages files
in place (so a hard-linked work copy is damaged too, as on disk), re-runs the group level
on the damaged participant files, then the participant level, then the group level, and
asserts: no traceback, one line naming each damaged file, exit 0, and every TSV and NIfTI
byte-identical to the reference afterwards (JSON equal where it holds no time stamp).

A damaged marker (the completion sidecar whose record lists the other files: the run's
predictions sidecar, the GLM design sidecar, the accuracy and agreement summary sidecars,
the group manifest) hides which of its files are damaged too: its one line says it, and
what it records is made again.  Markers are damaged in rounds of their own.

CI cost: the reference and four "network" rounds (the run is recomputed) are five
participant runs of 20 volumes; the other rounds reuse what is intact and take seconds.
"""

import gzip
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import QUALITY_ARGS, cli_inprocess

pytestmark = pytest.mark.slow

RUN = "sub-01/func/sub-01_task-motor"
GRID = "space-MNI152NLin6Asym_res-2"
MARKER = f"{RUN}_desc-predictions_timeseries.json"

#: Per kind: path relative to OUTPUT_DIR (a "*" is globbed: first match), what a re-run does ("network": the
#: run again; "cheap": made again from intact files; "group": written again by the group level; "log": never
#: recomputed), and the marker whose record lists it (a damaged marker hides which of its files are damaged:
#: markers are damaged in rounds of their own).  Every kind docs/outputs.rst lists, but the fine-tuning's.
KINDS = {
    # per run: made by the network pass (the run marker's record lists them)
    "predictions table": (f"{RUN}_desc-predictions_timeseries.tsv", "network", "run"),
    "per-volume relevance (and its work-folder hard link)": (
        f"{RUN}_{GRID}_desc-relevance_bold.nii.gz",
        "network",
        "run",
    ),
    "faithfulness table": (f"{RUN}_desc-faithfulness_timeseries.tsv", "network", "run"),
    "faithfulness sidecar": (f"{RUN}_desc-faithfulness_timeseries.json", "network", "run"),
    "sanity table": (f"{RUN}_desc-sanity_timeseries.tsv", "network", "run"),
    "sanity sidecar": (f"{RUN}_desc-sanity_timeseries.json", "network", "run"),
    # per run, made again without the network
    "relevance sidecar": (f"{RUN}_{GRID}_desc-relevance_bold.json", "cheap", "run"),
    "relevance sums (work)": (".work/relevance_sums/sub-01_task-motor_sums.npz", "cheap", "run"),
    "per-volume maps' record (work)": (
        f".work/relevance_volumes/sub-01_task-motor_{GRID}_desc-relevance_bold.json",
        "cheap",
        "run",
    ),
    "GLM design table": (f"{RUN}_desc-glm_timeseries.tsv", "cheap", "glm"),
    "GLM statistical map": (f"{RUN}_{GRID}_contrast-MOTORrhVsOthers_stat-t_statmap.nii.gz", "cheap", "glm"),
    "GLM statistical map sidecar": (
        f"{RUN}_{GRID}_contrast-MOTORlhVsBaseline_stat-effect_statmap.json",
        "cheap",
        "glm",
    ),
    # per participant
    "mean relevance map": (
        f"sub-01/func/sub-01_task-motor_{GRID}_label-MOTORrh_desc-mean_relevance.nii.gz",
        "cheap",
        "summary",
    ),
    "mean relevance map sidecar": (
        f"sub-01/func/sub-01_task-motor_{GRID}_label-MOTORrh_desc-mean_relevance.json",
        "cheap",
        "summary",
    ),
    "accuracy summary": ("sub-01/func/sub-01_desc-accuracy_summary.tsv", "cheap", "summary"),
    "GLM agreement table": ("sub-01/func/sub-01_desc-glmagreement_summary.tsv", "cheap", "agreement"),
    # dataset files
    "dataset description": ("dataset_description.json", "cheap", None),
    "README": ("README.md", "cheap", None),
    ".bidsignore": (".bidsignore", "cheap", None),
    # group level (written again by every group run)
    "group table": ("group/task-motor_desc-accuracy_summary.tsv", "group", "group"),
    "group table sidecar": ("group/task-motor_desc-confusion_counts.json", "group", "group"),
    "group map": (f"group/task-motor_{GRID}_contrast-MOTORrh_stat-effect_statmap.nii.gz", "group", "group"),
    "group GLM agreement": ("group/task-motor_desc-glmagreement_summary.tsv", "group", "group"),
    "group quality table": ("group/task-motor_desc-faithfulness_summary.tsv", "group", "group"),
    "group report": ("deeplight_report.html", "group", "group"),
    # a job's run table: never recomputed (a record of that job); the group report reads it
    "job run table": ("logs/runs-*.tsv", "log", None),
}
#: The markers: the file whose record lists the others of its kind (see KINDS), and what a re-run does.
MARKERS = {
    "run": (MARKER, "network"),
    "glm": (f"{RUN}_desc-glm_timeseries.json", "cheap"),
    "summary": ("sub-01/func/sub-01_desc-accuracy_summary.json", "cheap"),
    "agreement": ("sub-01/func/sub-01_desc-glmagreement_summary.json", "cheap"),
    "group": ("group/group_manifest.json", "group"),
}
BLOCK_KINDS = {
    "block relevance": f"{RUN}_{GRID}_desc-blocks_relevance.nii.gz",
    "block table": f"{RUN}_{GRID}_desc-blocks_relevance.tsv",
    "block sidecar": f"{RUN}_{GRID}_desc-blocks_relevance.json",
}
MODES = ("truncate", "empty", "other")


def damage(path, mode):
    """Damage ``path`` in place (the same inode: its hard links are damaged too)."""
    data = path.read_bytes()
    if mode == "truncate":
        new = data[: max(len(data) // 2, 1) if len(data) > 1 else 0]
    elif mode == "empty":
        new = b""
    else:  # another file type: JSON where a binary file was, gzip bytes where a text file was
        binary = path.name.endswith((".gz", ".npz", ".npy", ".keras", ".h5", ".png"))
        new = b'{"not": "this file"}\n' if binary else gzip.compress(b"not this file\n" * 8, mtime=0)
    with open(path, "r+b") as fobj:  # in place, never a new file
        fobj.truncate(0)
        fobj.write(new)


def resolve(out, rel):
    found = sorted(Path(out).glob(rel)) if "*" in rel else [Path(out) / rel]
    assert found and found[0].is_file(), rel
    return found[0]


def _participant(bids, out, model, *extra):
    return cli_inprocess(
        [
            bids,
            out,
            "participant",
            "--participant-label",
            "01",
            "--weights",
            model,
            "--skip-bids-validation",
            "--nprocs",
            "1",
            "--batch-size",
            "4",
            *QUALITY_ARGS,
            *extra,
        ]
    )


def _group(bids, out):
    return cli_inprocess([bids, out, "group", "--skip-bids-validation"])


def _copy(src, dst):
    """``cp -a``: hard links inside the tree stay hard links (as an HPC copy with ``cp -a`` or ``rsync -H``)."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def _compared(out):
    """Files compared with the reference: all but job logs and hidden temporaries (``.bidsignore`` and the work folder
    are compared)."""
    names = []
    for path in Path(out).rglob("*"):
        name = str(path.relative_to(out))
        if path.is_file() and not name.startswith("logs/") and (not path.name.startswith(".") or name == ".bidsignore"):
            names.append(name)
    return sorted(names)


def assert_equal_outputs(ref, out):
    names = _compared(ref)
    assert names == _compared(out)
    for name in names:
        a, b = Path(ref) / name, Path(out) / name
        if name.endswith((".tsv", ".nii.gz", ".npz", ".md")) or name == ".bidsignore":
            assert a.read_bytes() == b.read_bytes(), name
        elif name.endswith(".json"):
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            for obj in (x, y):
                obj.pop("Created", None)  # the group manifest's time stamp
                obj.pop("Files", None)  # the record of a JSON holding a time stamp differs with it
            assert x == y, name
        else:
            assert b.read_bytes(), name  # the report: written again (it holds the time it was made)


def assert_named(stderr, paths):
    """No traceback, and one line per damaged file that names it and says it is damaged."""
    assert "Traceback" not in stderr, stderr[-4000:]
    lines = stderr.splitlines()
    for path in paths:
        hits = [line for line in lines if Path(path).name in line and ("damaged" in line or "unreadable" in line)]
        assert hits, (str(path), stderr[-4000:])


@pytest.fixture(scope="module")
def reference(small_dataset, rel_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("damage_ref") / "out"
    code, stderr = _participant(small_dataset.bids_dir, out, rel_model)
    assert code == 0, stderr[-4000:]
    code, stderr = _group(small_dataset.bids_dir, out)
    assert code == 0, stderr[-4000:]
    return out


def _round(reference, bids, model, out, picked, mode):
    """Damage ``picked`` with ``mode``; group on the damage, participant, group: returns the stderr of all three."""
    _copy(reference, out)
    paths = {name: resolve(out, rel) for name, rel in picked.items()}
    for path in paths.values():
        damage(path, mode)
    # the group level on the damaged participant files: one line per unusable file, exit 0 or 3, no traceback
    code, first = _group(bids, out)
    assert code in (0, 3), first[-4000:]
    assert "Traceback" not in first, first[-4000:]
    code, participant = _participant(bids, out, model)
    assert code == 0, participant[-4000:]
    code, group = _group(bids, out)
    assert code == 0, group[-4000:]
    return paths, first, participant + group


@pytest.mark.parametrize("mode", MODES)
def test_damaged_files_are_named_and_recomputed(reference, small_dataset, rel_model, tmp_path, mode):
    """Every kind at once (the run is recomputed): group on the damage, participant, group; equal to the reference."""
    picked = {name: rel for name, (rel, _, _) in KINDS.items()}
    paths, first, later = _round(reference, small_dataset.bids_dir, rel_model, tmp_path / "out", picked, mode)
    # the group on the damage: stops at the damaged dataset description (one line); nothing written
    assert_named(first, [paths["dataset description"]])
    assert_named(later, [p for name, p in paths.items() if KINDS[name][1] != "log"])
    # not recomputed: the earlier job's run table stays as it is (a record of that job; --verify lists it)
    paths["job run table"].unlink()
    assert_equal_outputs(reference, tmp_path / "out")


@pytest.mark.parametrize("mode", ["empty", "truncate", "other"])
def test_damaged_markers_are_named_and_recomputed(reference, small_dataset, rel_model, tmp_path, mode):
    """The markers (completion sidecars holding the records) with the files they record: the marker's line says it.

    The run marker is damaged in the "empty" round (a network pass); its other two damages
    are :func:`test_damaged_run_marker_is_one_line_and_a_recompute` (no network).
    """
    markers = {k: rel for k, (rel, how) in MARKERS.items() if mode == "empty" or how != "network"}
    picked = {**{name: rel for name, (rel, _, marker) in KINDS.items() if marker in markers}, **markers}
    paths, first, later = _round(reference, small_dataset.bids_dir, rel_model, tmp_path / "out", picked, mode)
    assert_named(first + later, [paths[k] for k in markers])  # the group's: by its first run, on the damage
    assert_equal_outputs(reference, tmp_path / "out")


@pytest.mark.parametrize("shift", range(3))
def test_cheap_repairs_without_the_network(reference, small_dataset, rel_model, tmp_path, shift):
    """Files a re-run makes again from intact ones (sums, sidecars, summaries, GLM): no network pass."""
    out = _copy(reference, tmp_path / "out")
    cheap = [name for name, (_, how, _) in KINDS.items() if how == "cheap"]
    # the relevance sidecar and the work folder's record of the maps are made from each other: one at a time
    cheap.remove("relevance sidecar" if shift == 1 else "per-volume maps' record (work)")
    picked = {}
    for i, name in enumerate(cheap):
        path = resolve(out, KINDS[name][0])
        damage(path, MODES[(i + shift) % 3])
        picked[name] = path
    code, stderr = _participant(small_dataset.bids_dir, out, rel_model)
    assert code == 0, stderr[-4000:]
    assert_named(stderr, picked.values())
    assert "quality measures on" not in stderr  # no network pass
    code, group = _group(small_dataset.bids_dir, out)
    assert code == 0, group[-4000:]
    assert_equal_outputs(reference, out)


def test_block_outputs_are_made_again_from_the_work_folder(reference, small_dataset, rel_model, tmp_path):
    """``--relevance-maps blocks``: its map, table and sidecar, each damaged three ways, made again without the network."""
    blocks_ref = _copy(reference, tmp_path / "blocks_ref")
    code, stderr = _participant(small_dataset.bids_dir, blocks_ref, rel_model, "--relevance-maps", "blocks")
    assert code == 0, stderr[-4000:]
    for shift in range(3):
        out = tmp_path / f"blocks_{shift}"
        shutil.rmtree(out, ignore_errors=True)
        _copy(blocks_ref, out)
        picked = {}
        for i, (name, rel) in enumerate(BLOCK_KINDS.items()):
            picked[name] = resolve(out, rel)
            damage(picked[name], MODES[(i + shift) % 3])
        code, stderr = _participant(small_dataset.bids_dir, out, rel_model, "--relevance-maps", "blocks")
        assert code == 0, stderr[-4000:]
        assert_named(stderr, picked.values())
        assert "quality measures on" not in stderr
        for rel in BLOCK_KINDS.values():
            assert (out / rel).read_bytes() == (blocks_ref / rel).read_bytes(), rel


@pytest.mark.parametrize("mode", ["truncate", "other"])
def test_damaged_run_marker_is_one_line_and_a_recompute(reference, mode, tmp_path):
    """The run's completion marker itself: one line naming it, the run not complete (recomputed)."""
    from deeplight_bids.derivatives import naming, resume

    out = _copy(reference, tmp_path / "out")
    damage(out / MARKER, mode)
    outputs = naming.run_outputs(out, {"subject": "01", "task": "motor"})
    config = SimpleNamespace(
        inputs=SimpleNamespace(output_dir=out, work_dir=out / ".work"),
        participant=SimpleNamespace(lrp=True, relevance_maps="volumes", compare_attributions=None),
    )
    lines = []

    class Log:
        def warning(self, fmt, *args):
            lines.append(fmt % args)

        info = debug = warning

    assert not resume.is_complete(outputs, config, "any settings", True, log=Log())
    marker_lines = [line for line in lines if str(out / MARKER) in line and "damaged" in line]
    assert len(marker_lines) == 1, lines


def test_verify_lists_damaged_files_and_writes_nothing(reference, small_dataset, tmp_path):
    """``participant --verify``: 0 on the finished OUTPUT_DIR; one line per damaged file and exit 5 after damage,
    a changed byte inside a gzip member of the per-volume maps included; nothing written."""
    from tests.conftest import tree_digest

    out = _copy(reference, tmp_path / "out")
    argv = [small_dataset.bids_dir, out, "participant", "--verify", "--skip-bids-validation"]
    code, stderr = cli_inprocess(argv)
    assert code == 0, stderr[-3000:]
    assert ", 0 damaged" in stderr
    relevance = resolve(out, KINDS["per-volume relevance (and its work-folder hard link)"][0])
    with open(relevance, "r+b") as fobj:  # one byte in the middle of a member: same size, same member trailers
        fobj.seek(relevance.stat().st_size // 2)
        byte = fobj.read(1)
        fobj.seek(-1, 1)
        fobj.write(bytes([byte[0] ^ 0xFF]))
    # job logs have no record: found when unreadable (empty, not text, no header), not when cut short
    modes = {
        "predictions table": "truncate",
        "relevance sums (work)": "empty",
        "group map": "other",
        "job run table": "empty",
        "README": "truncate",
    }
    picked = {name: resolve(out, KINDS[name][0]) for name in modes}
    for name, path in picked.items():
        damage(path, modes[name])
    before = tree_digest(out)
    code, stderr = cli_inprocess(argv)
    assert code == 5, stderr[-3000:]
    assert tree_digest(out) == before  # nothing written, nothing removed
    damaged_lines = [line for line in stderr.splitlines() if "damaged: " in line]
    for path in [relevance, *picked.values()]:
        assert sum(str(path) in line for line in damaged_lines) == 1, (path, stderr[-3000:])
    # the work folder's copy is the same file (a hard link): listed too
    assert any("relevance_volumes" in line and relevance.name in line for line in damaged_lines)
    assert_named(stderr, [])  # no traceback
