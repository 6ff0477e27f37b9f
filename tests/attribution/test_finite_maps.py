"""No map holds NaN or inf: the published rules on trained and randomised models (issue 32), and the run's guard."""

import numpy as np
import pytest

from deeplight_bids.exceptions import NonFiniteMapError
from deeplight_bids.lrp.analyzer import LRPAnalyzer
from deeplight_bids.models.batches import check_finite
from deeplight_bids.quality.sanity import randomized_copy


def _inputs(shape, n=2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    x[:, : shape[0] // 4] = 0  # a margin outside the "brain", as prepared runs have
    return x


def test_3d_rule_is_finite_on_trained_and_randomised_models():
    import keras

    from deeplight_bids.models.three import build_3d_deeplight
    from tests.models.legacy_h5 import randomise_weights

    keras.utils.set_random_seed(0)
    model = randomise_weights(build_3d_deeplight(n_states=3, input_shape=(12, 14, 12, 1)), seed=3)
    x = _inputs((12, 14, 12, 1))
    for candidate in (model, randomized_copy(model, 0)):
        _, maps = LRPAnalyzer(candidate, "preset_b_flat").explain(x)
        assert np.isfinite(maps).all()


@pytest.mark.slow  # the published 2D model on the full grid
@pytest.mark.parametrize("composite", ["deeplight_2d", "deeplight_2d_signed"])
def test_2d_rules_are_finite_on_the_published_and_randomised_models(published_2d_weights, composite):
    from deeplight_bids.models.published_2d import convert_published_2d, load_published_2d

    model = convert_published_2d(load_published_2d(published_2d_weights))
    x = _inputs((91, 109, 91, 1))
    for candidate in (model, randomized_copy(model, 0)):
        logits, maps = LRPAnalyzer(candidate, composite).explain(x)
        assert np.isfinite(maps).all() and np.abs(maps).max() > 0, composite
        # the randomised copy keeps the trained activation scale (plain Glorot kernels gave logits ~1e-3)
        assert np.abs(logits).max() > 0.1


def test_a_non_finite_map_fails_the_run_with_one_line():
    maps = np.zeros((3, 4, 4, 4), np.float32)
    check_finite(maps, 10, "sub-01_task-motor")
    maps[1, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteMapError) as err:
        check_finite(maps, 10, "sub-01_task-motor", {"composite": "deeplight_2d"})
    message = str(err.value)
    assert "\n" not in message and "sub-01_task-motor" in message and "volume 11" in message
    assert "deeplight_2d" in message and err.value.exit_code == 3
