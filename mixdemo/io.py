"""Loading and saving NIfTI scans (and reading DICOM series), with clear, privacy-safe errors.

Every problem with an input file raises a :class:`ScanError` (a ``ValueError``)
whose message is one plain sentence a clinician can act on. Messages never
contain the file's path or name, because file names can identify patients.

Scans are returned as :class:`Scan`: a float32 volume in RAS+ orientation with
1 mm isotropic voxels, plus the input file's own grid so that results (label
maps) can be written back onto it with :func:`save_labels`. :func:`load_scan` also takes a DICOM
series (a ``.zip`` of one series, or a folder), read by :mod:`mixdemo.dicom`; results are written as
NIfTI on the series' grid.

All limits are checked on the header before any voxel data are allocated.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.processing import resample_from_to, resample_to_output, vox2out_vox

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_SIDE",
    "MAX_VOXELS",
    "MIN_SIDE",
    "MIN_VOXEL_MM",
    "MAX_VOXEL_MM",
    "ScanError",
    "MissingFileError",
    "EmptyFileError",
    "UnreadableFileError",
    "TooLargeError",
    "NotNiftiError",
    "CorruptFileError",
    "ShapeError",
    "DataTypeError",
    "GeometryError",
    "ValueRangeError",
    "ModalityError",
    "Scan",
    "load_scan",
    "load_labels",
    "load_labels_for",
    "load_labels_with_affine",
    "normalize_intensity",
    "save_labels",
    "save_volume",
    "file_stamp",
]

MAX_FILE_BYTES = 1 << 30
"""Largest accepted file, and largest accepted decompressed .nii.gz payload (1 GiB)."""
MAX_SIDE = 1024
"""Most voxels along any axis, before and after resampling to 1 mm."""
MAX_VOXELS = 512**3
"""Most voxels in a volume, before and after resampling to 1 mm."""
MIN_SIDE = 8
"""Fewest voxels along any axis of an input file."""
MIN_VOXEL_MM = 0.1
MAX_VOXEL_MM = 10.0

_VOXEL_TOL_MM = 1e-3  # voxel sizes this close to 1 mm are not resampled
_OBLIQUE_TOL = 1e-4  # off-axis affine entries (mm per voxel) below this are ignored
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_N1_SINGLE, _N1_PAIR = b"n+1\x00", b"ni1\x00"
_N2_SINGLE, _N2_PAIR = b"n+2\x00\r\n\x1a\n", b"ni2\x00\r\n\x1a\n"
_DT_BINARY, _DT_RGB, _DT_COMPLEX256, _DT_RGBA = 1, 128, 2048, 2304
_PAIR_SUFFIXES = (".hdr", ".img", ".hdr.gz", ".img.gz")
_PAIR_ADVICE = "please provide a single .nii or .nii.gz file."


# --------------------------------------------------------------------------- errors
class ScanError(ValueError):
    """A scan file cannot be used; the message is one plain, path-free sentence."""


class MissingFileError(ScanError):
    """The file does not exist (or is not a regular file)."""


class EmptyFileError(ScanError):
    """The file has zero bytes."""


class UnreadableFileError(ScanError):
    """The file exists but the operating system refused to read it."""


class TooLargeError(ScanError):
    """The file or the image exceeds a size limit."""


class NotNiftiError(ScanError):
    """The file is not a single-file NIfTI-1/NIfTI-2 image."""


class CorruptFileError(ScanError):
    """The file is truncated, or its compression or header is damaged."""


class ShapeError(ScanError):
    """The image does not have the expected dimensions."""


class DataTypeError(ScanError):
    """The voxels are stored in a type that is not a real intensity (complex, RGB...)."""


class GeometryError(ScanError):
    """The voxel size or orientation information is unusable."""


class ValueRangeError(ScanError):
    """The voxel values are unusable (NaN/Inf, constant, out of range)."""


class ModalityError(ScanError):
    """The DICOM series is not an MR scan (a CT, a PET scan, a dose grid...): the models were trained on MR."""


# --------------------------------------------------------------------------- Scan
@dataclass(frozen=True, eq=False)
class Scan:
    """A loaded scan on a 1 mm isotropic RAS+ grid.

    Attributes:
        data: float32 3D volume (normalised to [0, 1] unless loaded with
            ``normalize=False``).
        affine: 4x4 voxel-to-world (mm) matrix of ``data``.
        source_shape: 3D shape of the input file's own grid.
        source_affine: 4x4 affine of the input file's own grid, used to map
            results back onto it.
    """

    data: np.ndarray
    affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray

    def __post_init__(self) -> None:
        if self.data.ndim != 3 or self.data.dtype != np.float32:
            raise ValueError("Scan.data must be a 3D float32 array.")
        if self.affine.shape != (4, 4) or self.source_affine.shape != (4, 4):
            raise ValueError("Scan affines must be 4x4 matrices.")
        if len(self.source_shape) != 3:
            raise ValueError("Scan.source_shape must have three sides.")


# --------------------------------------------------------------------------- public API
def load_scan(path: str | os.PathLike, *, normalize: bool = True, series: int | None = None,
              refuse_label_maps: bool = False) -> Scan:
    """Load a NIfTI scan or a DICOM series, checked, as float32 on a 1 mm isotropic RAS+ grid.

    Args:
        path: A ``.nii`` or ``.nii.gz`` file (extension case-insensitive), or a DICOM series: a ``.zip``
            of one series or a folder holding one (:func:`mixdemo.dicom.read_series`).
        normalize: Apply :func:`normalize_intensity` (as in training).
        series: For a DICOM input holding several series, which one (numbered from 1 as their refusal lists
            them); ignored for NIfTI.
        refuse_label_maps: Refuse a file that looks like a label map (:func:`label_map_values`), as a user's
            target is checked (``mixdemo.client.load_target``); a cohort's or a test's synthetic scans may hold few
            whole-number values.

    Returns:
        The checked, reoriented and resampled :class:`Scan`.

    Raises:
        ScanError: A subclass describing the problem, for any unusable file.
    """
    if _is_series(path):
        from mixdemo.dicom import read_series

        array, source_affine = read_series(path, series)
    else:
        array, source_affine = _load_checked(path)
    data = _as_finite_float32(array)
    del array
    if float(data.min()) == float(data.max()):
        raise ValueRangeError("The file contains no image: every voxel has the same value.")
    if refuse_label_maps and (values := label_map_values(data)) is not None:
        raise ValueRangeError(f"The file looks like a label map ({values} distinct whole-number values), not an MRI "
                              "scan: give the T1 image here; a label map goes beside it, as its labels.")
    out, affine = _to_ras_1mm(data, source_affine, order=1)
    if normalize:
        out = normalize_intensity(out)
    return Scan(
        data=np.ascontiguousarray(out, dtype=np.float32),
        affine=affine,
        source_shape=tuple(int(s) for s in data.shape),  # type: ignore[arg-type]
        source_affine=source_affine,
    )


MAX_LABEL_MAP_VALUES = 16
"""A volume of whole numbers with this many distinct values or fewer is a label map (or a mask), not a scan: an MRI
scan, stored as integers, holds hundreds of distinct values or more."""


def label_map_values(data: np.ndarray) -> int | None:
    """How many distinct values ``data`` holds if it looks like a label map (whole numbers, at most
    :data:`MAX_LABEL_MAP_VALUES` of them), else None. A sample of every 97th voxel rules most scans out at once."""
    for part in (data.ravel()[::97], data):
        if part.size == 0 or not np.array_equal(part, np.round(part)):
            return None
        values = np.unique(part)
        if values.size > MAX_LABEL_MAP_VALUES:
            return None
    return int(values.size)


def normalize_intensity(data: np.ndarray) -> np.ndarray:
    """Robustly scale intensities to [0, 1]; identical for training and inference.

    Negative values are clipped to 0. ``p`` is the 99.5th percentile of the
    remaining non-zero voxels, and the result is ``clip(data / p, 0, 1)``, so
    the brightest 0.5 % of tissue saturates at 1 and background stays 0. The
    result does not depend on the scanner's intensity scale (it is invariant to
    multiplying ``data`` by a positive constant).

    Args:
        data: Array of intensities (any shape, real-valued, finite).

    Returns:
        A new float32 array of the same shape with values in [0, 1].

    Raises:
        ValueRangeError: NaN/Inf present, or no positive intensity (``p <= 0``).
    """
    arr = np.asarray(data, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueRangeError("The image contains invalid values (NaN or infinity).")
    clipped = np.maximum(arr, np.float32(0))
    positive = clipped[clipped > 0]
    p = float(np.percentile(positive, 99.5)) if positive.size else 0.0
    if not p > 0:
        raise ValueRangeError("The image has no positive intensities, so it cannot be normalised.")
    return np.clip(clipped / np.float32(p), 0, 1).astype(np.float32)


def load_labels_with_affine(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_labels` without ``like``, with the affine of the 1 mm RAS+ grid it returns the labels on."""
    return conform_labels(*load_labels_on_file_grid(path))


def load_labels_on_file_grid(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A label file's labels (uint8) on its own grid, and that grid's affine: checked as :func:`load_labels` checks
    them, not yet reoriented or resampled (:func:`conform_labels` does that)."""
    array, affine = _load_checked(path, series_too=False)
    return _as_label_uint8(array), affine


def conform_labels(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels reoriented to RAS+ and, if needed, carried onto an axis-aligned 1 mm grid (nearest neighbour), as
    :func:`load_labels` returns them, with that grid's affine."""
    return _to_ras_1mm(labels, affine, order=0)


def load_labels(path: str | os.PathLike, like: Scan | None = None) -> np.ndarray:
    """Load an integer label map (0-255) as uint8, RAS+ on a 1 mm grid.

    Resampling uses nearest neighbour, so label values are never blended.

    Args:
        path: A ``.nii`` or ``.nii.gz`` label file.
        like: If given, the labels are resampled onto ``like.data``'s grid. The
            file must then have the scan's source dimensions or its 1 mm ones.

    Returns:
        uint8 array (``like.data.shape`` if ``like`` is given).

    Raises:
        ScanError: Unusable file (same checks as :func:`load_scan`), labels
            that are not whole numbers in 0-255, or dimensions not matching ``like``.
    """
    if like is None:
        return load_labels_with_affine(path)[0]
    return resample_labels(*load_labels_for(path, like), like.data.shape, like.affine)


def load_labels_for(path: str | os.PathLike, like: Scan) -> tuple[np.ndarray, np.ndarray]:
    """A label file of ``like`` as it is stored (uint8, on its own grid) and that grid's affine, with the checks of
    :func:`load_labels` (the scan's source dimensions or its loaded 1 mm ones, placed on the scan), not yet
    resampled: for a carry that resamples once (:func:`mixdemo.preprocess.labels_to_model_grid` with ``affine``)."""
    array, affine = _load_checked(path, series_too=False)
    labels = _as_label_uint8(array)
    del array
    if labels.shape not in (tuple(like.source_shape), like.data.shape):
        raise ShapeError(
            f"The label map's dimensions ({_fmt_shape(labels.shape)}) do not match the scan "
            f"({_fmt_shape(like.source_shape)})."
        )
    _check_labels_in_place(labels.shape, affine, like)
    return labels, np.asarray(affine, dtype=np.float64)


def _check_labels_in_place(shape: tuple[int, ...], affine: np.ndarray, like: Scan) -> None:
    """A GeometryError when a label map with a grid of the scan's dimensions is placed elsewhere by its header: a
    corner of its grid in the world half a voxel or more from every corner of the scan's grid (of those dimensions;
    the corners as a set, so a grid stored in another voxel order over the same box is in place). Resampled by its
    header, it would lie off the anatomy it labels."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    spacing = float(np.linalg.norm(affine[:3, :3], axis=0).min())
    grids = [a for s, a in ((tuple(like.source_shape), like.source_affine), (like.data.shape, like.affine)) if s == shape]
    placed = (corners @ affine.T)[:, :3]
    offsets = [float(np.linalg.norm(placed[:, None] - (corners @ a.T)[None, :, :3], axis=2).min(1).max()) for a in grids]
    if offsets and min(offsets) >= 0.5 * spacing:
        raise GeometryError(
            f"The label map has the scan's dimensions, but its header places it {min(offsets):.1f} mm away from the "
            "scan: labels on the scan's grid must carry the scan's affine (write them with the scan's header)."
        )


def save_labels(labels: np.ndarray, scan: Scan, path: str | os.PathLike) -> None:
    """Write a label map back onto the input file's own grid, atomically.

    Args:
        labels: Integer labels (0-255) on ``scan.data``'s grid.
        scan: The scan the labels belong to.
        path: Output ``.nii`` or ``.nii.gz`` file.

    Raises:
        ValueError: Wrong shape, non-integer type, or values outside 0-255.
    """
    save_volume(labels_on_source_grid(labels, scan), scan.source_affine, path, dtype=np.uint8)


def labels_on_source_grid(labels: np.ndarray, scan: Scan) -> np.ndarray:
    """A label map on ``scan.data``'s grid carried onto the input file's own grid (``scan.source_shape`` and
    ``scan.source_affine``), nearest neighbour, as uint8; a ValueError for a wrong shape, a non-integer type or
    values outside 0-255."""
    labels = np.asarray(labels)
    if labels.shape != scan.data.shape:
        raise ValueError(
            f"The label map has shape {labels.shape} but the scan has {scan.data.shape}."
        )
    if labels.dtype.kind not in "iub":
        raise ValueError("Labels must be an integer array.")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise ValueError("Labels must lie between 0 and 255.")
    return resample_labels(
        labels.astype(np.uint8), scan.affine, tuple(scan.source_shape), scan.source_affine
    )


def save_volume(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    *,
    dtype: npt.DTypeLike = np.float32,
) -> None:
    """Write a NIfTI-1 volume atomically (temporary file + ``os.replace``).

    Only the data, the dtype and the affine (as both qform and sform, in mm)
    are written. Nothing is left behind if writing fails; an existing file at
    ``path`` is replaced only once the new one is complete.

    Args:
        data: Array to write (cast to ``dtype``).
        affine: 4x4 voxel-to-world matrix.
        path: Output file ending in ``.nii`` or ``.nii.gz``.
        dtype: Stored data type.

    Raises:
        ValueError: Bad extension, affine, or values not representable in ``dtype``.
    """
    path = os.fspath(path)
    suffix = _nifti_suffix(path)
    if suffix is None:
        raise ValueError("The output file name must end in .nii or .nii.gz.")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError("The affine must be a finite 4x4 matrix.")
    img = nib.Nifti1Image(_cast_for_saving(np.asarray(data), np.dtype(dtype)), affine)
    img.set_qform(affine, code="scanner")
    img.set_sform(affine, code="scanner")
    img.header.set_xyzt_units("mm", "sec")
    write_atomically(path, suffix, img.to_filename)


def write_atomically(path: str | os.PathLike, suffix: str, write: Callable[[str], object]) -> None:
    """Call ``write`` on a temporary file beside ``path`` (named with ``suffix``), flush it to disk, and only then
    move it onto ``path``: nothing is left behind if writing fails, and an existing file is replaced only whole."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        os.close(fd)
        write(tmp)
        with open(tmp, "r+b") as fh:  # writable: Windows' fsync (FlushFileBuffers) fails on a read-only handle
            os.fsync(fh.fileno())
        _honour_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_PROC_STATUS = "/proc/self/status"


def _proc_umask() -> int | None:
    """The process's umask from ``/proc/self/status`` (Linux 4.7+): current and thread-safe, unlike ``os.umask``,
    which reads it only by setting it. None where there is no such line."""
    try:
        with open(_PROC_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    """The umask at import: from /proc, else by ``os.umask`` swapped once (to the strictest mask, so a file another
    thread makes in that instant gets fewer rights, not more) and put back at once."""
    found = _proc_umask()
    if found is None:
        found = os.umask(0o077)
        os.umask(found)
    return found


_UMASK_AT_IMPORT = _umask_at_import()


def _current_umask() -> int:
    """The umask now (/proc), else the one at import (a later change is then missed)."""
    found = _proc_umask()
    return _UMASK_AT_IMPORT if found is None else found


def _honour_umask(path: str) -> None:
    """Give a ``mkstemp`` file (always 0600) the mode a plain ``open`` would: 0666 less the umask. Best effort:
    a filesystem that refuses ``chmod`` keeps the owner-only file rather than losing the write."""
    try:
        os.chmod(path, 0o666 & ~_current_umask())
    except OSError:
        pass


def file_stamp(path: str | os.PathLike) -> list:
    """``[resolved path, size in bytes, modification time in ns]`` of a file, JSON-ready: what a result derived
    from it records, to be redone once the file is another or has changed."""
    stat = os.stat(path)
    return [os.path.realpath(path), stat.st_size, stat.st_mtime_ns]


# --------------------------------------------------------------------------- file checks
class _Header(NamedTuple):
    """What is kept from a parsed header; no other header fields are used."""

    image: nib.spatialimages.SpatialImage  # lazy: no voxel data read yet
    shape: tuple[int, ...]
    dtype: np.dtype
    datatype_code: int
    affine: np.ndarray
    data_offset: int


def _load_checked(path: str | os.PathLike, *, series_too: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Run every file and header check, then read the voxels.

    ``series_too``: whether the caller also takes a DICOM series (only said in the message for other formats).

    Returns:
        (3D voxel array with scaling applied, affine of the file's grid).
    """
    payload, size = _read_payload(path, series_too=series_too)
    header = _parse_header(payload)
    shape3 = _check_dims(header.shape)
    _check_dtype(header.dtype, header.datatype_code)
    if header.data_offset + math.prod(header.shape) * header.dtype.itemsize > size:
        raise CorruptFileError(
            "The file is shorter than its header declares: the image data are truncated "
            "or the header is corrupt."
        )
    _check_geometry(shape3, header.affine)
    try:
        with np.errstate(all="ignore"):
            array = np.asanyarray(header.image.dataobj)
    except Exception as exc:  # noqa: BLE001 - untrusted input boundary
        raise CorruptFileError(
            "The image data could not be read: the file may be corrupt."
        ) from exc
    return np.asarray(array).reshape(shape3), header.affine


def _read_payload(path: str | os.PathLike, *, series_too: bool = True) -> tuple[io.BytesIO, int]:
    """Check existence, size and extension; return the (decompressed) bytes and size."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError("The file could not be found: it may have been moved or deleted.")
    try:
        size = os.path.getsize(path)
    except OSError:
        raise UnreadableFileError("The file could not be read: access may be denied.") from None
    if size == 0:
        raise EmptyFileError("The file is empty (0 bytes): the upload may have failed.")
    if size > MAX_FILE_BYTES:
        raise TooLargeError(
            f"The file is too large ({size / (1 << 30):.1f} GiB); the limit is "
            f"{MAX_FILE_BYTES / (1 << 30):g} GiB."
        )
    suffix = _nifti_suffix(path)
    if suffix is None and os.path.basename(path).lower().endswith(_PAIR_SUFFIXES):
        raise NotNiftiError(f"The file is one half of a .hdr/.img pair (NIfTI-1 or Analyze), which is not read; "
                            f"{_PAIR_ADVICE}")
    if suffix is None:
        if series_too:
            raise NotNiftiError("The file is not a NIfTI image (.nii or .nii.gz) or a .zip of one DICOM series.")
        raise NotNiftiError("The file is not a NIfTI image (.nii or .nii.gz).")
    try:
        with open(path, "rb") as fh:
            if suffix == ".nii.gz":
                return _gunzip(fh)
            buf = io.BytesIO(fh.read())
    except OSError:
        raise UnreadableFileError("The file could not be read: access may be denied.") from None
    return buf, size


def _gunzip(fh: io.BufferedReader) -> tuple[io.BytesIO, int]:
    """Decompress a whole gzip stream, capped at MAX_FILE_BYTES."""
    if fh.read(2) != _GZIP_MAGIC:
        raise CorruptFileError(
            "The file ends in .nii.gz but is not gzip-compressed: it may be mislabelled or corrupt."
        )
    fh.seek(0)
    out = io.BytesIO()
    total = 0
    try:
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            while chunk := gz.read(_CHUNK):
                total += len(chunk)
                if total > MAX_FILE_BYTES:
                    raise TooLargeError(
                        f"The decompressed image is larger than the "
                        f"{MAX_FILE_BYTES / (1 << 30):g} GiB limit."
                    )
                out.write(chunk)
    except (EOFError, OSError, zlib.error):
        raise CorruptFileError(
            "The gzip stream is truncated or corrupt: the upload may be incomplete."
        ) from None
    out.seek(0)
    return out, total


def _parse_header(payload: io.BytesIO) -> _Header:
    """Identify a single-file NIfTI-1/2 image and parse its header (lazily)."""
    head = payload.read(12)
    payload.seek(0)
    if head[:2] == _GZIP_MAGIC:
        raise NotNiftiError(
            "The file is gzip-compressed but named .nii: rename it to end in .nii.gz."
        )
    not_nifti = "The file is not a valid NIfTI image: it may be another format renamed to .nii."
    sizeof_hdr = {int.from_bytes(head[:4], order) for order in ("little", "big")}
    if 348 in sizeof_hdr:
        payload.seek(344)
        magic = payload.read(4)
        klass, single, pair = nib.Nifti1Image, _N1_SINGLE, _N1_PAIR
    elif 540 in sizeof_hdr:
        magic = head[4:12]
        klass, single, pair = nib.Nifti2Image, _N2_SINGLE, _N2_PAIR
    else:
        payload.seek(128)
        if payload.read(4) == b"DICM":  # a DICOM file's preamble, then its marker
            raise NotNiftiError("The file is a DICOM image named as NIfTI: give a DICOM series as a .zip of its "
                                "files (or, to the client, their folder) under its own name.")
        raise NotNiftiError(not_nifti)
    payload.seek(0)
    if magic == pair:
        raise NotNiftiError(f"The file is a NIfTI header without its image data (.hdr/.img pair); {_PAIR_ADVICE}")
    if magic != single:
        raise NotNiftiError(not_nifti)
    try:
        with np.errstate(all="ignore"):
            image = klass.from_stream(payload)
            hdr = image.header
            header = _Header(
                image=image,
                shape=tuple(int(s) for s in hdr.get_data_shape()),
                dtype=np.dtype(hdr.get_data_dtype()),
                datatype_code=int(hdr["datatype"]),
                affine=np.array(image.affine, dtype=np.float64),
                data_offset=int(image.dataobj.offset),
            )
    except Exception as exc:  # noqa: BLE001 - untrusted input boundary; message is path-free
        raise NotNiftiError("The file is not a valid NIfTI image: its header is damaged.") from exc
    return header


def _check_dims(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Accept 3D, or 4D with a single volume; check side and total limits."""
    ndim = len(shape)
    if ndim == 4 and shape[3] == 1:
        shape = shape[:3]
    elif ndim == 4:
        raise ShapeError(
            f"The image is a 4D series of {shape[3]} volumes; a single 3D volume is expected."
        )
    elif ndim == 2:
        raise ShapeError("The image is 2D (a single slice); a 3D volume is expected.")
    elif ndim != 3:
        raise ShapeError(f"The image has {ndim} dimensions; a 3D volume is expected.")
    if min(shape) < MIN_SIDE:
        raise ShapeError(
            f"The image is too small ({_fmt_shape(shape)} voxels); each side needs at least "
            f"{MIN_SIDE} voxels."
        )
    _check_size_limits(shape, "The image")
    return shape  # type: ignore[return-value]


def _check_size_limits(shape: tuple[int, ...], what: str) -> None:
    if max(shape) > MAX_SIDE:
        raise TooLargeError(
            f"{what} is too large ({_fmt_shape(shape)} voxels); each side may have at most "
            f"{MAX_SIDE} voxels."
        )
    if math.prod(shape) > MAX_VOXELS:
        raise TooLargeError(
            f"{what} is too large ({_fmt_shape(shape)} voxels); at most {MAX_VOXELS:,} voxels "
            f"are allowed."
        )


def _check_dtype(dtype: np.dtype, code: int) -> None:
    """Accept integers, floats and booleans of any width; reject the rest."""
    if code in (_DT_RGB, _DT_RGBA) or dtype.names:
        raise DataTypeError(
            "The image stores colour (RGB) values; a greyscale intensity volume is expected."
        )
    if dtype.kind == "c" or code == _DT_COMPLEX256:
        raise DataTypeError(
            "The image stores complex numbers; real-valued intensities are expected."
        )
    if dtype.kind not in "iufb" or dtype.itemsize == 0:
        raise DataTypeError(
            "The image uses an unsupported data type; integer or floating-point values "
            "are expected."
        )


def _check_geometry(shape3: tuple[int, int, int], affine: np.ndarray) -> None:
    """Check the affine, voxel size, and the size of the 1 mm grid it implies."""
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise GeometryError("The image's orientation information is invalid.")
    linear = affine[:3, :3]
    zooms = np.sqrt((linear**2).sum(axis=0))
    if not ((zooms >= MIN_VOXEL_MM) & (zooms <= MAX_VOXEL_MM)).all():
        raise GeometryError(
            f"The voxel size ({' x '.join(f'{z:.3g}' for z in zooms)} mm) is outside the "
            f"supported range of {MIN_VOXEL_MM:g} to {MAX_VOXEL_MM:g} mm."
        )
    if abs(np.linalg.det(linear)) < 1e-3 * float(np.prod(zooms)):
        raise GeometryError("The image's orientation information is invalid (degenerate axes).")
    if _needs_resampling(affine):
        out_shape, _ = vox2out_vox((shape3, affine), (1.0, 1.0, 1.0))
        _check_size_limits(tuple(int(s) for s in out_shape), "Resampled to 1 mm voxels, the image")


# --------------------------------------------------------------------------- voxel values
def _as_finite_float32(array: np.ndarray) -> np.ndarray:
    """Convert to float32, rejecting NaN/Inf (including float32 overflow)."""
    with np.errstate(all="ignore"):
        data = np.asarray(array, dtype=np.float32)
    if not np.isfinite(data).all():
        raise ValueRangeError(
            "The image contains invalid values (NaN or infinity, or numbers too large to store)."
        )
    return data


def _as_label_uint8(array: np.ndarray) -> np.ndarray:
    """Convert a label array to uint8, requiring whole numbers in 0-255."""
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueRangeError("The label map contains invalid values (NaN or infinity).")
        if not np.array_equal(array, np.round(array)):
            raise ValueRangeError(
                "The label map contains non-integer values; whole-number labels are expected."
            )
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueRangeError("The label map contains labels outside the range 0 to 255.")
    return array.astype(np.uint8)


# --------------------------------------------------------------------------- geometry
def _needs_resampling(affine: np.ndarray) -> bool:
    """True if the grid is oblique or its voxels are not 1 mm (within tolerance)."""
    linear = affine[:3, :3]
    significant = np.abs(linear) > _OBLIQUE_TOL
    axis_aligned = (significant.sum(axis=0) == 1).all() and (significant.sum(axis=1) == 1).all()
    zooms = np.sqrt((linear**2).sum(axis=0))
    return not axis_aligned or bool((np.abs(zooms - 1.0) > _VOXEL_TOL_MM).any())


def _to_ras_1mm(data: np.ndarray, affine: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Reorient to RAS+ and, if needed, resample to an axis-aligned 1 mm grid."""
    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    if _needs_resampling(img.affine):
        img = resample_to_output(img, voxel_sizes=(1.0, 1.0, 1.0), order=order)
    out = np.ascontiguousarray(np.asanyarray(img.dataobj), dtype=data.dtype)
    return out, np.array(img.affine, dtype=np.float64)


def resample_labels(
    data: np.ndarray,
    affine: np.ndarray,
    to_shape: tuple[int, ...],
    to_affine: np.ndarray,
) -> np.ndarray:
    """Nearest-neighbour resampling onto another grid (a copy if grids match).

    The data are padded by one voxel of zeros first, so that a target voxel centre within half a voxel outside the
    source (a rounding error away from its first or last plane, as on a grid in the other slice order) takes the
    edge voxel's value: SciPy's constant mode gave it 0 and lost a whole edge plane of labels."""
    if data.shape == tuple(to_shape) and np.allclose(affine, to_affine, rtol=0, atol=1e-6):
        return data.copy()
    one_voxel_back = np.eye(4)
    one_voxel_back[:3, 3] = -1.0
    img = nib.Nifti1Image(np.pad(data, 1), np.asarray(affine, dtype=np.float64) @ one_voxel_back)
    out = resample_from_to(img, (tuple(to_shape), np.asarray(to_affine)), order=0)
    return np.asarray(out.dataobj, dtype=data.dtype)


# --------------------------------------------------------------------------- small helpers
def _is_series(path: str | os.PathLike) -> bool:
    """A DICOM series input (a folder, or a ``.zip``): see :func:`mixdemo.dicom.is_series_input`."""
    from mixdemo.dicom import is_series_input

    return is_series_input(path)


def _nifti_suffix(path: str) -> str | None:
    """Return '.nii' or '.nii.gz' (lower case) if the name has one, else None."""
    name = os.path.basename(path).lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def _cast_for_saving(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast to ``dtype``, refusing values an integer type cannot hold exactly."""
    if dtype.kind in "iu" and data.dtype.kind not in "iub":
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise ValueError("Only whole numbers can be saved with an integer data type.")
    if dtype.kind in "iu" and data.size:
        info = np.iinfo(dtype)
        if data.min() < info.min or data.max() > info.max:
            raise ValueError(f"Values do not fit in the {dtype.name} data type.")
    return data.astype(dtype, copy=False)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(int(s)) for s in shape)
