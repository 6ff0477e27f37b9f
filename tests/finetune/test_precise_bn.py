"""Batch-norm statistics recomputed after a fit (precise BN): the mean over volumes of the batch statistics."""

import numpy as np


def _model(frozen=False):
    import keras

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.BatchNormalization(momentum=0.8, name="bn_in"),
            keras.layers.Dense(3, name="dense"),
            keras.layers.BatchNormalization(momentum=0.8, name="bn_out"),
        ]
    )
    if frozen:
        model.get_layer("bn_out").trainable = False
    return model


def _batches(x, sizes):
    start = 0
    for size in sizes:
        yield x[start : start + size], np.zeros(size, np.int32)
        start += size


def test_statistics_are_the_volume_weighted_mean_of_batch_statistics():
    from deeplight_bids.models.train import recompute_batch_norm_statistics

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(13, 4)) * [1, 2, 3, 4] + [5, -1, 0, 2]).astype(np.float32)
    sizes = (5, 5, 3)  # unequal: the last batch weighs 3/13, not 1/3
    model = _model()
    before = [w.copy() for w in model.get_layer("dense").get_weights()]
    used = recompute_batch_norm_statistics(model, _batches(x, sizes))
    assert used == 3
    bn = model.get_layer("bn_in")
    parts = np.split(x, np.cumsum(sizes)[:-1])
    expected_mean = sum(len(p) * p.mean(axis=0) for p in parts) / len(x)
    expected_var = sum(len(p) * p.var(axis=0) for p in parts) / len(x)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), expected_var, rtol=1e-4, atol=1e-5)
    # nothing of the old moving averages (0 and 1) is left, the momentum is restored, weights unchanged
    assert bn.momentum == 0.8 and model.get_layer("bn_out").momentum == 0.8
    for old, new in zip(before, model.get_layer("dense").get_weights()):
        np.testing.assert_array_equal(old, new)


def test_frozen_layers_keep_their_statistics_and_no_batch_norm_means_nothing_to_do():
    import keras

    from deeplight_bids.models.train import recompute_batch_norm_statistics

    x = np.random.default_rng(1).normal(3.0, 2.0, size=(8, 4)).astype(np.float32)
    model = _model(frozen=True)
    frozen = model.get_layer("bn_out")
    mean, var = np.asarray(frozen.moving_mean).copy(), np.asarray(frozen.moving_variance).copy()
    assert recompute_batch_norm_statistics(model, _batches(x, (4, 4))) == 2
    np.testing.assert_array_equal(np.asarray(frozen.moving_mean), mean)
    np.testing.assert_array_equal(np.asarray(frozen.moving_variance), var)
    assert not np.allclose(np.asarray(model.get_layer("bn_in").moving_mean), 0.0)

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert recompute_batch_norm_statistics(plain, _batches(x, (4, 4))) == 0
