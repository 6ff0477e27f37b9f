"""Process-wide training settings are restored after a fit, also when it fails (issue 17)."""

import pytest


class Boom(Exception):
    pass


def test_precision_policy_is_restored_after_an_error():
    import keras

    from deeplight_bids.models.train import precision_policy

    before = keras.mixed_precision.global_policy().name
    with pytest.raises(Boom), precision_policy("mixed_float16"):
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        raise Boom
    assert keras.mixed_precision.global_policy().name == before
    with precision_policy(None):  # None: left as it is
        assert keras.mixed_precision.global_policy().name == before


def test_op_determinism_is_switched_off_after_an_error():
    from tensorflow.python.framework import config as tf_config

    from deeplight_bids.models.train import deterministic_ops

    assert not tf_config.is_op_determinism_enabled()
    with pytest.raises(Boom), deterministic_ops(3) as on:
        assert on and tf_config.is_op_determinism_enabled()
        raise Boom
    assert not tf_config.is_op_determinism_enabled()
