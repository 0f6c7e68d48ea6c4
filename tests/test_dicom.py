"""Tests for mixdemo.dicom: a DICOM series (zip, folder, multi-frame file) in, read as its NIfTI twin is, and every
way a series can be unusable refused with a message that names no file and no header field."""

from __future__ import annotations

import os
import re
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


def test_a_nested_folder_and_member_names_are_ignored(tmp_path, monkeypatch):
    """Folders inside the archive, ``../`` and absolute member names and non-DICOM side files (a viewer's README,
    macOS's ``__MACOSX``) are harmless: members are unpacked under numbers into the read's own temporary folder,
    never under their names."""
    files = _series(tmp_path)
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for n, f in enumerate(files):
            z.write(f, arcname=("../../escaped/" if n % 3 == 0 else "/abs/" if n % 3 == 1 else "PATIENT/SERIES/")
                    + f"IM{n:04d}")
        z.writestr("README.txt", "exported by a viewer")
        z.writestr("__MACOSX/._IM0000", b"\x00\x05\x16\x07")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen: list[list[str]] = []
    series_slices = dicom._series_slices
    monkeypatch.setattr(dicom, "_series_slices", lambda flat, series=None: seen.append(sorted(os.listdir(flat)))
                        or series_slices(flat, series))
    assert load_scan(archive).source_shape == SHAPE
    assert seen == [[f"{n:05d}" for n in range(len(files) + 2)]]  # numbers only, all in the read's folder
    assert os.listdir(scratch) == []  # and that folder is gone


def test_the_geometry_agrees_with_simpleitks_own_series_reader(tmp_path):
    """An independent check of the conventions (LPS to RAS, pixel spacing's order, axis order): ITK's series
    reader, which sorts and stacks by itself, puts every voxel at the same place."""
    import SimpleITK as sitk

    for n, aff in enumerate([_affine(rotation_deg=17.0), _affine(axes=(1, 2, 0)), _affine(flip_k=True)]):
        folder = tmp_path / f"s{n}"
        _series(tmp_path, aff=aff, name=folder.name)
        data, affine = dicom.read_series(folder)
        image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
        itk = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32)
        lps = np.eye(4)
        lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
        lps[:3, 3] = image.GetOrigin()
        np.testing.assert_allclose(affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-5)
        np.testing.assert_array_equal(data, itk)


def _edit(files, change) -> None:
    """Rewrite each file of a series after ``change(dataset, k)`` (pydicom): the tags real exports vary."""
    import pydicom

    for k, f in enumerate(files):
        dataset = pydicom.dcmread(f)
        change(dataset, k)
        dataset.save_as(f, enforce_file_format=True)


def test_a_tilted_stack_is_resampled_onto_slices_along_its_normal(tmp_path):
    """A gantry tilt: slices step off their normal. Read, the stack lies on slices along the normal (as dcm2niix
    resamples it), so its grid is a plain one a NIfTI qform holds, and each voxel has the value the scanner put
    at that place (taking only the step along the normal misplaced a 20° tilt's last slice by 6 mm; keeping the
    sheared grid put the segmentation 3 mm off in ITK-based viewers)."""
    aff = _affine(zooms=(1.0, 1.0, 1.5))
    aff[:3, 2] = [0.0, np.tan(np.deg2rad(20)) * 1.5, 1.5]
    vol = _volume()
    files = _series(tmp_path, vol, aff)
    _, affine = dicom.read_series(tmp_path / "series")
    straight = aff.copy()
    straight[:3, 2] = [0.0, 0.0, 1.5]
    np.testing.assert_allclose(affine, straight, atol=1e-5)
    scan = load_scan(dicom.zip_series(files, tmp_path / "s.zip"))
    nib.save(nib.Nifti1Image(vol, aff), tmp_path / "twin.nii.gz")  # nibabel resamples the sheared grid itself
    twin = load_scan(tmp_path / "twin.nii.gz")
    from nibabel.processing import resample_from_to

    ours = np.asarray(resample_from_to(nib.Nifti1Image(scan.data, scan.affine), (twin.data.shape, twin.affine),
                                       order=1).dataobj)
    shared = (ours > 0) & (twin.data > 0)  # the straight grid loses the tilted stack's outer corners
    assert shared.sum() > 0.6 * (twin.data > 0).sum()
    assert np.median(np.abs(ours - twin.data)[shared]) < 0.01


def test_rescale_slope_and_intercept_are_applied_per_image(tmp_path):
    files = _series(tmp_path)
    _edit(files, lambda d, k: setattr(d, "RescaleSlope", f"{0.5 + 0.25 * k:g}") or setattr(d, "RescaleIntercept", f"{10 * k}"))
    data, _ = dicom.read_series(tmp_path / "series")
    stored, _ = dicom.read_series(dicom.zip_series(_series(tmp_path, name="plain"), tmp_path / "plain.zip"))
    expected = stored * (0.5 + 0.25 * np.arange(SHAPE[2])) + 10 * np.arange(SHAPE[2])
    np.testing.assert_allclose(data, expected, atol=1e-3)


def test_a_slightly_off_orthogonal_orientation_is_corrected_and_a_bad_one_refused(tmp_path):
    """Exporters round Image Orientation; GDCM then replaced an oblique orientation by the identity (axial)
    without a word. Close to perpendicular unit vectors, it is used; far from it, refused."""
    aff = _affine(rotation_deg=17.0)
    files = _series(tmp_path, aff=aff)
    _edit(files, lambda d, k: setattr(d, "ImageOrientationPatient",
                                      [f"{v + (0.003 if i == 4 else 0):.6f}" for i, v in enumerate(d.ImageOrientationPatient)]))
    _, affine = dicom.read_series(tmp_path / "series")
    np.testing.assert_allclose(affine[:3, :3], aff[:3, :3], atol=5e-3)
    _edit(files, lambda d, k: setattr(d, "ImageOrientationPatient", ["1", "0", "0", "0.2", "1", "0"]))
    _refusal(tmp_path, tmp_path / "series", GeometryError, "not a pair of perpendicular unit directions")


def test_images_without_geometry_are_refused(tmp_path):
    files = _series(tmp_path)
    _edit(files, lambda d, k: delattr(d, "ImagePositionPatient"))
    _refusal(tmp_path, tmp_path / "series", GeometryError, "no valid slice position")


def test_a_slice_shifted_in_plane_is_refused(tmp_path):
    files = _series(tmp_path)
    _edit(files[5:6], lambda d, k: setattr(d, "ImagePositionPatient",
                                           [f"{float(v) + (5.0 if i == 0 else 0):.6f}" for i, v in enumerate(d.ImagePositionPatient)]))
    _refusal(tmp_path, tmp_path / "series", GeometryError, "do not lie on one line")


def test_images_with_another_pixel_spacing_are_refused(tmp_path):
    files = _series(tmp_path)
    _edit(files[::2], lambda d, k: setattr(d, "PixelSpacing", ["0.55", "0.45"]))
    _refusal(tmp_path, tmp_path / "series", GeometryError, "differ in pixel spacing")


def test_time_points_under_one_series_are_refused(tmp_path):
    """Two time points interleaved at distinct positions looked like one volume of twice the slices."""
    files = _series(tmp_path)
    _edit(files, lambda d, k: setattr(d, "TemporalPositionIdentifier", 1 + k % 2))
    _refusal(tmp_path, tmp_path / "series", ShapeError, "2 time points, echoes or stacks")


def _enhanced(vol: np.ndarray, aff: np.ndarray, path: Path, *, order=None, slopes=None, intercepts=None,
              temporal=None, shared_geometry: bool = True, in_stack: bool = False) -> Path:
    """``vol`` as one Enhanced MR file (pydicom): geometry and rescale in functional groups (orientation and
    spacing shared, or per frame without ``shared_geometry``; position and rescale per frame; no slice thickness),
    frames stored in ``order``; stored values are ``vol`` rounded, and each frame's rescale maps them to
    ``stored * slope + intercept``; with ``in_stack``, each frame's In-Stack Position Number is its slice's, 1 to n."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    n = vol.shape[2]
    order = list(range(n)) if order is None else order
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "MR", PATIENT
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.NumberOfFrames, ds.Rows, ds.Columns = len(order), vol.shape[1], vol.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    plane = Dataset()
    plane.ImageOrientationPatient = [f"{v:.6f}" for v in [*lps[:3, 0] / spacing[0], *lps[:3, 1] / spacing[1]]]
    measures = Dataset()
    measures.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
    if shared_geometry:
        shared.PlaneOrientationSequence = Sequence([plane])
        shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for f, k in enumerate(order):
        frame = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in (lps @ [0, 0, k, 1])[:3]]
        frame.PlanePositionSequence = Sequence([position])
        if not shared_geometry:
            frame.PlaneOrientationSequence = Sequence([Dataset(plane)])
            frame.PixelMeasuresSequence = Sequence([Dataset(measures)])
        rescale = Dataset()
        rescale.RescaleSlope, rescale.RescaleIntercept = (f"{(slopes or [1.0] * n)[k]:g}",
                                                          f"{(intercepts or [0.0] * n)[k]:g}")
        rescale.RescaleType = "US"
        frame.PixelValueTransformationSequence = Sequence([rescale])
        if temporal is not None or in_stack:
            content = Dataset()
            if temporal is not None:
                content.TemporalPositionIndex = temporal[f]
            if in_stack:
                content.InStackPositionNumber = int(k) + 1
            frame.FrameContentSequence = Sequence([content])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    stored = np.rint(vol).astype("<i2")
    ds.PixelData = b"".join(np.ascontiguousarray(stored[:, :, k].T).tobytes() for k in order)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("aff", [_affine(rotation_deg=17.0), _affine(axes=(1, 2, 0))], ids=["oblique", "sagittal"])
@pytest.mark.parametrize("decoder", ["pydicom", "gdcm"])
def test_an_enhanced_multi_frame_file_reads_as_its_classic_series(tmp_path, monkeypatch, aff, decoder):
    """An Enhanced MR file, frames stored out of order, each with its own rescale (GDCM applied the first frame's
    to all, and stacked the frames in file order at 1 mm): the same voxels and affine as the classic series,
    whether pydicom decodes the pixels or GDCM does (compressed data pydicom has no decoder for)."""
    import pydicom

    if decoder == "gdcm":
        monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array",
                            property(lambda self: (_ for _ in ()).throw(RuntimeError("no decoder"))))
    vol = _volume() * 1000
    slopes, intercepts = [0.5 + 0.25 * k for k in range(SHAPE[2])], [10.0 * k for k in range(SHAPE[2])]
    order = list(np.random.default_rng(1).permutation(SHAPE[2]))
    data, affine = dicom.read_series(_enhanced(vol, aff, tmp_path / "volume.dcm", order=order, slopes=slopes,
                                               intercepts=intercepts))
    expected = np.rint(vol) * np.array(slopes) + np.array(intercepts)
    np.testing.assert_allclose(affine, aff, atol=1e-5)
    np.testing.assert_allclose(data, expected, rtol=1e-6, atol=1e-3)
    classic, classic_affine = dicom.read_series(dicom.zip_series(_series(tmp_path, vol, aff), tmp_path / "s.zip"))
    np.testing.assert_allclose(affine, classic_affine, atol=1e-5)


def _enhanced_files(tmp_path: Path, vol, aff, frames_per_file, in_stack: bool = False) -> Path:
    """``vol`` as one series of enhanced files, each holding consecutive frames (``frames_per_file`` each): a series
    split over files, or one frame per file, as some exports write them. Returns their folder."""
    import pydicom

    folder = tmp_path / "enhanced"
    folder.mkdir()
    first = None
    for n, start in enumerate(range(0, vol.shape[2], frames_per_file)):
        path = _enhanced(vol, aff, folder / f"part{n}.dcm", order=list(range(start, min(start + frames_per_file,
                                                                                             vol.shape[2]))),
                         in_stack=in_stack)
        ds = pydicom.dcmread(path)
        first = first or ds
        ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
        ds.FrameOfReferenceUID = first.FrameOfReferenceUID
        ds.save_as(path, enforce_file_format=True)
    return folder


@pytest.mark.parametrize("frames_per_file", [1, 7], ids=["one frame per file", "split over two files"])
def test_a_series_of_several_enhanced_files_reads_as_its_classic_series(tmp_path, frames_per_file):
    """Enhanced files of one series, one frame each or part of the frames each: read as the classic series (one
    frame per file was refused for want of geometry, which such files keep in functional groups only; two files
    were "mixed multi-frame and single-frame")."""
    vol, aff = _volume() * 1000, _affine(rotation_deg=17.0)
    data, affine = dicom.read_series(_enhanced_files(tmp_path, vol, aff, frames_per_file))
    np.testing.assert_allclose(affine, aff, atol=1e-5)
    np.testing.assert_allclose(data, np.rint(vol), atol=1e-3)


def test_a_series_split_over_enhanced_files_with_one_missing_is_refused(tmp_path):
    """Frames numbered in their stack: a file left out takes a block off one end, evenly spaced all the same (it
    read as half the volume)."""
    folder = _enhanced_files(tmp_path, _volume() * 1000, _affine(), 7, in_stack=True)
    assert dicom.read_series(folder)[0].shape == SHAPE
    (folder / "part0.dcm").unlink()
    with pytest.raises(GeometryError, match="numbered 8 to 14 in their stack but 7 are here"):
        dicom.read_series(folder)


def test_classic_images_stating_one_frame_are_a_classic_series(tmp_path):
    """Some exporters and anonymisers write Number of Frames 1 into classic images: still single-frame images (they
    were taken for legacy multi-frame files and refused)."""
    vol, aff = _volume(), _affine()
    files = _series(tmp_path, vol, aff)
    expected = dicom.read_series(tmp_path / "series")
    _edit(files, lambda ds, k: setattr(ds, "NumberOfFrames", 1))
    data, affine = dicom.read_series(tmp_path / "series")
    np.testing.assert_array_equal(data, expected[0])
    np.testing.assert_allclose(affine, expected[1])


def test_a_series_mixing_enhanced_and_classic_files_is_refused(tmp_path):
    import pydicom

    vol, aff = _volume() * 1000, _affine()
    folder = _enhanced_files(tmp_path, vol, aff, 7)
    classic = _series(tmp_path, vol, aff)
    uids = pydicom.dcmread(folder / "part0.dcm", stop_before_pixels=True)
    (folder / "part1.dcm").unlink()
    for k in range(7, SHAPE[2]):  # the second half as classic images of the same series
        ds = pydicom.dcmread(classic[k])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids.StudyInstanceUID, uids.SeriesInstanceUID
        ds.save_as(folder / f"classic{k}.dcm", enforce_file_format=True)
    with pytest.raises(ShapeError, match="mixes multi-frame"):
        dicom.read_series(folder)


def test_an_enhanced_file_of_two_time_points_is_refused(tmp_path):
    """Two time points interleaved at distinct positions in one file looked like one volume."""
    path = _enhanced(_volume() * 1000, _affine(), tmp_path / "dynamic.dcm", temporal=[1 + f % 2 for f in range(SHAPE[2])])
    _refusal(tmp_path, path, ShapeError, "2 time points, echoes or stacks")


def _edit_frames(path: Path, change) -> Path:
    """Rewrite an enhanced file after ``change(dataset)`` (pydicom)."""
    import pydicom

    dataset = pydicom.dcmread(path)
    change(dataset)
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_an_enhanced_file_s_damaged_values_are_refused(tmp_path):
    """A NaN position sorted unordered and passed every spacing check: slices misplaced and the affine 1.5 mm off,
    silently. A zero slope made a frame constant; an empty sequence made GDCM raise a RuntimeError past the
    handlers; a frame count that disagrees with the frames described is damage, not a legacy export."""
    from pydicom.sequence import Sequence

    order = list(np.random.default_rng(1).permutation(SHAPE[2]))

    def fresh(name: str) -> Path:
        return _enhanced(_volume() * 1000, _affine(), tmp_path / name, order=order)

    def nan_position(ds):
        ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient[2] = "NaN"

    def zero_slope(ds):
        ds.PerFrameFunctionalGroupsSequence[3].PixelValueTransformationSequence[0].RescaleSlope = "0"

    def empty_position(ds):
        ds.PerFrameFunctionalGroupsSequence[5].PlanePositionSequence = Sequence([])

    def fewer_frames(ds):
        ds.NumberOfFrames = SHAPE[2] - 1

    _refusal(tmp_path, _edit_frames(fresh("nan.dcm"), nan_position), GeometryError, "no valid slice position")
    _refusal(tmp_path, _edit_frames(fresh("slope.dcm"), zero_slope), mio.ValueRangeError, "rescale slope")
    _refusal(tmp_path, _edit_frames(fresh("empty.dcm"), empty_position), CorruptFileError, "could not be read")
    _refusal(tmp_path, _edit_frames(fresh("count.dcm"), fewer_frames), CorruptFileError, "describes 14 frames but holds 13")


def test_a_top_level_rescale_is_used_by_either_decoder(tmp_path, monkeypatch):
    """Outside the functional groups (not the standard's place) a rescale was applied by GDCM and ignored by the
    pydicom path: the same file read differently by decoder."""
    import pydicom

    vol = _volume() * 1000

    def top_level(ds):
        for frame in ds.PerFrameFunctionalGroupsSequence:
            del frame.PixelValueTransformationSequence
        ds.RescaleSlope, ds.RescaleIntercept = "2", "5"

    path = _edit_frames(_enhanced(vol, _affine(), tmp_path / "top.dcm"), top_level)
    by_pydicom = dicom.read_series(path)[0]
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array",
                        property(lambda self: (_ for _ in ()).throw(RuntimeError("no decoder"))))
    by_gdcm = dicom.read_series(path)[0]
    np.testing.assert_allclose(by_pydicom, np.rint(vol) * 2 + 5, atol=1e-3)
    np.testing.assert_allclose(by_gdcm, by_pydicom, atol=1e-3)


def test_each_frame_s_own_rescale_wins_over_a_top_level_one_with_either_decoder(tmp_path, monkeypatch):
    """A converter may leave a top-level rescale beside the functional groups' (the standard's place): each frame's
    own slope and intercept are applied, whichever decoder reads the pixels."""
    import pydicom

    vol = _volume() * 1000
    slopes, intercepts = [0.5 + 0.25 * k for k in range(SHAPE[2])], [10.0 * k + 3 for k in range(SHAPE[2])]
    order = list(np.random.default_rng(1).permutation(SHAPE[2]))
    path = _edit_frames(_enhanced(vol, _affine(), tmp_path / "both.dcm", order=order, slopes=slopes,
                                  intercepts=intercepts),
                        lambda ds: (setattr(ds, "RescaleSlope", "2"), setattr(ds, "RescaleIntercept", "5")))
    expected = np.rint(vol) * np.array(slopes) + np.array(intercepts)
    np.testing.assert_allclose(dicom.read_series(path)[0], expected, rtol=1e-6, atol=1e-3)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array",
                        property(lambda self: (_ for _ in ()).throw(RuntimeError("no decoder"))))
    np.testing.assert_allclose(dicom.read_series(path)[0], expected, rtol=1e-6, atol=1e-3)


def test_a_multi_frame_file_is_refused_with_advice(tmp_path):
    """A legacy multi-frame file: its frames carry no position of their own, and SimpleITK stacked them at 1 mm
    with the first frame's scaling, silently: refused."""
    import pydicom

    files = _series(tmp_path)
    frames = [pydicom.dcmread(f) for f in files]
    volume = frames[0]
    volume.NumberOfFrames = len(frames)
    volume.PixelData = b"".join(f.PixelData for f in frames)
    volume.save_as(tmp_path / "volume.dcm", enforce_file_format=True)
    _refusal(tmp_path, tmp_path / "volume.dcm", ShapeError, "multi-frame DICOM file.*dcm2niix")


def test_a_dicom_file_without_extension_is_recognised(tmp_path):
    """Exports name images IM_0001 or 1.2.840...: the DICM marker routes them to the DICOM reader, which gives the
    one-slice advice instead of 'not a NIfTI image'."""
    files = _series(tmp_path)
    files[0].rename(tmp_path / "IM_0001")
    _refusal(tmp_path, tmp_path / "IM_0001", ShapeError, "single 2D DICOM image")


def test_a_zipped_series_whose_name_lost_its_suffix_is_read(tmp_path):
    """A download saved as 'download' (no .zip) was refused as 'not a valid NIfTI image'; the zip's own marker routes
    it to the DICOM reader, which reads it as it reads the .zip."""
    archive = dicom.zip_series(_series(tmp_path), tmp_path / "series.zip")
    expected = load_scan(archive)
    bare = archive.rename(tmp_path / "download")
    scan = load_scan(bare)
    np.testing.assert_array_equal(scan.data, expected.data)


def test_an_archive_inside_the_archive_is_named(tmp_path):
    inner = dicom.zip_series(_series(tmp_path), tmp_path / "inner.zip")
    with zipfile.ZipFile(tmp_path / "outer.zip", "w") as z:
        z.write(inner, arcname="inner.zip")
    _refusal(tmp_path, tmp_path / "outer.zip", NotNiftiError, "another archive")


def test_a_zipped_nifti_file_is_named_with_what_to_do(tmp_path):
    """A NIfTI scan zipped (as mail and downloads often are) was told 'no DICOM images were found'."""
    nifti = tmp_path / "Doe_Jane_t1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), nifti)
    with zipfile.ZipFile(tmp_path / "t1.zip", "w") as z:
        z.write(nifti, arcname=nifti.name)
    message = _refusal(tmp_path, tmp_path / "t1.zip", NotNiftiError, "NIfTI file and no DICOM images: unzip it")
    assert "Doe_Jane" not in message


def test_a_linked_subfolder_is_followed_once(tmp_path):
    _series(tmp_path, name="real")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "t1").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "export")  # a link back up: read once, no endless walk
    assert load_scan(tmp_path / "export").source_shape == SHAPE


def test_concurrent_reads_give_the_libraries_their_diagnostics_back(tmp_path):
    """ITK's warning switch, pydicom's validation settings and logger are process-wide; reads in threads count
    themselves in and out (ITK's stayed off), and Python's warning filters are not touched."""
    import logging
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    import SimpleITK as sitk

    archive = dicom.zip_series(_series(tmp_path), tmp_path / "s.zip")
    expected = dicom.read_series(archive)[0]
    from pydicom import config

    def state():
        return (sitk.ProcessObject.GetGlobalWarningDisplay(), list(warnings.filters),
                config.settings.reading_validation_mode, config.settings.writing_validation_mode,
                logging.getLogger("pydicom").propagate, list(logging.getLogger("pydicom").handlers))

    before = state()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: dicom.read_series(archive)[0], range(18)))
    assert all(np.array_equal(r, expected) for r in results)
    assert state() == before


def test_a_damaged_member_of_the_archive_is_refused(tmp_path):
    """A corrupt deflate stream raised zlib.error past every handler (the client stopped with a traceback)."""
    from mixdemo.badinputs import damage_member

    archive = dicom.zip_series(_series(tmp_path), tmp_path / "s.zip")
    (tmp_path / "bad.zip").write_bytes(damage_member(archive.read_bytes(), 4))
    _refusal(tmp_path, tmp_path / "bad.zip", CorruptFileError, "A file in the .zip archive is damaged")


@pytest.mark.parametrize("which, keep", [(0, 300), (-1, 300), (-1, 1500)])
def test_a_damaged_first_or_last_slice_is_refused(tmp_path, which, keep):
    """GDCM leaves out a file it cannot parse, and a first or last slice leaves no gap: the volume came back a
    slice short without a word (cut within the header, before the series UID, or within the pixels)."""
    files = _series(tmp_path)
    files[which].write_bytes(files[which].read_bytes()[:keep])
    _refusal(tmp_path, tmp_path / "series", CorruptFileError, "could not be read: it may be damaged")


def test_an_export_s_other_objects_are_left_out_rightly(tmp_path):
    """A DICOMDIR-like object (DICOM, no image) beside the series is not mistaken for a damaged slice."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    _series(tmp_path)
    other = Dataset()
    other.file_meta = FileMetaDataset()
    other.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    other.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    other.FileSetID = "EXPORT"
    other.save_as(tmp_path / "series" / "DICOMDIR", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "series" / "DICOMDIR").FileSetID == "EXPORT"
    assert load_scan(tmp_path / "series").source_shape == SHAPE


def test_an_archive_declaring_too_many_entries_is_refused_before_its_directory_is_read(tmp_path, monkeypatch):
    """zipfile parses the whole central directory into memory (400,000 entries: 340 MB): the end record's count
    is checked first."""
    archive = dicom.zip_series(_series(tmp_path), tmp_path / "s.zip")
    monkeypatch.setattr(dicom, "MAX_FILES", 5)
    monkeypatch.setattr(zipfile, "ZipFile", lambda *a, **k: pytest.fail("the directory was parsed"))
    _refusal(tmp_path, archive, TooLargeError, "more than 5 files")


def test_a_fifo_named_zip_is_refused_without_being_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.zip")
    _refusal(tmp_path, tmp_path / "pipe.zip", mio.MissingFileError, "could not be found")


def test_a_killed_read_s_folder_is_removed_by_the_next_read(tmp_path, monkeypatch):
    """The unpacked files keep their headers; a read killed mid-way (out of memory) left them in the temporary
    folder. The next read removes such folders once they are an hour old, and leaves younger ones (a read
    under way)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old, young = tmp_path / "mixdemo-dicom-old", tmp_path / "mixdemo-dicom-young"
    for folder in (old, young):
        folder.mkdir()
        (folder / "00000").write_bytes(b"header")
    os.utime(old, (0, 0))
    files = _series(tmp_path)
    load_scan(dicom.zip_series(files, tmp_path / "s.zip"))
    assert not old.exists() and young.exists()


def test_itk_warnings_are_off_during_a_read_and_given_back_after(tmp_path, monkeypatch):
    import SimpleITK as sitk

    files = _series(tmp_path)
    during: list[bool] = []
    series_slices = dicom._series_slices
    monkeypatch.setattr(dicom, "_series_slices", lambda flat, series=None: during.append(
        sitk.ProcessObject.GetGlobalWarningDisplay()) or series_slices(flat, series))
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    load_scan(dicom.zip_series(files, tmp_path / "s.zip"))
    assert during == [False] and sitk.ProcessObject.GetGlobalWarningDisplay() == before


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
    _refusal(tmp_path, archive, ShapeError, r"2 DICOM series \(1: 14 axial images of 18×22 at 0.9×1.1 mm; 2: 9 axial")


def test_a_series_of_a_study_is_picked_by_its_number(tmp_path):
    """A whole study's export (here a 14-slice volume and a 9-slice one): ``series`` N reads the one listed N-th
    in the refusal; a number beyond them is refused with how many there are."""
    archive = tmp_path / "study.zip"
    small = _volume((18, 22, 9)) * 2
    with zipfile.ZipFile(archive, "w") as z:
        for f in _series(tmp_path, name="a") + _series(tmp_path, vol=small, name="b"):
            z.write(f, arcname=f"{f.parent.name}/{f.name}")
    assert dicom.read_series(archive, series=1)[0].shape == SHAPE
    data, _ = dicom.read_series(archive, series=2)
    np.testing.assert_allclose(data, dicom.read_series(tmp_path / "b")[0])
    with pytest.raises(ShapeError, match="Series 3 was asked for, but the input holds 2 DICOM series"):
        dicom.read_series(archive, series=3)
    assert load_scan(archive, series=2).source_shape == (18, 22, 9)


def test_a_damaged_image_of_a_study_that_may_be_another_series_is_said_to_be(tmp_path):
    """A study's file cut short before its series UID: it may belong to the series picked or to another, and the
    refusal says so (it blamed the picked series, intact)."""
    (tmp_path / "study").mkdir()
    _series(tmp_path / "study", name="t1")
    other = _series(tmp_path / "study", vol=_volume((18, 22, 9)), name="localizer")
    other[3].write_bytes(other[3].read_bytes()[:400])
    with pytest.raises(CorruptFileError, match="this one or another"):
        dicom.read_series(tmp_path / "study", series=1)


def test_series_that_read_alike_are_said_to_and_not_picked_by_number(tmp_path):
    """A scan before and after contrast: the same geometry, so the list cannot tell them apart; the refusal says so,
    and a number picking either is refused (it would be a guess). Their numbering follows their UIDs, not the
    order of the files."""
    (tmp_path / "study").mkdir()
    _series(tmp_path / "study", name="pre")
    _series(tmp_path / "study", vol=_volume() * 3, name="post")
    _series(tmp_path / "study", vol=_volume((18, 22, 9)), name="localizer")
    with pytest.raises(ShapeError, match=r"or pick one of the others by its number .*\. Series 1, 2 read alike "
                                         r"\(the same geometry.*a number cannot tell them apart"):
        dicom.read_series(tmp_path / "study")
    for n in (1, 2):
        with pytest.raises(ShapeError, match=f"Series {n} of the input reads as another does"):
            dicom.read_series(tmp_path / "study", series=n)
    assert dicom.read_series(tmp_path / "study", series=3)[0].shape == (18, 22, 9)


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


@pytest.mark.parametrize("kind", ["classic", "enhanced"])
def test_the_same_image_given_twice_is_said_to_be(tmp_path, kind):
    """An export zipped with a copy of its files (the same series under two folders): every image is there twice, and
    the refusal says so (it guessed at repeated acquisitions, echoes or time points, which the series has not)."""
    if kind == "classic":
        files = _series(tmp_path)
    else:
        (tmp_path / "series").mkdir()
        files = [_enhanced(_volume() * 1000, _affine(), tmp_path / "series" / "volume.dcm")]
    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in files:
            z.write(f, arcname=f"export/{f.name}")
            z.write(f, arcname=f"export copy/{f.name}")
    message = _refusal(tmp_path, archive, ShapeError, "same image.*more than once")
    assert "acquisitions" not in message
    if kind == "classic":  # the control: one instance UID on every image (an exporter's fault), each at its position
        _edit(files, lambda ds, k: setattr(ds, "SOPInstanceUID", "1.2.3.4"))
        assert dicom.read_series(tmp_path / "series")[0].shape == SHAPE


def test_an_archive_without_dicom_is_refused(tmp_path):
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "not an image")
    _refusal(tmp_path, archive, NotNiftiError, "No DICOM images were found")


def _with_transfer_syntax(path: Path, uid: str) -> None:
    """Rewrite a file's meta header to state ``uid`` as its transfer syntax, its dataset's bytes kept (pydicom will
    not write a transfer syntax it does not know, such as JPEG XL's)."""
    import struct

    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    raw = path.read_bytes()
    body = raw[144 + struct.unpack("<I", raw[140:144])[0]:]  # after the preamble, DICM and the meta group
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = uid
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(raw[:132] + buffer.getvalue() + body)


def test_a_series_in_a_transfer_syntax_gdcm_does_not_know_is_named_so(tmp_path):
    """Images stored as JPEG XL (a transfer syntax of 2023 that GDCM does not list): the refusal says their
    compression cannot be decoded and what to export instead (it said no DICOM images were found)."""
    files = _series(tmp_path)
    for f in files:
        _with_transfer_syntax(f, "1.2.840.10008.1.2.4.110")
    archive = dicom.zip_series(files, tmp_path / "s.zip")
    for path in (archive, tmp_path / "series"):
        message = _refusal(tmp_path, path, NotNiftiError, "transfer syntax .*1.2.840.10008.1.2.4.110.* cannot decode")
        assert "uncompressed" in message and "No DICOM images" not in message


@pytest.mark.parametrize("keep", [200, 400], ids=["cut in its meta header", "cut in its pixels"])
def test_a_series_of_damaged_images_is_said_to_be_damaged(tmp_path, keep):
    """Every image cut short (an interrupted copy): GDCM lists none, and the refusal says they are damaged (it said
    no DICOM images were found)."""
    files = _series(tmp_path)
    for f in files:
        f.write_bytes(f.read_bytes()[:keep])
    _refusal(tmp_path, tmp_path / "series", CorruptFileError, "could not be read: it may be damaged")


def test_a_damaged_archive_is_refused(tmp_path):
    archive = dicom.zip_series(_series(tmp_path), tmp_path / "s.zip")
    (tmp_path / "cut.zip").write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    _refusal(tmp_path, tmp_path / "cut.zip", CorruptFileError, "damaged")
    (tmp_path / "text.zip").write_text("hello")
    _refusal(tmp_path, tmp_path / "text.zip", CorruptFileError, "damaged")


def test_a_password_protected_archive_is_refused(tmp_path):
    """zipfile cannot write encryption; setting the flag bit is what an encrypted archive's readers see."""
    from mixdemo.badinputs import mark_encrypted

    archive = dicom.zip_series(_series(tmp_path)[:2], tmp_path / "s.zip")
    (tmp_path / "locked.zip").write_bytes(mark_encrypted(archive.read_bytes()))
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
    """GDCM's writer set the C locale, after which Python decodes subprocess output as ASCII (the reliability
    harness's client subprocess failed on an α); write_series now writes with pydicom, and reading never changes
    the locale."""
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


def test_a_compressed_series_loads_as_the_uncompressed_one(tmp_path):
    """GDCM decodes compressed transfer syntaxes (here JPEG 2000 lossless, as SimpleITK's writer compresses)."""
    import locale

    import SimpleITK as sitk

    import pydicom

    files = _series(tmp_path)
    (tmp_path / "compressed").mkdir()
    saved = locale.setlocale(locale.LC_ALL, None)
    try:  # GDCM's writer leaves the process's locale at "C"
        for f in files:
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetUseCompression(True)
            writer.SetFileName(str(tmp_path / "compressed" / f.name))
            writer.Execute(sitk.ReadImage(str(f)))
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    syntax = pydicom.dcmread(tmp_path / "compressed" / files[0].name, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert syntax.is_compressed
    compressed, affine = dicom.read_series(tmp_path / "compressed")
    plain, plain_affine = dicom.read_series(tmp_path / "series")
    np.testing.assert_array_equal(compressed, plain)
    np.testing.assert_allclose(affine, plain_affine, atol=1e-6)


def test_an_enhanced_file_beside_another_series_is_described_by_its_frames(tmp_path):
    (tmp_path / "export").mkdir()
    _enhanced(_volume() * 1000, _affine(axes=(1, 2, 0)), tmp_path / "export" / "volume.dcm")
    _series(tmp_path / "export", name="classic")
    with pytest.raises(ShapeError, match="14 axial images of 18×22 at 0.9×1.1 mm; 2: a sagittal multi-frame file of 14 "
                                         "frames"):
        dicom.read_series(tmp_path / "export")


# ---------------------------------------------------------------- a scanner's own files, as pydicom ships them
_PYDICOM_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"
"""Files exported by scanners and planning systems (anonymised, downsized), in the pinned pydicom wheel: its README
names their sources (MR_small.dcm: NEMA's WG04 MR1 image; dicomdirtests: a DICOMDIR export of three patients' CT,
CR and MR series). No download: they come with ``pip install -r requirements.txt``."""

_MR_SMALL_ENCODINGS = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                       "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                       "MR_small_padded.dcm", "MR_small_expb.dcm"]


def _scanner_file(name: str) -> Path:
    path = _PYDICOM_FILES / name
    if not path.exists():
        pytest.skip(f"pydicom's test file {name} is not in this pydicom wheel (requirements.txt pins one that has it)")
    return path


def _stack_of(image: Path, folder: Path, slices: int = 8, step_mm: float = 5.0) -> Path:
    """A series made of one scanner image repeated along its normal (new UIDs, positions ``step_mm`` apart), every
    other tag and the pixel data's encoding as the scanner (or converter) wrote them."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir()
    series_uid = generate_uid()
    for k in range(slices):
        dataset = pydicom.dcmread(image)
        orientation = np.array(dataset.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        dataset.ImagePositionPatient = [f"{v:.4f}" for v in np.array(dataset.ImagePositionPatient, float) + k * step_mm * normal]
        dataset.SOPInstanceUID, dataset.SeriesInstanceUID, dataset.InstanceNumber = generate_uid(), series_uid, k + 1
        dataset.save_as(folder / f"{k:03d}.dcm")
    return folder


@pytest.mark.parametrize("encoding", _MR_SMALL_ENCODINGS)
def test_a_scanner_s_mr_image_reads_the_same_in_every_transfer_syntax(tmp_path, encoding):
    """NEMA's MR image as exported (explicit VR) and as converted to RLE, JPEG 2000 and JPEG-LS lossless, big endian,
    implicit VR, padded: every slice of the stack is the image's pixels, and the affine is its header's geometry."""
    import pydicom

    original = pydicom.dcmread(_scanner_file("MR_small.dcm"))
    volume, affine = dicom.read_series(_stack_of(_scanner_file(encoding), tmp_path / "stack"))
    pixels = original.pixel_array.astype(np.float32)  # rows × columns; no rescale tags in this image
    assert volume.shape == (original.Columns, original.Rows, 8)
    for k in range(8):
        np.testing.assert_array_equal(volume[..., k], pixels.T)
    orientation = np.array(original.ImageOrientationPatient, dtype=float)
    row_mm, column_mm = (float(v) for v in original.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = orientation[:3] * column_mm, orientation[3:] * row_mm
    lps[:3, 2] = np.cross(orientation[:3], orientation[3:]) * 5.0
    lps[:3, 3] = np.array(original.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-3)


@pytest.mark.parametrize("name, what", [
    ("CT_small.dcm", "a CT scan (DICOM Modality CT)"),
    ("dicomdirtests/98892001/CT5N", "a CT scan (DICOM Modality CT)"),  # a 5-slice CT series
    ("dicomdirtests/77654033/CR1", "a radiograph (DICOM Modality CR)"),  # no 3D geometry: named, not "no geometry"
    ("rtdose.dcm", "a radiotherapy dose grid (DICOM Modality RTDOSE)"),  # a legacy multi-frame file
    ("liver_1frame.dcm", "a segmentation (DICOM Modality SEG)"),  # a DICOM SEG given as the scan
    ("examples_rgb_color.dcm", "an ultrasound image (DICOM Modality US)"),  # colour: named, not "RGB"
], ids=["ct-image", "ct-series", "radiograph", "dose-grid", "seg", "ultrasound"])
def test_a_series_of_another_modality_is_refused_as_such(name, what):
    """A CT series segmented as a T1 MR scan gave a confident, meaningless answer; a dose grid was called a legacy
    MR export, a radiograph an image without geometry, an ultrasound clip a colour volume."""
    with pytest.raises(mio.ModalityError, match=re.escape(what) + r"; an MR scan \(the T1-weighted series\) is expected"):
        load_scan(_scanner_file(name))


def test_a_modality_that_is_no_defined_term_is_refused_without_its_text(tmp_path):
    """A misused Modality field (a name in a de-identified export) was repeated in the refusal and the series list."""
    files = _series(tmp_path)
    _edit(files, lambda d, k: setattr(d, "Modality", "DOEJANE"))
    message = _refusal(tmp_path, tmp_path / "series", mio.ModalityError, r"not an MR scan \(its DICOM Modality is not MR\)")
    assert "DOEJANE" not in message
    _series(tmp_path, name="other")
    with pytest.raises(ShapeError) as info:
        dicom.read_series(tmp_path)
    assert "axial non-MR images" in str(info.value) and "DOEJANE" not in str(info.value)


def test_a_series_stating_no_modality_or_ot_is_read(tmp_path):
    """Research converters leave Modality out or write OT ("other"): the series is read as MR."""
    files = _series(tmp_path)
    _edit(files, lambda d, k: setattr(d, "Modality", "OT") if k % 2 else delattr(d, "Modality"))
    volume, _ = dicom.read_series(tmp_path / "series")
    assert volume.shape == SHAPE


def test_a_study_export_describes_its_localizers_and_its_ct_series():
    """A three-plane localizer was listed as "3 sagittal images" (its first file's plane), a radial scout as "7
    sagittal images", and a CT series as if it were MR: the list a user picks a series number from misled."""
    with pytest.raises(ShapeError) as info:
        dicom.read_series(_scanner_file("dicomdirtests"))
    listed = str(info.value)
    assert "1: 7 images in several orientations (a scout or localizer) of 16×16 at 0.391×0.391 mm" in listed
    assert "2: 5 axial CT images of 16×16 at 0.488×0.488 mm" in listed
    assert "4: 3 images in several orientations (a scout or localizer) of 16×16 at 1.17×1.17 mm" in listed
    assert "7: 1 CR file" in listed
    assert "sagittal image of 16×16 at 1.37×1.37 mm" in listed  # the single MR images keep their plane
    with pytest.raises(GeometryError, match=r"differ in orientation \(a scout or localizer\?\)"):
        dicom.read_series(_scanner_file("dicomdirtests"), series=1)
    with pytest.raises(mio.ModalityError, match="a CT scan"):
        dicom.read_series(_scanner_file("dicomdirtests"), series=2)
    for forbidden in ("98892", "77654", "TINY", "^"):  # no folder name or patient field in the listing
        assert forbidden not in listed


# ---------------------------------------------------------------- found by an audit with vendor-like exports
def test_a_series_stored_inverted_for_display_is_refused(tmp_path):
    """MONOCHROME1: GDCM returned display-inverted values (65535 − v, or −v − 1 for signed pixels) and pydicom the
    stored ones, so a scan's contrast depended on its container; normalised, the networks saw it reversed."""
    files = _series(tmp_path)
    _edit(files, lambda d, k: setattr(d, "PhotometricInterpretation", "MONOCHROME1"))
    _refusal(tmp_path, tmp_path / "series", mio.DataTypeError, r"inverted for display \(MONOCHROME1\)")
    enhanced = _edit_frames(_enhanced(_volume() * 1000, _affine(), tmp_path / "volume.dcm"),
                            lambda d: setattr(d, "PhotometricInterpretation", "MONOCHROME1"))
    with pytest.raises(mio.DataTypeError, match="MONOCHROME1"):
        dicom.read_series(enhanced)


def test_orientations_printed_to_four_decimals_that_differ_by_rounding_are_one_volume(tmp_path):
    """An oblique export printing its direction cosines to 4 decimals, one of them 0.0001 off on every other
    image, was refused as "a scout or localizer"."""
    files = _series(tmp_path, aff=_affine(rotation_deg=15.0))  # printed: 0.9659 0.2588, a row just short of unit length

    def rounded(d, k):
        values = [float(v) for v in d.ImageOrientationPatient]
        values[2] += 1e-4 if k % 2 else 0.0
        d.ImageOrientationPatient = [f"{v:.4f}" for v in values]

    _edit(files, rounded)
    volume, affine = dicom.read_series(tmp_path / "series")
    assert volume.shape == SHAPE
    np.testing.assert_allclose(affine[:3, :2], _affine(rotation_deg=15.0)[:3, :2], atol=1e-3)


@pytest.mark.parametrize("aff", [_affine(zooms=(0.9, 1.1, 1.17)),
                                 _affine(rotation_deg=45.0, axes=(1, 2, 0), zooms=(0.9, 1.1, 1.17))],
                         ids=["axial", "oblique-sagittal"])
def test_positions_printed_to_a_tenth_of_a_millimetre_are_one_volume(tmp_path, aff):
    """Positions written to 0.1 mm make gaps of 1.1 and 1.2 mm for a 1.17 mm step, and an oblique stack's positions
    drift off its line by up to 0.17 mm: they were refused as "unevenly spaced, or some are missing" and as "do not
    lie on one line"; a slice truly missing still is."""
    files = _series(tmp_path, aff=aff)
    _edit(files, lambda d, k: setattr(d, "ImagePositionPatient", [f"{float(v):.1f}" for v in d.ImagePositionPatient]))
    volume, affine = dicom.read_series(tmp_path / "series")
    assert volume.shape == SHAPE
    np.testing.assert_allclose(affine[:3, 2], aff[:3, 2], atol=0.03)
    archive = dicom.zip_series(files[:6] + files[7:], tmp_path / "gap.zip")
    _refusal(tmp_path, archive, GeometryError, "unevenly spaced, or some are missing")


def test_a_series_of_fine_slices_is_read_and_a_missing_one_still_refused(tmp_path):
    """The slack for printed positions is at most a quarter of the step: 0.2 mm slices are one volume, not "images
    sharing a slice position" (0.1 mm, the slack, was the threshold for that), and one of them missing is seen."""
    files = _series(tmp_path, aff=_affine(zooms=(0.9, 1.1, 0.2)))
    assert dicom.read_series(tmp_path / "series")[0].shape == SHAPE
    archive = dicom.zip_series(files[:6] + files[7:], tmp_path / "gap.zip")
    _refusal(tmp_path, archive, GeometryError, "unevenly spaced, or some are missing")


def test_an_echo_number_written_01_or_1_is_one_echo(tmp_path):
    """The stack keys were compared as text: "01" and "1" made "2 time points, echoes or stacks"."""
    files = _series(tmp_path)
    _edit(files, lambda d, k: setattr(d, "EchoNumbers", "01" if k % 2 else "1"))
    import pydicom

    assert {pydicom.dcmread(f, stop_before_pixels=True)["EchoNumbers"].value.original_string for f in files[:2]} \
        == {"1", "01"}
    assert dicom.read_series(tmp_path / "series")[0].shape == SHAPE
    for first, second in (("1", "2"), ("1_0", "10"), ("1\\2", "01\\2")):  # not integers: compared as written
        _edit(files, lambda d, k, a=first, b=second: setattr(d, "EchoNumbers", a if k % 2 else b))
        _refusal(tmp_path, tmp_path / "series", ShapeError, "2 time points, echoes or stacks")
