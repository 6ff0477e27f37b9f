"""The HTML report: self-contained, renders in headless Chromium, handles 1 participant
and several models."""

import base64
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deeplight_bids.cli.main import run as cli

from .conftest import link_copy

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SPACE = "space-MNI152NLin6Asym_res-2"


class _Refs(HTMLParser):
    """Collect every reference an HTML page would load."""

    def __init__(self):
        super().__init__()
        self.images, self.loads, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "iframe", "embed", "source", "video", "audio") and attrs.get("src"):
            self.loads.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.loads.append(attrs["href"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def _refs(report):
    parser = _Refs()
    parser.feed(report.read_text())
    return parser


def check_images_not_broken(report):
    """Every <img> is an embedded PNG (decodable) or an existing file; nothing else is loaded."""
    refs = _refs(report)
    assert refs.images, "the report has no images"
    for src in refs.images:
        if src.startswith("data:"):
            assert src.startswith("data:image/png;base64,"), src[:40]
            raw = base64.b64decode(src.split(",", 1)[1], validate=True)
            assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 1000
        else:
            assert (report.parent / src).is_file(), f"broken image link: {src}"
    assert refs.loads == [], f"the report loads external resources: {refs.loads}"
    assert not re.search(r"url\((?!['\"]?data:)", report.read_text()), "CSS url() to an external resource"
    return refs


def find_chromium():
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "headless Chromium is required for the report screenshot test: install the Debian package "
        "'chromium' (apt-get install -y chromium)"
    )


def screenshot(report, png, height=4000):
    exe = find_chromium()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size=1280,{height}",
                report.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert png.is_file() and png.stat().st_size > 0, proc.stderr[-2000:]
    return png


def test_report_is_self_contained(varied_out):
    out, _ = varied_out
    report = out / "deeplight_report.html"
    refs = check_images_not_broken(report)
    # confusion + block time, and a glass brain + slices per group map that is not all zero (the random
    # model gives no relevance for some targets; the report says so instead of showing an empty plot)
    import nibabel as nib

    manifest = json.loads((out / "group" / "group_manifest.json").read_text())
    task = manifest["ModelGroups"][0]["Tasks"]["motor"]
    assert len(task["maps"]) >= 4  # 3 states (all volumes) + correct only where some volume was right

    def figures(entry):  # a tested map: glass brain + slices; an effect map: glass brain; an all-zero map: none
        if not np.any(np.asarray(nib.load(out / entry["files"]["effect"]).dataobj)):
            return 0
        return 2 if "z" in entry["files"] else 1

    shown = [figures(e) for e in task["maps"] + task["contrasts"]]
    assert sum(1 for f in shown if f) >= 2
    quality_figures = int((out / "group" / "task-motor_desc-faithfulness_summary.tsv").is_file())  # deletion curves
    # the GLM section (deeplight_bids/group/glm_section.py): relevance and GLM side by side per state with both maps
    from deeplight_bids.group.glm_section import relevance_map_for

    pooled = pd.read_csv(out / "group" / "task-motor_desc-glmagreement_summary.tsv", sep="\t")
    glm_states = set(pooled.loc[pooled["level"] == "participant", "state"])
    glm_shown = 0
    for state in glm_states:
        path, _ = relevance_map_for(task, state)
        glm_shown += bool(path) and bool(np.any(np.asarray(nib.load(out / path).dataobj)))
    assert len(refs.images) == 2 + sum(shown) + quality_figures + 2 * glm_shown
    for href in refs.links:  # participant links are relative and exist
        if not href.startswith("#"):
            assert not href.startswith(("http:", "https:", "/")) and (out / href).is_file(), href
    text = report.read_text()
    # the random model's maps are not signed (published preset): the means are drawn as effects, never as tests
    assert text.count("effect, not a statistic; drawn at") == sum(1 for f in shown if f == 1)
    for needle in (
        "Summary",
        "Processed and skipped",
        "Model card",
        "Confusion matrix",
        "Group relevance maps",
        "Participants",
        "Software versions",
        "Methods",
        "DeepLight",
        "layer-wise relevance propagation",
        "sub-01",
        "sub-03",
        "tensorflow",
        "WeightsSHA256",
        "arXiv:2111.01562",
    ):
        assert needle in text, needle


@pytest.mark.browser
def test_report_renders_in_headless_chromium(varied_out, tmp_path):
    import matplotlib.image as mpimg

    out, _ = varied_out
    png = screenshot(out / "deeplight_report.html", tmp_path / "report.png")
    img = mpimg.imread(png)
    assert img.shape[0] == 4000 and img.shape[1] == 1280
    rgb = (img[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours = np.unique(rgb[::7], axis=0)
    assert rgb.std() > 20, "the screenshot is (nearly) blank"
    assert len(colours) > 500, f"only {len(colours)} colours: the figures did not render"
    # the figures region (below the tables) is not white: take the middle third of the page
    middle = (img[1300:2700, :, :3] * 255).astype(np.uint8)
    assert (middle.reshape(-1, 3).std(axis=0) > 20).all()


@pytest.fixture(scope="module")
def one_participant_out(participant_out, group_bids, staged_templateflow, tmp_path_factory):
    """sub-01 complete; sub-02 only an unfinished run (predictions TSV without sidecar); sub-03 nothing."""
    root = tmp_path_factory.mktemp("group_one") / "deeplight"

    def ignore(folder, names):
        if Path(folder).name == "func" and Path(folder).parent.name == "sub-02":
            return [n for n in names if not n.endswith("_desc-predictions_timeseries.tsv")]
        return [n for n in names if n == "sub-03"]

    link_copy(participant_out, root, ignore=ignore)
    code = cli([str(group_bids.bids_dir), str(root), "group"])
    return root, code


def test_one_participant(one_participant_out):
    out, code = one_participant_out
    assert code == 0
    group = out / "group"
    assert not list(group.glob("*_stat-t_*"))
    means = sorted(group.glob(f"task-motor_{SPACE}_contrast-MOTOR*_stat-effect_statmap.nii.gz"))
    labels = sorted(p.name.split("contrast-")[1].split("_")[0] for p in means)
    assert labels == ["MOTORlh", "MOTORrh", "MOTORt"]
    sidecar = json.loads(means[0].with_name(means[0].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["NumberOfParticipants"] == 1
    text = (out / "deeplight_report.html").read_text()
    assert "With 1 participant(s) only the effect maps were computed" in text
    # the random model gives sub-01 no relevance for two states: no contrast, and the report says why
    assert text.count("not computed, no participant has usable maps: sub-01 (relevance 0 everywhere") == 3
    # missing (sub-03) and partial (sub-02) participant outputs are listed, not fatal
    assert "sub-03" in text and "no participant-level outputs" in text
    assert "sub-02_task-motor_desc-predictions_timeseries.tsv" in text and "unfinished run" in text
    table = pd.read_csv(out / "group" / "task-motor_desc-accuracy_summary.tsv", sep="\t")
    assert set(table["participant_id"]) == {"sub-01"}
    summary = pd.read_csv(
        out / "group" / "task-motor_desc-accuracygroup_summary.tsv", sep="\t", na_values="n/a", keep_default_na=False
    )
    assert summary["sd"].isna().all() and (summary["n_participants"] == 1).all()
    check_images_not_broken(out / "deeplight_report.html")


def test_reports_only_rebuilds_the_report(one_participant_out, group_bids):
    out, _ = one_participant_out
    manifest = out / "group" / "group_manifest.json"
    before = json.loads(manifest.read_text())
    stamps = {p: p.stat().st_mtime_ns for p in (out / "group").iterdir() if p != manifest}
    (out / "deeplight_report.html").unlink()
    assert cli([str(group_bids.bids_dir), str(out), "group", "--reports-only"]) == 0
    assert (out / "deeplight_report.html").is_file()
    assert {p: p.stat().st_mtime_ns for p in (out / "group").iterdir() if p != manifest} == stamps
    # the manifest is written again only to record the new report's size and checksum (--verify)
    after = json.loads(manifest.read_text())
    assert {k: v for k, v in after.items() if k != "Files"} == {k: v for k, v in before.items() if k != "Files"}
    assert "deeplight_report.html" in after["Files"]


def test_models_are_never_mixed(varied_out, group_bids, tmp_path):
    """sub-03 'processed by another model' (its sidecars say so): reported separately."""
    from deeplight_bids.derivatives.writers import write_json

    src, _ = varied_out
    out = link_copy(
        src,
        tmp_path / "deeplight",
        ignore=shutil.ignore_patterns("group", "deeplight_report.html", "*_desc-relevance_bold.nii.gz"),
    )
    other = "f" * 64
    for path in (out / "sub-03" / "func").glob("*.json"):
        meta = json.loads(path.read_text())
        if "Model" in meta:
            meta["Model"] = {**meta["Model"], "WeightsSHA256": other, "Name": "other"}
            write_json(path, meta)
    assert cli([str(group_bids.bids_dir), str(out), "group"]) == 0
    folders = sorted(p.name for p in (out / "group").iterdir() if p.is_dir())
    assert len(folders) == 2 and "model-ffffffffffff" in folders
    from .conftest import read_tsv

    for folder in folders:
        table = read_tsv(out / "group" / folder / "task-motor_desc-accuracy_summary.tsv")
        subs = set(table["participant_id"])
        assert subs == ({"sub-03"} if folder == "model-ffffffffffff" else {"sub-01", "sub-02"})
        side = json.loads(
            (out / "group" / folder / f"task-motor_{SPACE}_contrast-MOTORlh_stat-effect_statmap.json").read_text()
        )
        assert side["NumberOfParticipants"] == len(subs)
        assert (side["Model"]["WeightsSHA256"] == other) == (folder == "model-ffffffffffff")
    assert not list((out / "group" / "model-ffffffffffff").glob("*_stat-t_*"))
    text = (out / "deeplight_report.html").read_text()
    assert "several different models" in text and "Model 2" in text


def test_report_template_escapes_values_and_lists_every_section(tmp_path):
    """The templates escape values as :func:`html.escape` did before them, and the nav links every section.

    MarkupSafe (jinja2's own escaping) would write a quote as ``&#39;``: the report's bytes would change.
    """
    from types import SimpleNamespace

    from deeplight_bids.group.report import write_report
    from deeplight_bids.group.stats import Inventory

    label = "01<script>alert('x')</script>"
    inventory = Inventory(
        tmp_path, expected=[label], problems=[{"participant": label, "item": "a & b", "problem": "<i>"}]
    )
    templates = SimpleNamespace(
        description="MNI <b>'152'</b>", source="templateflow", provenance=lambda: {"Template": '<"x">'}
    )
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "finetune-comparison_arch-2D.tsv").write_text("fold\tdifference\nall\t0.25\n")
    text = write_report(tmp_path, {"ModelGroups": [], "Created": "<script>"}, inventory, templates).read_text()
    assert "<script>" not in text and "<i>" not in text
    assert "<td>sub-01&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;</td><td class='bad'>skipped</td>" in text
    assert "<td>a &amp; b</td><td>&lt;i&gt;</td>" in text and "<td>MNI &lt;b&gt;&#x27;152&#x27;&lt;/b&gt;</td>" in text
    assert "Templates: {&quot;Template&quot;: &quot;&lt;\\&quot;x\\&quot;&gt;&quot;}" in text
    sections = re.findall(r"<section id='([^']+)'", text)
    nav = re.search(r"<nav>(.*?)</nav>", text).group(1)
    assert sections == ["summary", "processing", "participants", "finetune", "software", "methods"]
    assert sorted(re.findall(r"<a href='#([^']+)'>", nav)) == sorted(sections)
    assert text.startswith("<!DOCTYPE html><html lang='en'><head>") and text.endswith("</html>\n")
