"""A known, asymmetric displacement field written as TemplateFlow writes inter-template transforms.

The file is an ITK/ANTs composite ``.h5`` (``TransformGroup/0`` the composite,
``TransformGroup/1`` a ``DisplacementFieldTransform_float_3_3``), LPS coordinates and
vector components, vector-interleaved Fortran order, as ITK writes it.

The transform ``T`` maps reference (MNI152NLin6Asym) RAS points ``p = (x, y, z)`` to
source-template points::

    T(p) = (x + a(y, z), y, z + c(y))     a(y, z) = 6 + 2 sin(y / 20) + z / 30 (mm),  c(y) = 2 + y / 40

with the exact inverse ``T^-1(q) = (x' - a(y', z' - c(y')), y', z' - c(y'))``.
"""

import h5py
import numpy as np


def shift_x(y, z):
    return 6.0 + 2.0 * np.sin(y / 20.0) + z / 30.0


def shift_z(y):
    return 2.0 + y / 40.0


def forward(points):
    """``T``: reference RAS mm -> source RAS mm, ``(n, 3)``."""
    p = np.asarray(points, dtype=float)
    return np.stack([p[:, 0] + shift_x(p[:, 1], p[:, 2]), p[:, 1], p[:, 2] + shift_z(p[:, 1])], axis=1)


def inverse(points):
    """``T^-1``: source RAS mm -> reference RAS mm, ``(n, 3)``."""
    q = np.asarray(points, dtype=float)
    z = q[:, 2] - shift_z(q[:, 1])
    return np.stack([q[:, 0] - shift_x(q[:, 1], z), q[:, 1], z], axis=1)


def write_itk_displacement_h5(path, mapping=forward, spacing=4.0, extent=((-100, 100), (-136, 100), (-86, 110))):
    """Write ``mapping`` (reference RAS -> source RAS) as an ITK composite .h5 with a displacement field."""
    axes = [np.arange(lo, hi + spacing / 2, spacing) for lo, hi in extent]
    shape = tuple(len(a) for a in axes)
    # the field's grid in LPS (ITK): origin at the LPS coordinates of the first voxel, identity direction
    lps_axes = [-axes[0][::-1], -axes[1][::-1], axes[2]]
    grid = np.stack(np.meshgrid(*lps_axes, indexing="ij"), axis=-1).reshape(-1, 3)
    ras = grid * [-1, -1, 1]
    disp_lps = (mapping(ras) - ras) * [-1, -1, 1]
    params = np.moveaxis(disp_lps.reshape(*shape, 3), -1, 0).reshape(-1, order="F")
    fixed = np.concatenate([shape, [a[0] for a in lps_axes], [spacing] * 3, np.eye(3).ravel()]).astype(float)
    with h5py.File(path, "w") as f:
        f.create_dataset("HDFVersion", data=np.bytes_("1.10.4"))
        f.create_dataset("ITKVersion", data=np.bytes_("5.2.0"))
        group = f.create_group("TransformGroup")
        comp = group.create_group("0")
        comp.create_dataset("TransformType", data=[np.bytes_("CompositeTransform_double_3_3")])
        field = group.create_group("1")
        field.create_dataset("TransformType", data=[np.bytes_("DisplacementFieldTransform_float_3_3")])
        field.create_dataset("TransformFixedParameters", data=fixed)
        field.create_dataset("TransformParameters", data=params.astype(np.float64))
    return path
