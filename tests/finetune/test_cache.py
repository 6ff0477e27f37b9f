"""The prepared-volume cache: compact storage, reuse, invalidation, reading, balancing."""

import os

import numpy as np
import pytest

from deeplight_bids.bids.discover import build_layout, discover_runs, find_derivatives
from deeplight_bids.models import input_pipeline
from deeplight_bids.prepare import cache


@pytest.fixture(scope="module")
def runs(ft_dataset):
    layout = build_layout(ft_dataset.bids_dir, find_derivatives(ft_dataset.bids_dir))
    return [r for r in discover_runs(layout) if r.skip_reason is None]


def test_prepared_once_then_reused(runs, ft_work):
    entries, stats = cache.prepare_cached(runs, ft_work, nprocs=2)  # in parallel (2 processes)
    assert len(entries) == 4
    stamps = {e.key: os.stat(e.folder / "signals.npy").st_mtime_ns for e in entries}
    entries2, stats2 = cache.prepare_cached(runs, ft_work, nprocs=2)
    assert stats2.prepared == [] and len(stats2.reused) == 4
    assert {e.key: os.stat(e.folder / "signals.npy").st_mtime_ns for e in entries2} == stamps
    index = (cache.cache_dir(ft_work) / cache.INDEX_FILE).read_text()
    assert all(e.key in index for e in entries)
    sig = entries[0].signals()
    assert sig.dtype == np.float16 and sig.shape == (30, int(entries[0].mask().sum()))


def test_key_follows_inputs_and_parameters(runs, ft_work, tmp_path):
    key, _ = cache.cache_key(runs[0], 3.0, 1 / 128)
    assert cache.cache_key(runs[0], 3.0, 1 / 128)[0] == key
    assert cache.cache_key(runs[0], 4.0, 1 / 128)[0] != key
    assert cache.cache_key(runs[0], 3.0, None)[0] != key
    st = os.stat(runs[0].bold)
    try:
        os.utime(runs[0].bold, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert cache.cache_key(runs[0], 3.0, 1 / 128)[0] != key
    finally:
        os.utime(runs[0].bold, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_reader_rebuilds_model_order_volumes(runs, ft_work):
    from deeplight_bids.models.three import to_model_order
    from deeplight_bids.prepare.clean import prepare_run

    entries, _ = cache.prepare_cached(runs[:1], ft_work)
    prepared = prepare_run(runs[0].bold, runs[0].mask, runs[0].t_r)
    expected = to_model_order(prepared.volumes(5, 7))
    reader = cache.VolumeReader(entries)
    got = np.stack([reader.volume(0, 5), reader.volume(0, 6)])
    assert got.shape == expected.shape == (2, 91, 109, 91, 1)
    np.testing.assert_allclose(got, expected, atol=0.01, rtol=2e-3)


def test_balanced_shuffled_epochs_and_dataset(runs, ft_work):
    labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
    order = input_pipeline.epoch_order(labels, np.random.default_rng(0))
    assert np.bincount(labels[order]).tolist() == [10, 10, 10]
    assert input_pipeline.epoch_length(labels) == 30
    assert sorted(input_pipeline.epoch_order(labels, np.random.default_rng(0), balance=False)) == list(range(18))

    entries, _ = cache.prepare_cached(runs, ft_work)
    samples, counts = cache.label_volumes(entries, runs, ("MOTOR_lh", "MOTOR_rh", "MOTOR_t"))
    assert set(counts) == {"MOTOR_lh", "MOTOR_rh", "MOTOR_t"} and len(samples) == sum(counts.values())
    one = samples.of_subjects(["01"])
    ds = input_pipeline.make_volume_dataset(cache.VolumeReader(entries), one, batch_size=4, seed=1)
    seen = []
    for x, y in ds.take(2):
        assert tuple(x.shape[1:]) == (91, 109, 91, 1) and x.dtype.name == "float32"
        seen.extend(y.numpy().tolist())
    assert len(seen) == 8 and set(seen) <= {0, 1, 2}


def test_same_size_and_mtime_but_other_content_prepares_again(runs, tmp_path):
    """A BOLD replaced by one of equal size with its old time stamp (cp -p, rsync -a) is not reused."""
    import dataclasses
    import logging

    import nibabel as nib

    src = nib.load(runs[0].bold)
    bold = tmp_path / "bold.nii"  # uncompressed: another content has exactly the same size
    nib.Nifti1Image(np.asarray(src.dataobj, np.float32), src.affine, src.header).to_filename(bold)
    run = dataclasses.replace(runs[0], bold=bold)
    work = tmp_path / "work"
    _, first = cache.prepare_cached([run], work)
    assert first.prepared == [run.label]
    st = os.stat(bold)
    nib.Nifti1Image(np.asarray(src.dataobj, np.float32) * 1.5 + 1.0, src.affine, src.header).to_filename(bold)
    os.utime(bold, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(bold).st_size, os.stat(bold).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("deeplight_bids")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        _, second = cache.prepare_cached([run], work, log=logger)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert second.prepared == [run.label] and second.reused == []
    assert any("differ from the prepared copy" in r.getMessage() and run.label in r.getMessage() for r in records)


def test_finetune_keys_follow_events_and_weights_content(runs, tmp_path):
    """Checkpoints and frozen-body features are keyed by the events and weights files' content too."""
    import dataclasses
    import shutil

    from deeplight_bids.models.datasets import labels_identity, weights_identity

    from .conftest import STATES

    events = tmp_path / "events.tsv"
    shutil.copyfile(runs[0].events, events)
    weights = tmp_path / "w.keras"
    weights.write_bytes(b"0" * 64)
    fine_runs = [dataclasses.replace(runs[0], events=events)]
    labels, model = labels_identity(fine_runs, None, STATES), weights_identity(str(weights), "pretrained")
    st = os.stat(events)
    events.write_text(events.read_text().replace("\tlh", "\trh"))  # same size
    weights.write_bytes(b"1" * 64)
    for path in (events, weights):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(events).st_size == st.st_size
    assert labels_identity(fine_runs, None, STATES) != labels
    assert weights_identity(str(weights), "pretrained") != model
