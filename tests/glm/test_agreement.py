"""Agreement measures between a relevance map and a GLM t-map."""

import numpy as np
import pytest

from deeplight_bids.glm.agreement import agreement, dice_top, n_top, region_share_top
from deeplight_bids.prepare.grid import REFERENCE_SHAPE


def test_dice_counts_the_shared_top_voxels():
    a = np.arange(100.0)  # top 10 %: 90..99
    b = a.copy()
    b[[95, 96, 97, 98, 99]] = -1  # half of a's top 10 are no longer b's top 10
    assert dice_top(a, a, 10) == 1.0
    assert dice_top(a, b, 10) == pytest.approx(0.5)
    assert dice_top(a, -a, 10) == 0.0
    assert n_top(230000, 1) == 2300 and n_top(50, 1) == 1


def test_agreement_inside_the_mask_only():
    rng = np.random.default_rng(0)
    mask = np.zeros(REFERENCE_SHAPE, bool)
    mask[30:60, 30:70, 30:60] = True
    t_map = rng.standard_normal(REFERENCE_SHAPE).astype(np.float32)
    relevance = np.where(mask, 2 * t_map + 1, 1000.0)  # huge values outside the mask must not count
    same = agreement(relevance, t_map, mask)
    assert same["n_voxels"] == int(mask.sum())
    assert same["pearson_r"] == pytest.approx(1.0)
    assert same["dice_top1"] == same["dice_top5"] == same["dice_top10"] == 1.0
    unrelated = agreement(rng.standard_normal(REFERENCE_SHAPE), t_map, mask)
    assert abs(unrelated["pearson_r"]) < 0.02
    # chance Dice of two unrelated top-k % sets is about k %
    assert unrelated["dice_top10"] == pytest.approx(0.10, abs=0.02)
    constant = agreement(np.ones(REFERENCE_SHAPE), t_map, mask)
    assert constant["pearson_r"] is None


def test_region_share_of_the_top_voxels():
    mask = np.ones(REFERENCE_SHAPE, bool)
    values = np.zeros(REFERENCE_SHAPE)
    region = np.zeros(REFERENCE_SHAPE, bool)
    region[10:20, 10:20, 10:20] = True  # 1000 voxels; the top 1 % of the grid is 9027 voxels
    values[region] = 5.0
    assert region_share_top(values, region, mask, 1) == pytest.approx(1000 / 9027, abs=1e-3)
    assert region_share_top(values, region, region | (values == 0) & False, 1) == 1.0
