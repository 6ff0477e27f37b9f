"""The table of spaces and the MNI152NLin2009cAsym -> MNI152NLin6Asym transform, proven on a known warp.

A synthetic, asymmetric displacement field (tests/prepare/synthetic_warp.py) is written in
TemplateFlow's file format (ITK/ANTs composite .h5); an image defined analytically on the
reference template is warped into the "2009c" template with the exact inverse, and the app
must bring it back: voxel correlation with the unwarped image, a planted blob within one
voxel, left stays left, and the same file applied inverted is detected.
"""

import hashlib
import logging

import nibabel as nib
import numpy as np
import pytest

from deeplight_bids.prepare import spaces
from deeplight_bids.prepare.grid import REFERENCE_AFFINE, REFERENCE_SHAPE

from . import synthetic_warp as warp

#: MNI152NLin2009cAsym res-2 grid as TemplateFlow stores it (97 x 115 x 97, RAS).
SOURCE_SHAPE = (97, 115, 97)
SOURCE_AFFINE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -132.0], [0, 0, 2.0, -78.0], [0, 0, 0, 1]])
BLOB = np.array([-40.0, -20.0, 12.0])  # left hemisphere (RAS x < 0)


def truth(points):
    """An asymmetric smooth image on the reference template, with a sharp blob at BLOB; ``(n, 3)`` mm -> ``(n,)``."""
    p = np.asarray(points, dtype=float)

    def gauss(center, sigma):
        return np.exp(-np.sum((p - center) ** 2, axis=1) / (2 * sigma**2))

    return (
        gauss([20, -40, 0], 25)
        + 0.6 * gauss([-30, 30, 20], 15)
        + 0.8 * gauss([0, 10, -30], 10)
        + 4.0 * gauss(BLOB, 3.0)
    )


def world(affine, shape):
    ijk = np.indices(shape).reshape(3, -1).T
    return ijk @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture(scope="module")
def warped_image():
    """The truth seen in the source ("2009c") template: J(q) = truth(T^-1(q))."""
    values = truth(warp.inverse(world(SOURCE_AFFINE, SOURCE_SHAPE))).reshape(SOURCE_SHAPE).astype(np.float32)
    return nib.Nifti1Image(values, SOURCE_AFFINE)


@pytest.fixture(scope="module")
def reference_truth():
    return truth(world(REFERENCE_AFFINE, REFERENCE_SHAPE)).reshape(REFERENCE_SHAPE)


@pytest.fixture(scope="module")
def transform_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xfm")
    return {
        "forward": warp.write_itk_displacement_h5(folder / "forward.h5", warp.forward),
        "inverted": warp.write_itk_displacement_h5(folder / "inverted.h5", warp.inverse),
    }


def _resample(path, img, interpolation="continuous"):
    resampler = spaces.TemplateResampler(spaces.load_transform(path), {"Name": path.name})
    return np.asarray(resampler(img, interpolation).dataobj)


def blob_position(data):
    """World position (mm) of the blob's peak in a reference-grid image."""
    ijk = np.unravel_index(np.argmax(data), data.shape)
    return REFERENCE_AFFINE[:3, :3] @ np.array(ijk) + REFERENCE_AFFINE[:3, 3]


def test_synthetic_file_is_what_nitransforms_reads(transform_files):
    points = np.array([[-30.0, 10, 20], [40, -50, -10], [0, 0, 0]])
    mapped = spaces.load_transform(transform_files["forward"]).map(points)
    assert np.allclose(mapped, warp.forward(points), atol=1e-3)
    assert np.all(np.abs(mapped[:, 0] - points[:, 0]) > 3)  # far from the identity


def test_transform_brings_the_warped_image_back(transform_files, warped_image, reference_truth):
    back = _resample(transform_files["forward"], warped_image)
    inside = reference_truth > 0.05
    corr = np.corrcoef(back[inside], reference_truth[inside])[0, 1]
    assert corr > 0.99
    # the blob within one voxel (2 mm) of where it was planted, and still on the left
    position = blob_position(back)
    assert np.linalg.norm(position - BLOB) <= 2.0 * np.sqrt(3)
    assert np.abs(position - BLOB).max() <= 2.0
    assert position[0] < 0
    # world-coordinate resampling (the old behaviour, --allow-approximate-space) is measurably worse
    approx = np.asarray(spaces.ApproximateResampler()(warped_image).dataobj)
    assert np.abs(blob_position(approx) - BLOB).max() >= 4.0
    assert np.corrcoef(approx[inside], reference_truth[inside])[0, 1] < corr - 0.02


def test_inverted_transform_is_detected(transform_files, warped_image, reference_truth):
    # the same checks fail when the transform is applied the wrong way round
    back = _resample(transform_files["inverted"], warped_image)
    assert np.abs(blob_position(back) - BLOB).max() >= 8.0  # off by about twice the shift
    inside = reference_truth > 0.05
    assert np.corrcoef(back[inside], reference_truth[inside])[0, 1] < 0.97


def test_mask_nearest_and_mapping_computed_once(transform_files, warped_image):
    chain = spaces.load_transform(transform_files["forward"])
    calls = []

    class Counting:
        def map(self, points):
            calls.append(len(points))
            return chain.map(points)

    resampler = spaces.TemplateResampler(Counting(), None)
    mask = nib.Nifti1Image((np.asarray(warped_image.dataobj) > 0.3).astype(np.uint8), SOURCE_AFFINE)
    series = nib.Nifti1Image(np.repeat(np.asarray(warped_image.dataobj)[..., None], 3, axis=3), SOURCE_AFFINE)
    out_mask = np.asarray(resampler(mask, "nearest").dataobj)
    out_series = np.asarray(resampler(series, "continuous").dataobj)
    assert set(np.unique(out_mask)) <= {0, 1}
    assert out_series.shape == (*REFERENCE_SHAPE, 3)
    assert np.allclose(out_series[..., 0], out_series[..., 2])
    assert len(calls) == 1  # one transform evaluation for the mask and every volume


def _table_with(monkeypatch, path):
    data = path.read_bytes()
    xfm = spaces.TransformFile(
        template="MNI152NLin6Asym",
        query=dict(spaces.MNI2009C_TO_6ASYM.query),
        filename=spaces.MNI2009C_TO_6ASYM.filename,
        md5=hashlib.md5(data).hexdigest(),
        size=len(data),
    )
    monkeypatch.setitem(spaces.KNOWN_SPACES, "MNI152NLin2009cAsym", spaces.KnownSpace("MNI152NLin2009cAsym", xfm))
    return xfm


def install_transform(monkeypatch, tmp_path, source):
    """Put ``source`` in a TEMPLATEFLOW_HOME under TemplateFlow's name, with the table's checksum set to it."""
    home = tmp_path / "templateflow"
    target = home / "tpl-MNI152NLin6Asym" / spaces.MNI2009C_TO_6ASYM.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes())
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    _table_with(monkeypatch, target)
    return target


def test_fetch_checks_checksum_and_explains_offline(monkeypatch, tmp_path, transform_files):
    def offline(xfm):
        raise ConnectionError("no network")

    monkeypatch.setattr(spaces, "_templateflow_get", offline)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    with pytest.raises(spaces.SpaceTransformError) as err:
        spaces.fetch_transform(spaces.MNI2009C_TO_6ASYM)
    message = str(err.value)
    assert spaces.MNI2009C_TO_6ASYM.filename in message and "TEMPLATEFLOW_HOME" in message
    assert "deeplight-bids templates fetch" in message and "\n" not in message
    # the real table's checksum does not match the synthetic file: refused, never used
    home = tmp_path / "home"
    bad = home / "tpl-MNI152NLin6Asym" / spaces.MNI2009C_TO_6ASYM.filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(transform_files["forward"].read_bytes())
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    with pytest.raises(spaces.SpaceTransformError, match="checksum mismatch"):
        spaces.fetch_transform(spaces.MNI2009C_TO_6ASYM)
    # with the matching checksum the plan resolves it and records name + sha256
    _table_with(monkeypatch, bad)
    plan = spaces.SpacePlan()
    plan.prepare(["MNI152NLin2009cAsym", "MNI152NLin6Asym"])
    to_grid, provenance = plan.resampler_for("MNI152NLin2009cAsym")
    assert isinstance(to_grid, spaces.TemplateResampler)
    assert provenance["Name"] == f"tpl-MNI152NLin6Asym/{spaces.MNI2009C_TO_6ASYM.filename}"
    assert provenance["Sha256"] == hashlib.sha256(bad.read_bytes()).hexdigest()
    assert plan.resampler_for("MNI152NLin6Asym") == (spaces.to_reference_grid, None)


def _smooth_field(shape, affine, n_volumes=2, seed=0):
    """Random BOLD-like volumes with structure at the scale of a voxel (a hard case for interpolation)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    vols = [gaussian_filter(rng.normal(size=shape), 1.0) for _ in range(n_volumes)]
    data = np.stack([100 + 10 * v / v.std() for v in vols], axis=-1).astype(np.float32)
    return nib.Nifti1Image(data, affine)


def test_approximate_equals_the_old_path_on_fmriprep_grids():
    """On MNI152NLin2009cAsym res-2 (and res-1) every 2 mm reference voxel centre is a source voxel centre:
    neither nilearn's cubic spline (the old path) nor the precomputed trilinear weights interpolate."""
    from deeplight_bids.prepare.grid import to_reference_grid

    img = _smooth_field(SOURCE_SHAPE, SOURCE_AFFINE)
    new = np.asarray(spaces.ApproximateResampler()(img).dataobj)
    old = np.asarray(to_reference_grid(img, "continuous").dataobj)
    assert new.shape == old.shape == (*REFERENCE_SHAPE, 2)
    assert np.abs(new - old).max() <= 1e-4 * np.abs(old).max()  # float32 rounding
    mask = nib.Nifti1Image((np.asarray(img.dataobj)[..., 0] > 100).astype(np.uint8), SOURCE_AFFINE)
    resampler = spaces.ApproximateResampler()
    assert np.array_equal(
        np.asarray(resampler(mask, "nearest").dataobj), np.asarray(to_reference_grid(mask, "nearest").dataobj)
    )


def test_approximate_is_trilinear_on_other_grids():
    """On a grid that does not share the reference's voxel centres (3 mm, shifted 0.7 mm) the new path is
    nilearn's *linear* interpolation to float32 rounding; against the old cubic B-spline it differs by the
    trilinear-vs-cubic interpolation error, which the 3 mm smoothing that follows keeps small."""
    from nilearn.image import smooth_img

    from deeplight_bids.prepare.grid import to_reference_grid

    affine = np.array([[3.0, 0, 0, -95.3], [0, 3.0, 0, -131.3], [0, 0, 3.0, -77.3], [0, 0, 0, 1]])
    img = _smooth_field((65, 77, 65), affine)
    new = np.asarray(spaces.ApproximateResampler()(img).dataobj)
    linear = np.asarray(to_reference_grid(img, "linear").dataobj)
    cubic = np.asarray(to_reference_grid(img, "continuous").dataobj)
    assert np.abs(new - linear).max() <= 1e-5 * np.abs(linear).max()
    inside = np.zeros(REFERENCE_SHAPE, bool)
    inside[3:-3, 3:-3, 3:-3] = True
    inside &= cubic[..., 0] != 0
    diff = (new - cubic)[inside]
    assert np.abs(diff).max() > 0.01  # really another interpolation, not the same numbers
    assert np.sqrt((diff**2).mean()) < 0.2 * 10  # rms below 20 % of the field's SD (10) on this rough field
    smoothed = [np.asarray(smooth_img(nib.Nifti1Image(a, REFERENCE_AFFINE), 3.0).dataobj) for a in (new, cubic)]
    assert np.corrcoef(smoothed[0][inside].ravel(), smoothed[1][inside].ravel())[0, 1] > 0.99


def test_file_order_input_needs_no_copy_and_gives_the_same_maps(transform_files, warped_image):
    """Chunks read from a NIfTI file are x-fastest (Fortran order): flattened as stored, same result."""
    series = np.repeat(np.asarray(warped_image.dataobj)[..., None], 3, axis=3) * np.array([1, 2, 3], np.float32)
    c_img = nib.Nifti1Image(np.ascontiguousarray(series), SOURCE_AFFINE)
    f_img = nib.Nifti1Image(np.asfortranarray(series), SOURCE_AFFINE)
    mask = (np.asarray(warped_image.dataobj) > 0.3).astype(np.uint8)
    for resampler in (
        spaces.ApproximateResampler(),
        spaces.TemplateResampler(spaces.load_transform(transform_files["forward"]), None),
    ):
        assert np.allclose(np.asarray(resampler(c_img).dataobj), np.asarray(resampler(f_img).dataobj), atol=1e-6)
        nearest = [
            np.asarray(resampler(nib.Nifti1Image(layout(mask), SOURCE_AFFINE), "nearest").dataobj)
            for layout in (np.ascontiguousarray, np.asfortranarray)
        ]
        assert np.array_equal(*nearest)


def test_approximate_keeps_the_exact_paths_of_the_reference_grid():
    from deeplight_bids.prepare.grid import to_reference_grid

    data = np.random.default_rng(1).normal(size=(*REFERENCE_SHAPE, 2)).astype(np.float32)
    on_grid = nib.Nifti1Image(data, REFERENCE_AFFINE)
    assert spaces.ApproximateResampler()(on_grid) is on_grid
    ras_affine = REFERENCE_AFFINE.copy()
    ras_affine[0, 0], ras_affine[0, 3] = 2.0, -90.0
    ras = nib.Nifti1Image(np.ascontiguousarray(data[::-1]), ras_affine)
    assert np.array_equal(
        np.asarray(spaces.ApproximateResampler()(ras).dataobj), np.asarray(to_reference_grid(ras).dataobj)
    )


def test_approximate_space_warns_once(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(spaces, "_templateflow_get", lambda xfm: None)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    with pytest.raises(spaces.SpaceTransformError):
        spaces.SpacePlan().prepare(["MNI152NLin2009cAsym"])  # no silent identity fallback
    plan = spaces.SpacePlan(allow_approximate=True)
    with caplog.at_level(logging.WARNING, logger="deeplight_bids"):
        plan.prepare(["MNI152NLin2009cAsym"])
        for _ in range(3):
            to_grid, provenance = plan.resampler_for("MNI152NLin2009cAsym")
    assert provenance == "approximate" and isinstance(to_grid, spaces.ApproximateResampler)
    assert plan.resampler_for("MNI152NLin2009cAsym")[0] is to_grid  # one per job: weights built once per grid
    assert len([r for r in caplog.records if "allow-approximate-space" in r.getMessage()]) == 1


def test_refusal_is_one_line():
    line = spaces.refusal("T1w")
    assert line == (
        "BOLD in space T1w; DeepLight needs MNI152NLin6Asym (or MNI152NLin2009cAsym): rerun fMRIPrep "
        "with --output-spaces MNI152NLin6Asym:res-2"
    )


def _dockerfile_bake():
    """The Dockerfile's ARG values of the baked transform and its RUN command (ARGs substituted)."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (TEMPLATEFLOW_XFM\w*)=(\S+)$", text, re.MULTILINE))
    start = text.index("RUN", text.index("ARG TEMPLATEFLOW_XFM_SIZE"))
    end_marker = 'chmod -R a+rX "${TEMPLATEFLOW_HOME}"'
    command = text[start + 4 : text.index(end_marker, start) + len(end_marker)]
    for key, value in args.items():
        command = command.replace("${" + key + "}", value)
    return args, command


def test_dockerfile_bakes_the_table_s_transform(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    args, command = _dockerfile_bake()
    xfm = spaces.MNI2009C_TO_6ASYM
    assert args == {
        "TEMPLATEFLOW_XFM": xfm.filename,
        "TEMPLATEFLOW_XFM_MD5": xfm.md5,
        "TEMPLATEFLOW_XFM_SIZE": str(xfm.size),
    }
    # the build step refuses (and deletes) a file with another checksum; no network needed
    home = tmp_path / "tf"
    bad = home / "tpl-MNI152NLin6Asym" / xfm.filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the transform")
    env = {
        **os.environ,
        "TEMPLATEFLOW_HOME": str(home),
        "BUILD_CA_BUNDLE": "",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for mode, code in (("required", 1), ("no", 0)):
        proc = subprocess.run(
            ["bash", "-ec", command],
            env={**env, "TEMPLATEFLOW_FETCH": mode},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == code, proc.stderr[-1500:]
    assert not bad.exists()


def test_linear_weights_equal_scipy_trilinear(transform_files):
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(1)
    source = rng.normal(size=(20, 24, 18, 2)).astype(np.float32)
    affine = np.array([[4.0, 0, 0, -40], [0, 4.0, 0, -60], [0, 0, 4.0, -30], [0, 0, 0, 1]])
    resampler = spaces.TemplateResampler(spaces.load_transform(transform_files["forward"]), None)
    out = np.asarray(resampler(nib.Nifti1Image(source, affine), "linear").dataobj)
    coords = resampler.coordinates(affine, source.shape)
    for v in range(2):
        expected = map_coordinates(source[..., v], coords, order=1, mode="grid-constant", cval=0.0)
        assert np.allclose(out[..., v].ravel(), expected, atol=1e-5)
    nearest = np.asarray(resampler(nib.Nifti1Image(source[..., 0], affine), "nearest").dataobj).ravel()
    assert np.allclose(nearest, map_coordinates(source[..., 0], coords, order=0, mode="grid-constant", cval=0.0))
