"""Masking relevance to the brain and the recorded share outside the mask (small arrays)."""

import numpy as np
import pytest

from deeplight_bids.derivatives.masking import RelevanceMasker


def _mask():
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 2:5] = True
    return mask


def test_zeros_outside_values_inside_and_layout_kept():
    mask = _mask()
    model_order = np.random.default_rng(0).normal(size=(3, 6, 5, 4)).astype(np.float32)
    volumes = model_order.transpose(0, 3, 2, 1)  # (n, x, y, z) view, Fortran per volume
    masker = RelevanceMasker(mask)
    out = masker.apply(volumes)
    assert out.shape == volumes.shape and out.dtype == np.float32
    assert out[0].flags["F_CONTIGUOUS"]
    np.testing.assert_allclose(out[:, mask], volumes[:, mask], rtol=2.0**-17, atol=0)  # 16 mantissa bits kept
    np.testing.assert_array_equal(RelevanceMasker(mask, keepbits=23).apply(volumes)[:, mask], volumes[:, mask])
    outside = out[:, ~mask]
    assert not outside.any() and not np.signbit(outside).any()  # +0.0 exactly


def test_outside_fraction_median_and_max():
    mask = _mask()
    volumes = np.zeros((3, *mask.shape), np.float32)
    volumes[0][mask] = 1.0  # all inside: 0
    volumes[1][mask] = 1.0
    volumes[1][~mask] = -np.float32(mask.sum()) / (~mask).sum()  # as much outside as inside: 0.5
    # volume 2: all zero -> 0, not NaN
    masker = RelevanceMasker(mask)
    masker.apply(volumes[:2])
    masker.apply(volumes[2:])
    fractions = masker.sidecar()["RelevanceOutsideMaskFraction"]
    assert fractions["NumberOfVolumes"] == 3
    assert fractions["Median"] == pytest.approx(0.0)
    assert fractions["Max"] == pytest.approx(0.5, rel=1e-6)


def test_wrong_shape_refused():
    with pytest.raises(ValueError, match="expected volumes"):
        RelevanceMasker(_mask()).apply(np.zeros((1, 4, 5, 5), np.float32))
