"""Block maps: which volumes each event labels (the labelling rule) and their streamed means (small grids)."""

import nibabel as nib
import numpy as np
import pandas as pd

from deeplight_bids.derivatives.blocks import BlockMeans, event_blocks
from deeplight_bids.derivatives.writers import StreamingNifti4D
from deeplight_bids.prepare.labels import volume_labels

STATE_MAP = {"lf": "MOTOR_lf", "rf": "MOTOR_rf"}


def _events():
    # TR 2 s, 20 volumes; "cue" is unmapped; the second rf event overlaps the lf block before it
    return pd.DataFrame(
        {
            "onset": [2.0, 10.0, 14.0, 24.0, 60.0],
            "duration": [4.0, 6.0, 4.0, 2.0, 4.0],
            "trial_type": ["lf", "rf", "rf", "cue", "lf"],
        }
    )


def test_blocks_follow_the_labels():
    events = _events()
    table, block_of_volume = event_blocks(events, 20, 2.0, STATE_MAP)
    labels = volume_labels(events, 20, 2.0, STATE_MAP)
    # every labelled volume is in exactly one block of its label's state; unlabelled ones in none
    for v, label in enumerate(labels):
        if label is None:
            assert block_of_volume[v] == -1
        else:
            assert table.loc[block_of_volume[v], "state"] == label
    # the event at 60 s starts after the run (20 x 2 s): no block; the blocks are numbered 0..n-1
    assert list(table["block"]) == list(range(len(table))) == [0, 1, 2]
    assert list(table["trial_type"]) == ["lf", "rf", "rf"]
    # lf at 2 s: t in [4, 10] -> volumes 2..5; rf at 10 s: t in [12, 20] -> 6..10, of which the later rf at
    # 14 s (t in [16, 22] -> 8..11) takes 8..10
    assert table["volumes"].tolist() == ["2,3,4,5", "6,7", "8,9,10,11"]
    assert table["n_volumes"].tolist() == [4, 2, 4]


def test_block_means_streamed(tmp_path):
    shape = (3, 4, 2)
    block_of_volume = np.array([-1, 0, 0, 1, -1, 1, 2])
    volumes = np.random.default_rng(1).normal(size=(7, *shape)).astype(np.float32)
    stream = StreamingNifti4D(tmp_path / "blocks.nii.gz", (*shape, 3), np.eye(4), 2.0)
    means = BlockMeans(block_of_volume, stream)
    means.add(0, volumes[:4])
    assert set(means.open) == {1}  # block 0 finished and written; block 1 still open
    means.add(4, volumes[4:])
    means.close()
    data = np.asarray(nib.load(tmp_path / "blocks.nii.gz").dataobj)
    for block in range(3):
        expected = volumes[block_of_volume == block].mean(axis=0)
        np.testing.assert_allclose(data[..., block], expected, rtol=1e-6)


class _Recorder:
    def __init__(self, fail_at=None):
        self.calls, self.fail_at, self.closed, self.aborted = [], fail_at, False, False

    def write(self, start, volumes):
        if start == self.fail_at:
            raise OSError(28, "No space left on device")
        self.calls.append((start, volumes.copy()))

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


def test_background_writer_keeps_order():
    from deeplight_bids.derivatives.background import BackgroundWriter

    target = _Recorder()
    writer = BackgroundWriter(target, max_pending=1)
    for start in range(0, 12, 3):
        writer.write(start, np.full((3, 2, 2, 2), start, np.float32))
    writer.close()
    assert target.closed and [c[0] for c in target.calls] == [0, 3, 6, 9]
    assert all((c[1] == c[0]).all() for c in target.calls)


def test_background_writer_error_stops_the_run():
    import pytest

    from deeplight_bids.derivatives.background import BackgroundWriter

    target = _Recorder(fail_at=3)
    writer = BackgroundWriter(target, max_pending=1)
    with pytest.raises(OSError, match="No space left"):
        for start in range(0, 30, 3):  # the error surfaces at a later write, or at close
            writer.write(start, np.zeros((3, 2, 2, 2), np.float32))
        writer.close()
    writer.abort()
    assert target.aborted and not target.closed
    assert [c[0] for c in target.calls] == [0]  # nothing written after the error
