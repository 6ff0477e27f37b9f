"""Per-volume gzip members (VolumeGzipNifti4D), mantissa rounding, and reading only the volumes asked for."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from deeplight_bids.derivatives.volume_gzip import (
    VolumeGzipNifti4D,
    member_sizes,
    round_mantissa,
)
from deeplight_bids.derivatives.writers import _TEMP_PATTERN
from deeplight_bids.readback import iter_volumes

SHAPE = (5, 6, 4)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _data(n=9, seed=0):
    return np.random.default_rng(seed).normal(size=(*SHAPE, n)).astype(np.float32)


def _write(path, data, order=None, **kwargs):
    writer = VolumeGzipNifti4D(path, data.shape, AFFINE, 0.72, keepbits=23, **kwargs)
    for i in order or range(data.shape[3]):
        writer.write(i, data[..., i][None])
    return writer


@pytest.mark.parametrize("keepbits", [0, 7, 12, 16, 22])
def test_round_mantissa_is_nearest_and_idempotent(keepbits):
    values = np.concatenate(
        [np.random.default_rng(1).normal(size=2000) * 10.0 ** np.arange(-20, 20, 0.02), [0.0, -0.0, 1.0, -1.5]]
    ).astype(np.float32)
    rounded = round_mantissa(values.copy(), keepbits)
    drop = 23 - keepbits
    assert not (rounded.view(np.uint32) & np.uint32((1 << drop) - 1)).any()  # the dropped bits are zeros
    ulp = np.ldexp(1.0, np.frexp(values.astype(np.float64))[1] - 1 - keepbits)  # spacing of kept values
    assert np.all(np.abs(rounded.astype(np.float64) - values) <= ulp / 2)  # nearest
    assert np.all(np.abs(rounded - values) <= np.abs(values) * 2.0 ** -(keepbits + 1))
    assert np.array_equal(np.signbit(rounded), np.signbit(values)) and np.array_equal(rounded == 0, values == 0)
    np.testing.assert_array_equal(round_mantissa(rounded.copy(), keepbits), rounded)
    np.testing.assert_array_equal(round_mantissa(values.copy(), 23), values)


def test_members_read_by_every_gzip_reader(tmp_path):
    data = _data()
    path = tmp_path / "rel.nii.gz"
    writer = _write(path, data, order=[2, 0, 1, 4, 3, 5, 6, 8, 7])
    np.testing.assert_array_equal(writer.read(3), data[..., 3].T)  # before close, as the quality measures do
    assert not path.exists()  # nothing under the final name before close
    assert _TEMP_PATTERN.match(writer._tmp.rsplit("/", 1)[-1])  # a killed run's temporary is cleaned up later
    writer.close()
    img = nib.load(path)
    assert img.shape == (*SHAPE, 9) and img.header.get_zooms()[3] == pytest.approx(0.72)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    assert len(gzip.decompress(path.read_bytes())) == 352 + data.nbytes  # the standard library: one stream
    with open(path, "rb") as fobj:
        sizes = member_sizes(fobj, path.stat().st_size)
    assert len(sizes) == 9 and sum(sizes) == path.stat().st_size


def test_only_the_wanted_members_are_decompressed(tmp_path):
    data = _data()
    path = tmp_path / "rel.nii.gz"
    _write(path, data).close()
    with open(path, "rb") as fobj:
        sizes = member_sizes(fobj, path.stat().st_size)
    raw = bytearray(path.read_bytes())
    middle = sum(sizes[:5]) + sizes[5] // 2
    raw[middle : middle + 8] = bytes(8)  # damage volume 5's deflate data (its member header is intact)
    path.write_bytes(bytes(raw))
    got = dict(iter_volumes(path, [0, 4, 8]))
    assert sorted(got) == [0, 4, 8]
    for i, volume in got.items():
        np.testing.assert_array_equal(volume, data[..., i])
    with pytest.raises(Exception):  # noqa: B017  (zlib or ISA-L error: the damaged member is read only when asked)
        dict(iter_volumes(path, [5]))


def test_plain_gzip_files_still_read(tmp_path):
    data = _data(5)
    path = tmp_path / "plain.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    with open(path, "rb") as fobj:
        assert member_sizes(fobj, path.stat().st_size) is None
    got = dict(iter_volumes(path, [1, 3], chunk=2))
    np.testing.assert_array_equal(got[3], data[..., 3])


def test_unfinished_or_repeated_volumes_leave_nothing(tmp_path):
    data = _data(4)
    path = tmp_path / "rel.nii.gz"
    writer = _write(path, data, order=[0, 1, 3])
    with pytest.raises(ValueError, match="written twice"):
        writer.write(1, data[..., 1][None])
    with pytest.raises(RuntimeError, match=r"volumes \[2\] of 4 never written"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_an_output_error_and_leaves_nothing(tmp_path):
    import errno
    import os

    from deeplight_bids.exceptions import OutputError

    class FullDisk:
        closed = False

        def __init__(self, real):
            self.real = real

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            self.closed = True
            self.real.close()

    data = _data(3)
    writer = VolumeGzipNifti4D(tmp_path / "rel.nii.gz", data.shape, AFFINE, 0.72)
    writer._file = FullDisk(writer._file)
    with pytest.raises(OutputError, match=r"rel.nii.gz: write failed \(No space left on device\); check free space"):
        writer.write(0, np.moveaxis(data, -1, 0))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
