"""Tests for mixdemo.io: round trips, normalisation, and every kind of bad input."""

from __future__ import annotations

import gzip
import os
import struct
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixdemo import io as mio
from mixdemo.io import (
    CorruptFileError,
    DataTypeError,
    EmptyFileError,
    GeometryError,
    MissingFileError,
    NotNiftiError,
    Scan,
    ScanError,
    ShapeError,
    TooLargeError,
    ValueRangeError,
    load_labels,
    load_scan,
    normalize_intensity,
    save_labels,
    save_volume,
)

SHAPE = (16, 20, 24)
RAS_1MM = np.diag([1.0, 1.0, 1.0, 1.0])


def _affine(diag: tuple[float, float, float], origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    aff = np.diag([*diag, 1.0])
    aff[:3, 3] = origin
    return aff


LPS_2MM = _affine((-2.0, -2.0, 2.0))
LPS_1MM = _affine((-1.0, -1.0, 1.0))


def _phantom(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """A positive blob with noise: a non-constant, finite test volume."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    blob = np.exp(-3 * (grid**2).sum(axis=0))
    return (100 * blob + rng.random(shape)).astype(np.float32)


def _write(path: Path, data: np.ndarray, affine: np.ndarray = RAS_1MM) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _world_to_voxel(affine: np.ndarray, world: np.ndarray) -> np.ndarray:
    return (np.linalg.inv(affine) @ np.append(world, 1.0))[:3]


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_lps_2mm_round_trip_overlays_input_grid(tmp_path, suffix):
    data = _phantom()
    src = _write(tmp_path / f"scan{suffix}", data, LPS_2MM)
    scan = load_scan(src, normalize=False)

    assert isinstance(scan, Scan)
    assert scan.data.dtype == np.float32 and scan.data.ndim == 3
    assert nib.aff2axcodes(scan.affine) == ("R", "A", "S")
    assert np.allclose(scan.affine[:3, :3], np.eye(3))
    assert scan.data.shape == (31, 39, 47)  # (n - 1) * 2 + 1 samples at 1 mm
    assert scan.source_shape == SHAPE
    assert np.allclose(scan.source_affine, LPS_2MM)

    # Source voxel centres fall on 1 mm grid points and keep their value.
    for ijk in [(0, 0, 0), (3, 7, 11), (15, 19, 23)]:
        world = LPS_2MM @ np.array([*ijk, 1.0])
        idx = _world_to_voxel(scan.affine, world[:3])
        assert np.allclose(idx, np.round(idx))
        assert scan.data[tuple(np.round(idx).astype(int))] == pytest.approx(data[ijk], rel=1e-5)

    # Labels on the source grid -> scan grid -> saved back: identical.
    labels = np.random.default_rng(1).integers(0, 5, SHAPE).astype(np.uint8)
    lab_path = _write(tmp_path / f"labels{suffix}", labels, LPS_2MM)
    on_scan = load_labels(lab_path, like=scan)
    assert on_scan.shape == scan.data.shape and on_scan.dtype == np.uint8

    out = tmp_path / f"out{suffix}"
    save_labels(on_scan, scan, out)
    back = nib.load(str(out))
    assert back.shape == SHAPE
    assert np.allclose(back.affine, LPS_2MM)
    assert back.get_data_dtype() == np.uint8
    assert int(back.header["sform_code"]) > 0 and int(back.header["qform_code"]) > 0
    assert np.array_equal(np.asanyarray(back.dataobj), labels)


def test_ras_1mm_labels_identical(tmp_path):
    src = _write(tmp_path / "scan.nii.gz", _phantom(), _affine((1.0, 1.0, 1.0)))
    scan = load_scan(src)
    assert scan.data.shape == SHAPE
    assert np.allclose(scan.affine, scan.source_affine)
    labels = np.random.default_rng(2).integers(0, 10, SHAPE).astype(np.int64)
    out = tmp_path / "seg.nii.gz"
    save_labels(labels, scan, out)
    back = nib.load(str(out))
    assert back.shape == SHAPE and np.allclose(back.affine, scan.source_affine)
    assert np.array_equal(np.asanyarray(back.dataobj), labels)


def test_lps_1mm_is_flipped_not_resampled(tmp_path):
    data = _phantom()
    scan = load_scan(_write(tmp_path / "scan.nii", data, LPS_1MM), normalize=False)
    assert scan.data.shape == SHAPE
    assert nib.aff2axcodes(scan.affine) == ("R", "A", "S")
    assert np.array_equal(scan.data, data[::-1, ::-1, :])
    labels = (scan.data > 50).astype(np.uint8)
    save_labels(labels, scan, tmp_path / "seg.nii")
    back = nib.load(str(tmp_path / "seg.nii"))
    assert np.allclose(back.affine, LPS_1MM)
    assert np.array_equal(np.asanyarray(back.dataobj), (data > 50).astype(np.uint8))


def test_oblique_input_is_resampled_to_axis_aligned_ras(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.eye(4)
    aff[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    scan = load_scan(_write(tmp_path / "oblique.nii.gz", _phantom(), aff))
    assert np.allclose(scan.affine[:3, :3], np.eye(3))
    assert scan.source_shape == SHAPE and np.allclose(scan.source_affine, aff)
    labels = (scan.data > 0.5).astype(np.uint8)
    save_labels(labels, scan, tmp_path / "seg.nii.gz")
    back = nib.load(str(tmp_path / "seg.nii.gz"))
    assert back.shape == SHAPE and np.allclose(back.affine, aff, atol=1e-5)


def test_integer_input_and_uppercase_extension(tmp_path):
    data = (_phantom() * 10).astype(np.int16)
    scan = load_scan(_write(tmp_path / "SCAN.NII.GZ", data))
    assert scan.data.dtype == np.float32
    assert 0.0 <= scan.data.min() and scan.data.max() == 1.0


def test_4d_with_one_volume_is_accepted(tmp_path):
    data = _phantom()[..., None]
    scan = load_scan(_write(tmp_path / "one.nii.gz", data))
    assert scan.data.shape == SHAPE and scan.source_shape == SHAPE


def test_the_header_s_scaling_slope_and_intercept_are_applied(tmp_path):
    """A NIfTI's stored values mean ``stored * scl_slope + scl_inter`` (scanners' int16 exports): read with both, as
    the DICOM reader applies a series' rescale slope and intercept."""
    stored = (_phantom() * 10).astype(np.int16)
    path = _write(tmp_path / "scaled.nii", stored)
    raw = bytearray(path.read_bytes())
    raw[112:120] = struct.pack("<ff", 2.5, -100.0)  # scl_slope, scl_inter of the NIfTI-1 header
    path.write_bytes(bytes(raw))
    scan = load_scan(path, normalize=False)
    np.testing.assert_allclose(scan.data, stored * 2.5 - 100.0, rtol=1e-6)


def test_nifti2_is_accepted(tmp_path):
    path = tmp_path / "n2.nii"
    nib.save(nib.Nifti2Image(_phantom(), RAS_1MM), str(path))
    assert load_scan(path).data.shape == SHAPE


def test_load_labels_without_like_and_mismatched_like(tmp_path):
    labels = np.random.default_rng(3).integers(0, 3, SHAPE).astype(np.uint8)
    lab = load_labels(_write(tmp_path / "lab.nii.gz", labels, LPS_1MM))
    assert lab.dtype == np.uint8 and np.array_equal(lab, labels[::-1, ::-1, :])
    other = load_scan(_write(tmp_path / "other.nii.gz", _phantom((12, 12, 12))))
    with pytest.raises(ShapeError, match="do not match the scan"):
        load_labels(tmp_path / "lab.nii.gz", like=other)


def test_load_labels_rejects_non_integer_and_out_of_range(tmp_path):
    frac = np.full(SHAPE, 1.5, dtype=np.float32)
    with pytest.raises(ValueRangeError, match="non-integer"):
        load_labels(_write(tmp_path / "frac.nii", frac))
    big = np.full(SHAPE, 300, dtype=np.int16)
    with pytest.raises(ValueRangeError, match="outside the range 0 to 255"):
        load_labels(_write(tmp_path / "big.nii", big))
    # Whole-number floats and an all-zero map (empty segmentation) are fine.
    assert load_labels(_write(tmp_path / "zero.nii", np.zeros(SHAPE, np.float32))).max() == 0


def test_save_volume_round_trip(tmp_path):
    data = _phantom()
    save_volume(data, LPS_2MM, tmp_path / "vol.nii.gz")
    img = nib.load(str(tmp_path / "vol.nii.gz"))
    assert img.get_data_dtype() == np.float32
    assert np.allclose(img.affine, LPS_2MM)
    assert np.array_equal(np.asanyarray(img.dataobj), data)
    assert os.listdir(tmp_path) == ["vol.nii.gz"]


def test_save_volume_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=".nii or .nii.gz"):
        save_volume(_phantom(), RAS_1MM, tmp_path / "vol.png")
    with pytest.raises(ValueError, match="4x4"):
        save_volume(_phantom(), np.eye(3), tmp_path / "vol.nii")
    with pytest.raises(ValueError, match="whole numbers"):
        save_volume(_phantom(), RAS_1MM, tmp_path / "vol.nii", dtype=np.uint8)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- atomic writes
def test_save_labels_wrong_shape_leaves_nothing(tmp_path):
    scan = load_scan(_write(tmp_path / "scan.nii", _phantom()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ValueError, match="shape"):
        save_labels(np.zeros((4, 4, 4), np.uint8), scan, out_dir / "seg.nii.gz")
    with pytest.raises(ValueError, match="integer"):
        save_labels(np.zeros(SHAPE, np.float32), scan, out_dir / "seg.nii.gz")
    for beyond in (256, -1):  # as uint8 they would wrap to 0 and 255: labels lost or made up, silently
        with pytest.raises(ValueError, match="between 0 and 255"):
            save_labels(np.full(SHAPE, beyond, np.int16), scan, out_dir / "seg.nii.gz")
    assert os.listdir(out_dir) == []


def test_failed_write_removes_temp_and_keeps_old_file(tmp_path, monkeypatch):
    scan = load_scan(_write(tmp_path / "scan.nii", _phantom()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "seg.nii.gz").write_bytes(b"previous result")

    def broken(self, filename, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", broken)
    with pytest.raises(OSError, match="disk full"):
        save_labels(np.zeros(SHAPE, np.uint8), scan, out_dir / "seg.nii.gz")
    assert os.listdir(out_dir) == ["seg.nii.gz"]
    assert (out_dir / "seg.nii.gz").read_bytes() == b"previous result"



@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    """An atomic write gets the mode a plain open would (0666 less the umask), not mkstemp's owner-only 0600,
    also where it replaces an existing file."""
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
        save_volume(_phantom(), RAS_1MM, tmp_path / "vol.nii.gz")
        (tmp_path / "old.nii").write_bytes(b"previous")
        os.chmod(tmp_path / "old.nii", 0o600)
        save_volume(_phantom(), RAS_1MM, tmp_path / "old.nii")
    finally:
        os.umask(old)
    assert plain.stat().st_mode & 0o777 == mode
    assert (tmp_path / "vol.nii.gz").stat().st_mode & 0o777 == mode
    assert (tmp_path / "old.nii").stat().st_mode & 0o777 == mode


def test_umask_falls_back_to_the_one_at_import_without_proc(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "_PROC_STATUS", str(tmp_path / "no-such-status"))
    assert mio._current_umask() == mio._UMASK_AT_IMPORT
    save_volume(_phantom(), RAS_1MM, tmp_path / "vol.nii")
    assert (tmp_path / "vol.nii").stat().st_mode & 0o777 == 0o666 & ~mio._UMASK_AT_IMPORT


# --------------------------------------------------------------------------- normalisation
def test_normalize_properties():
    rng = np.random.default_rng(4)
    data = rng.normal(50, 20, (20, 20, 20)).astype(np.float64)
    data[:5] = 0
    data[0, 0, :3] = -7
    out = normalize_intensity(data)
    assert out.dtype == np.float32 and out.shape == data.shape
    assert out.min() >= 0 and out.max() == 1
    assert np.all(out[:5] == 0)  # background and negatives -> 0
    positive = data[data > 0]
    saturated = np.count_nonzero(out == 1) / positive.size
    assert 0.004 <= saturated <= 0.01  # top ~0.5 % saturates
    assert np.allclose(normalize_intensity(data * 37.5), out, atol=1e-6)  # scale invariant
    order = np.argsort(data.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)  # monotonic
    data32 = data.astype(np.float32)  # already the output's dtype: a lazy implementation could work in place
    before = data32.copy()
    assert normalize_intensity(data32) is not data32 and np.array_equal(data32, before)


def test_normalize_divides_by_the_99_5th_percentile_of_the_positive_voxels_only():
    """The background's zeros (most of a head's grid) do not count: with them, the percentile of the same head moved
    with the size of the field of view."""
    data = np.zeros((20, 20, 20), np.float32)
    data[:, :, :10] = np.random.default_rng(5).gamma(4.0, 25.0, (20, 20, 10))  # half the grid is background
    p = float(np.percentile(data[data > 0], 99.5))
    np.testing.assert_allclose(normalize_intensity(data), np.clip(data / p, 0, 1), rtol=1e-6)


def test_normalize_rejects_unusable_input():
    with pytest.raises(ValueRangeError, match="no positive intensities"):
        normalize_intensity(np.zeros((8, 8, 8)))
    with pytest.raises(ValueRangeError, match="no positive intensities"):
        normalize_intensity(-np.ones((8, 8, 8)))
    with pytest.raises(ValueRangeError, match="NaN"):
        normalize_intensity(np.full((8, 8, 8), np.nan))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.one_of(st.just(0.0), st.floats(-1e3, -1e-3), st.floats(1e-3, 1e6)),
        min_size=1,
        max_size=300,
    ),
    st.floats(1e-3, 1e3),
)
def test_normalize_range_and_scale_invariance(values, scale):
    data = np.array(values, dtype=np.float32)
    if not (data > 0).any():
        with pytest.raises(ValueRangeError):
            normalize_intensity(data)
        return
    out = normalize_intensity(data)
    assert out.min() >= 0 and out.max() <= 1
    assert np.all(out[data <= 0] == 0)
    assert np.allclose(normalize_intensity(data.astype(np.float64) * scale), out, atol=1e-4)


# --------------------------------------------------------------------------- bad inputs
def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="could not be found"):
        load_scan(tmp_path / "nope.nii.gz")
    with pytest.raises(NotNiftiError, match="No DICOM images were found"):
        load_scan(tmp_path)  # a folder is read as a DICOM series (tests/test_dicom.py); this one holds none


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(EmptyFileError, match="empty"):
        load_scan(tmp_path / "empty.nii")


def test_file_over_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "MAX_FILE_BYTES", 1000)
    path = _write(tmp_path / "scan.nii", _phantom())
    with pytest.raises(TooLargeError, match="too large"):
        load_scan(path)


def test_gzip_bomb_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "MAX_FILE_BYTES", 100_000)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(b"\0" * 5_000_000))
    assert path.stat().st_size < 100_000
    with pytest.raises(TooLargeError, match="decompressed image is larger"):
        load_scan(path)


@pytest.mark.parametrize(
    "name", ["scan.png", "scan.txt", "scan", ".nii"]  # a .zip is read as a DICOM series
)
def test_wrong_extension(tmp_path, name):
    path = tmp_path / "x" / name
    path.parent.mkdir()
    path.write_bytes(b"\0" * 400)
    with pytest.raises(NotNiftiError, match=r"not a NIfTI image \(\.nii or \.nii\.gz\)"):
        load_scan(path)


def _png_bytes() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 4 + b"\x11" * 600


def test_png_renamed_nii(tmp_path):
    (tmp_path / "scan.nii").write_bytes(_png_bytes())
    with pytest.raises(NotNiftiError, match="not a valid NIfTI"):
        load_scan(tmp_path / "scan.nii")


def test_dicom_renamed_nii(tmp_path):
    dicom = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL" + b"\x07" * 600
    (tmp_path / "scan.nii").write_bytes(dicom)
    with pytest.raises(NotNiftiError, match="DICOM image named as NIfTI: give a DICOM series as a .zip"):
        load_scan(tmp_path / "scan.nii")


def test_random_bytes_nii(tmp_path):
    (tmp_path / "scan.nii").write_bytes(np.random.default_rng(5).bytes(4096))
    with pytest.raises(NotNiftiError, match="not a valid NIfTI"):
        load_scan(tmp_path / "scan.nii")


def test_gzip_content_named_nii(tmp_path):
    raw = _write(tmp_path / "a.nii.gz", _phantom()).read_bytes()
    (tmp_path / "b.nii").write_bytes(raw)
    with pytest.raises(NotNiftiError, match="rename it to end in .nii.gz"):
        load_scan(tmp_path / "b.nii")


def test_analyze_pair_header_rejected(tmp_path):
    nib.save(nib.Nifti1Pair(_phantom(), RAS_1MM), str(tmp_path / "pair.hdr"))
    (tmp_path / "pair.nii").write_bytes((tmp_path / "pair.hdr").read_bytes() + b"\0" * 4000)
    with pytest.raises(NotNiftiError, match="without its image data"):
        load_scan(tmp_path / "pair.nii")


@pytest.mark.parametrize("name", ["pair.hdr", "pair.img", "PAIR.HDR", "pair.img.gz"])
def test_either_file_of_a_hdr_img_pair_is_refused_as_such(tmp_path, name):
    """A NIfTI-1 (or Analyze) .hdr/.img pair was refused as "not a NIfTI image (.nii or .nii.gz)", which it is: the
    message names the pair, as it does for a pair's header renamed .nii."""
    nib.save(nib.Nifti1Pair(_phantom(), RAS_1MM), str(tmp_path / "pair.hdr"))
    if name != "pair.hdr":
        (tmp_path / name).write_bytes((tmp_path / name.removesuffix(".gz").lower()).read_bytes())
    with pytest.raises(NotNiftiError, match=r"\.hdr/\.img pair.*single \.nii or \.nii\.gz file"):
        load_scan(tmp_path / name)


def test_truncated_nii_gz(tmp_path):
    raw = _write(tmp_path / "a.nii.gz", _phantom()).read_bytes()
    (tmp_path / "b.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        load_scan(tmp_path / "b.nii.gz")


def test_corrupt_gzip(tmp_path):
    raw = bytearray(_write(tmp_path / "a.nii.gz", _phantom()).read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(b ^ 0xFF for b in raw[mid : mid + 64])
    (tmp_path / "b.nii.gz").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        load_scan(tmp_path / "b.nii.gz")


def test_uncompressed_named_nii_gz(tmp_path):
    raw = _write(tmp_path / "a.nii", _phantom()).read_bytes()
    (tmp_path / "b.nii.gz").write_bytes(raw)
    with pytest.raises(CorruptFileError, match="not gzip-compressed"):
        load_scan(tmp_path / "b.nii.gz")


def test_truncated_uncompressed_nii(tmp_path):
    raw = _write(tmp_path / "a.nii", _phantom()).read_bytes()
    (tmp_path / "b.nii").write_bytes(raw[:-100])
    with pytest.raises(CorruptFileError, match="shorter than its header declares"):
        load_scan(tmp_path / "b.nii")


def test_2d(tmp_path):
    with pytest.raises(ShapeError, match="2D"):
        load_scan(_write(tmp_path / "slice.nii", _phantom((16, 20, 1))[..., 0]))


def test_4d_with_three_volumes(tmp_path):
    data = np.stack([_phantom()] * 3, axis=-1)
    with pytest.raises(ShapeError, match="4D series of 3 volumes"):
        load_scan(_write(tmp_path / "series.nii.gz", data))


def test_5d(tmp_path):
    data = _phantom()[..., None, None]
    with pytest.raises(ShapeError, match="5 dimensions; a 3D volume is expected"):
        load_scan(_write(tmp_path / "five.nii", data))


def test_too_small(tmp_path):
    with pytest.raises(ShapeError, match="at least 8 voxels"):
        load_scan(_write(tmp_path / "tiny.nii", _phantom((4, 20, 24))))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf(tmp_path, bad):
    data = _phantom()
    data[3, 4, 5] = bad
    with pytest.raises(ValueRangeError, match="NaN or infinity"):
        load_scan(_write(tmp_path / "bad.nii", data))


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_all_zero_and_constant(tmp_path, value):
    data = np.full(SHAPE, value, dtype=np.float32)
    with pytest.raises(ValueRangeError, match="every voxel has the same value"):
        load_scan(_write(tmp_path / "flat.nii.gz", data))


def test_a_label_map_given_as_the_scan_is_refused_as_such(tmp_path):
    """A segmentation (``seg.nii.gz``) uploaded in the scan's place was segmented as if it were an image; whole
    numbers of few distinct values are a label map or a mask, an integer MRI scan holds hundreds. The client and the
    app ask for the check (their target); a cohort's loader does not."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:-2, 2:-2, 2:-2] = 1
    labels[4:-4, 4:-4, 4:-4] = 3
    with pytest.raises(ValueRangeError, match=r"looks like a label map \(3 distinct whole-number values\), not an MRI"):
        load_scan(_write(tmp_path / "seg.nii.gz", labels), refuse_label_maps=True)
    assert load_scan(tmp_path / "seg.nii.gz").data.max() == 1  # a cohort's synthetic scan may be so: read as asked
    scan = np.round(_phantom() * 1000).astype(np.int16)  # a scanner's integers: many distinct values
    assert load_scan(_write(tmp_path / "t1.nii.gz", scan), refuse_label_maps=True).data.shape == scan.shape
    few = np.choose(labels, [0.0, 0.6, 1.0, 0.2]).astype(np.float32)  # few values, not whole numbers: an image
    assert load_scan(_write(tmp_path / "few.nii.gz", few), refuse_label_maps=True).data.max() == 1


def test_all_negative_cannot_be_normalised(tmp_path):
    path = _write(tmp_path / "neg.nii", -_phantom())
    with pytest.raises(ValueRangeError, match="no positive intensities"):
        load_scan(path)
    assert load_scan(path, normalize=False).data.max() < 0


def _crafted(shape: tuple[int, ...], dtype=np.int16, tail: int = 1000) -> bytes:
    """A NIfTI-1 header declaring ``shape`` followed by only ``tail`` data bytes."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(RAS_1MM, code=1)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0" * 4 + b"\x01" * tail


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_huge_declared_dims_with_tiny_file(tmp_path, suffix):
    raw = _crafted((512, 512, 400))  # within the limits, but needs 200 MiB of data
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match="shorter than its header declares"):
            load_scan(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20  # nothing close to 200 MiB was allocated


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ((4096, 16, 16), "each side may have at most 1024"),
        ((1024, 1024, 1024), "at most 134,217,728"),
    ],
)
def test_declared_dims_over_limits(tmp_path, shape, fragment):
    (tmp_path / "huge.nii").write_bytes(_crafted(shape))
    tracemalloc.start()
    try:
        with pytest.raises(TooLargeError, match=fragment):
            load_scan(tmp_path / "huge.nii")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20  # refused from the header: the declared gigabytes were never allocated


def test_resampled_grid_over_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "MAX_SIDE", 60)
    path = _write(tmp_path / "coarse.nii", _phantom(), _affine((5.0, 1.0, 1.0)))
    with pytest.raises(TooLargeError, match="Resampled to 1 mm voxels"):
        load_scan(path)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_dtype(tmp_path, dtype):
    data = (_phantom() + 1j * _phantom(seed=1)).astype(dtype)
    with pytest.raises(DataTypeError, match="complex numbers"):
        load_scan(_write(tmp_path / "complex.nii", data))


def test_rgb_dtype(tmp_path):
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 7
    with pytest.raises(DataTypeError, match="colour"):
        load_scan(_write(tmp_path / "rgb.nii", rgb))


def test_unsupported_binary_dtype(tmp_path):
    raw = bytearray(_write(tmp_path / "a.nii", _phantom().astype(np.uint8)).read_bytes())
    raw[70:72] = struct.pack("<h", 1)  # datatype code 1: DT_BINARY
    (tmp_path / "b.nii").write_bytes(bytes(raw))
    with pytest.raises(ScanError, match="unsupported data type|not a valid NIfTI"):
        load_scan(tmp_path / "b.nii")


@pytest.mark.parametrize(
    ("zooms", "fragment"),
    [
        ((0.01, 1.0, 1.0), "outside the supported range"),
        ((20.0, 1.0, 1.0), "outside the supported range"),
    ],
)
def test_voxel_size_out_of_range(tmp_path, zooms, fragment):
    with pytest.raises(GeometryError, match=fragment):
        load_scan(_write(tmp_path / "vox.nii", _phantom(), _affine(zooms)))


def test_degenerate_affine(tmp_path):
    aff = np.eye(4)
    aff[:3, 1] = aff[:3, 0]  # two identical axes
    with pytest.raises(GeometryError, match="orientation information is invalid"):
        load_scan(_write(tmp_path / "flat.nii", _phantom(), aff))


PATIENT = "../Doe^John_19700101_MRN123456"
SECRETS = ("Doe", "John", "19700101", "MRN", "../")


def _bad_files(folder: Path) -> dict[str, Path]:
    good = _write(folder / "good.nii.gz", _phantom()).read_bytes()
    contents = {
        "missing.nii": None,
        "empty.nii": b"",
        "wrongext.txt": good,
        "random.nii": np.random.default_rng(6).bytes(1000),
        "truncated.nii.gz": good[: len(good) // 2],
        "flat.nii": nib.Nifti1Image(np.zeros(SHAPE, np.float32), RAS_1MM).to_bytes(),
        "huge.nii": _crafted((512, 512, 400)),
    }
    paths = {}
    for kind, body in contents.items():
        path = folder / "sub" / f"{PATIENT}_{kind}"
        if body is not None:
            path.write_bytes(body)
        paths[kind] = path
    return paths


def test_error_messages_never_contain_path_or_name(tmp_path):
    (tmp_path / "sub").mkdir()
    paths = _bad_files(tmp_path)
    for kind, path in paths.items():
        calls = (load_scan,) if kind == "flat.nii" else (load_scan, load_labels)
        for call in calls:  # an all-zero label map is valid (empty segmentation)
            with pytest.raises(ScanError) as info:
                call(str(path))
            exc: BaseException | None = info.value
            while exc is not None:  # the whole chain, as a traceback would show it
                text = str(exc)
                for secret in (*SECRETS, str(tmp_path), kind):
                    assert secret not in text, (kind, text)
                exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
            message = str(info.value)
            assert message[:1].isupper() and message.endswith("."), message


def test_scan_error_is_value_error():
    assert issubclass(ScanError, ValueError)
    for cls in (MissingFileError, EmptyFileError, NotNiftiError, CorruptFileError, ShapeError,
                TooLargeError, ValueRangeError, DataTypeError, GeometryError):
        assert issubclass(cls, ScanError)


# --------------------------------------------------------------------------- fuzzing
def _valid_small_nifti() -> bytes:
    data = np.arange(8 * 8 * 8, dtype=np.int16).reshape(8, 8, 8)
    return nib.Nifti1Image(data, LPS_2MM).to_bytes()


_BASE = _valid_small_nifti()


def _load_or_scan_error(path: Path) -> None:
    try:
        result = load_scan(path)
    except ScanError:
        return
    assert isinstance(result, Scan)
    assert result.data.dtype == np.float32 and np.isfinite(result.data).all()


_FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(tmp_path, blob):
    for name, body in (("f.nii", blob), ("f.nii.gz", blob), ("g.nii.gz", gzip.compress(blob))):
        path = tmp_path / name
        path.write_bytes(body)
        _load_or_scan_error(path)


@_FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=12),
    st.booleans(),
)
def test_fuzz_mutated_header(tmp_path, edits, compress):
    raw = bytearray(_BASE)
    for pos, value in edits:
        raw[pos] = value
    path = tmp_path / ("m.nii.gz" if compress else "m.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if compress else bytes(raw))
    _load_or_scan_error(path)


def test_labels_resampled_onto_the_same_grid_in_the_other_slice_order_keep_their_edge_planes():
    """A grid in the other slice order (a left-handed DICOM series, a SEG read back) places the first plane a
    rounding error outside the source: SciPy's constant mode gave it 0, and a whole plane of labels was lost."""
    from mixdemo.io import resample_labels

    affine = np.array([[0.9, 0.0, 0.0, -8.0], [0.0, 1.1, 0.0, 11.0], [0.0, 0.0, -1.5, 4.0], [0.0, 0.0, 0.0, 1.0]])
    labels = np.random.default_rng(0).integers(1, 4, (6, 7, 14)).astype(np.uint8)
    reversed_order = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 13], [0, 0, 0, 1.0]])
    np.testing.assert_array_equal(resample_labels(labels, affine, labels.shape, reversed_order), labels[:, :, ::-1])
    shifted = affine.copy()
    shifted[:3, 3] += [0.0, 0.0, -3.0]  # two planes beyond the source's end: nothing there, 0
    assert not resample_labels(labels, affine, labels.shape, shifted)[:, :, -2:].any()


def test_a_label_map_of_the_scan_s_dimensions_placed_elsewhere_by_its_header_is_refused(tmp_path):
    """Same dimensions, origin 10 mm away: resampled by its header the labels would lie off the anatomy; refused. A
    shift under half a voxel (header rounding) is taken."""
    from mixdemo.io import GeometryError, load_labels, load_scan, save_volume

    rng = np.random.default_rng(0)
    save_volume(rng.random((20, 24, 22)).astype(np.float32), np.eye(4), tmp_path / "t1.nii.gz")
    labels = rng.integers(0, 4, (20, 24, 22)).astype(np.uint8)
    scan = load_scan(tmp_path / "t1.nii.gz")
    for shift, refused in ((10.0, True), (0.3, False), (0.0, False)):
        moved = np.eye(4)
        moved[2, 3] = shift
        save_volume(labels, moved, tmp_path / "seg.nii.gz", dtype=np.uint8)
        if refused:
            with pytest.raises(GeometryError, match="places it 10.0 mm away from the scan"):
                load_labels(tmp_path / "seg.nii.gz", like=scan)
        else:
            assert np.array_equal(load_labels(tmp_path / "seg.nii.gz", like=scan), labels)


def test_a_label_map_stored_in_another_voxel_order_over_the_same_box_is_in_place(tmp_path):
    """A LAS scan at 1.2 mm with equal sides, its labels stored RAS (nibabel's as_closest_canonical): the same place,
    another voxel order; taken, and carried onto the scan's voxels."""
    import nibabel as nib

    from mixdemo.io import load_labels, load_scan, save_volume

    affine = np.diag([-1.2, 1.2, 1.2, 1.0])
    affine[:3, 3] = [40, -30, -20]
    rng = np.random.default_rng(0)
    save_volume(rng.random((20, 20, 20)).astype(np.float32), affine, tmp_path / "t1.nii.gz")
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:9, 5:15, 4:12] = 2
    ras = nib.as_closest_canonical(nib.Nifti1Image(labels, affine))
    nib.save(nib.Nifti1Image(np.asarray(ras.dataobj).astype(np.uint8), ras.affine), tmp_path / "seg.nii.gz")
    scan = load_scan(tmp_path / "t1.nii.gz")
    direct = load_labels(tmp_path / "seg.nii.gz", like=scan)
    save_volume(labels, affine, tmp_path / "seg_las.nii.gz", dtype=np.uint8)
    assert np.array_equal(direct, load_labels(tmp_path / "seg_las.nii.gz", like=scan))


def test_atomic_write_syncs_through_a_writable_handle(tmp_path, monkeypatch):
    """Windows' fsync (the C runtime's _commit, FlushFileBuffers) needs a handle open for writing and fails with EBADF
    on a read-only one, which would stop every segmentation from being written there: emulated here."""
    import errno
    import fcntl

    real_fsync = os.fsync

    def windows_fsync(fd: int) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        real_fsync(fd)

    monkeypatch.setattr(mio.os, "fsync", windows_fsync)
    save_volume(_phantom(), RAS_1MM, tmp_path / "vol.nii.gz")
    assert nib.load(tmp_path / "vol.nii.gz").shape == _phantom().shape
    assert os.listdir(tmp_path) == ["vol.nii.gz"]
