"""Tests for mixdemo.dicom: a DICOM series (zip, folder, multi-frame file) in, read as its NIfTI twin is, and every
way a series can be unusable refused with a message that names no file and no header field."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mixdemo import dicom
from mixdemo import io as mio
from mixdemo.io import (
    CorruptFileError,
    GeometryError,
    NotNiftiError,
    ScanError,
    ShapeError,
    TooLargeError,
    UnreadableFileError,
    load_labels,
    load_scan,
    save_labels,
)

SHAPE = (18, 22, 14)
PATIENT = "Doe^Jane^MRN424242"


def _volume(shape=SHAPE) -> np.ndarray:
    """A smooth blob with a bright corner, so that a flip or a shift of any axis shows."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    vol = np.exp(-(grid**2).sum(axis=0) * 2.0)
    vol[:3, :3, :3] += 1.0
    return vol.astype(np.float32)


def _affine(rotation_deg: float = 0.0, zooms=(0.9, 1.1, 1.5), axes=(0, 1, 2), flip_k: bool = False) -> np.ndarray:
    """A RAS+ affine: voxel axes permuted onto world axes ``axes`` (sagittal, coronal...), rotated about z."""
    th = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    perm = np.zeros((3, 3))
    for voxel_axis, world_axis in enumerate(axes):
        perm[world_axis, voxel_axis] = 1.0
    if flip_k:
        perm[:, 2] *= -1
    aff = np.eye(4)
    aff[:3, :3] = rot @ perm @ np.diag(zooms)
    aff[:3, 3] = [-8.0, 11.0, 4.0]
    return aff


def _series(tmp_path: Path, vol=None, aff=None, name: str = "series") -> list[Path]:
    return dicom.write_series(_volume() if vol is None else vol, _affine() if aff is None else aff,
                              tmp_path / name, patient_name=PATIENT)


@pytest.mark.parametrize("aff", [
    _affine(),  # axial
    _affine(rotation_deg=17.0),  # oblique
    _affine(axes=(1, 2, 0)),  # sagittal slices
    _affine(axes=(0, 2, 1)),  # coronal slices
    _affine(flip_k=True),  # slices stored against the right-hand normal: read back in the other order
], ids=["axial", "oblique", "sagittal", "coronal", "left-handed"])
def test_a_series_loads_as_its_nifti_twin(tmp_path, aff):
    """Zip, folder and NIfTI of the same volume load to the same scan on the same 1 mm RAS grid (up to the int16
    storage's rounding)."""
    vol = _volume()
    files = _series(tmp_path, vol, aff)
    archive = dicom.zip_series(files, tmp_path / "series.zip")
    nib.save(nib.Nifti1Image(vol, aff), tmp_path / "twin.nii.gz")
    twin = load_scan(tmp_path / "twin.nii.gz")
    for source in (archive, tmp_path / "series"):
        scan = load_scan(source)
        assert scan.data.shape == twin.data.shape and scan.source_shape == SHAPE
        np.testing.assert_allclose(scan.affine, twin.affine, atol=1e-4)
        np.testing.assert_allclose(scan.data, twin.data, atol=2e-3)
        # the source grid is the same place in the world, whatever the order it was read in
        corners = np.array([[i, j, k, 1] for i in (0, SHAPE[0] - 1) for j in (0, SHAPE[1] - 1) for k in (0, SHAPE[2] - 1)])
        world = {tuple(np.round(p, 3)) for p in (corners @ scan.source_affine.T)[:, :3]}
        assert world == {tuple(np.round(p, 3)) for p in (corners @ aff.T)[:, :3]}


def test_labels_are_written_back_onto_the_series_grid(tmp_path):
    """The segmentation of a series comes back as NIfTI on the series' own grid, as its NIfTI twin's does."""
    vol, aff = _volume(), _affine(axes=(1, 2, 0), zooms=(1.0, 1.0, 1.0))  # 1 mm: reoriented, not resampled
    scan = load_scan(dicom.zip_series(_series(tmp_path, vol, aff), tmp_path / "s.zip"))
    nib.save(nib.Nifti1Image(vol, aff), tmp_path / "twin.nii.gz")
    twin = load_scan(tmp_path / "twin.nii.gz")
    labels = (twin.data > 0.5).astype(np.uint8)
    save_labels(labels, scan, tmp_path / "seg.nii.gz")
    save_labels(labels, twin, tmp_path / "seg_twin.nii.gz")
    out, expected = nib.load(tmp_path / "seg.nii.gz"), nib.load(tmp_path / "seg_twin.nii.gz")
    assert out.shape == SHAPE
    np.testing.assert_allclose(out.affine, expected.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(expected.dataobj))


def test_a_nested_folder_and_member_names_are_ignored(tmp_path):
    """Folders inside the archive, ``../`` member names and non-DICOM side files (a DICOMDIR-less export's
    README, macOS's ``__MACOSX``) are harmless: members are unpacked under numbers, never under their names."""
    files = _series(tmp_path)
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for n, f in enumerate(files):
            z.write(f, arcname=("../../escaped/" if n % 2 else "PATIENT/STUDY/SERIES/") + f"IM{n:04d}")
        z.writestr("README.txt", "exported by a viewer")
        z.writestr("__MACOSX/._IM0000", b"\x00\x05\x16\x07")
    scan = load_scan(archive)
    assert scan.source_shape == SHAPE
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "escaped").exists()


def test_a_single_multi_frame_file_is_a_volume(tmp_path):
    """An enhanced (multi-frame) file holds the whole volume; ITK reads its geometry."""
    import SimpleITK as sitk

    vol = (_volume() * 1000).astype(np.uint16)  # GDCM writes 3D uint16, not 3D int16
    image = sitk.GetImageFromArray(np.transpose(vol, (2, 1, 0)).copy())
    image.SetSpacing((1.0, 1.0, 2.0))
    with dicom._locale_kept():  # GDCM's writer leaves the process's locale at "C"
        sitk.WriteImage(image, str(tmp_path / "volume.dcm"))
    scan = load_scan(tmp_path / "volume.dcm", normalize=False)
    assert scan.source_shape == SHAPE
    np.testing.assert_allclose(np.linalg.norm(scan.source_affine[:3, :3], axis=0), [1.0, 1.0, 2.0], atol=1e-6)


def _refusal(tmp_path: Path, path: Path, error: type[ScanError], match: str) -> str:
    with pytest.raises(error, match=match) as info:
        load_scan(path)
    message = str(info.value)
    assert PATIENT.split("^")[0] not in message and str(tmp_path) not in message
    return message


def test_messages_name_no_file_and_no_header_field(tmp_path):
    """A folder and files named like the patient, their name in the header: the refusal names none of them."""
    files = [f.rename(f.with_name(f"Doe_Jane_{f.name}")) for f in _series(tmp_path, name="Doe_Jane_1970")]
    files.pop(5).unlink()  # a slice missing: the series is refused
    archive = dicom.zip_series(files, tmp_path / "Doe_Jane.zip")
    for path in (archive, tmp_path / "Doe_Jane_1970", files[0]):
        with pytest.raises(ScanError) as info:
            load_scan(path)
        assert "Doe" not in str(info.value) and "Jane" not in str(info.value) and "MRN" not in str(info.value)


def test_one_slice_is_refused_with_advice(tmp_path):
    files = _series(tmp_path)
    _refusal(tmp_path, files[3], ShapeError, "single 2D DICOM image.*zip of all")


def test_two_series_are_refused_with_their_sizes(tmp_path):
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in _series(tmp_path, name="a") + _series(tmp_path, vol=_volume((18, 22, 9)), name="b"):
            z.write(f, arcname=f"{f.parent.name}/{f.name}")
    _refusal(tmp_path, archive, ShapeError, r"2 DICOM series \(of 14, 9 images\)")


def test_a_missing_slice_is_refused(tmp_path):
    files = _series(tmp_path)
    archive = dicom.zip_series(files[:6] + files[7:], tmp_path / "gap.zip")
    _refusal(tmp_path, archive, GeometryError, "unevenly spaced, or some are missing")


def test_repeated_slice_positions_are_refused(tmp_path):
    """Two acquisitions under one series UID (say two echoes) put two images at each position."""
    import SimpleITK as sitk

    files = _series(tmp_path)
    for n, f in enumerate(list(files)):
        image = sitk.ReadImage(str(f))
        image.SetMetaData("0008|0018", image.GetMetaData("0008|0018") + ".9")
        image.SetMetaData("0020|0013", str(100 + n))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(f.with_name(f"echo2_{n}.dcm")))
        writer.Execute(image)
    _refusal(tmp_path, tmp_path / "series", ShapeError, "share a slice position")


def test_an_archive_without_dicom_is_refused(tmp_path):
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "not an image")
    _refusal(tmp_path, archive, NotNiftiError, "No DICOM images were found")


def test_a_damaged_archive_is_refused(tmp_path):
    archive = dicom.zip_series(_series(tmp_path), tmp_path / "s.zip")
    (tmp_path / "cut.zip").write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    _refusal(tmp_path, tmp_path / "cut.zip", CorruptFileError, "damaged")
    (tmp_path / "text.zip").write_text("hello")
    _refusal(tmp_path, tmp_path / "text.zip", CorruptFileError, "damaged")


def test_a_password_protected_archive_is_refused(tmp_path):
    """zipfile cannot write encryption; setting the flag bit is what an encrypted archive's readers see."""
    archive = dicom.zip_series(_series(tmp_path)[:2], tmp_path / "s.zip")
    data = bytearray(archive.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + flag_at] |= 0x1
            start += 4
    (tmp_path / "locked.zip").write_bytes(bytes(data))
    _refusal(tmp_path, tmp_path / "locked.zip", UnreadableFileError, "password-protected")


def test_an_archive_over_the_size_limit_is_refused_while_unpacking(tmp_path, monkeypatch):
    """The limit counts the bytes actually inflated, not what the archive declares."""
    archive = dicom.zip_series(_series(tmp_path), tmp_path / "s.zip")
    monkeypatch.setattr(mio, "MAX_FILE_BYTES", 20_000)
    _refusal(tmp_path, archive, TooLargeError, "larger than the")


def test_too_many_files_are_refused(tmp_path, monkeypatch):
    files = _series(tmp_path)
    monkeypatch.setattr(dicom, "MAX_FILES", 5)
    _refusal(tmp_path, dicom.zip_series(files, tmp_path / "s.zip"), TooLargeError, "more than 5 files")
    _refusal(tmp_path, tmp_path / "series", TooLargeError, "more than 5 files")


def test_a_series_too_large_for_the_grid_is_refused_before_its_voxels_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "MAX_SIDE", 16)
    monkeypatch.setattr(dicom, "_voxels", lambda *a: pytest.fail("voxels read before the size check"))
    _refusal(tmp_path, dicom.zip_series(_series(tmp_path), tmp_path / "s.zip"), TooLargeError, "too large")


def test_the_unpacked_files_are_deleted(tmp_path, monkeypatch):
    """Read or refused, the series leaves no file behind in the temporary folder."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    files = _series(tmp_path)
    load_scan(dicom.zip_series(files, tmp_path / "ok.zip"))
    with pytest.raises(ScanError):
        load_scan(dicom.zip_series(files[:5] + files[6:], tmp_path / "gap.zip"))
    assert os.listdir(scratch) == []


def test_labels_are_nifti_only(tmp_path):
    archive = dicom.zip_series(_series(tmp_path), tmp_path / "s.zip")
    with pytest.raises(NotNiftiError, match=r"not a NIfTI image \(.nii or .nii.gz\)\.$"):
        load_labels(archive)


def test_writing_and_reading_leave_the_process_locale_as_it_was(tmp_path):
    """GDCM's writer sets the C locale, after which Python decodes subprocess output as ASCII (the reliability
    harness's client subprocess failed on an α); write_series restores it, and reading never changes it."""
    import locale

    try:
        before = locale.setlocale(locale.LC_CTYPE, "C.UTF-8")  # not "C", which the writer sets
    except locale.Error:
        pytest.skip("this system has no C.UTF-8 locale")
    before = locale.setlocale(locale.LC_ALL, None)
    files = _series(tmp_path)
    assert locale.setlocale(locale.LC_ALL, None) == before
    load_scan(dicom.zip_series(files, tmp_path / "s.zip"))
    with pytest.raises(ScanError):
        load_scan(files[0])
    assert locale.setlocale(locale.LC_ALL, None) == before


def test_write_series_keeps_the_volume_up_to_its_storage_scale(tmp_path):
    vol = _volume()
    data, affine = dicom.read_series(dicom.zip_series(_series(tmp_path, vol), tmp_path / "s.zip"))
    np.testing.assert_allclose(data / 4095.0, vol / vol.max(), atol=1.5e-4)
    np.testing.assert_allclose(affine, _affine(), atol=1e-5)
