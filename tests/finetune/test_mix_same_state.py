"""Same-state mixing (--mix-same-state): whom a volume is mixed with, and what the training batches then hold."""

import numpy as np
import pytest

from deeplight_bids.models.input_pipeline import make_volume_dataset, mix_partners
from deeplight_bids.prepare.cache import MODEL_SHAPE, Samples


class ConstantReader:
    """Volume (entry, index) is filled with one number that says which it is: 1000 * entry + index."""

    def volume(self, entry, index):
        return np.full(MODEL_SHAPE, 1000.0 * entry + index, np.float32)


def samples():
    # 3 participants (one run each), states 0/1, 4 volumes each: 2 of state 0, 2 of state 1
    entry = np.repeat([0, 1, 2], 4)
    return Samples(
        entry=entry,
        volume=np.tile(np.arange(4), 3),
        label=np.tile([0, 0, 1, 1], 3),
        subject=np.array(["01", "02", "03"])[entry],
        run_label=np.array(["run"] * 12),
    )


def values(dataset):
    """Per sample of every batch: (value of the volume, label)."""
    out = []
    for x, y in dataset:
        out += list(zip(x.numpy().reshape(len(y), -1)[:, 0].tolist(), y.numpy().tolist()))
    return out


def test_partners_share_the_state_and_never_the_participant():
    s = samples()
    partners = mix_partners(s)
    for i, p in enumerate(partners):
        assert len(p) == 4  # the same state's 2 volumes in each of the 2 other participants
        assert (s.label[p] == s.label[i]).all() and (s.subject[p] != s.subject[i]).all()


def test_a_lone_participant_has_no_partner():
    s = samples().subset(np.arange(4))  # participant 01 only
    assert all(len(p) == 0 for p in mix_partners(s))


def known(value):
    """The (entry, index) pairs a value can be made of: itself, or the mean of two volumes."""
    return value in {1000.0 * e + v for e in range(3) for v in range(4)}


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_mixing_probability_0_keeps_and_1_mixes_every_volume(probability):
    s = samples()
    seen = values(make_volume_dataset(ConstantReader(), s, 4, seed=1, mix_same_state=probability))
    label_of = {1000.0 * e + v: s.label[k] for k, (e, v) in enumerate(zip(s.entry, s.volume))}
    for value, label in seen:
        if probability == 0.0:
            assert known(value) and label_of[value] == label
        else:
            assert not known(value)  # a mean of two different participants' volumes (entries differ by >= 1000)
            # the two volumes: one of the labelled state in each of two different participants
            decoded = {
                (e, v)
                for e in range(3)
                for v in range(4)
                for f in range(3)
                for w in range(4)
                if e < f
                and np.isclose(value, 500.0 * (e + f) + 0.5 * (v + w))
                and s.label[4 * e + v] == label == s.label[4 * f + w]
            }
            assert decoded, (value, label)


def test_mixing_is_drawn_anew_every_epoch_and_reproducible():
    s = samples()
    first = make_volume_dataset(ConstantReader(), s, 4, seed=3, mix_same_state=0.5)
    epoch_1, epoch_2 = values(first), values(first)
    assert epoch_1 != epoch_2  # new pairs (and order) every epoch
    again = make_volume_dataset(ConstantReader(), s, 4, seed=3, mix_same_state=0.5)
    assert values(again) == epoch_1  # the same seed: the same first epoch
    resumed = make_volume_dataset(ConstantReader(), s, 4, seed=3, start_epoch=1, mix_same_state=0.5)
    assert values(resumed) == epoch_2  # a resumed fit continues the same sequence
    mixed = sum(not known(v) for v, _ in epoch_1)
    assert 0 < mixed < len(epoch_1)
