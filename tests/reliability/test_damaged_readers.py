"""Readers of files the app wrote, on damaged files (issue 30): a line and "recompute", or one error line; no traceback.

Small files made here (no model, no CLI): the fast lane's share of the damage tests; the
end-to-end table is tests/reliability/test_damaged_files.py.
"""

import logging

import numpy as np
import pytest

from deeplight_bids.derivatives import integrity
from deeplight_bids.exceptions import OutputError, WeightsError

from .test_damaged_files import MODES, damage


@pytest.fixture
def member_file(tmp_path):
    """A 4D relevance file written one gzip member per volume (8 volumes of 6 x 5 x 4)."""
    from deeplight_bids.derivatives.volume_gzip import VolumeGzipNifti4D

    rng = np.random.default_rng(0)
    path = tmp_path / "sub-01_task-x_desc-relevance_bold.nii.gz"
    stream = VolumeGzipNifti4D(path, (6, 5, 4, 8), np.eye(4), 2.0)
    stream.write(0, rng.normal(size=(8, 6, 5, 4)).astype(np.float32))
    stream.close()
    return path


@pytest.mark.parametrize("mode", MODES)
def test_record_check_finds_every_damage(tmp_path, member_file, mode):
    table = tmp_path / "t.tsv"
    table.write_text("a\tb\n1\t2\n3\t4\n")
    for path in (table, member_file):
        entry = integrity.fingerprint(path)
        assert integrity.check(path, entry) is None
        damage(path, mode)
        reason = integrity.check(path, entry)
        assert reason is not None and "\n" not in reason


def test_member_record_reads_trailers_and_full_check_finds_a_changed_byte(member_file):
    entry = integrity.fingerprint(member_file)
    assert entry["GzipMembers"] == 8 and "SHA256" not in entry
    with open(member_file, "r+b") as fobj:  # one byte inside member 3's compressed data: size and trailers unchanged
        extents = __import__("deeplight_bids.derivatives.volume_gzip", fromlist=["x"]).member_extents(member_file)
        offset, size = extents[3]
        fobj.seek(offset + size // 2)
        byte = fobj.read(1)
        fobj.seek(-1, 1)
        fobj.write(bytes([byte[0] ^ 0xFF]))
    assert integrity.check(member_file, entry) is None  # the quick check reads 28 bytes per member
    assert "gzip member 3" in integrity.check(member_file, entry, full=True)


def test_hard_linked_copy_is_the_same_file(tmp_path, member_file):
    import os

    link = tmp_path / "work_copy.nii.gz"
    os.link(member_file, link)
    assert integrity.same_inode(member_file, link)
    entry = integrity.fingerprint(link)
    damage(member_file, "truncate")
    assert integrity.check(link, entry) is not None  # damage to one is damage to both


@pytest.mark.parametrize("mode", MODES)
def test_state_sums_damaged_are_removed_and_read_as_missing(tmp_path, caplog, mode):
    from deeplight_bids.workflows.summaries import read_state_sums, save_state_sums

    path = tmp_path / "relevance_sums" / "sub-01_task-x_sums.npz"
    save_state_sums(path, {0: np.ones((3, 3, 3))}, {0: 2}, "h", "d")
    assert read_state_sums(path, "h", "d")[0][1] == 2
    damage(path, mode)
    with caplog.at_level(logging.WARNING, "deeplight_bids"):
        assert read_state_sums(path, "h", "d") is None
    assert not path.exists()
    assert [r for r in caplog.records if str(path) in r.getMessage() and "damaged" in r.getMessage()]


@pytest.mark.parametrize("mode", MODES)
def test_predictions_table_damaged_is_one_line_exit_5(tmp_path, mode):
    from deeplight_bids.derivatives.tables import read_predictions

    path = tmp_path / "sub-01_task-x_desc-predictions_timeseries.tsv"
    path.write_text("volume\tonset\tpredicted_state\tcorrect\n" + "".join(f"{i}\t{2 * i}\tA\t1\n" for i in range(40)))
    assert len(read_predictions(path)) == 40
    damage(path, mode)
    if mode == "truncate":  # half a table still parses: the record (size, SHA-256) finds it, not the reader
        return
    with pytest.raises(OutputError, match=str(path)) as err:
        read_predictions(path)
    assert err.value.exit_code == 5 and "\n" not in str(err.value)


@pytest.mark.parametrize("mode", MODES)
def test_model_card_damaged_is_one_line_exit_4(tmp_path, mode):
    from deeplight_bids.models.weights import load_model_card

    keras_path = tmp_path / "m.keras"
    keras_path.write_bytes(b"")
    card = tmp_path / "m.json"
    card.write_text('{"architecture": "3D", "states": ["A", "B"], "name": "m"}\n')
    assert load_model_card(keras_path)["states"] == ["A", "B"]
    damage(card, mode)
    with pytest.raises(WeightsError, match=str(card)) as err:
        load_model_card(keras_path)
    assert err.value.exit_code == 4 and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["signals.npy", "mask.npy", "meta.json"])
@pytest.mark.parametrize("mode", MODES)
def test_prepared_cache_entry_damaged_is_prepared_again(tmp_path, caplog, name, mode):
    from deeplight_bids.prepare.cache import _entry_ok

    folder = tmp_path / "prepared" / "key"
    folder.mkdir(parents=True)
    np.save(folder / "signals.npy", np.zeros((10, 50), np.float32))
    np.save(folder / "mask.npy", np.ones((5, 5, 2), bool))
    (folder / "meta.json").write_text('{"n_volumes": 10}\n')
    assert _entry_ok(folder, logging.getLogger("deeplight_bids"))
    damage(folder / name, mode)
    with caplog.at_level(logging.WARNING, "deeplight_bids"):
        assert not _entry_ok(folder, logging.getLogger("deeplight_bids"))
    assert [r for r in caplog.records if str(folder) in r.getMessage() and "damaged" in r.getMessage()]


@pytest.mark.parametrize("mode", MODES)
def test_readable_by_kind(tmp_path, mode):
    import nibabel as nib

    files = {
        "a.json": b'{"a": 1}\n',
        "t.tsv": b"a\tb\n1\t2\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    img = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)), img)
    for path in [tmp_path / n for n in files] + [img]:
        assert integrity.readable(path) is None
        damage(path, mode)
        if mode == "truncate" and path.suffix == ".tsv":
            continue  # half a TSV can still parse (recorded files are checked by size and SHA-256)
        assert integrity.readable(path) is not None, path
