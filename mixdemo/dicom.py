"""DICOM series in: a ``.zip`` of one series, or a folder of its files, read as voxels and a RAS+ affine.

Scanners and PACS export DICOM; :func:`mixdemo.io.load_scan` calls :func:`read_series` for a ``.zip``
or a folder, so the app's upload, the command-line client and :mod:`mixdemo.preprocess` take a series
as they take a NIfTI file. Only the pixel data and the geometry (position, orientation, spacing) are
read. No header field (the patient's name, dates, identifiers) is kept, returned, logged or put into a
message. The archive's member names are never used either: each member is written to a temporary
folder under a number, so a hostile name (``../``) cannot write elsewhere. The folder is deleted after
reading.

The series must be one 3D volume: a single series (by SeriesInstanceUID), one image per slice position,
evenly spaced, all slices the same size and orientation. Anything else is a :class:`mixdemo.io.ScanError`
whose message says what was found and what is expected, without any path or header value.
:func:`write_series` writes a volume as such a series; it makes the examples and the tests' inputs.
"""

from __future__ import annotations

import contextlib
import locale
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["MAX_FILES", "is_series_input", "read_series", "write_series", "zip_series"]

MAX_FILES = 4096
"""Most files in one archive or folder (a 1 mm whole-head series has a few hundred)."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SPACING_RTOL = 0.01  # slice gaps may differ from their median by 1 % (plus _SPACING_ATOL) before refusal
_SPACING_ATOL_MM = 0.01
_DIRECTION_ATOL = 1e-3
_CHUNK = 1 << 20
_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_UID_ROOT = "2.25."  # a UUID-derived UID needs no registered root


class _Slice(NamedTuple):
    """One file's image information (no header field beyond the geometry)."""

    path: str
    size: tuple[int, int, int]
    spacing: tuple[float, float]
    origin: np.ndarray  # LPS, mm
    direction: np.ndarray  # 3x3, LPS; columns: row, column and normal directions


def is_series_input(path: str | os.PathLike) -> bool:
    """True for what :func:`read_series` reads: a folder, or a file whose name ends in ``.zip`` or ``.dcm``."""
    return os.path.isdir(path) or os.fspath(path).lower().endswith((".zip", ".dcm"))


def read_series(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one DICOM series as a 3D float32 array (voxel axes i, j, k) and its RAS+ voxel-to-mm affine.

    Args:
        path: A ``.zip`` archive holding one series, a folder (searched recursively) holding one, or a
            single ``.dcm`` file (a multi-frame volume; a file of one slice is refused with advice).

    Returns:
        ``(data, affine)``, as :func:`mixdemo.io.load_scan` takes them from a NIfTI file: rescale
        slope and intercept applied, axis 0 along the rows, axis 1 down the columns, axis 2 across slices.

    Raises:
        mixdemo.io.ScanError: A subclass saying why the input is not one readable 3D series.
    """
    import SimpleITK as sitk

    from mixdemo import io as mio

    warnings_were_on = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's warnings name files; messages here name none
    try:
        with tempfile.TemporaryDirectory(prefix="mixdemo-dicom-") as flat:
            if os.path.isdir(path):
                _link_folder(Path(path), Path(flat))
            elif os.fspath(path).lower().endswith(".dcm"):
                _link_file(Path(path), Path(flat))
            else:
                _unpack_zip(path, Path(flat))
            slices = _series_slices(flat)
            shape = (slices[0].size[0], slices[0].size[1], sum(s.size[2] for s in slices))
            mio._check_dims(shape)
            affine = _affine(slices)
            mio._check_geometry(shape, affine)
            return _voxels(slices, shape), affine
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_were_on)


# ----------------------------------------------------------------------------------------- gathering the files
def _unpack_zip(path: str | os.PathLike, flat: Path) -> None:
    """Write each regular member of the archive to ``flat/<n>``, within the file-count and size limits."""
    from mixdemo import io as mio

    if not os.path.isfile(path):
        raise mio.MissingFileError("The file could not be found: it may have been moved or deleted.")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            _check_count(len(members), "archive")
            if any(m.flag_bits & 0x1 for m in members):
                raise mio.UnreadableFileError("The archive is password-protected; upload an unencrypted .zip.")
            total = 0
            for n, member in enumerate(members):
                with archive.open(member) as src, open(flat / f"{n:05d}", "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > mio.MAX_FILE_BYTES:
                            raise mio.TooLargeError(
                                f"The archive's files are larger than the {mio.MAX_FILE_BYTES / (1 << 30):g} GiB "
                                "limit once unpacked."
                            )
                        dst.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, ValueError) as exc:
        if isinstance(exc, mio.ScanError):
            raise
        raise mio.CorruptFileError(
            "The .zip archive is damaged, or not a zip archive, or uses an unsupported compression."
        ) from None
    except OSError:
        raise mio.UnreadableFileError("The archive could not be read or unpacked: access or disk space may be "
                                      "lacking.") from None


def _link_folder(folder: Path, flat: Path) -> None:
    """Link each regular file under ``folder`` (recursively) into ``flat/<n>``, within the file-count limit."""
    from mixdemo import io as mio

    files = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            candidate = os.path.join(root, name)
            if os.path.isfile(candidate):
                files.append(candidate)
                _check_count(len(files), "folder")
    for n, candidate in enumerate(sorted(files)):
        try:
            os.symlink(os.path.abspath(candidate), flat / f"{n:05d}")
        except OSError:
            raise mio.UnreadableFileError("The folder's files could not be read.") from None


def _link_file(path: Path, flat: Path) -> None:
    """Link one ``.dcm`` file into ``flat``."""
    from mixdemo import io as mio

    if not path.is_file():
        raise mio.MissingFileError("The file could not be found: it may have been moved or deleted.")
    os.symlink(path.resolve(), flat / "00000")


def _check_count(n: int, where: str) -> None:
    from mixdemo import io as mio

    if n > MAX_FILES:
        raise mio.TooLargeError(f"The {where} holds more than {MAX_FILES} files; one DICOM series is expected.")


# ----------------------------------------------------------------------------------------- the series
def _series_slices(flat: str) -> list[_Slice]:
    """The series' slices in order along the slice normal, checked to form one evenly spaced volume."""
    import SimpleITK as sitk

    from mixdemo import io as mio

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(flat)
    if not series:
        raise mio.NotNiftiError(
            "No DICOM images were found: a .zip (or folder) of one DICOM series, or a .nii/.nii.gz file, is expected."
        )
    files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(flat, uid) for uid in series}
    if len(files) > 1:
        counts = ", ".join(str(len(f)) for f in sorted(files.values(), key=len, reverse=True))
        raise mio.ShapeError(
            f"The input holds {len(files)} DICOM series (of {counts} images); one series, the T1 scan, is expected: "
            "zip only its files."
        )
    slices = [_slice_info(f) for f in next(iter(files.values()))]
    first = slices[0]
    if any(s.size[:2] != first.size[:2] for s in slices):
        raise mio.ShapeError("The series' images differ in size; one 3D volume is expected.")
    if any(not np.allclose(s.direction, first.direction, atol=_DIRECTION_ATOL) for s in slices):
        raise mio.GeometryError("The series' images differ in orientation; one 3D volume is expected.")
    if len(slices) == 1:
        if first.size[2] == 1:
            raise mio.ShapeError("The input is a single 2D DICOM image (one slice); a 3D volume is expected: "
                                 "upload a .zip of all the series' files.")
        return slices  # one multi-frame file: its own geometry spans the volume
    if any(s.size[2] != 1 for s in slices):
        raise mio.ShapeError("The series mixes multi-frame and single-image files; one 3D volume is expected.")
    normal = first.direction[:, 2]
    slices.sort(key=lambda s: float(s.origin @ normal))  # GDCM sorts so too, unless positions were missing
    gaps = np.diff([float(s.origin @ normal) for s in slices])
    step = float(np.median(gaps))
    if gaps.min() < _SPACING_ATOL_MM:
        raise mio.ShapeError(
            "Several images of the series share a slice position (repeated acquisitions, echoes or time points?); "
            "one 3D volume is expected."
        )
    if np.abs(gaps - step).max() > _SPACING_RTOL * step + _SPACING_ATOL_MM:
        raise mio.GeometryError("The series' slices are unevenly spaced, or some are missing; a complete, evenly "
                                "spaced 3D series is expected.")
    return slices


def _slice_info(path: str) -> _Slice:
    import SimpleITK as sitk

    from mixdemo import io as mio

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise mio.CorruptFileError("A file of the series could not be read: it may be damaged.") from None
    if reader.GetNumberOfComponents() != 1:
        raise mio.DataTypeError("The series stores colour (RGB) values; a greyscale intensity volume is expected.")
    size = tuple(int(v) for v in reader.GetSize()) + (1,) * (3 - reader.GetDimension())
    return _Slice(
        path=path,
        size=size[:3],  # type: ignore[arg-type]
        spacing=(float(reader.GetSpacing()[0]), float(reader.GetSpacing()[1])),
        origin=np.array(reader.GetOrigin()[:3], dtype=np.float64),
        direction=np.array(reader.GetDirection(), dtype=np.float64).reshape(3, 3),
    )


def _affine(slices: Sequence[_Slice]) -> np.ndarray:
    """RAS+ voxel-to-mm affine: columns along the rows, down the columns and across slices (in that order)."""
    import SimpleITK as sitk

    first = slices[0]
    if len(slices) > 1:
        step = float(np.median(np.diff([float(s.origin @ first.direction[:, 2]) for s in slices])))
    else:  # a multi-frame file: ITK gives its slice spacing
        reader = sitk.ImageFileReader()
        reader.SetFileName(first.path)
        reader.ReadImageInformation()
        step = float(reader.GetSpacing()[2])
    lps = np.eye(4)
    lps[:3, :3] = first.direction @ np.diag([first.spacing[0], first.spacing[1], step])
    lps[:3, 3] = first.origin
    return _LPS_TO_RAS @ lps


def _voxels(slices: Sequence[_Slice], shape: tuple[int, int, int]) -> np.ndarray:
    """The series' voxels as float32 (i, j, k), read one file at a time into one array."""
    import SimpleITK as sitk

    from mixdemo import io as mio

    out = np.empty(shape, dtype=np.float32)
    k = 0
    for s in slices:
        try:
            image = sitk.ReadImage(s.path)
        except RuntimeError:
            raise mio.CorruptFileError("A file of the series could not be read: it may be damaged.") from None
        if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
            raise mio.DataTypeError("The series stores complex numbers; real-valued intensities are expected.")
        block = sitk.GetArrayViewFromImage(image)  # (frames, rows, columns), or (rows, columns)
        block = block.reshape((-1, *block.shape[-2:]))
        with np.errstate(all="ignore"):
            out[:, :, k:k + block.shape[0]] = np.transpose(block, (2, 1, 0))
        k += block.shape[0]
    return out


# ----------------------------------------------------------------------------------------- writing (examples, tests)
def write_series(volume: np.ndarray, affine: np.ndarray, folder: str | os.PathLike, *,
                 patient_name: str = "PHANTOM^MNI152", max_value: int = 4095) -> list[Path]:
    """Write a 3D volume as an MR DICOM series, one file per slice along axis 2, into ``folder``.

    Intensities are scaled to 0..``max_value`` and stored as int16 (no rescale tags), so a series read
    back matches ``volume`` up to that scale and rounding. The geometry tags carry ``affine`` (RAS+,
    converted to DICOM's LPS). New UIDs are made each call. Meant for the examples and the tests: it
    writes a phantom's name, never a patient's.

    Returns:
        The files written, in slice order.
    """
    import uuid

    import SimpleITK as sitk

    data = np.asarray(volume, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError("write_series takes a 3D volume.")
    peak = float(data.max()) if data.size and data.max() > 0 else 1.0
    scaled = np.clip(np.rint(data / peak * max_value), -32768, 32767).astype(np.int16)
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    study, series = (_UID_ROOT + str(uuid.uuid4().int) for _ in range(2))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written = []
    with _locale_kept():
        for k in range(scaled.shape[2]):
            position = (lps @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
            tags = _slice_tags(k, position, direction, spacing, study, series, patient_name)
            written.append(_write_slice(writer, scaled[:, :, k], spacing, tags, out / f"slice{k:04d}.dcm"))
    return written


@contextlib.contextmanager
def _locale_kept() -> Iterator[None]:
    """Restore the process's locale afterwards: GDCM's writer leaves it at "C", and Python then decodes
    subprocess output and files as ASCII."""
    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slice(writer, plane: np.ndarray, spacing: np.ndarray, tags: Iterator[tuple[str, str]],  # noqa: ANN001
                 path: Path) -> Path:
    """One slice (voxel axes i, j) as a DICOM file with the given header tags."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(plane.T))
    image.SetSpacing((float(spacing[0]), float(spacing[1])))
    for tag, value in tags:
        image.SetMetaData(tag, value)
    writer.SetFileName(str(path))
    writer.Execute(image)
    return path


def _slice_tags(k: int, position: np.ndarray, direction: np.ndarray, spacing: np.ndarray, study: str,
                series: str, patient_name: str) -> Iterator[tuple[str, str]]:
    def numbers(values: Sequence[float]) -> str:
        return "\\".join(f"{v:.6f}" for v in values)

    yield "0008|0016", _MR_IMAGE_STORAGE
    yield "0008|0018", f"{series}.{k + 1}"
    yield "0008|0060", "MR"
    yield "0010|0010", patient_name
    yield "0020|000d", study
    yield "0020|000e", series
    yield "0020|0013", str(k + 1)
    yield "0020|0032", numbers(position)
    yield "0020|0037", numbers([*direction[:, 0], *direction[:, 1]])
    yield "0018|0050", f"{spacing[2]:.6f}"
    yield "0028|0030", numbers([spacing[1], spacing[0]])


def zip_series(files: Sequence[Path], archive: str | os.PathLike) -> Path:
    """Zip a series' files (flat, under their own names) into ``archive``; returns its path."""
    archive = Path(archive)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, arcname=Path(f).name)
    return archive
