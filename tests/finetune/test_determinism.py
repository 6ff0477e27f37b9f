"""Same --seed, same model: two fits give bit-identical weights (issue 13), on a small grid."""

import numpy as np


def _fit(folder, seed):
    from deeplight_bids.models.input_pipeline import make_array_dataset
    from deeplight_bids.models.surgery import TRAIN_3D
    from deeplight_bids.models.three import build_3d_deeplight
    from deeplight_bids.models.train import enable_determinism, fit_resumable

    assert enable_determinism(seed)
    rng = np.random.default_rng(0)  # the data are the same for both fits; the seed drives the rest
    x = rng.normal(size=(24, 12, 14, 12, 1)).astype(np.float32)
    labels = np.repeat(np.arange(3), 8)
    x[labels == 1, 2:6] += 1.0

    def build():
        import keras

        keras.utils.set_random_seed(seed)  # as build_finetune_model does
        # dropout on, so its random masks are part of what must repeat
        return build_3d_deeplight(n_states=3, input_shape=(12, 14, 12, 1), **{**TRAIN_3D, "dropout_rate": 0.2})

    def make_train(start_epoch):
        return make_array_dataset(x, labels, 4, seed=[seed, 0], start_epoch=start_epoch)

    statistics = make_array_dataset(x, labels, 4, shuffle=False, balance=False)  # precise BN must repeat too
    model, state = fit_resumable(
        build, None, folder, "fp", 2, 1e-3, make_train_data=make_train, statistics_data=statistics
    )
    assert state["bn_statistics_batches"] == 6
    return [w.copy() for w in model.get_weights()], state


def test_two_fits_are_bit_identical(tmp_path):
    from tensorflow.python.framework import config as tf_config

    try:
        one, state = _fit(tmp_path / "a", seed=7)
        two, _ = _fit(tmp_path / "b", seed=7)
        other, _ = _fit(tmp_path / "c", seed=8)
    finally:
        tf_config.disable_op_determinism()  # process-wide: leave other tests as they were
    assert state["epoch"] == 2 and len(state["history"]) == 2
    for a, b in zip(one, two):
        assert a.dtype == b.dtype and np.array_equal(a, b)  # bit-identical, not merely close
    assert any(not np.array_equal(a, c) for a, c in zip(one, other))  # the seed matters
