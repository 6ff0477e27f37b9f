"""The per-volume relevance file: a 4D ``.nii.gz`` written one gzip member per volume, and read back volume by volume.

Written by the participant level (:class:`VolumeGzipNifti4D`, through
:class:`deeplight_bids.derivatives.background.BackgroundWriter`), read by :mod:`deeplight_bids.readback`
(:func:`member_extents`, :func:`read_volumes`) and checked by :mod:`deeplight_bids.derivatives.integrity`.
Any gzip reader sees one stream (RFC 1952 allows several members).
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

import numpy as np

from deeplight_bids.derivatives.writers import (
    _UMASK,
    _check_target,
    check_volume_block,
    gzip_module,
    nifti4d_header,
    owner_tag,
)
from deeplight_bids.exceptions import OutputError

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator, Sequence
    from pathlib import Path
    from types import ModuleType

    import numpy.typing as npt

#: gzip FEXTRA subfield id of a member's total size (RFC 1952 section 2.3.1.1; BGZF's "BC" is the same idea,
#: but its 16-bit size is too small for a 3.6 MB volume): 4 bytes, little-endian, header to trailer included.
MEMBER_SIZE_FIELD = b"DL"
_MEMBER_HEADER = 20  # 10 fixed bytes + XLEN (2) + SI1 SI2 LEN (4) + the size (4)


def round_mantissa(values: np.ndarray, keepbits: int) -> np.ndarray:
    """Round float32 values to ``keepbits`` mantissa bits (round to nearest, ties to even).

    The relative change of each value is at most ``2**-(keepbits + 1)``; zeros, signs and
    the exponent range are kept.  The dropped bits are zeros, which gzip stores in little
    space (the "bit rounding" of Kloewer et al. 2021, Nat. Comput. Sci., as numcodecs'
    ``BitRound``).

    Parameters
    ----------
    values : numpy.ndarray, float32, any shape
        Rounded in place.
    keepbits : int
        0..23; 23 leaves the values unchanged.

    Returns
    -------
    numpy.ndarray
        ``values``.
    """
    if not 0 <= int(keepbits) <= 23:
        raise ValueError(f"keepbits must be in 0..23, got {keepbits}")
    drop = 23 - int(keepbits)
    if drop == 0:
        return values
    bits = values.view(np.uint32)
    half = np.uint32((1 << (drop - 1)) - 1)
    bits += half + ((bits >> np.uint32(drop)) & np.uint32(1))
    bits &= np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    return values


def gzip_member(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """One gzip member holding ``data`` (bytes-like) whose FEXTRA records the member's size (:data:`MEMBER_SIZE_FIELD`).

    Compressed with ISA-L when installed (levels 0-3), else zlib; no time stamp, no name,
    so the bytes depend on ``data`` and ``level`` only.
    """
    import struct
    import zlib

    deflate: ModuleType  # ISA-L's zlib or the standard library's
    try:
        from isal import isal_zlib as deflate

        level = min(int(level), 3)
    except ImportError:
        deflate = zlib
    data = memoryview(data).cast("B")
    compressor = deflate.compressobj(level, deflate.DEFLATED, -15)
    body = compressor.compress(data) + compressor.flush()
    size = _MEMBER_HEADER + len(body) + 8
    header = (
        b"\x1f\x8b\x08\x04"
        + b"\0\0\0\0"
        + b"\0\xff"
        + struct.pack("<H", 8)
        + MEMBER_SIZE_FIELD
        + struct.pack("<HI", 4, size)
    )
    return header + body + struct.pack("<II", deflate.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


def member_sizes(fobj: IO[bytes], file_size: int) -> list[int] | None:
    """Sizes of the gzip members of a file written by :class:`VolumeGzipNifti4D`, or None for any other gzip file.

    Reads 20 bytes per member (the header with its size), not the data.
    """
    import struct

    sizes, position = [], 0
    while position < file_size:
        fobj.seek(position)
        head = fobj.read(_MEMBER_HEADER)
        if (
            len(head) < _MEMBER_HEADER
            or head[:4] != b"\x1f\x8b\x08\x04"
            or head[10:12] != b"\x08\0"
            or head[12:14] != MEMBER_SIZE_FIELD
            or head[14:16] != b"\x04\0"
        ):
            return None
        size = struct.unpack("<I", head[16:20])[0]
        if size <= _MEMBER_HEADER + 8 or position + size > file_size:
            return None
        sizes.append(size)
        position += size
    return sizes


def inflate_member(member: bytes) -> bytes:
    """The data of one gzip member (bytes); its CRC and length are checked."""
    return gzip_module().decompress(member)


class VolumeGzipNifti4D:
    """Write a 4D float32 ``.nii.gz`` as volumes arrive, one gzip member per volume.

    A gzip file may hold several members one after another (RFC 1952); every gzip reader
    (nibabel, FSL, AFNI, the bids-validator) reads them as one stream.  Here member 0
    holds the NIfTI header and the first volume, member ``i`` volume ``i``, and each
    member's header records its size, so :func:`read_volumes` finds volume ``i`` by
    reading ``i`` small headers and decompresses only the members asked for.  Each member
    is compressed when its volume arrives (in the caller's thread: the background writer),
    not after the last one.

    Parameters
    ----------
    path : path-like
        Final ``.nii.gz`` path; the file is written to a temporary name beside it and
        renamed into place by :meth:`close`.
    shape : tuple of int
        ``(x, y, z, n_volumes)``.
    affine : numpy.ndarray, shape (4, 4)
    t_r : float
        Seconds (4th zoom).
    description : str
        NIfTI ``descrip`` (79 characters at most).
    root : path-like or None
        OUTPUT_DIR (see :func:`deeplight_bids.derivatives.writers.atomic_path`).
    level : int
        gzip level (ISA-L: 0-3).
    keepbits : int
        Mantissa bits kept (:func:`round_mantissa`; 23: float32 unchanged).

    Notes
    -----
    Volumes may arrive out of order; a volume is compressed once every earlier one has
    arrived (those waiting are held in memory).  Memory: a few volumes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        affine: np.ndarray,
        t_r: float,
        description: str = "",
        root: str | os.PathLike[str] | None = None,
        level: int = 1,
        keepbits: int = 23,
    ):
        import io
        import os
        import tempfile

        self.path = _check_target(path, root)
        self.shape = tuple(int(s) for s in shape)
        self.level, self.keepbits = int(level), int(keepbits)
        header = nifti4d_header(self.shape, affine, t_r, description)
        header.set_data_offset(header.single_vox_offset)
        buf = io.BytesIO()
        header.write_to(buf)
        self._prefix = buf.getvalue().ljust(int(header["vox_offset"]), b"\0")
        self._volume_bytes = int(np.prod(self.shape[:3])) * 4
        self._pending: dict[int, np.ndarray] = {}
        self._next = 0
        self._offsets: list[tuple[int, int]] = []  # (offset, size) of the members written
        self._position = 0
        self._tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name.split('.')[0]}.{owner_tag()}.", suffix=".tmp.nii.gz"
            )
            self._file = os.fdopen(fd, "r+b")
        except OSError as err:
            raise OutputError(
                f"{self.path.parent}: cannot write here ({err.strerror}); choose a writable "
                "OUTPUT_DIR (and --work-dir)."
            ) from err

    def write(self, start: int, volumes: npt.ArrayLike) -> None:
        """Store ``volumes`` ``(n, x, y, z)`` at time indices ``start .. start + n - 1`` (compressed now when in order)."""
        volumes = check_volume_block(self.shape, start, volumes)
        for i, vol in enumerate(volumes):
            index = start + i
            if index < self._next or index in self._pending:
                raise ValueError(f"{self.path.name}: volume {index} written twice")
            # (z, y, x) C order = NIfTI's column-major (x, y, z): one contiguous copy, rounded in place
            self._pending[index] = round_mantissa(np.array(np.asfortranarray(vol).T, order="C"), self.keepbits)
        while self._next in self._pending:
            self._append(self._pending.pop(self._next))

    def _append(self, column_major):
        data = column_major.tobytes()
        if self._next == 0:
            data = self._prefix + data
        member = gzip_member(data, self.level)
        try:
            self._file.write(member)
        except OSError as err:
            raise OutputError(
                f"{self.path}: write failed ({err.strerror or err}); check free space and permissions."
            ) from err
        self._offsets.append((self._position, len(member)))
        self._position += len(member)
        self._next += 1

    def read(self, index: int) -> np.ndarray:
        """Volume ``index`` as written (after rounding), ``(z, y, x)`` float32."""
        index = int(index)
        if index in self._pending:
            return self._pending[index].copy()
        if not 0 <= index < self._next:
            raise LookupError(f"{self.path.name}: volume {index} has not been written")
        import os

        self._file.flush()
        offset, size = self._offsets[index]
        data = inflate_member(os.pread(self._file.fileno(), size, offset))
        nx, ny, nz = self.shape[:3]
        return np.frombuffer(data[-self._volume_bytes :], dtype=np.float32).reshape(nz, ny, nx)

    def close(self) -> Path:
        """Check every volume was written, move the file into place; returns the final path."""
        import os

        try:
            if self._next != self.shape[3]:
                missing = sorted(set(range(self._next, self.shape[3])) - set(self._pending))
                raise RuntimeError(f"{self.path.name}: volumes {missing[:10]} of {self.shape[3]} never written")
            try:
                self._file.close()
                # self._tmp is a str once __init__ returned
                os.chmod(self._tmp, 0o666 & ~_UMASK)  # type: ignore[arg-type]
                os.replace(self._tmp, self.path)  # type: ignore[arg-type]
            except OSError as err:
                raise OutputError(
                    f"{self.path}: write failed ({err.strerror or err}); check free space and permissions."
                ) from err
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (on error; after :meth:`close`, nothing to do)."""
        import os

        if not self._file.closed:
            self._file.close()
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._pending.clear()


def member_extents(path: str | os.PathLike[str]) -> list[tuple[int, int]] | None:
    """``[(offset, size), ...]`` of the gzip members of a :class:`VolumeGzipNifti4D` file, or None for another file.

    Reads each member's 20-byte header, not its data.
    """
    import os

    with open(path, "rb") as fobj:
        sizes = member_sizes(fobj, os.fstat(fobj.fileno()).st_size)
    if sizes is None:
        return None
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    return list(zip(offsets.tolist(), sizes))


def read_volumes(path: str | os.PathLike[str], wanted: Iterable[int], volume_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(index, raw bytes)`` of the wanted volumes of a :class:`VolumeGzipNifti4D` file, one at a time.

    Only the members of the wanted volumes are read and decompressed.

    Parameters
    ----------
    path : path-like
        A file for which :func:`member_extents` is not None, one member per volume.
    wanted : iterable of int
        0-based volume indices, in range.
    volume_bytes : int
        Bytes per volume (member 0 also holds the header before its volume).
    """
    extents = member_extents(path)
    with open(path, "rb") as fobj:
        for index in wanted:
            offset, size = extents[index]  # type: ignore[index]  # not None: the file is one member per volume
            fobj.seek(offset)
            data = inflate_member(fobj.read(size))
            if len(data) < volume_bytes:
                raise ValueError(f"{path}: gzip member {index} holds {len(data)} bytes, not one volume")
            yield index, data[len(data) - volume_bytes :]


#: gzip level and mantissa bits of the per-volume and per-block relevance files: ISA-L's level 1 (level 3 is
#: larger on these maps) and 16 of float32's 23 mantissa bits, a relative change of at most 2**-17 (7.6e-6)
#: per value, below float32 LRP's own round-off between backends; 17 % smaller files (benchmarks/RESULTS.md).
RELEVANCE_GZIP_LEVEL = 1
RELEVANCE_KEEPBITS = 16
