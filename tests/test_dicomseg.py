"""Tests for mixdemo.dicomseg: a label map out as a DICOM SEG whose frames lie on the series' own images and refer
to them, read back with highdicom (by each frame's reference, not by our own geometry)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mixdemo import dicom, dicomseg
from tests.test_dicom import PATIENT, SHAPE, _affine, _enhanced, _series, _volume

CLASSES = ("background", "GM", "WM", "CSF")


def _labels(shape=SHAPE) -> np.ndarray:
    """Blocky labels 0..3 with an asymmetric corner, so that a flip or a shift of any axis shows."""
    vol = _volume(shape)
    labels = np.digitize(vol, [0.2, 0.5, 0.8]).astype(np.uint8)
    labels[:2, :4, :3] = 3
    return labels


def _planes_by_source(path: Path) -> dict:
    """Each source image's (or frame's) label plane as the SEG describes it: the segment number where a segment's
    frame that refers to that source is set. Keys: the source SOP Instance UID, or (UID, frame number)."""
    import pydicom

    seg = pydicom.dcmread(path)
    bits = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    out: dict = {}
    for frame, groups in zip(bits, seg.PerFrameFunctionalGroupsSequence):
        number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = groups.DerivationImageSequence[0].SourceImageSequence[0]
        key = (source.ReferencedSOPInstanceUID, int(source.ReferencedFrameNumber)) \
            if "ReferencedFrameNumber" in source else source.ReferencedSOPInstanceUID
        plane = out.setdefault(key, np.zeros((seg.Rows, seg.Columns), dtype=np.uint8))
        assert not plane[frame > 0].any()  # segments never overlap
        plane[frame > 0] = number
    return out


@pytest.mark.parametrize("aff", [_affine(), _affine(rotation_deg=17.0), _affine(axes=(1, 2, 0)), _affine(flip_k=True)],
                         ids=["axial", "oblique", "sagittal", "left-handed"])
def test_each_frame_refers_to_the_image_it_lies_on(tmp_path, aff):
    """The SEG of a label map on the series' grid: every source image's plane holds exactly that image's labels,
    however the series is oriented, and the SEG belongs to the series (study, frame of reference, patient)."""
    import pydicom

    files = _series(tmp_path, aff=aff)
    _, affine = dicom.read_series(tmp_path / "series")
    labels = _labels()
    reference = dicomseg.series_reference(dicom.zip_series(files, tmp_path / "s.zip"))
    dicomseg.write_segmentation(labels, affine, reference, tmp_path / "seg.dcm", CLASSES)
    planes = _planes_by_source(tmp_path / "seg.dcm")
    for f in files:  # each file's first pixel is voxel (0, 0, k) of the grid read, its rows along axis 1
        header = pydicom.dcmread(f, stop_before_pixels=True)
        i, j, k = np.rint(np.linalg.inv(affine) @ [*(np.array([-1, -1, 1]) * header.ImagePositionPatient), 1])[:3]
        assert (i, j) == (0, 0)
        uid, expected = header.SOPInstanceUID, labels[:, :, int(k)].T
        np.testing.assert_array_equal(planes.get(uid, np.zeros_like(expected)), expected)
    seg, source = pydicom.dcmread(tmp_path / "seg.dcm"), pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID, str(seg.PatientName)) == (
        source.StudyInstanceUID, source.FrameOfReferenceUID, PATIENT)
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["GM", "WM", "CSF"]
    assert seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "65216001"  # SNOMED: CSF


def test_a_highdicom_volume_of_the_seg_lies_where_the_labels_do(tmp_path):
    """Independently of the per-frame references: highdicom's own volume of the SEG, carried into our grid's
    voxel indices through both affines, holds the labels (an oblique series)."""
    import highdicom as hd

    aff = _affine(rotation_deg=17.0)
    _series(tmp_path, aff=aff)
    _, affine = dicom.read_series(tmp_path / "series")
    labels = _labels()
    dicomseg.write_segmentation(labels, affine, dicomseg.series_reference(tmp_path / "series"), tmp_path / "seg.dcm",
                                CLASSES)
    volume = hd.seg.segread(tmp_path / "seg.dcm").get_volume(combine_segments=True)
    array, to_lps = np.asarray(volume.array), np.asarray(volume.affine)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij"), -1).reshape(-1, 3)
    ras = (index @ to_lps[:3, :3].T + to_lps[:3, 3]) * [-1, -1, 1]
    ours = np.rint((ras - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    np.testing.assert_array_equal(labels[tuple(ours.T)], array.reshape(-1))


@pytest.mark.parametrize("shared", [True, False], ids=["shared geometry", "per-frame geometry"])
def test_an_enhanced_file_s_seg_refers_to_its_frames(tmp_path, shared):
    """An enhanced multi-frame source with frames stored out of order, no slice thickness, its orientation and
    pixel spacing shared or per frame: each SEG frame refers to the source frame (by number) it lies on, and
    highdicom reads the SEG back as a volume (without a thickness it could not; with per-frame geometry it refused
    to write one)."""
    import pydicom

    aff = _affine(axes=(1, 2, 0))
    order = list(np.random.default_rng(2).permutation(SHAPE[2]))
    path = _enhanced(_volume() * 1000, aff, tmp_path / "volume.dcm", order=order, shared_geometry=shared)
    _, affine = dicom.read_series(path)
    labels = _labels()
    dicomseg.write_segmentation(labels, affine, dicomseg.series_reference(path), tmp_path / "seg.dcm", CLASSES)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    planes = _planes_by_source(tmp_path / "seg.dcm")
    for number, k in enumerate(order, start=1):  # frame `number` of the file holds slice k
        expected = labels[:, :, k].T
        np.testing.assert_array_equal(planes.get((uid, number), np.zeros_like(expected)), expected)
    assert float(pydicom.dcmread(tmp_path / "seg.dcm").SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
                 .SliceThickness) == pytest.approx(1.5)  # the step (frames shuffled: first to last gave 0.115)
    seg, seg_affine = dicomseg.read_segmentation(tmp_path / "seg.dcm")
    from mixdemo.io import resample_labels

    np.testing.assert_array_equal(resample_labels(seg, seg_affine, labels.shape, affine), labels)


def test_a_tilted_stack_s_seg_lies_on_the_tilted_images(tmp_path):
    """A gantry-tilted series is read onto slices along its normal, and its labels come back on that straight grid;
    the SEG samples them at the tilted images' own pixels, so each image's plane agrees with labels drawn on the
    tilted grid (up to the two nearest-neighbour resamplings at the edges)."""
    import nibabel as nib
    import pydicom
    from nibabel.processing import resample_from_to

    aff = _affine(zooms=(1.0, 1.0, 1.5))
    aff[:3, 2] = [0.0, np.tan(np.deg2rad(20)) * 1.5, 1.5]
    files = _series(tmp_path, aff=aff)
    data, straight = dicom.read_series(tmp_path / "series")
    tilted_labels = _labels()
    on_straight = np.asarray(resample_from_to(nib.Nifti1Image(tilted_labels, aff), (data.shape, straight),
                                              order=0).dataobj).astype(np.uint8)
    dicomseg.write_segmentation(on_straight, straight, dicomseg.series_reference(tmp_path / "series"),
                                tmp_path / "seg.dcm", CLASSES)
    planes = _planes_by_source(tmp_path / "seg.dcm")
    agree = total = 0
    for k in range(2, len(files) - 2):  # the straight grid loses the outer slices' corners
        uid = pydicom.dcmread(files[k], stop_before_pixels=True).SOPInstanceUID
        expected = tilted_labels[:, :, k].T
        agree += int((planes.get(uid, np.zeros_like(expected)) == expected).sum())
        total += expected.size
    assert agree / total > 0.93


@pytest.mark.parametrize("source", ["classic", "enhanced"])
def test_a_seg_of_a_series_whose_orientation_is_printed_to_four_decimals_preserves_its_locations(tmp_path, source):
    """An oblique export writing its direction cosines to 4 decimals (just off unit length): the SEG's frames are
    sampled at its images' pixels, so it carries their orientation as written and says their spatial locations are
    preserved (it carried the cleaned orientation, 1e-5 off, and said NO to a viewer overlaying it)."""
    import pydicom

    from tests.test_dicom import _edit

    aff = _affine(rotation_deg=15.0)
    if source == "classic":
        files = _series(tmp_path, aff=aff)
        _edit(files, lambda ds, k: setattr(ds, "ImageOrientationPatient",
                                           [f"{float(v):.4f}" for v in ds.ImageOrientationPatient]))
        path, written = tmp_path / "series", pydicom.dcmread(files[0]).ImageOrientationPatient
    else:
        path = _enhanced(_volume() * 1000, aff, tmp_path / "volume.dcm")
        dataset = pydicom.dcmread(path)
        plane = dataset.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        plane.ImageOrientationPatient = [f"{float(v):.4f}" for v in plane.ImageOrientationPatient]
        dataset.save_as(path, enforce_file_format=True)
        written = plane.ImageOrientationPatient
    _, affine = dicom.read_series(path)
    dicomseg.write_segmentation(_labels(), affine, dicomseg.series_reference(path), tmp_path / "seg.dcm", CLASSES)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    np.testing.assert_allclose(
        [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in written], atol=1e-9)
    assert {g.DerivationImageSequence[0].SourceImageSequence[0].SpatialLocationsPreserved
            for g in seg.PerFrameFunctionalGroupsSequence} == {"YES"}


def test_a_series_without_frame_of_reference_is_refused_before_any_work(tmp_path):
    from tests.test_dicom import _edit

    files = _series(tmp_path)
    _edit(files, lambda ds, k: delattr(ds, "FrameOfReferenceUID"))
    with pytest.raises(dicomseg.SegmentationError, match="Frame of Reference"):
        dicomseg.series_reference(tmp_path / "series")


def test_an_export_without_optional_patient_fields_or_thickness_still_makes_a_seg(tmp_path):
    """Type-2 fields an export may leave out (patient ID, dates, accession) and the slice thickness: the SEG is made,
    with those fields empty."""
    import pydicom

    from tests.test_dicom import _edit

    files = _series(tmp_path)

    def strip(ds, k):
        for keyword in ("PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                        "AccessionNumber", "ReferringPhysicianName", "SliceThickness"):
            if keyword in ds:
                delattr(ds, keyword)

    _edit(files, strip)
    _, affine = dicom.read_series(tmp_path / "series")
    dicomseg.write_segmentation(_labels(), affine, dicomseg.series_reference(tmp_path / "series"),
                                tmp_path / "seg.dcm", CLASSES)
    assert pydicom.dcmread(tmp_path / "seg.dcm").PatientID == ""


def test_labels_beyond_the_named_classes_are_refused_and_nothing_is_written(tmp_path):
    _series(tmp_path)
    _, affine = dicom.read_series(tmp_path / "series")
    with pytest.raises(ValueError, match="2 classes"):
        dicomseg.write_segmentation(_labels(), affine, dicomseg.series_reference(tmp_path / "series"),
                                    tmp_path / "seg.dcm", ("background", "GM", "WM"))
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob(".tmp-*"))


def test_a_sex_date_or_time_off_the_standard_is_left_empty_in_the_seg(tmp_path):
    """Exports write "U" for an unknown sex, and damaged dates: the SEG is made, with those fields empty (highdicom
    refused the whole SEG for either)."""
    import pydicom

    from tests.test_dicom import _edit

    files = _series(tmp_path)

    def misspell(ds, k):
        ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.PatientBirthDate = "U", "2026-13-45", "99", "unknown"

    _edit(files, misspell)
    _, affine = dicom.read_series(tmp_path / "series")
    dicomseg.write_segmentation(_labels(), affine, dicomseg.series_reference(tmp_path / "series"),
                                tmp_path / "seg.dcm", CLASSES)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert (seg.PatientSex, seg.StudyDate, seg.StudyTime, seg.PatientBirthDate) == ("", "", "", "")


def test_headers_highdicom_refuses_are_a_segmentation_error_without_their_values(tmp_path, monkeypatch):
    """highdicom refusing a header value (its message may quote it) is a SegmentationError whose message quotes no
    header value, and nothing is written. No header met here makes it refuse since they are completed and the SEG
    is written in UTF-8, so its refusal is simulated."""
    import highdicom as hd

    def refuse(*args, **kwargs):
        raise ValueError(f"Value {PATIENT!r} is not allowed")

    _series(tmp_path)
    _, affine = dicom.read_series(tmp_path / "series")
    reference = dicomseg.series_reference(tmp_path / "series")
    monkeypatch.setattr(hd.seg, "Segmentation", refuse)
    with pytest.raises(dicomseg.SegmentationError) as caught:
        dicomseg.write_segmentation(_labels(), affine, reference, tmp_path / "seg.dcm", CLASSES)
    assert PATIENT not in str(caught.value) and "ValueError" in str(caught.value)
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("character_set, name", [("ISO_IR 100", "Müller^Jürgen"),
                                                 ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎"),
                                                 ("ISO_IR 192", "Ødegård^Åse")], ids=["latin-1", "japanese", "utf-8"])
def test_a_series_in_any_character_set_gets_a_seg_with_its_names_in_utf8(tmp_path, character_set, name):
    """highdicom refused the Japanese character sets (the CLI fell back to NIfTI after the server's work); the SEG
    is written in UTF-8, its patient name the series' text."""
    import pydicom

    from tests.test_dicom import _edit

    files = _series(tmp_path)
    _edit(files, lambda ds, k: (setattr(ds, "SpecificCharacterSet", character_set), setattr(ds, "PatientName", name)))
    _, affine = dicom.read_series(tmp_path / "series")
    dicomseg.write_segmentation(_labels(), affine, dicomseg.series_reference(tmp_path / "series"),
                                tmp_path / "seg.dcm", CLASSES)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.SpecificCharacterSet == "ISO_IR 192" and str(seg.PatientName) == name


def test_a_patient_name_of_several_values_keeps_its_first(tmp_path):
    """The standard allows one; an export with two made highdicom refuse the SEG, then its text came out
    garbled as "[Doe, Jane]^"."""
    import pydicom

    from tests.test_dicom import _edit

    files = _series(tmp_path)
    _edit(files, lambda ds, k: setattr(ds, "PatientName", ["Doe^John", "Doe^Jane"]))
    _, affine = dicom.read_series(tmp_path / "series")
    dicomseg.write_segmentation(_labels(), affine, dicomseg.series_reference(tmp_path / "series"),
                                tmp_path / "seg.dcm", CLASSES)
    assert str(pydicom.dcmread(tmp_path / "seg.dcm").PatientName) == "Doe^John"


def test_a_one_part_patient_name_gets_its_trailing_caret_and_no_warning(tmp_path):
    import pydicom
    import warnings

    from tests.test_dicom import _edit

    files = _series(tmp_path)
    _edit(files, lambda ds, k: setattr(ds, "PatientName", "Oneword"))
    _, affine = dicom.read_series(tmp_path / "series")
    reference = dicomseg.series_reference(tmp_path / "series")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # highdicom warned, quoting the name
        dicomseg.write_segmentation(_labels(), affine, reference, tmp_path / "seg.dcm", CLASSES)
    assert str(pydicom.dcmread(tmp_path / "seg.dcm").PatientName) == "Oneword^"


def test_class_names_and_versions_are_made_single_dicom_values():
    """Class names come from the server: a backslash (DICOM's value separator), an empty name or a control
    character made an invalid SEG, and a Windows path in the version one highdicom refused."""
    descriptions = dicomseg._segment_descriptions(("background", "GM\\x", "", "Ödem\n"), "D C:\\Users\\a")
    assert [d.SegmentLabel for d in descriptions] == ["GM/x", "class 2", "Ödem"]
    assert descriptions[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "D C:/Users/a"


def test_unknown_class_names_are_coded_as_tissue_and_named():
    descriptions = dicomseg._segment_descriptions(("background", "lesion", "GM"), "v")
    assert [d.SegmentLabel for d in descriptions] == ["lesion", "GM"]
    assert descriptions[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # SNOMED: tissue
    assert descriptions[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "389081007"  # SNOMED: grey matter


def test_no_header_value_reaches_stderr_warnings_or_logs(tmp_path, capfd, caplog):
    """highdicom warns that a one-part patient name is "unlikely to represent the intended person name", quoting
    it, and pydicom that a date is not one, quoting it: nothing of either is printed, warned or logged while a
    series is read and its SEG written (nor the source's UIDs, which highdicom logs as it copies from it), and the
    filters and loggers are as before afterwards."""
    import logging
    import warnings

    import pydicom

    from tests.test_dicom import _edit

    files = _series(tmp_path)
    _edit(files, lambda ds, k: (setattr(ds, "PatientName", "Oneword"), setattr(ds, "StudyDate", "2026-13-45")))
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        _, affine = dicom.read_series(tmp_path / "series")
        dicomseg.write_segmentation(_labels(), affine, dicomseg.series_reference(tmp_path / "series"),
                                    tmp_path / "seg.dcm", CLASSES)
    printed = capfd.readouterr()
    assert "Oneword" not in printed.out + printed.err + caplog.text
    source = pydicom.dcmread(files[0], stop_before_pixels=True)  # highdicom logs the UIDs it copies from
    assert source.SOPInstanceUID not in caplog.text and source.StudyInstanceUID not in caplog.text
    assert not [w for w in caught if "Oneword" in str(w.message) or "2026-13-45" in str(w.message)]
    assert warnings.filters == filters
    assert logging.getLogger("pydicom").propagate and logging.getLogger("highdicom").propagate


@pytest.mark.parametrize("aff", [_affine(rotation_deg=17.0), _affine(flip_k=True)], ids=["oblique", "left-handed"])
def test_the_score_command_carries_a_seg_onto_the_labels_grid(tmp_path, capsys, aff):
    """``python -m mixdemo.score`` scores a SEG as it scores the NIfTI of the same labels (a left-handed series is
    read, and its SEG laid, in the other slice order than the labels' file), and refuses a DICOM file that is no
    SEG with a message."""
    import json

    from mixdemo.io import save_volume
    from mixdemo.score import main

    truth = _labels()
    pred = truth.copy()
    pred[pred == 1] = 0  # GM missed: Dice 0 for GM, 1 for the others
    pred[5:9, 5:9, 4:8] = 2
    save_volume(truth, aff, tmp_path / "labels.nii.gz", dtype=np.uint8)
    save_volume(pred, aff, tmp_path / "pred.nii.gz", dtype=np.uint8)
    files = _series(tmp_path, aff=aff)
    data, affine = dicom.read_series(tmp_path / "series")
    from mixdemo.io import resample_labels

    on_series = resample_labels(pred, aff, data.shape, affine)  # the client's labels on the series' grid
    dicomseg.write_segmentation(on_series, affine, dicomseg.series_reference(tmp_path / "series"),
                                tmp_path / "pred_seg.dcm", CLASSES)
    assert main([str(tmp_path / "pred.nii.gz"), str(tmp_path / "labels.nii.gz"), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["pred"]
    assert main([str(tmp_path / "pred_seg.dcm"), str(tmp_path / "labels.nii.gz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pred_seg"] == expected
    assert main([str(files[0]), str(tmp_path / "labels.nii.gz")]) == 2
    assert "not a DICOM SEG" in capsys.readouterr().err


@pytest.mark.parametrize("frames_per_file", [1, 7], ids=["one frame per file", "split over two files"])
def test_a_series_split_over_enhanced_files_is_refused_a_seg_before_any_work(tmp_path, frames_per_file):
    """The series reads (tests/test_dicom.py), but highdicom takes one multi-frame source: refused with advice."""
    from tests.test_dicom import _enhanced_files

    folder = _enhanced_files(tmp_path, _volume() * 1000, _affine(), frames_per_file)
    with pytest.raises(dicomseg.SegmentationError, match="several multi-frame.*as NIfTI"):
        dicomseg.series_reference(folder)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("source", ["classic", "enhanced shared", "enhanced per frame"])
def test_dciodvfy_finds_no_error_in_the_seg(tmp_path, source):
    """The standard's own checker (dicom3tools' dciodvfy, installed by .ci/run) finds no error in a SEG of a classic
    series or of an enhanced file (it found the enhanced SEG's Pixel Measures without the slice thickness the
    standard requires)."""
    import subprocess

    aff = _affine(rotation_deg=17.0)
    if source == "classic":
        _series(tmp_path, aff=aff)
        path = tmp_path / "series"
    else:
        path = _enhanced(_volume() * 1000, aff, tmp_path / "volume.dcm", shared_geometry=source == "enhanced shared")
    _, affine = dicom.read_series(path)
    dicomseg.write_segmentation(_labels(), affine, dicomseg.series_reference(path), tmp_path / "seg.dcm", CLASSES)
    checked = subprocess.run(["dciodvfy", "-new", str(tmp_path / "seg.dcm")], capture_output=True, text=True)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
    assert not errors


def test_a_tilted_stack_s_seg_is_refused_by_the_score_with_a_reason(tmp_path, capsys):
    from mixdemo.io import save_volume
    from mixdemo.score import main

    aff = _affine(zooms=(1.0, 1.0, 1.5))
    aff[:3, 2] = [0.0, np.tan(np.deg2rad(20)) * 1.5, 1.5]
    _series(tmp_path, aff=aff)
    data, straight = dicom.read_series(tmp_path / "series")
    labels = np.zeros(data.shape, np.uint8)
    labels[4:10, 4:10, 4:10] = 2
    dicomseg.write_segmentation(labels, straight, dicomseg.series_reference(tmp_path / "series"),
                                tmp_path / "s_seg.dcm", CLASSES)
    save_volume(labels, straight, tmp_path / "labels.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "s_seg.dcm"), str(tmp_path / "labels.nii.gz")]) == 2
    assert "tilted" in capsys.readouterr().err


def test_the_score_refuses_a_folder_with_both_kinds_of_one_scan(tmp_path, capsys):
    from mixdemo.io import save_volume
    from mixdemo.score import main

    for folder in ("segs", "labels"):
        (tmp_path / folder).mkdir()
    save_volume(_labels(), np.eye(4), tmp_path / "labels" / "x_seg.nii.gz", dtype=np.uint8)
    save_volume(_labels(), np.eye(4), tmp_path / "segs" / "x_seg.nii.gz", dtype=np.uint8)
    (tmp_path / "segs" / "x_seg.dcm").write_bytes(b"")
    assert main([str(tmp_path / "segs"), str(tmp_path / "labels")]) == 2
    assert "count it twice" in capsys.readouterr().err


def test_a_terminated_client_leaves_no_half_written_seg(tmp_path):
    """SIGTERM while the SEG is written (its temporary file holds the patient's name): the client's handler makes
    it leave as an exception does, and the temporary file is deleted (it was left, hidden, for good). The child
    sleeps in short steps, as a writer runs Python code: a SIGTERM landing between its ``ready`` and the call into
    one long ``time.sleep`` would only be handled once that sleep ended (CPython checks for a signal that came before
    the system call only after it), which a loaded CI machine hit once."""
    import signal
    import subprocess
    import sys

    code = ("from mixdemo.client import exit_on_sigterm; exit_on_sigterm()\n"
            "import time\nfrom mixdemo.io import write_atomically\n"
            "def slow(tmp):\n    open(tmp, 'w').write('Doe^Jane')\n    print('ready', flush=True)\n    for _ in range(1200):\n        time.sleep(0.05)\n"
            f"write_atomically({str(tmp_path / 'seg.dcm')!r}, '.dcm', slow)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("encoding", ["MR_small.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                      "MR_small_implicit.dcm"])
def test_a_seg_of_a_scanner_s_series_is_valid_and_lies_where_its_labels_do(tmp_path, encoding):
    """A SEG built from a scanner's own headers (NEMA's MR image, stacked into a series as
    tests/test_dicom.py does, in four transfer syntaxes): dciodvfy finds no error where installed, it carries the
    series' patient and study, and read back its labels lie where the client's did (highdicom may read its planes
    in the other order: the affines say so)."""
    import subprocess

    import pydicom

    from tests.test_dicom import _scanner_file, _stack_of

    stack = _stack_of(_scanner_file(encoding), tmp_path / "stack")
    data, affine = dicom.read_series(stack)
    labels = np.digitize(data, np.quantile(data, [0.5, 0.7, 0.9])).astype(np.uint8)
    labels[:4, :4, :] = np.arange(data.shape[2]) % 4  # a corner that tells the slices apart
    dicomseg.write_segmentation(labels, affine, dicomseg.series_reference(stack), tmp_path / "seg.dcm", CLASSES)
    back, back_affine = dicomseg.read_segmentation(tmp_path / "seg.dcm")
    voxels = np.stack(np.meshgrid(*[np.arange(n) for n in back.shape], indexing="ij"), -1).reshape(-1, 3)
    world = voxels @ back_affine[:3, :3].T + back_affine[:3, 3]
    in_labels = np.rint((world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    np.testing.assert_array_equal(back[tuple(voxels.T)], labels[tuple(in_labels.T)])
    seg, image = (pydicom.dcmread(f, stop_before_pixels=True) for f in (tmp_path / "seg.dcm", stack / "000.dcm"))
    assert (seg.PatientName, seg.StudyInstanceUID, seg.FrameOfReferenceUID) == \
        (image.PatientName, image.StudyInstanceUID, image.FrameOfReferenceUID)
    if shutil.which("dciodvfy") is not None:
        checked = subprocess.run(["dciodvfy", "-new", str(tmp_path / "seg.dcm")], capture_output=True, text=True)
        assert not [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
