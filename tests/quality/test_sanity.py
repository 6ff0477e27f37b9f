"""Model-parameter randomisation check: SSIM, rank correlation, the randomised copy, the run evaluator."""

import numpy as np
import pytest
from scipy import ndimage, stats

from deeplight_bids.quality import sanity


def test_ssim_identity_scale_and_independence():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.normal(size=(20, 18, 16)), 2)
    assert sanity.ssim(a, a) == pytest.approx(1.0)
    assert sanity.ssim(a, 7.5 * a) == pytest.approx(1.0)  # signed ranks: scale-free
    b = ndimage.gaussian_filter(rng.normal(size=a.shape), 2)
    assert abs(sanity.ssim(a, b)) < 0.3
    # heavy-tailed independent maps must not look alike (scaled by their maximum, most voxels would be ~0)
    heavy_a, heavy_b = rng.standard_cauchy(size=(2, *a.shape))
    assert abs(sanity.ssim(heavy_a, heavy_b)) < 0.1
    mask = np.zeros(a.shape, bool)
    mask[5:15, 5:13, 4:12] = True
    assert sanity.ssim(a, a, mask) == pytest.approx(1.0)


def test_ssim_one_voxel_from_the_formula():
    """Wang et al. (2004) eq. 13 at the centre voxel, with an explicit Gaussian window."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 15, 15, 15))
    b[7, 7, 7] = 40.0  # an outlier: only its rank counts
    a_n = np.sign(a) * stats.rankdata(np.abs(a).ravel()).reshape(a.shape) / a.size
    b_n = np.sign(b) * stats.rankdata(np.abs(b).ravel()).reshape(b.shape) / b.size
    grid = np.arange(15) - 7
    g = np.exp(-(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2) / (2 * 1.5**2))
    g[np.sqrt(0 * g) + np.maximum.reduce(np.abs(np.meshgrid(grid, grid, grid, indexing="ij"))) > 5] = (
        0  # truncate 3.5 sigma
    )
    g /= g.sum()
    mu_a, mu_b = (g * a_n).sum(), (g * b_n).sum()
    va, vb = (g * a_n**2).sum() - mu_a**2, (g * b_n**2).sum() - mu_b**2
    cov = (g * a_n * b_n).sum() - mu_a * mu_b
    c1, c2 = 0.02**2, 0.06**2
    expected = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    np.testing.assert_allclose(sanity._unit(a), a_n, rtol=1e-12)
    assert sanity._ssim_map(a_n, b_n)[7, 7, 7] == pytest.approx(expected, rel=1e-6)


def test_ssim_ranks_inside_the_mask_only():
    """Ranked over the whole grid, out-of-mask zeros squeezed in-mask magnitudes to ~1 and two independent maps of
    one sign looked alike; ranked inside the mask they do not, and what lies outside the mask does not count."""
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 44, 40), bool)
    mask[12:28, 12:32, 12:28] = True  # ~15 % of the grid, as a brain is ~24 % of the reference grid

    def positive_map():
        v = ndimage.gaussian_filter(rng.normal(size=mask.shape), 2)
        return np.where(mask, v - v[mask].min() + 1e-3, 0)  # all positive inside

    a, b = positive_map(), positive_map()
    assert abs(sanity.ssim(a, b, mask)) < sanity.HIGH_SIMILARITY  # not flagged
    whole_grid = sanity._ssim_map(sanity._unit(a), sanity._unit(b))[mask].mean()  # the former measure
    assert whole_grid > 0.9
    outside = np.where(mask, b, rng.normal(size=mask.shape))
    assert sanity.ssim(a, outside, mask) == pytest.approx(sanity.ssim(a, b, mask))
    assert sanity.compare_maps(a, outside, mask) == pytest.approx(sanity.compare_maps(a, b, mask))


def test_compare_maps_equals_scipy_spearman():
    rng = np.random.default_rng(4)
    real, random = ndimage.gaussian_filter(rng.normal(size=(2, 16, 16, 16)), (0, 2, 2, 2))
    mask = np.zeros(real.shape, bool)
    mask[3:13, 2:14, 4:12] = True
    got = sanity.compare_maps(real, random, mask)
    assert got["spearman"] == pytest.approx(stats.spearmanr(real[mask], random[mask]).statistic, rel=1e-9)
    assert got["spearman_abs"] == pytest.approx(
        stats.spearmanr(np.abs(real[mask]), np.abs(random[mask])).statistic, rel=1e-9
    )
    # cutting to the mask's box changes nothing
    assert got["ssim"] == pytest.approx(
        sanity._ssim_map(sanity._unit(real, mask), sanity._unit(random, mask))[mask].mean(), rel=1e-12
    )

    # a map prepared once and compared with several gives the same numbers, to the bit
    prepared = sanity.PreparedMap(real, mask)
    for other in (random, random[::-1], 0 * random):
        np.testing.assert_equal(sanity.compare_maps(prepared, other), sanity.compare_maps(real, other, mask))


def test_compare_maps_and_flag():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(8, 8, 8))
    mask = np.ones(real.shape, bool)
    same = sanity.compare_maps(real, 2 * real, mask)
    assert same["spearman"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0)
    other = sanity.compare_maps(real, rng.normal(size=real.shape), mask)
    assert abs(other["spearman"]) < 0.2
    import pandas as pd

    assert sanity.summarize(pd.DataFrame([same] * 3))["high_similarity"]
    assert not sanity.summarize(pd.DataFrame([other] * 3))["high_similarity"]


@pytest.fixture(scope="module")
def small_model():
    import keras

    from deeplight_bids.models.three import build_3d_deeplight

    keras.utils.set_random_seed(0)
    return build_3d_deeplight(n_states=3, input_shape=(12, 14, 12, 1), output_bias=0.1)


def test_randomized_copy_seeded_and_independent(small_model):
    before = [w.copy() for w in small_model.get_weights()]
    one = sanity.randomized_copy(small_model, seed=5)
    two = sanity.randomized_copy(small_model, seed=5)
    other = sanity.randomized_copy(small_model, seed=6)
    for w0, w1, w2, w3, _var in zip(before, one.get_weights(), two.get_weights(), other.get_weights(), one.weights):
        np.testing.assert_array_equal(w1, w2)
        if w0.ndim >= 2:
            assert not np.array_equal(w1, w3) and not np.array_equal(w1, w0)
            # redrawn at the trained kernel's scale (issue 32: the randomised network keeps its activation scale)
            assert np.std(w1) == pytest.approx(np.std(w0), rel=1e-5)
    for w0, w in zip(before, small_model.get_weights()):
        np.testing.assert_array_equal(w0, w)  # the trained model is untouched
    x = np.random.default_rng(0).normal(size=(2, 12, 14, 12, 1)).astype(np.float32)
    assert one.predict(x, verbose=0).shape == (2, 3)


def test_redraw_in_place_is_a_new_copy_and_explainers_see_it(small_model):
    """redraw(copy, model, s) leaves copy equal to randomized_copy(model, s), and an explainer traced before the
    redraw explains the new draw (its compiled function reads the variables at each call)."""
    from deeplight_bids.lrp.analyzer import LRPAnalyzer

    x = np.random.default_rng(2).normal(size=(1, 12, 14, 12, 1)).astype(np.float32)
    target = np.array([1], np.int32)
    copy = sanity.randomized_copy(small_model, seed=[3, 0])
    traced = LRPAnalyzer(copy, composite="preset_b_flat")
    _, first = traced.explain(x, target=target)
    sanity.redraw(copy, small_model, [3, 7])
    fresh = sanity.randomized_copy(small_model, seed=[3, 7])
    for a, b in zip(copy.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    _, again = traced.explain(x, target=target)
    _, expected = LRPAnalyzer(fresh, composite="preset_b_flat").explain(x, target=target)
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(again / scale, expected / scale, rtol=0, atol=1e-5)
    assert np.abs(again - first).max() > 0.1 * scale  # the traced function did not keep the first draw


def test_run_quality_writes_tables(small_model, tmp_path):
    """The per-run evaluator on a small model: both tables, their sidecars, the summary."""
    import json

    import pandas as pd

    from deeplight_bids.derivatives import naming
    from deeplight_bids.lrp.analyzer import LRPAnalyzer
    from deeplight_bids.models.decode import Decoder
    from deeplight_bids.quality import faithfulness
    from deeplight_bids.quality.run_quality import RunQuality

    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 12, 14, 12, 1)).astype(np.float32)
    mask = np.zeros((12, 14, 12), bool)
    mask[2:10, 2:12, 2:10] = True
    x[:, ~mask] = 0
    analyzer = LRPAnalyzer(small_model, composite="preset_b_flat")
    logits, relevance = analyzer.explain(x)
    targets = logits.argmax(axis=1)
    quality = RunQuality(analyzer, Decoder(small_model), n_volumes=4, seed=1)
    outputs = naming.run_outputs(tmp_path, {"subject": "01", "task": "motor"})
    summary = quality.evaluate(
        outputs,
        lambda a, b: x[a:b],
        lambda v: relevance[v],
        np.flatnonzero(mask.ravel()),
        logits,
        targets,
        ("lh", "rh", "t"),
        root=tmp_path,
        label="test",
    )
    curves = pd.read_csv(outputs["faithfulness"], sep="\t")
    checks = pd.read_csv(outputs["sanity"], sep="\t")
    assert len(curves) == 4 * len(faithfulness.FRACTIONS) * 2 and len(checks) == 4
    assert set(checks["volume"]) == set(summary["Volumes"]) == set(curves["volume"])
    assert checks[["spearman", "ssim"]].notna().all().all() and (checks["spearman"].abs() <= 1).all()
    side = json.loads(outputs["faithfulness_json"].read_text())
    assert side["Summary"]["n_volumes"] == 4 and "logit" in side
    assert json.loads(outputs["sanity_json"].read_text())["Summary"]["n_volumes"] == 4
    # volumes named in the tables got their own relevance (fraction 0 = the unperturbed logit)
    zero = curves[(curves["fraction"] == 0) & (curves["order"] == "relevance")].set_index("volume")
    for v, row in zero.iterrows():
        assert row["logit"] == pytest.approx(logits[v, targets[v]], rel=1e-4, abs=1e-5)
    # the precision of each figure, from the run's own volumes (the formula: test_faithfulness.py)
    assert side["Summary"]["area_between_curves_se"] > 0 and "Precision" in side
    sanity_side = json.loads(outputs["sanity_json"].read_text())
    assert sanity_side["RandomisedCopies"] and "Precision" in sanity_side
    assert all(sanity_side["Summary"][f"median_{m}_se"] > 0 for m in ("spearman", "ssim"))
    # every volume is compared with its own randomised copy (seed [1, volume]): a volume's numbers do not depend
    # on which other volumes were chosen, and they are those of a copy drawn with its seed
    v = int(checks["volume"].iloc[-1])
    own = LRPAnalyzer(sanity.randomized_copy(small_model, [1, v]), composite="preset_b_flat")
    _, own_map = own.explain(x[v : v + 1], target=targets[v : v + 1].astype(np.int32))
    expected = sanity.compare_maps(relevance[v], own_map[0], mask)
    row = checks.set_index("volume").loc[v]
    assert row["spearman"] == pytest.approx(expected["spearman"], abs=1e-6)
    assert row["ssim"] == pytest.approx(expected["ssim"], abs=1e-6)
    first = int(checks["volume"].iloc[0])
    other = sanity.compare_maps(relevance[first], own_map[0], mask)  # another volume's copy gives other numbers
    assert checks.set_index("volume").loc[first, "spearman"] != pytest.approx(other["spearman"], abs=1e-6)


def test_randomized_copy_of_some_layers_keeps_the_others(small_model):
    top = sanity.cascade_blocks(small_model)[0]
    partly = sanity.randomized_copy(small_model, seed=5, layers=top)
    for trained, layer in zip(small_model.layers, partly.layers):
        for w0, w1 in zip(trained.get_weights(), layer.get_weights()):
            if layer.name in top and w0.ndim >= 2:
                assert not np.array_equal(w0, w1), layer.name
            elif layer.name not in top:
                np.testing.assert_array_equal(w0, w1)


def test_cascade_blocks_and_stages(small_model):
    blocks = sanity.cascade_blocks(small_model)
    assert len(blocks) == 13  # twelve conv blocks and the output convolution
    assert blocks[0][0] == "conv_13" and blocks[-1][:3] == ["conv_1", "dropout_1", "bn_1"]
    assert sum(len(b) for b in blocks) == len(small_model.layers)
    assert sanity.cascade_stages(13) == [1, 3, 6, 13] and sanity.cascade_stages(1) == [1]
