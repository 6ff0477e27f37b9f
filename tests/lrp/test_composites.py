"""Which rule each layer gets: presets, first-layer rule, first match, unmapped layers."""

import pytest

keras = pytest.importorskip("keras")

from deeplight_bids.lrp import composites, rules, types  # noqa: E402
from deeplight_bids.models.three import CONV_BLOCKS_3D, build_3d_deeplight  # noqa: E402


@pytest.fixture(scope="module")
def full_3d_model():
    return build_3d_deeplight()


def test_every_layer_of_the_3d_model_is_mapped_by_preset_b_flat(full_3d_model):
    assigned = composites.get_composite("preset_b_flat").assign(full_3d_model.layers)
    by_name = {layer.name: rule for layer, rule in assigned}
    assert len(assigned) == len(full_3d_model.layers)
    n_convs = len(CONV_BLOCKS_3D) + 1
    assert isinstance(by_name["conv_1"], rules.Flat)
    for i in range(2, n_convs + 1):
        rule = by_name[f"conv_{i}"]
        assert isinstance(rule, rules.AlphaBeta) and (rule.alpha, rule.beta) == (2.0, 1.0), f"conv_{i}"
    for i in range(1, n_convs):
        assert isinstance(by_name[f"bn_{i}"], rules.BatchNormScale)
    for i in range(1, n_convs + 1):
        assert isinstance(by_name[f"dropout_{i}"], rules.Pass)
    assert isinstance(by_name["relu_out"], rules.Pass)
    assert isinstance(by_name["global_average"], rules.ZRule)
    for layer, rule in assigned:
        rule.check(layer)  # every rule accepts its layer (fused ReLU, channels_last, ...)


def dense_and_conv_model():
    return keras.Sequential([
        keras.Input((4, 4, 4, 1)),
        keras.layers.Conv3D(2, 3, padding="same", activation="relu", name="first"),
        keras.layers.Conv3D(2, 3, padding="same", activation="relu", name="second"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(3, name="dense"),
    ])


def test_first_map_applies_to_the_first_matching_layer_only():
    assigned = dict((layer.name, rule) for layer, rule in
                    composites.get_composite("preset_b_flat").assign(dense_and_conv_model().layers))
    assert isinstance(assigned["first"], rules.Flat)
    assert isinstance(assigned["second"], rules.AlphaBeta)
    assert isinstance(assigned["flatten"], rules.Pass)
    assert isinstance(assigned["dense"], rules.Epsilon) and assigned["dense"].eps == 1e-6


def test_first_map_skips_layers_it_does_not_cover():
    model = keras.Sequential([keras.Input((3, 4)), keras.layers.Flatten(name="flatten"),
                              keras.layers.Dense(5, name="d1"), keras.layers.Dense(2, name="d2")])
    assigned = dict((layer.name, rule) for layer, rule in composites.get_composite("preset_b_flat").assign(model.layers))
    assert isinstance(assigned["flatten"], rules.Pass)
    assert isinstance(assigned["d1"], rules.Flat)
    assert isinstance(assigned["d2"], rules.Epsilon)


def test_first_match_wins():
    first, second = rules.Epsilon(0.5), rules.ZRule()
    composite = composites.Composite(layer_map=[(types.Conv, first), (types.Linear, second), (types.PassThrough, rules.Pass())])
    assigned = dict((layer.name, rule) for layer, rule in composite.assign(dense_and_conv_model().layers))
    assert assigned["first"] is first and assigned["second"] is first and assigned["dense"] is second


def test_epsilon_preset_uses_epsilon_1e_3_for_every_layer_with_weights():
    assigned = composites.get_composite("epsilon").assign(dense_and_conv_model().layers)
    for layer, rule in assigned:
        if isinstance(layer, types.Linear):
            assert isinstance(rule, rules.Epsilon) and rule.eps == 1e-3
        else:
            assert isinstance(rule, rules.Pass)


@pytest.mark.parametrize("preset", ["preset_b_flat", "epsilon"])
def test_unmapped_layer_raises_naming_the_layer(preset):
    model = keras.Sequential([keras.Input((4, 4, 4, 1)), keras.layers.MaxPooling3D(name="the_pool"),
                              keras.layers.GlobalAveragePooling3D()])
    with pytest.raises(composites.UnmappedLayerError, match="the_pool.*MaxPooling3D"):
        composites.get_composite(preset).assign(model.layers)


def test_epsilon_preset_does_not_cover_batch_norm(full_3d_model):
    with pytest.raises(composites.UnmappedLayerError, match="bn_1"):
        composites.get_composite("epsilon").assign(full_3d_model.layers)


def test_registry_names_and_unknown_name():
    assert {"preset_b_flat", "epsilon"} <= set(composites.COMPOSITES)
    assert composites.get_composite("epsilon") is not composites.get_composite("epsilon")
    custom = composites.Composite(layer_map=[], name="mine")
    assert composites.get_composite(custom) is custom
    with pytest.raises(ValueError, match="unknown LRP composite 'nope'"):
        composites.get_composite("nope")
