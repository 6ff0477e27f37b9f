"""--compare-attributions: every method through the same checks, on the same volumes, one table per run."""

import json

import numpy as np
import pandas as pd
import pytest

from deeplight_bids.attribution.methods import get_method
from deeplight_bids.quality import compare, sanity

SHAPE = (12, 14, 12, 1)


@pytest.fixture(scope="module")
def setup():
    import keras

    from deeplight_bids.models.decode import Decoder
    from deeplight_bids.models.three import build_3d_deeplight

    keras.utils.set_random_seed(0)
    # Keras' own initialisation and a positive output bias: no output unit is dead (a dead one has constant maps)
    model = build_3d_deeplight(n_states=3, input_shape=SHAPE, output_bias=0.1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, *SHAPE)).astype(np.float32)
    mask = np.zeros(SHAPE[:-1], bool)
    mask[2:10, 2:12, 2:10] = True
    x[:, ~mask] = 0
    decoder = Decoder(model)
    logits = decoder.logits(x)
    return model, x, mask, decoder, logits


def test_table_has_every_check_of_every_method(setup, tmp_path):
    from deeplight_bids.derivatives import naming

    model, x, mask, decoder, logits = setup
    methods = [get_method(n) for n in ("preset_b_flat", "gradient_x_input", "integrated_gradients", "epsilon_plus")]
    comparison = compare.AttributionComparison(
        model,
        methods,
        "preset_b_flat",
        decoder,
        n_volumes=8,
        seed=1,
        max_batch=4,
        stem_batch=None,
        parameters={"steps": 4},
        references={"lh": np.pad(np.ones((4, 4, 4)), [(2, 6), (4, 6), (2, 6)]).astype(np.float32)},
        reference_top_percent=10,
    )
    outputs = naming.run_outputs(tmp_path, {"subject": "01", "task": "motor"})
    targets = logits.argmax(axis=1)
    index = np.flatnonzero(mask.ravel())
    summary = comparison.evaluate(
        outputs, lambda a, b: x[a:b], index, logits, targets, ("lh", "rh", "t"), [0, 1, 2], root=tmp_path
    )
    table = pd.read_csv(outputs["attributions"], sep="\t", keep_default_na=False)
    assert list(dict.fromkeys(table["method"])) == [m.name for m in methods]
    stages = [str(s) for s in comparison.stages[:-1]] + ["all"]
    for m in methods:
        rows = table[table["method"] == m.name]
        checks = set(rows["check"])
        assert {
            "deletion_area",
            "deletion_area_ratio",
            "decision_change_fraction",
            "class_sensitivity_spearman",
            "randomisation_spearman",
            "randomisation_ssim",
            "seconds_per_volume",
            "cost_vs_decoding",
        } <= checks
        cascade = rows[rows["check"] == "randomisation_spearman"]["stage"].tolist()
        assert cascade == (["1", "all"] if m.name == "integrated_gradients" else stages), m.name
        info = summary[m.name]
        assert info["passes"] == (
            info["deletion_area_ratio"] >= compare.FAITHFUL_SHARE
            and info["randomisation_spearman"] <= compare.RANDOM_SPEARMAN_MAX
            and info["class_sensitivity_spearman"] <= compare.CLASS_SPEARMAN_MAX
        )
    reference = summary["preset_b_flat"]["deletion_area"]
    for info in summary.values():  # relative to the published rule's area; undefined where that is not positive
        if reference > 0:
            assert info["deletion_area_ratio"] == pytest.approx(info["deletion_area"] / reference)
        else:
            assert np.isnan(info["deletion_area_ratio"]) and not info["passes"]
    assert summary["integrated_gradients"]["randomisation_volumes"] == 2  # the costly checks: every fourth volume
    assert summary["gradient_x_input"]["class_sensitivity_volumes"] == 8
    side = json.loads(outputs["attributions_json"].read_text())
    assert side["Volumes"] == sorted(side["Volumes"]) and len(side["Volumes"]) == 8
    assert set(side["Methods"]) == {m.name for m in methods} and "Binder" in side["Caveat"]
    checks = side["SummaryKeys"]["checks"].split(":")[0]
    described = set(side["SummaryKeys"]) | {part.split()[0] for part in checks.split(",")}
    for info in side["Summary"].values():  # every key of the per-method summary is described
        assert set(info) <= described, set(info) - described


def test_checks_equal_their_definitions(setup, tmp_path):
    """The full-randomisation and class-sensitivity values, recomputed by hand for one method."""
    from deeplight_bids.derivatives import naming

    model, x, mask, decoder, logits = setup
    method = get_method("gradient_x_input")
    comparison = compare.AttributionComparison(
        model,
        [get_method("preset_b_flat"), method],
        "preset_b_flat",
        decoder,
        n_volumes=4,
        seed=2,
        max_batch=4,
        stem_batch=None,
    )
    outputs = naming.run_outputs(tmp_path, {"subject": "01", "task": "motor"})
    targets = logits.argmax(axis=1)
    index = np.flatnonzero(mask.ravel())
    summary = comparison.evaluate(
        outputs, lambda a, b: x[a:b], index, logits, targets, ("lh", "rh", "t"), [0, 1, 2], root=tmp_path
    )
    chosen = np.asarray(json.loads(outputs["attributions_json"].read_text())["Volumes"])
    explainer = method.explainer(model, max_batch=4)
    _, maps = explainer.explain(x[chosen], target=targets[chosen])
    randomised = explainer.for_model(sanity.randomized_copy(model, 2))
    cascade = chosen[::2]
    _, random_maps = randomised.explain(x[cascade], target=targets[cascade])
    values = [sanity.compare_maps(maps[2 * k], random_maps[k], mask)["spearman"] for k in range(len(cascade))]
    values = [v for v in values if np.isfinite(v)]  # (a randomised model's dead output gives a constant map)
    expected = np.median(values) if values else np.nan
    assert summary[method.name]["randomisation_spearman"] == pytest.approx(expected, abs=1e-6, nan_ok=True)
    similarities = []
    for j, v in enumerate(chosen):
        for other in [s for s in np.argsort(-logits[v]) if s != targets[v]]:
            _, other_map = explainer.explain(x[v : v + 1], target=int(other))
            similarities.append(compare.spearman_in_mask(maps[j], other_map[0], index))
    assert np.isfinite(similarities).all()
    assert summary[method.name]["class_sensitivity_spearman"] == pytest.approx(np.median(similarities), abs=1e-6)


@pytest.mark.parametrize("name", ["preset_b_flat", "alpha2_beta1", "gradient", "smoothgrad"])
def test_trained_model_and_cascade_stages_on_one_working_copy_equal_a_model_each(setup, name):
    """One explainer of a working copy serves the trained model and every cascade stage (each stage's randomised values
    are assigned to the copy: no new trace under TensorFlow and PyTorch); its maps are those of an explainer built on
    the trained model and on each stage's own randomised model, and the trained model is left as it was."""
    import keras

    model, x, mask, decoder, logits = setup
    method = get_method(name)
    comparison = compare.AttributionComparison(
        model,
        [get_method("preset_b_flat"), method],
        "preset_b_flat",
        decoder,
        seed=3,
        max_batch=4,
        stem_batch=None,
        parameters={"samples": 3},
    )
    before = [keras.ops.convert_to_numpy(w.value).copy() for w in model.weights]
    explainer = method.explainer(model, max_batch=4, stem_batch=None, samples=3)
    target = logits[:3].argmax(axis=1)
    _, trained_maps = explainer.explain(x[:3], target=target)
    for _ in range(2):  # the second time after the stages: the trained values are assigned again
        trained, stage_explainer = comparison._explainers(method)
        np.testing.assert_array_equal(trained.explain(x[:3], target=target)[1], trained_maps)
        assert len(comparison.stages) >= 2
        for n_blocks in comparison.stages + comparison.stages[:1]:  # back to the first: nothing of a later one stays
            _, expected = explainer.for_model(comparison.randomised(n_blocks)).explain(x[:3], target=target)
            _, got = stage_explainer(n_blocks).explain(x[:3], target=target)
            np.testing.assert_array_equal(got, expected)
    for w, value in zip(model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w.value), value)


def test_the_published_rule_must_be_compared(setup):
    model, _, _, decoder, _ = setup
    with pytest.raises(ValueError, match="published rule"):
        compare.AttributionComparison(model, [get_method("gradient")], "preset_b_flat", decoder)


def test_method_sums_round_trip_and_damaged_file(tmp_path, caplog):
    """The per-method sums kept for the GLM agreement read back as written; a damaged file costs those rows only
    (one warning naming the file and the fix), never a traceback."""
    from deeplight_bids.quality.compare import read_method_sums, save_method_sums

    total = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = tmp_path / "sums.npz"
    save_method_sums(path, {"gradient": {"MOTOR_lh": (total, 3)}})
    back = read_method_sums(path)
    assert list(back) == ["gradient"] and back["gradient"]["MOTOR_lh"][1] == 3
    np.testing.assert_array_equal(back["gradient"]["MOTOR_lh"][0], total)
    path.write_bytes(path.read_bytes()[:40])  # cut short, as by a full disk
    with caplog.at_level("WARNING", logger="deeplight_bids"):
        assert read_method_sums(path) == {}
    assert str(path) in caplog.text and "--overwrite" in caplog.text
    assert read_method_sums(tmp_path / "absent.npz") == {}
