"""The gradient-based methods on keras.ops, and the registry of every attribution method."""

import numpy as np
import pytest

from deeplight_bids.attribution import methods

SHAPE = (12, 14, 12, 1)


@pytest.fixture(scope="module")
def model():
    import keras

    from deeplight_bids.models.three import build_3d_deeplight
    from tests.models.legacy_h5 import randomise_weights

    keras.utils.set_random_seed(0)
    return randomise_weights(build_3d_deeplight(n_states=3, input_shape=SHAPE), seed=3)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)


def explainer(name, model, **parameters):
    return methods.get_method(name).explainer(model, max_batch=2, stem_batch=None, **parameters)


def test_gradient_equals_finite_differences_of_the_target_logit(model, x):
    logits, maps = explainer("gradient", model).explain(x[:1], target=1)
    assert maps.shape == (1, *SHAPE[:-1]) and logits.shape == (1, 3)
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(SHAPE).astype(np.float64)
    h = 1e-3
    plus = model.predict(x[:1] + (h * direction).astype(np.float32), verbose=0)[0, 1]
    minus = model.predict(x[:1] - (h * direction).astype(np.float32), verbose=0)[0, 1]
    numeric = (plus - minus) / (2 * h)
    assert float(np.sum(maps[0] * direction[..., 0])) == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def test_target_none_explains_the_predicted_state(model, x):
    method = explainer("gradient_x_input", model)
    logits, default = method.explain(x)
    _, explicit = method.explain(x, target=logits.argmax(axis=1))
    np.testing.assert_array_equal(default, explicit)
    _, other = method.explain(x, target=(logits.argmax(axis=1) + 1) % 3)
    assert not np.allclose(default, other)
    with pytest.raises(ValueError, match="target indices"):
        method.explain(x, target=5)


def test_integrated_gradients_is_complete(model, x):
    """Sum of the map = logit(x) - logit(0) up to the midpoint rule's error, which falls with the steps."""
    errors = []
    for steps in (4, 64):
        logits, maps = explainer("integrated_gradients", model, steps=steps).explain(x[:2])
        targets = logits.argmax(axis=1)
        at_zero = model.predict(np.zeros_like(x[:2]), verbose=0)[np.arange(2), targets]
        errors.append(np.abs(maps.sum(axis=(1, 2, 3)) - (logits[np.arange(2), targets] - at_zero)).max())
    scale = np.abs(logits).max()
    assert errors[1] < 0.02 * scale and errors[1] < errors[0]


def test_smoothgrad_noise_depends_on_the_input_not_the_batch(model, x):
    method = explainer("smoothgrad", model, samples=4, noise=0.2, seed=3)
    _, together = method.explain(x)
    _, alone = method.explain(x[1:2])
    np.testing.assert_allclose(together[1], alone[0], rtol=1e-5, atol=1e-7)
    _, other_seed = explainer("smoothgrad", model, samples=4, noise=0.2, seed=4).explain(x[1:2])
    assert not np.allclose(alone, other_seed)
    noise = method.noise_for(x[0])
    assert noise.shape == (4, *SHAPE) and noise.std() == pytest.approx(0.2 * x[0].std(), rel=0.1)


def test_for_model_keeps_the_method_and_parameters(model):
    from deeplight_bids.quality.sanity import randomized_copy

    method = explainer("integrated_gradients", model, steps=7)
    other = method.for_model(randomized_copy(model, 1))
    assert type(other) is type(method) and other.steps == 7 and other.model is not model
    lrp = explainer("epsilon", model, epsilon=0.5)
    assert lrp.for_model(randomized_copy(model, 1)).composite is lrp.composite


def test_every_method_runs_and_gives_finite_maps(model, x):
    for name in methods.METHODS:
        method = methods.get_method(name)
        if "3D" not in method.architectures:
            continue
        logits, maps = method.explainer(model, max_batch=2, stem_batch=None, steps=4, samples=2).explain(x)
        assert maps.shape == (3, *SHAPE[:-1]) and np.isfinite(maps).all() and np.abs(maps).max() > 0, name


def test_resolve_the_published_rule_and_refuse_mismatches():
    assert methods.resolve("published", "3D").name == "preset_b_flat"
    assert methods.resolve("published", "2D").name == "deeplight_2d"
    assert methods.resolve("published", "2D", "signed").name == "deeplight_2d_signed"
    with pytest.raises(ValueError, match="applies to 3D-DeepLight only"):
        methods.resolve("preset_b_flat", "2D")
    with pytest.raises(ValueError, match="unknown attribution method"):
        methods.get_method("deeplift")
    assert set(methods.STANDARD_SET) <= set(methods.CHOICES)
    signed = {n for n, m in methods.METHODS.items() if m.signed}
    assert "preset_b_flat" not in signed and {"gradient", "integrated_gradients", "epsilon"} <= signed


def test_sidecar_entry_and_outputs_made_before_it():
    entry = methods.get_method("smoothgrad").sidecar({"samples": 8, "noise": 0.1, "seed": 2, "steps": 32})
    assert entry["Method"] == "smoothgrad" and entry["Parameters"] == {"samples": 8, "noise": 0.1, "seed": 2}
    assert methods.for_outputs({"LRP": {}}, "3D")["Method"] == "preset_b_flat"
    assert methods.for_outputs({"LRPRule": "signed"}, "2D")["Method"] == "deeplight_2d_signed"
    assert methods.for_outputs({"Attribution": entry})["Method"] == "smoothgrad"


def test_bad_parameters_are_refused(model):
    from deeplight_bids.attribution.gradients import IntegratedGradients, SmoothGrad, riemann_middle

    with pytest.raises(ValueError, match="at least 2 steps"):
        IntegratedGradients(model, steps=1)
    with pytest.raises(ValueError, match="noise share"):
        SmoothGrad(model, noise=0)
    # the sidecar names the rule that is computed
    assert IntegratedGradients(model, steps=4).parameters()["rule"] == "riemann_middle"
    alphas, weights = riemann_middle(4)
    np.testing.assert_allclose(alphas, [0.125, 0.375, 0.625, 0.875]) and np.testing.assert_allclose(weights.sum(), 1)


def test_every_method_runs_on_2d_deeplight():
    """The methods of both families on 2D-DeepLight (slice convolutions and the bidirectional LSTM), small grid."""
    import keras

    from deeplight_bids.models.two import build_2d_deeplight
    from tests.models.legacy_h5 import randomise_weights

    keras.utils.set_random_seed(0)
    model = randomise_weights(build_2d_deeplight(n_states=4, input_shape=(4, 16, 12, 1)), seed=4)
    x = np.random.default_rng(1).standard_normal((2, 4, 16, 12, 1)).astype(np.float32)
    for name, method in methods.METHODS.items():
        if "2D" not in method.architectures:
            continue
        _, maps = method.explainer(model, max_batch=2, stem_batch=None, steps=4, samples=2).explain(x)
        assert maps.shape == (2, 4, 16, 12) and np.isfinite(maps).all() and np.abs(maps).max() > 0, name
