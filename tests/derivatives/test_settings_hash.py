"""Every setting declares how it bears on a run's outputs; the hashed ones change the settings hash (issue 28).

A re-run keeps a run's outputs when its settings hash (:func:`resume.settings_hash`) is the
one they were made with, so an option that changes the outputs but not the hash would leave
stale outputs "complete".  Each config field carries a decision (``deeplight_bids.config``,
module docstring); these tests make a new field choose one, check that each ``"hashed"``
field moves the hash as the participant level computes it, and pin the hashes of existing
settings, which must not move (users' finished outputs would be recomputed).
"""

import dataclasses
import types

import numpy as np
import pytest

from deeplight_bids.attribution.methods import STANDARD_SET, parameters_from, published_method, resolve
from deeplight_bids.config import DECISIONS, HASHED, OUTPUTS, SECTIONS, Config, default, output_decisions
from deeplight_bids.derivatives import resume
from deeplight_bids.quality.compare import AttributionComparison
from deeplight_bids.quality.plausibility import find_reference_files
from deeplight_bids.quality.run_quality import RunQuality

WEIGHTS_SHA256 = "0" * 64
#: Two layers with kernels: all the comparison's settings read of a model (its randomisation cascade).
MODEL = types.SimpleNamespace(
    layers=[types.SimpleNamespace(name=name, weights=[np.zeros((2, 2))]) for name in ("conv", "dense")]
)
#: The model's states, for the ``--reference-map`` files.
STATES = ("body", "face")


def participant_hash(config, architecture="3D", user_state_map=None):
    """``settings_hash`` as :class:`~deeplight_bids.workflows.run.RunProcessor` computes it, without model or data.

    The quality and comparison settings are built as there (``RunProcessor.__init__`` and
    ``_comparison``); keep the two in step.
    """
    quality = None
    if config.lrp and config.quality:
        explainer = types.SimpleNamespace(model=MODEL)
        quality = RunQuality(explainer, None, config.quality_volumes, seed=config.seed).settings()
    comparison = None
    if config.lrp and config.compare_attributions is not None:
        published = published_method(architecture, config.lrp_rule)
        methods = []
        for name in [published, *(config.compare_attributions or STANDARD_SET)]:
            method = resolve(name, architecture, config.lrp_rule)
            if method.name not in [m.name for m in methods]:
                methods.append(method)
        references = None
        if config.reference_map is not None:  # the settings name the states with a map, not the arrays
            references = dict.fromkeys(find_reference_files(config.reference_map, STATES))
        comparison = AttributionComparison(
            MODEL,
            methods,
            published,
            None,
            config.compare_volumes,
            seed=config.seed,
            parameters=parameters_from(config),
            references=references,
            reference_top_percent=config.reference_top_percent,
        ).settings()
    return resume.settings_hash(
        config, WEIGHTS_SHA256, architecture, user_state_map, quality, comparison_settings=comparison
    )


def _fields():
    """``(owner, field)`` of every section field and of :class:`Config`'s own settings."""
    owned = [(cls.__name__, f) for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    return owned + [("Config", f) for f in dataclasses.fields(Config) if f.name not in SECTIONS]


def test_every_setting_has_a_decision():
    missing = [f"{owner}.{f.name}" for owner, f in _fields() if f.metadata.get(OUTPUTS) not in DECISIONS]
    assert not missing, (
        f"give these settings an outputs decision in config.py (one of {DECISIONS}; see its module docstring), "
        f"and hash the ones that change a run's outputs: {', '.join(missing)}"
    )
    decisions = output_decisions()
    assert len(decisions) == len(_fields())  # one flat name per field
    assert set(decisions.values()) <= set(DECISIONS)


#: Flat name of each hashed setting -> (another valid value, the settings under which it bears on the
#: outputs, architecture).  "REFERENCE" stands for a --reference-map folder (fixture ``references``).
CHANGES = {
    "allow_approximate_space": (True, {}, "3D"),
    "smoothing_fwhm": (6.0, {}, "3D"),
    "high_pass": (None, {}, "3D"),
    "lrp": (False, {}, "3D"),
    "lrp_target": ("true", {}, "3D"),
    "lrp_rule": ("signed", {}, "2D"),  # 3D has one published rule
    "attribution": ("gradient", {}, "3D"),
    "ig_steps": (8, {"attribution": "integrated_gradients"}, "3D"),
    "smoothgrad_samples": (4, {"attribution": "smoothgrad"}, "3D"),
    "smoothgrad_noise": (0.1, {"attribution": "smoothgrad"}, "3D"),
    "lrp_epsilon": (0.1, {"attribution": "epsilon"}, "3D"),
    "compare_attributions": (("gradient",), {}, "3D"),
    "compare_volumes": (4, {"compare_attributions": ()}, "3D"),
    "relevance_maps": ("means", {}, "3D"),
    "save_tfrecords": (True, {}, "3D"),
    "quality": (False, {}, "3D"),
    "quality_volumes": (6, {}, "3D"),
    "reference_map": ("REFERENCE", {"compare_attributions": ()}, "3D"),
    "reference_top_percent": (5.0, {"compare_attributions": (), "reference_map": "REFERENCE"}, "3D"),
    "seed": (1, {}, "3D"),  # the quality measures' (on by default)
}


def _reference_folder(folder, content):
    folder.mkdir()
    for state in STATES:  # only names and bytes are read for the hash
        (folder / f"label-{state}_map.nii.gz").write_bytes(f"{state} {content}".encode())
    return folder


@pytest.fixture
def references(tmp_path):
    return _reference_folder(tmp_path / "reference", "a")


def test_every_hashed_setting_is_checked():
    hashed = {name for name, decision in output_decisions().items() if decision == HASHED}
    assert hashed == set(CHANGES), "give each hashed setting a changed value in CHANGES (and drop the others)"


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_hashed_setting_changes_the_hash(name, references):
    def real(value):
        return references if isinstance(value, str) and value == "REFERENCE" else value

    value, context, architecture = CHANGES[name]
    context = {key: real(v) for key, v in context.items()}
    assert real(value) != default(name)
    before = participant_hash(Config(**context), architecture)
    after = participant_hash(Config(**context, **{name: real(value)}), architecture)
    assert before != after, f"--{name.replace('_', '-')} changes a run's outputs but not its settings hash"


def test_reference_map_content_is_hashed(tmp_path):
    """Another --reference-map with maps of the same states: the comparison's plausibility changes."""
    a, b = (_reference_folder(tmp_path / name, name) for name in "ab")
    same = _reference_folder(tmp_path / "copy", "a")
    hashes = [participant_hash(Config(compare_attributions=(), reference_map=p)) for p in (a, b, same)]
    assert hashes[0] != hashes[1]
    assert hashes[0] == hashes[2]  # the files' content, not their place


#: Hashes of settings made before the decisions (issue 28), at version 0.1.0: they must not move, or
#: finished outputs would be recomputed.  A change that means to move them (another measure, a new
#: default) updates them here and says so.
PINNED = [
    ({}, "3D", "2eded58437948417"),
    ({}, "2D", "ec2c17a675a132b7"),
    ({"quality": False}, "3D", "d3bd10022afbea93"),
    ({"lrp": False}, "3D", "cb9ba41ddf4a47dd"),
    ({"attribution": "smoothgrad", "seed": 3}, "3D", "1144d7376ea6f795"),
    ({"compare_attributions": ()}, "3D", "458a2097978dc5b3"),
    ({"relevance_maps": "means", "allow_approximate_space": True, "lrp_rule": "signed"}, "2D", "ab57478c158237ee"),
]


@pytest.mark.parametrize(("settings", "architecture", "expected"), PINNED)
def test_existing_hashes_are_unchanged(monkeypatch, settings, architecture, expected):
    monkeypatch.setattr(resume, "__version__", "0.1.0")  # a release moves every hash, by design
    assert participant_hash(Config(**settings), architecture) == expected


def test_state_map_content_is_hashed(monkeypatch):
    """``--state-map`` is "elsewhere": its content enters as ``user_state_map``."""
    monkeypatch.setattr(resume, "__version__", "0.1.0")
    assert participant_hash(Config(), user_state_map={"a": {"b": "c"}}) == "2852d5d460b02819"
