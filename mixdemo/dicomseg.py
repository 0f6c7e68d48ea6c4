"""A segmentation out as a DICOM Segmentation object (SEG) that refers to the series it segments.

PACS and DICOM viewers (OHIF, 3D Slicer, a scanner's console) file a SEG beside its series and overlay it; a NIfTI
label map they do not take. :func:`series_reference` reads, on the client, the headers of the series the scan came
from (pixel data not read); :func:`write_segmentation` samples the label map at the centre of each of the series'
pixels and writes a BINARY SEG (one bit-packed frame per segment and slice that holds it) with highdicom. The SEG
carries the series' patient and study fields and its Frame of Reference, as the standard requires for it to be
filed with the series: it is written on the machine that holds the series and is never sent anywhere. Its text is
UTF-8; a sex, date or time the standard would refuse is left empty, identifiers are copied as they are (an
over-long accession number stays over-long); its geometry is the one :mod:`mixdemo.dicom` checked, its
orientation the source's as written (a few decimals too), so its frames lie on the source's planes and say so
(Spatial Locations Preserved YES). The standard's checker (dicom3tools' ``dciodvfy``) finds no error in the SEG
of a series whose own identifiers are valid (tests).

Frames are sampled at the series' own pixel positions, so a SEG refers to each image whatever grid the labels lie
on (a tilted stack is read resampled onto slices along its normal; its SEG is back on the tilted images).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mixdemo import dicom
from mixdemo import io as mio

__all__ = ["SeriesReference", "read_segmentation", "series_reference", "segmentation_frames", "write_segmentation"]

_TYPE_2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
           "StudyTime", "ReferringPhysicianName")
"""Fields a SEG copies from its series and the standard lets be empty: filled with "" where an export omits them."""
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SERIES_NUMBER = 9901
"""The SEG's series number (a viewer lists it beside the scan's series; any free number would do)."""


class SegmentationError(mio.ScanError):
    """The series cannot carry a DICOM SEG (the message says why and what to write instead)."""


@dataclass(frozen=True)
class SeriesReference:
    """What a SEG needs of its series, read on the client: the headers (no pixel data) and each frame's geometry,
    in the order of the source images (a multi-frame file: its frames' order)."""

    headers: list  # pydicom Datasets: one per image, or the one enhanced file
    planes: list  # mixdemo.dicom._Slice of each source frame, in that order


def series_reference(path: str | os.PathLike, series: int | None = None) -> SeriesReference:
    """The headers and frame geometry of the series at ``path`` (a ``.zip``, a folder or an enhanced file; of an
    input holding several, the one numbered ``series``), as :func:`mixdemo.dicom.read_series` reads and checks it.

    Raises:
        SegmentationError: The series has no Frame of Reference UID, which a SEG must share with it, or is split
            over several multi-frame files (highdicom takes one multi-frame source).
        mixdemo.io.ScanError: As :func:`mixdemo.dicom.read_series`.
    """
    import pydicom

    with dicom.series_images(path, series) as slices:
        multi_frame = slices[0].frame >= 0
        if multi_frame and len({s.path for s in slices}) > 1:
            raise SegmentationError("The series is split over several multi-frame (enhanced) files, and a DICOM SEG "
                                    "here refers to one: write the segmentation as NIfTI (.nii.gz) instead.")
        planes = sorted(slices, key=lambda s: s.frame) if multi_frame else list(slices)
        files = [planes[0].path] if multi_frame else [s.path for s in planes]
        try:
            headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        except Exception:  # noqa: BLE001 - untrusted input: pydicom failing on a header GDCM read is damage
            raise mio.CorruptFileError("A file of the series could not be read: it may be damaged.") from None
    if any(not h.get("FrameOfReferenceUID") for h in headers):
        raise SegmentationError("The series carries no Frame of Reference UID, which a DICOM SEG must share with "
                                "it: write the segmentation as NIfTI (.nii.gz) instead.")
    return SeriesReference(headers=headers, planes=planes)


def segmentation_frames(labels: np.ndarray, affine: np.ndarray, planes: Sequence) -> np.ndarray:
    """The label map sampled at every pixel centre of each plane (nearest voxel; 0 outside the map).

    Args:
        labels: Integer labels on a grid whose RAS+ voxel-to-mm affine is ``affine``.
        planes: Each frame's geometry (LPS origin, direction, spacing, size), as :class:`SeriesReference` holds.

    Returns:
        uint8 frames shaped (planes, rows, columns).
    """
    labels = np.asarray(labels)
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ _LPS_TO_RAS
    columns, rows = planes[0].size
    r, c = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(columns, dtype=np.float64), indexing="ij")
    out = np.zeros((len(planes), rows, columns), dtype=np.uint8)
    for n, plane in enumerate(planes):
        lps = (plane.origin[:, None, None] + plane.direction[:, 0, None, None] * (c * plane.spacing[0])
               + plane.direction[:, 1, None, None] * (r * plane.spacing[1]))
        voxel = np.rint(np.einsum("ij,jrc->irc", to_voxel[:3, :3], lps) + to_voxel[:3, 3, None, None]).astype(np.int64)
        inside = np.all((voxel >= 0) & (voxel < np.array(labels.shape)[:, None, None]), axis=0)
        out[n][inside] = labels[voxel[0][inside], voxel[1][inside], voxel[2][inside]]
    return out


def write_segmentation(labels: np.ndarray, affine: np.ndarray, reference: SeriesReference,
                       path: str | os.PathLike, class_names: Sequence[str], *, software_version: str = "") -> None:
    """Write ``labels`` (classes 1.. of ``class_names``; 0 background) as a BINARY DICOM SEG of the series, atomically.

    Args:
        labels: The label map on the grid the series was read onto (``affine``: RAS+, as
            :func:`mixdemo.dicom.read_series` returns it).
        reference: The series' headers and geometry (:func:`series_reference`).
        path: The ``.dcm`` file to write.
        class_names: Background first, then one name per label value (the server's ``classes``).
    """
    frames = segmentation_frames(labels, affine, reference.planes)
    if frames.max(initial=0) >= len(class_names):
        raise ValueError(f"The labels reach {int(frames.max())}, but {len(class_names) - 1} classes are named.")
    with dicom.diagnostics_off():  # highdicom's and pydicom's warnings quote header values
        try:
            seg = _segmentation(reference, frames, class_names, software_version)
        except Exception as exc:  # noqa: BLE001 - highdicom refusing an export's header; its words may quote values
            raise SegmentationError(f"The series' headers do not make a valid DICOM SEG (highdicom: "
                                    f"{type(exc).__name__}).") from None
        mio.write_atomically(path, ".dcm", lambda tmp: seg.save_as(tmp, enforce_file_format=True))


def _segmentation(reference: SeriesReference, frames: np.ndarray, class_names: Sequence[str],
                  software_version: str):  # noqa: ANN202 - a highdicom Segmentation
    """The SEG, its geometry given from the checked planes (highdicom would take it from the source's tags, and
    refuses an enhanced file whose orientation or pixel spacing is per frame, or whose thickness is absent), and
    its text in UTF-8 (highdicom refuses some character sets, e.g. the Japanese ones, and the source's names are
    decoded text by then)."""
    import highdicom as hd

    first = reference.planes[0]
    along = [float(p.origin @ first.direction[:, 2]) for p in reference.planes]  # the planes, in any order
    step = (max(along) - min(along)) / max(len(along) - 1, 1)
    multi_frame = first.frame >= 0
    sources = _sources(reference.headers, step, multi_frame=multi_frame)
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,  # one per source image, or per frame of the one enhanced file, in their order
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(class_names, software_version),
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Mixup-Privacy Lab",
        manufacturer_model_name="mixdemo private segmentation",
        software_versions=_text(software_version) or "unknown",
        device_serial_number="none",
        series_description="Private segmentation (mixdemo)",
        content_label="SEGMENTATION",
        content_description="Segmented from a mixed proxy; research use only",
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=[first.spacing[1], first.spacing[0]],  # rows first
                                                slice_thickness=step or None),
        plane_orientation=hd.PlaneOrientationSequence(
            coordinate_system="PATIENT", image_orientation=_source_orientation(sources[0], multi_frame=multi_frame)),
        plane_positions=[hd.PlanePositionSequence(coordinate_system="PATIENT", image_position=list(p.origin))
                         for p in reference.planes],
        specific_character_set="ISO_IR 192",
    )


def _source_orientation(source, *, multi_frame: bool) -> list[float]:  # noqa: ANN001 - a pydicom Dataset
    """The source's Image Orientation as it is written (an export's 4 decimals too; :mod:`mixdemo.dicom` checked it
    is within rounding of orthonormal): highdicom then finds the SEG's frames on the source's planes, and says their
    spatial locations are preserved, as they are (each frame is sampled at its image's pixels)."""
    if multi_frame:  # an enhanced file: its orientation shared by _sources
        source = source.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    return [float(v) for v in source.ImageOrientationPatient]


def _sources(headers: Sequence, step: float, *, multi_frame: bool) -> list:
    """Copies of the source headers as highdicom reads them (:func:`_complete`), with the geometry it takes from
    them made explicit where an export leaves it implicit, all within the tolerances :mod:`mixdemo.dicom` checked:
    every classic image the first one's orientation string (highdicom compares them as strings), a slice thickness
    where none is given (the step along the normal), and an enhanced file's orientation and pixel measures in its
    shared functional groups (highdicom reads them there only)."""
    out = [_complete(h) for h in headers]
    if multi_frame:
        _share_frame_geometry(out[0], step)
        return out
    for header in out:
        header.ImageOrientationPatient = list(out[0].ImageOrientationPatient)
        if not header.get("SliceThickness"):
            header.SliceThickness = f"{step:.6f}"[:16]
    return out


def _share_frame_geometry(header, step: float) -> None:  # noqa: ANN001 - a pydicom Dataset
    """Put the first frame's orientation and pixel measures (with a thickness) into the shared functional groups
    where they are per frame or missing there."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    if "SharedFunctionalGroupsSequence" not in header or not len(header.SharedFunctionalGroupsSequence):
        header.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
    shared, first = header.SharedFunctionalGroupsSequence[0], header.PerFrameFunctionalGroupsSequence[0]
    for sequence in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
        if sequence not in shared and sequence in first:
            setattr(shared, sequence, DicomSequence([Dataset(first[sequence].value[0])]))
    measures = shared.PixelMeasuresSequence[0]
    if not measures.get("SliceThickness"):
        measures.SliceThickness = f"{step:.6f}"[:16]


_DATE, _TIME = re.compile(r"\d{8}"), re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


def _complete(header):  # noqa: ANN001, ANN202 - pydicom Datasets
    """A copy of a source header with what highdicom reads and an export may omit or misspell: empty type-2
    patient and study fields where absent, or where a sex, date or time is not one the standard allows (exports
    write "U" for an unknown sex, and dates as 1970.05.06; a SEG with either is invalid), and a one-part patient
    name with its trailing caret (highdicom warns of it, quoting it). Identifiers are copied as they are: the SEG
    must match its study in a PACS."""
    import copy

    from pydicom.multival import MultiValue

    header = copy.deepcopy(header)
    for keyword in _TYPE_2:
        if keyword not in header:
            setattr(header, keyword, "")
    if header.PatientSex not in ("M", "F", "O"):
        header.PatientSex = ""
    for keyword, form in (("PatientBirthDate", _DATE), ("StudyDate", _DATE), ("StudyTime", _TIME)):
        if not _is_date_or_time(str(header.get(keyword) or ""), form):
            setattr(header, keyword, "")
    if isinstance(header.PatientName, MultiValue):  # one name, by the standard; highdicom refused several
        header.PatientName = header.PatientName[0] if len(header.PatientName) else ""
    name = str(header.PatientName or "")
    if name and "^" not in name:
        groups = name.split("=")
        header.PatientName = "=".join([groups[0] + "^", *groups[1:]])
    return header


def _is_date_or_time(value: str, form: re.Pattern) -> bool:
    """``value`` written as the standard's DA or TM form requires, and a real date or time (pydicom parses it)."""
    from pydicom.valuerep import DA, TM

    if not value:
        return True
    try:
        (DA if form is _DATE else TM)(value)
    except ValueError:
        return False
    return bool(form.fullmatch(value))


def _text(value: str, limit: int = 64) -> str:
    """A value for a DICOM text attribute of one value: no backslash (it separates values), no control
    characters, at most ``limit`` characters."""
    return "".join(c for c in str(value).replace("\\", "/") if c.isprintable())[:limit].strip()


_CODED = {  # a class name -> SNOMED CT category and type (DICOM CID 7150 and 7151)
    "GM": ("Tissue", "GrayMatter"),
    "WM": ("Tissue", "WhiteMatter"),
    "CSF": ("BodySubstance", "CerebrospinalFluid"),
    "NCR": ("MorphologicallyAbnormalStructure", "Necrosis"),
    "ED": ("MorphologicallyAbnormalStructure", "Edema"),
    "ET": ("MorphologicallyAbnormalStructure", "Neoplasm"),
}


def _segment_descriptions(class_names: Sequence[str], software_version: str) -> list:
    """One segment per class (numbered as its label value), coded where the class is known, else as tissue."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="mixdemo U-Net++ with learned unmixing", version=_text(software_version) or "unknown",
        family=codes.cid7162.ArtificialIntelligence)
    out = []
    for number, name in enumerate(class_names[1:], start=1):
        category, kind = _CODED.get(str(name), ("Tissue", "Tissue"))
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=_text(name) or f"class {number}",
            segmented_property_category=getattr(codes.SCT, category),
            segmented_property_type=getattr(codes.SCT, kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    return out


def read_segmentation(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A SEG as a label map and its RAS+ affine (voxel axes along its rows, down its columns, across its frames'
    planes, as :func:`mixdemo.dicom.read_series` orders a series): each voxel the number of the segment set there,
    which for a SEG :func:`write_segmentation` wrote is the class's label value. Planes it leaves out (no segment
    there) are 0 within its span. For :mod:`mixdemo.score`.

    Raises:
        SegmentationError: Not a SEG, or its frames do not form one regular volume.
    """
    import highdicom as hd

    with dicom.diagnostics_off():
        try:
            volume = hd.seg.segread(path).get_volume(combine_segments=True)
        except Exception as exc:  # noqa: BLE001 - a file that is not a readable SEG, or frames off one volume
            raise SegmentationError(f"The file is not a DICOM SEG whose frames form one regular volume (a SEG of a "
                                    f"tilted stack is not read back here; {type(exc).__name__}).") from None
    array = np.asarray(volume.array)  # (planes, rows, columns)
    to_lps = np.asarray(volume.affine, dtype=np.float64)
    return np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.uint8), _LPS_TO_RAS @ to_lps[:, [2, 1, 0, 3]]
