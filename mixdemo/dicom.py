"""DICOM series in: a ``.zip`` of one series, a folder of its files, or a single DICOM file, read as voxels and a
RAS+ affine.

Scanners and PACS export DICOM; :func:`mixdemo.io.load_scan` calls :func:`read_series` for a ``.zip``, a folder or
a DICOM file, so the app's upload, the command-line client and :mod:`mixdemo.preprocess` take a series as they
take a NIfTI file. SimpleITK (GDCM) decodes the pixels (compressed transfer syntaxes included) and applies each
image's rescale slope and intercept. The geometry comes from each image's own tags, Image Position, Image
Orientation and Pixel Spacing, checked here (GDCM silently replaces an orientation it finds invalid by the
identity, and a missing spacing by 1 mm). No other header field (the patient's name, dates, identifiers) is
kept, returned, logged or put into a message. The archive's member names are never used: each member is written
to a temporary folder under a number, so a hostile name (``../``) cannot write elsewhere; the folder is deleted
after reading, or by the next read if the process was killed during this one.

The series must be one 3D volume: one series (by SeriesInstanceUID), one time point and echo, one image per slice
position, positions evenly spaced on one line, every image the same size, orientation and pixel spacing. A stack
whose slices step off the normal (a gantry tilt) is resampled onto slices along the normal, as dcm2niix does. A
damaged image is refused, not left out. An enhanced multi-frame file is a series in one file (or in several: one
frame each, or part of the frames each) whose frames carry their own position and rescale (functional groups,
read with pydicom): SimpleITK alone stacks the frames in file order at 1 mm with the first frame's rescale, so it
only decodes what pydicom cannot, and its rescale is undone. A legacy multi-frame file, whose frames carry no
position of their own, is refused. So is a series whose Modality says it is not MR (a CT, a dose grid, a DICOM
SEG): the networks were trained on MR only; and one stored inverted for display (MONOCHROME1), whose values GDCM
inverts and pydicom does not. Anything else is a :class:`mixdemo.io.ScanError` whose message says what was
found and what is expected, without any path or header value beyond the geometry and the modality.
:func:`write_series` writes a volume as such a series (pydicom); it makes the examples and the tests' inputs.
"""

from __future__ import annotations

import contextlib
import logging
import lzma
import os
import re
import shutil
import struct
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mixdemo import io as mio  # io imports this module only inside its functions

__all__ = ["MAX_FILES", "diagnostics_off", "is_series_input", "read_series", "series_images", "write_series",
           "zip_series"]

MAX_FILES = 4096
"""Most files in one archive or folder (a 1 mm whole-head series has a few hundred)."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SPACING_RTOL = 0.01  # slice gaps (and in-plane drift) may differ by 1 % of the step, plus _position_slack(step)
_ROUNDING_MM = 0.2  # positions printed to 0.1 mm, oblique: each gap or drift off by up to 2·0.05·√3 mm
_ROUNDING_SHARE = 0.25  # ...but never more than a quarter of the step, so a missing slice (a whole step) shows
_SAME_POSITION_MM = 0.01  # two images nearer than this along the normal share a position
_TILT_ATOL_MM = 0.01  # a stride this far off the slice normal, or more, is a tilted stack (resampled)
_ORIENTATION_TOL = 1e-2  # row/column direction cosines: unit length and orthogonal to this; then orthonormalised
_SAME_TOL = 1e-4  # pixel spacing shared by every image of the series (relative)
_SAME_DIRECTION_TOL = 1e-3  # orientation shared by every image (direction cosines; 4-decimal exports differ by 1e-4)
_DICM_AT = 128
_CHUNK = 1 << 20
_MAX_DIRECTORY_BYTES = MAX_FILES * 1024  # a zip's central directory: ~50 bytes an entry plus its name
_TEMP_PREFIX = "mixdemo-dicom-"
_STALE_AFTER_S = 3600.0  # a temporary folder this old outlived its read (the process was killed): removed
_POSITION, _ORIENTATION, _PIXEL_SPACING = "0020|0032", "0020|0037", "0028|0030"
_FRAMES, _TEMPORAL_POSITION, _ECHO, _SOP_CLASS = "0028|0008", "0020|0100", "0018|0086", "0008|0016"
_MODALITY, _PHOTOMETRIC, _INSTANCE = "0008|0060", "0028|0004", "0008|0018"
_INVERTED = ("The series stores its intensities inverted for display (MONOCHROME1), which MR scanners do not write "
             "and whose decoders disagree on the values; an MR series as MONOCHROME2 is expected: export it so.")
_MR_OR_UNSTATED = frozenset({"MR", "OT", ""})  # OT ("other"): what some research converters write for an MR volume
_MODALITY_NAMES = {
    "CT": "a CT scan", "PT": "a PET scan", "NM": "a nuclear-medicine image", "US": "an ultrasound image",
    "CR": "a radiograph", "DX": "a radiograph", "MG": "a mammogram", "XA": "an X-ray angiogram",
    "RF": "a fluoroscopy image", "RTDOSE": "a radiotherapy dose grid", "RTIMAGE": "a radiotherapy image",
    "SEG": "a segmentation", "SM": "a microscopy slide", "OP": "an eye photograph", "OPT": "an OCT scan",
}
"""Plain names of the DICOM Modality codes (PS3.3 C.7.3.1.1.1) an upload meant for MR may carry by mistake."""
_DEFINED_MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO "
    "LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE "
    "RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA "
    "XAPROTOCOL XC".split())
"""The Modality defined terms of PS3.3 C.7.3.1.1.1 (and retired ones still met): the codes a message may name."""
_TOO_MANY = ("The {where} holds more than {limit} files; one DICOM series is expected (a whole study's export is "
             "often larger: export the T1 series on its own).")
_NO_GEOMETRY = ("The images carry no valid slice position, orientation or pixel spacing; an MR series as the scanner "
                "exports it is expected (not screenshots or secondary captures).")


class _Slice(NamedTuple):
    """One image's geometry (LPS, mm) and the tags that tell one volume from several (no identifying field)."""

    path: str
    size: tuple[int, int]  # columns (along the row direction), rows
    spacing: tuple[float, float]  # mm between columns, between rows
    origin: np.ndarray
    direction: np.ndarray  # 3x3 orthonormal; columns: row direction, column direction, their normal
    stack: tuple[str, ...]  # temporal position, echo (and stack, of a multi-frame file); "" when absent
    frame: int = -1  # the frame of a multi-frame file (its position in the file), -1 for a single-frame file
    rescale: tuple[float, float] = (1.0, 0.0)  # a multi-frame file's frame's slope and intercept
    in_stack: int = 0  # a multi-frame file's frame's In-Stack Position Number (1 to n along the stack), 0 if absent
    modality: str = ""  # the image's Modality code (MR, CT...), "" when absent
    instance: str = ""  # its file's SOP Instance UID (never shown): the same image given twice shares it


def is_series_input(path: str | os.PathLike) -> bool:
    """True for what :func:`read_series` reads: a folder, a ``.zip`` or ``.dcm`` file, or any other file that is not
    named as NIfTI and carries the DICOM marker (``DICM`` at byte 128; exports often name images ``IM_0001``) or
    starts as a zip does (an archive whose name lost its ``.zip``, as downloads sometimes do)."""
    name = os.fspath(path).lower()
    if os.path.isdir(path) or name.endswith((".zip", ".dcm")):
        return True
    if name.endswith((".nii", ".nii.gz")) or not os.path.isfile(path):
        return False
    try:
        return _is_zip(path) or has_dicom_marker(path)
    except OSError:
        return False


def has_dicom_marker(path: str | os.PathLike) -> bool:
    """Whether the file carries the DICOM marker (``DICM`` at byte 128)."""
    with open(path, "rb") as fh:
        fh.seek(_DICM_AT)
        return fh.read(4) == b"DICM"


def read_series(path: str | os.PathLike, series: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one DICOM series as a 3D float32 array (voxel axes i, j, k) and its RAS+ voxel-to-mm affine.

    Args:
        path: A ``.zip`` archive holding one series, a folder (searched recursively, links followed) holding one,
            or one DICOM file (an enhanced multi-frame volume; one slice is refused with advice).
        series: Which series of an input that holds several (a whole study's export), numbered from 1 as the
            refusal of such an input lists them (most files first; an enhanced file counts as one); None: the input
            must hold one. One that reads as another does (the same geometry) is refused: its number is a guess.

    Returns:
        ``(data, affine)``, as :func:`mixdemo.io.load_scan` takes them from a NIfTI file: rescale slope and
        intercept applied, axis 0 along the image rows, axis 1 down the columns, axis 2 across slices.

    Raises:
        mixdemo.io.ScanError: A subclass saying why the input is not one readable 3D series.
    """
    with series_images(path, series) as slices:
        shape = (slices[0].size[0], slices[0].size[1], len(slices))
        mio._check_dims(shape)
        affine = _affine(slices)
        mio._check_geometry(shape, affine)
        return _untilted(_voxels(slices, shape), affine)


@contextmanager
def series_images(path: str | os.PathLike, series: int | None = None) -> Iterator[list[_Slice]]:
    """The series' images (or an enhanced file's frames) in order along the slice normal, checked to form one
    regular 3D volume, while their files exist: unpacked from a ``.zip`` (or linked from a folder) into a temporary
    folder deleted on leaving. :func:`read_series` reads its voxels from them; :mod:`mixdemo.dicomseg` reads the
    headers a DICOM SEG refers to.

    Raises:
        mixdemo.io.ScanError: As :func:`read_series` does.
    """
    if not (os.path.isdir(path) or os.path.isfile(path)):  # a FIFO or a device is neither: never opened
        raise mio.MissingFileError("The file could not be found: it may have been moved or deleted.")
    _remove_stale_folders()
    try:
        with diagnostics_off(), tempfile.TemporaryDirectory(prefix=_TEMP_PREFIX) as flat:
            if os.path.isdir(path):
                _link_folder(Path(path), Path(flat))
            elif _is_zip(path):
                _unpack_zip(path, Path(flat))
            else:
                _place(Path(path).resolve(), Path(flat) / "00000")
            yield _series_slices(flat, series)
    except OSError:
        raise mio.UnreadableFileError("The DICOM input could not be read or unpacked: access or disk space may be "
                                      "lacking.") from None


def _is_zip(path: str | os.PathLike) -> bool:
    """A ``.zip`` name, or a file that starts as a zip does (a DICOM file never does: 128 bytes, then ``DICM``)."""
    if os.fspath(path).lower().endswith(".zip"):
        return True
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _remove_stale_folders() -> None:
    """Remove temporary folders of reads that never finished (a killed process): they hold the series' files,
    headers included."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(_TEMP_PREFIX)]
    except OSError:
        return
    for name in names:
        folder = os.path.join(root, name)
        try:
            if time.time() - os.stat(folder).st_mtime > _STALE_AFTER_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


class _Diagnostics:
    """The DICOM libraries' process-wide diagnostics, off while any read (or SEG write) runs: ITK's warning display,
    whose warnings name the numbered temporary files; pydicom's value validation, whose warnings quote header
    values (a date that is not one); and pydicom's and highdicom's log records. Concurrent users count themselves
    in and out; the first one in keeps the settings the last one out restores (meanwhile other threads'
    diagnostics from these libraries are off too). Python's warning filters are left alone: another thread's
    ``warnings.catch_warnings`` replaces the whole list when it leaves, which would drop or strand a filter put
    there. highdicom's one warning that quotes a value (a one-part patient name) is avoided where the SEG is built
    (:mod:`mixdemo.dicomseg`)."""

    _LOGGERS = ("pydicom", "highdicom")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._itk_was_on = True
        self._validation: tuple[int, int] = (1, 1)
        self._propagated: dict[str, bool] = {}

    @contextmanager
    def off(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._switch_off()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._switch_back()

    def _switch_off(self) -> None:
        import SimpleITK as sitk
        from pydicom import config

        self._itk_was_on = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        self._validation = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
        config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
        for name in self._LOGGERS:
            logger = logging.getLogger(name)
            self._propagated[name] = logger.propagate
            logger.propagate = False  # and a NullHandler, so that logging's last resort prints nothing either
            logger.addHandler(_NULL_HANDLER)

    def _switch_back(self) -> None:
        import SimpleITK as sitk
        from pydicom import config

        sitk.ProcessObject.SetGlobalWarningDisplay(self._itk_was_on)
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = self._validation
        for name in self._LOGGERS:
            logger = logging.getLogger(name)
            logger.propagate = self._propagated.get(name, True)
            logger.removeHandler(_NULL_HANDLER)


_NULL_HANDLER = logging.NullHandler()
_diagnostics = _Diagnostics()


def diagnostics_off() -> contextlib.AbstractContextManager[None]:
    """A context in which the DICOM libraries print and log nothing (:class:`_Diagnostics`); safe across threads."""
    return _diagnostics.off()


# ----------------------------------------------------------------------------------------- gathering the files
def _unpack_zip(path: str | os.PathLike, flat: Path) -> None:
    """Write each regular member of the archive to ``flat/<n>``, within the file-count and size limits (the count
    is read from the archive's end record before its directory is parsed)."""
    _check_zip_directory(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            _check_count(len(members), "archive")
            if any(m.flag_bits & 0x1 for m in members):
                raise mio.UnreadableFileError("The archive is password-protected; upload an unencrypted .zip.")
            total = 0
            for n, member in enumerate(members):
                total = _copy_member(archive, member, flat / f"{n:05d}", total)
    except mio.ScanError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, ValueError):
        raise mio.CorruptFileError(
            "The .zip archive is damaged, or not a zip archive, or uses an unsupported compression."
        ) from None


def _copy_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, total: int) -> int:
    """Inflate one member into ``target``; the running total of bytes unpacked is checked and returned."""
    with archive.open(member) as src, open(target, "wb") as dst:
        while True:
            try:
                chunk = src.read(_CHUNK)
            except (zlib.error, lzma.LZMAError, OSError, EOFError):
                raise mio.CorruptFileError("A file in the .zip archive is damaged: its compressed data cannot be "
                                           "read.") from None
            if not chunk:
                return total
            total += len(chunk)
            if total > mio.MAX_FILE_BYTES:
                raise mio.TooLargeError(f"The archive's files are larger than the {mio.MAX_FILE_BYTES / (1 << 30):g} "
                                        "GiB limit once unpacked.")
            dst.write(chunk)


def _check_zip_directory(path: str | os.PathLike) -> None:
    """Refuse an archive whose end record declares more entries than :data:`MAX_FILES`, or a larger directory
    than they need, before ``zipfile`` parses that directory into memory (400,000 empty entries took 340 MB)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - (1 << 16) - 22))
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        raise mio.CorruptFileError("The .zip archive is damaged, or not a zip archive, or uses an unsupported "
                                   "compression.")
    entries, directory_bytes = struct.unpack("<HI", tail[at + 10:at + 16])
    if entries > MAX_FILES or directory_bytes > _MAX_DIRECTORY_BYTES:  # zip64 (0xFFFF entries) included
        raise mio.TooLargeError(_TOO_MANY.format(where="archive", limit=MAX_FILES))


def _link_folder(folder: Path, flat: Path) -> None:
    """Link each regular file under ``folder`` (recursively, following links, each folder once) into
    ``flat/<n>``, within the file-count limit."""
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree
            dirs.clear()
            continue
        seen.add(real)
        for name in names:
            candidate = os.path.join(root, name)
            if os.path.isfile(candidate):
                files.append(candidate)
                _check_count(len(files), "folder")
    for n, candidate in enumerate(sorted(files)):
        _place(Path(os.path.abspath(candidate)), flat / f"{n:05d}")


def _place(source: Path, target: Path) -> None:
    """Link ``source`` in as ``target``, or copy it where links are not allowed (Windows without the right)."""
    try:
        os.symlink(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _check_count(n: int, where: str) -> None:
    if n > MAX_FILES:
        raise mio.TooLargeError(_TOO_MANY.format(where=where, limit=MAX_FILES))


# ----------------------------------------------------------------------------------------- the series
def _series_slices(flat: str, series: int | None = None) -> list[_Slice]:
    """The series' images (``series``: the one of that number, see :func:`read_series`) in order along the slice
    normal, checked to form one regular 3D volume."""
    import SimpleITK as sitk

    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(flat)
        files = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(flat, uid) for uid in uids]
    except RuntimeError:  # GDCM gives up on some malformed sequences
        raise mio.CorruptFileError("A DICOM file of the input could not be read: it may be damaged.") from None
    if not uids:
        raise _unlisted_image_error(flat) or mio.NotNiftiError(_nothing_found(flat))
    numbered = sorted(zip(uids, files), key=lambda pair: (-len(pair[1]), pair[0]))  # most files first, then by UID
    if len(numbered) > 1 and series is not None:
        _check_told_apart(series, [names for _, names in numbered])
    if series is None and len(numbered) > 1:
        raise mio.ShapeError(_several_series([names for _, names in numbered]))
    if series is not None and not 1 <= series <= len(numbered):
        raise mio.ShapeError(f"Series {series} was asked for, but the input holds {len(numbered)} DICOM series"
                             f"{'' if len(numbered) == 1 else ' (numbered 1 to ' + str(len(numbered)) + ')'}.")
    uid, names = numbered[0 if series is None else series - 1]
    _check_none_left_out(flat, uid, names, among_several=len(numbered) > 1)
    per_file = [_file_slices(f) for f in names]
    if len({group[0].frame >= 0 for group in per_file}) > 1:
        raise mio.ShapeError("The series mixes multi-frame (enhanced) and single-frame files; one 3D volume is "
                             "expected.")
    slices = [s for group in per_file for s in group]
    _check_modality(s.modality for s in slices)
    if len(slices) == 1:
        raise mio.ShapeError("The input is a single 2D DICOM image (one slice); a 3D volume is expected: upload a "
                             ".zip of all the series' files (or give the client their folder).")
    _check_no_copies(slices)
    _check_alike(slices)
    _check_stack_complete(slices)
    return _ordered(slices)


def _check_no_copies(slices: Sequence[_Slice]) -> None:
    """Refuse an input holding an image (or an enhanced file's frame) more than once, as an export zipped with a copy
    of its files does: said so, not taken for repeated acquisitions at one position. (An instance UID shared at
    different positions is an exporter's fault that the geometry still reads.)"""
    seen = [(s.instance, s.frame, *np.round(s.origin, 3)) for s in slices if s.instance]
    if len(set(seen)) < len(seen):
        raise mio.ShapeError("The input holds the same image more than once (the same DICOM instance: a copy of the "
                             "series' files beside them?); give each image once.")


def _check_stack_complete(slices: Sequence[_Slice]) -> None:
    """Frames numbered in their stack (In-Stack Position Number, 1 to n) must all be there: a file missing from a
    series split over several files takes a block off one end, which the spacing checks cannot see."""
    numbers = sorted(s.in_stack for s in slices)
    if slices[0].frame >= 0 and numbers[0] > 0 and numbers != list(range(1, len(numbers) + 1)):
        raise mio.GeometryError(f"The series' frames are numbered {numbers[0]} to {numbers[-1]} in their stack but "
                                f"{len(numbers)} are here: some are missing (a file of the series left out?); the "
                                "complete series is expected.")


def _check_none_left_out(flat: str, series_uid: str, listed: Sequence[str], *, among_several: bool = False) -> None:
    """A CorruptFileError if a DICOM file GDCM left out of the series cannot be parsed, or is an image of this
    series (or one cut short before its series UID): GDCM skips files it cannot parse, and a damaged first or
    last slice left no gap to notice. Other objects of an export (a DICOMDIR, a report) are left out rightly.
    ``among_several``: the series was picked from several, so a file cut before its UID may be another's (said)."""
    import pydicom

    kept = {os.path.basename(f) for f in listed}
    for name in sorted(set(os.listdir(flat)) - kept):
        path = os.path.join(flat, name)
        if not has_dicom_marker(path):
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            is_image = "Image Storage" in header.file_meta.MediaStorageSOPClassUID.name
        except Exception:  # noqa: BLE001 - untrusted input: any parse failure means a damaged file
            raise mio.CorruptFileError("A DICOM file of the input could not be read: it may be damaged.") from None
        if is_image and among_several and "SeriesInstanceUID" not in header:
            raise mio.CorruptFileError("An image of the input is damaged, cut short before it says which series it "
                                       "belongs to (this one or another): export the series you want on its own.")
        if is_image and header.get("SeriesInstanceUID", series_uid) == series_uid:  # ours, or cut before its UID
            raise mio.CorruptFileError("An image of the series could not be read: it may be damaged.")


def _is_nifti(path: str) -> bool:
    """Whether the file holds a NIfTI-1 or NIfTI-2 header, gzipped or not (by its magic; members are renamed)."""
    import gzip
    import zlib

    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
        if head[:2] == mio._GZIP_MAGIC:
            with gzip.open(path, "rb") as fh:
                head = fh.read(352)
    except (OSError, EOFError, zlib.error):  # a damaged gzip is no NIfTI we can name
        return False
    return head[344:348] in (mio._N1_SINGLE, mio._N1_PAIR) or head[4:12] in (mio._N2_SINGLE, mio._N2_PAIR)


def _nothing_found(flat: str) -> str:
    """Why no DICOM image was found, with advice for an archive inside the archive or a zipped NIfTI file."""
    for name in os.listdir(flat):
        if _is_nifti(os.path.join(flat, name)):
            return ("The input holds a NIfTI file and no DICOM images: unzip it and give the .nii/.nii.gz file "
                    "itself.")
        try:
            with open(os.path.join(flat, name), "rb") as fh:
                if fh.read(4) == b"PK\x03\x04":
                    return ("The input holds another archive (.zip) and no DICOM images: unzip the inner archive and "
                            "give its series.")
        except OSError:
            continue
    return "No DICOM images were found: a .zip (or folder) of one DICOM series, or a .nii/.nii.gz file, is expected."


def _unlisted_image_error(flat: str) -> mio.ScanError | None:
    """Why GDCM listed no series although the input holds a file with the DICOM marker: an image whose transfer
    syntax is one GDCM cannot decode (JPEG XL, say: named), or the file is damaged. None without such a file."""
    import pydicom
    from pydicom import uid

    decodable = {*uid.UncompressedTransferSyntaxes, *uid.JPEGTransferSyntaxes, *uid.JPEGLSTransferSyntaxes,
                 *uid.JPEG2000TransferSyntaxes, *uid.RLETransferSyntaxes}
    for name in sorted(os.listdir(flat)):
        path = os.path.join(flat, name)
        if not has_dicom_marker(path):  # an OSError is the caller's: access lacking, not damage
            continue
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            syntax, is_image = meta.TransferSyntaxUID, "Image Storage" in meta.MediaStorageSOPClassUID.name
        except Exception:  # noqa: BLE001 - untrusted input: any parse failure means a damaged file
            return mio.CorruptFileError("A DICOM file of the input could not be read: it may be damaged.")
        if is_image and syntax in decodable:
            return mio.CorruptFileError("A DICOM image of the input could not be read: it may be damaged.")
        if is_image and re.fullmatch(r"[0-9.]{1,64}", syntax):  # a UID, never other text
            return mio.NotNiftiError(f"The input's DICOM images are stored in a transfer syntax (compression: "
                                     f"{syntax.name}) this reader cannot decode; export the series uncompressed (or "
                                     "as JPEG 2000 or JPEG-LS lossless).")
    return None


def _several_series(files: Sequence[Sequence[str]]) -> str:
    """A refusal that tells the series apart by their geometry alone (no description or identifier), numbered in
    the order given (``--series N`` of the client picks one); series that read alike are said to."""
    described = _series_descriptions(files)
    alike = [n for n, d in enumerate(described, start=1) if described.count(d) > 1]
    listed = "; ".join(f"{n}: {d}" for n, d in enumerate(described, start=1))
    told = (f"The input holds {len(files)} DICOM series ({listed}); one series, the T1 scan, is expected: give only "
            "its files (a .zip of them, or their folder)")
    pick = "by its number (the app's DICOM series field, the command-line client's --series)"
    if not alike:
        return f"{told}, or pick it {pick}."
    others = "" if len(alike) == len(described) else f", or pick one of the others {pick}"
    return (f"{told}{others}. Series {', '.join(map(str, alike))} read alike (the same geometry, as a scan before "
            "and after contrast), so a number cannot tell them apart: export the one you want on its own.")


def _check_told_apart(series: int, files: Sequence[Sequence[str]]) -> None:
    """Refuse to pick a series that reads as another does: its number would be a guess."""
    described = _series_descriptions(files)
    if 1 <= series <= len(described) and described.count(described[series - 1]) > 1:
        raise mio.ShapeError(f"Series {series} of the input reads as another does ({described[series - 1]}: the same "
                             "geometry, as a scan before and after contrast), so its number cannot tell which is "
                             "meant: export the one you want on its own.")


def _series_descriptions(files: Sequence[Sequence[str]]) -> list[str]:
    """Each series by its geometry alone: plane, number of images (or frames), matrix and pixel spacing; its
    modality where it is not MR; "in several orientations" where its first, middle and last images differ."""
    described = []
    for names in files:
        try:
            group = _file_slices(names[0])
            first, view = group[0], _view(group[0].direction[:, 2])
            sampled = [first, *(_file_slices(names[i])[0] for i in sorted({len(names) // 2, len(names) - 1} - {0}))]
            if first.frame < 0 and _several_orientations(sampled):
                view = "in several orientations (a scout or localizer)"
            code = _modality_code(s.modality for s in sampled)
            kind = "" if code is None else " non-MR" if code == "other" else f" {code}"
            article = "an" if view[0] in "aeiou" else "a"
            what = (f"{len(names)}{kind} image{'s' * (len(names) > 1)} {view}" if view.startswith("in ") else
                    f"{len(names)} {view}{kind} image{'s' * (len(names) > 1)}" if first.frame < 0 else
                    f"{article} {view}{kind} multi-frame file of {len(group)} frames" if len(names) == 1 else
                    f"{len(names)} {view}{kind} multi-frame files")
            described.append(f"{what} of {first.size[0]}×{first.size[1]} at "
                             f"{first.spacing[0]:.3g}×{first.spacing[1]:.3g} mm")
        except (ValueError, RuntimeError):
            code = _file_modality(names[0])
            described.append(f"{len(names)}{'' if code is None else ' ' + code} file{'s' * (len(names) > 1)}")
    return described


def _file_modality(path: str) -> str | None:
    """A file's Modality code where it is not MR (as :func:`_modality_code`), None otherwise or unreadable."""
    try:
        return _modality_code([_text(_image_information(path), _MODALITY).upper()])
    except mio.ScanError:
        return None


def _view(normal: np.ndarray) -> str:
    """The plane a slice normal (LPS) belongs to: sagittal, coronal, axial, or oblique."""
    axis = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[axis] if abs(normal[axis]) > 0.9 else "oblique"


def _file_slices(path: str) -> list[_Slice]:
    """A file's images: its frames for a multi-frame (enhanced) file, however many it holds (one, or part of a
    series split over several files), else the one image; each with its geometry, checked. A file that cannot be
    used and is not MR is refused for its modality (a radiograph lacks a 3D geometry, a dose grid is a legacy
    multi-frame file, an ultrasound clip is colour: what it is says more than what it lacks)."""
    reader = _image_information(path)
    try:
        return _frames(path) if _is_multi_frame_file(reader) else [_slice_info(path, reader)]
    except mio.ScanError:
        _check_modality([_text(reader, _MODALITY).upper()])
        raise


def _slice_info(path: str, reader) -> _Slice:  # noqa: ANN001 - a SimpleITK ImageFileReader holding its header
    """One single-frame image's geometry from its own tags, checked; a :class:`mixdemo.io.ScanError` if unusable."""
    if reader.GetNumberOfComponents() != 1:
        raise mio.DataTypeError("The series stores colour (RGB) values; a greyscale intensity volume is expected.")
    if _text(reader, _PHOTOMETRIC).upper() == "MONOCHROME1":  # GDCM would invert it, pydicom would not
        raise mio.DataTypeError(_INVERTED)
    position, orientation, pixel_spacing = (_numbers(reader, t) for t in (_POSITION, _ORIENTATION, _PIXEL_SPACING))
    if len(position) != 3 or len(orientation) != 6 or len(pixel_spacing) != 2 or min(pixel_spacing) <= 0:
        raise mio.GeometryError(_NO_GEOMETRY)
    return _Slice(
        path=path,
        size=(int(reader.GetSize()[0]), int(reader.GetSize()[1])),
        spacing=(pixel_spacing[1], pixel_spacing[0]),  # the tag lists the row spacing (between rows) first
        origin=np.array(position),
        direction=_direction(orientation),
        stack=(_integer_key(_text(reader, _TEMPORAL_POSITION)), _integer_key(_text(reader, _ECHO))),
        modality=_text(reader, _MODALITY).upper(),
        instance=_text(reader, _INSTANCE).strip("\x00 "),
    )


def _image_information(path: str):  # noqa: ANN202 - a SimpleITK ImageFileReader
    """A reader holding ``path``'s header (no pixels read); a CorruptFileError if GDCM cannot parse it."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise mio.CorruptFileError("A file of the series could not be read: it may be damaged.") from None
    return reader


_MULTI_FRAME_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4",  # MR
    "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2",  # CT
    "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1",  # PET
})
"""SOP classes of the enhanced and legacy-converted enhanced images: multi-frame even when a file holds one frame."""


def _is_multi_frame_file(reader) -> bool:  # noqa: ANN001 - a SimpleITK ImageFileReader
    """A file of several frames, or of a multi-frame SOP class (an enhanced export may write one frame per file,
    its geometry in functional groups only). A classic image is single-frame even if it states one frame (some
    exporters and anonymisers write Number of Frames 1 into every image)."""
    frames = _numbers(reader, _FRAMES)
    return bool(frames and frames[0] > 1) or (reader.GetDimension() > 2 and reader.GetSize()[2] > 1) or \
        _text(reader, _SOP_CLASS).strip("\x00 ") in _MULTI_FRAME_CLASSES


def _frames(path: str) -> list[_Slice]:
    """A multi-frame (enhanced) file's frames, each with its own geometry and rescale from the functional groups
    (per-frame first, then shared), checked as single-frame images are. A file whose frames carry no geometry of
    their own (a legacy multi-frame file) is refused: SimpleITK would stack them at 1 mm without a word."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        n = int(header.NumberOfFrames)
        per_frame = header.get("PerFrameFunctionalGroupsSequence")
        shared = (header.get("SharedFunctionalGroupsSequence") or [None])[0]
        modality = str(header.get("Modality", "") or "").strip().upper()
        instance = str(header.get("SOPInstanceUID", "") or "").strip()
        size = (int(header.Columns), int(header.Rows))
        if int(header.get("SamplesPerPixel", 1)) != 1:
            raise mio.DataTypeError("The series stores colour (RGB) values; a greyscale intensity volume is expected.")
        if str(header.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
            raise mio.DataTypeError(_INVERTED)
        if per_frame is None:
            raise mio.ShapeError("The input is a multi-frame DICOM file whose frames carry no position of their own "
                                 "(a legacy export): export the series as single-frame images, one file per slice, "
                                 "or convert it to NIfTI (e.g. with dcm2niix).")
        if len(per_frame) != n:
            raise mio.CorruptFileError(f"The multi-frame DICOM file describes {len(per_frame)} frames but holds {n}: "
                                       "it may be damaged.")
        top_rescale = (header.get("RescaleSlope"), header.get("RescaleIntercept"))  # outside the standard's place
        return [_frame_info(path, f, per_frame[f], shared, size, top_rescale)._replace(modality=modality, instance=instance)
                for f in range(n)]
    except mio.ScanError:
        raise
    except Exception:  # noqa: BLE001 - untrusted input: a header pydicom cannot follow is a damaged file
        raise mio.CorruptFileError("The multi-frame DICOM file's header could not be read: it may be damaged.") from None


def _frame_info(path: str, f: int, own, shared, size: tuple[int, int],  # noqa: ANN001 - pydicom Datasets
                top_rescale: tuple = (None, None)) -> _Slice:
    """Frame ``f``'s geometry, rescale and stack keys from its functional groups (``own``, then ``shared``; the
    rescale last from the file's top level, as GDCM takes it), all finite or a ScanError."""
    def value(sequence: str, keyword: str):  # noqa: ANN202
        for group in (own, shared):
            if group is not None and sequence in group and len(group[sequence].value) and \
                    keyword in group[sequence].value[0]:
                return group[sequence].value[0][keyword].value
        return None

    position = value("PlanePositionSequence", "ImagePositionPatient")
    orientation = value("PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = value("PixelMeasuresSequence", "PixelSpacing")
    geometry = [float(v) for v in [*(position or []), *(orientation or []), *(spacing or [])]]
    if position is None or orientation is None or spacing is None or len(position) != 3 or len(orientation) != 6 \
            or len(spacing) != 2 or not np.isfinite(geometry).all() or min(float(v) for v in spacing) <= 0:
        raise mio.GeometryError(_NO_GEOMETRY)
    slope, intercept = value("PixelValueTransformationSequence", "RescaleSlope"), \
        value("PixelValueTransformationSequence", "RescaleIntercept")
    if slope is None and intercept is None:
        slope, intercept = top_rescale
    slope, intercept = 1.0 if slope is None else float(slope), 0.0 if intercept is None else float(intercept)
    if not (np.isfinite([slope, intercept]).all() and slope != 0):
        raise mio.ValueRangeError("A frame's rescale slope or intercept is invalid (zero, or not a number).")
    keys = (value("FrameContentSequence", "TemporalPositionIndex"), value("MREchoSequence", "EffectiveEchoTime"),
            value("FrameContentSequence", "StackID"))
    in_stack = value("FrameContentSequence", "InStackPositionNumber")
    return _Slice(
        path=path,
        size=size,
        spacing=(float(spacing[1]), float(spacing[0])),  # the row spacing (between rows) first, as in the tag
        origin=np.array([float(v) for v in position]),
        direction=_direction([float(v) for v in orientation]),
        stack=tuple("" if k is None else str(k) for k in keys),
        frame=f,
        rescale=(slope, intercept),
        in_stack=int(in_stack) if isinstance(in_stack, int) and in_stack > 0 else 0,
    )


def _integer_key(text: str) -> str:
    """An integer string tag's key (Echo Numbers, Temporal Position Identifier): "01" and "1" are one echo; any
    other text (several values, a fraction) is its own key."""
    return str(int(text)) if re.fullmatch(r"[+-]?[0-9]+", text.strip()) else text


def _numbers(reader, tag: str) -> list[float]:  # noqa: ANN001 - a SimpleITK ImageFileReader
    """A numeric tag's values (empty when absent or not numbers)."""
    text = _text(reader, tag)
    try:
        values = [float(v) for v in text.split("\\") if v.strip()]
    except ValueError:
        return []
    return values if all(np.isfinite(values)) else []


def _text(reader, tag: str) -> str:  # noqa: ANN001 - a SimpleITK ImageFileReader
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _direction(orientation: Sequence[float]) -> np.ndarray:
    """Orthonormal LPS axes (row, column, normal) from Image Orientation; a GeometryError if it is not close to a
    pair of orthogonal unit vectors (small rounding by an exporter is corrected, not refused)."""
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    if (abs(np.linalg.norm(row) - 1) > _ORIENTATION_TOL or abs(np.linalg.norm(col) - 1) > _ORIENTATION_TOL
            or abs(float(row @ col)) > _ORIENTATION_TOL):
        raise mio.GeometryError("The images' orientation (Image Orientation) is not a pair of perpendicular unit "
                                "directions: the file may be damaged.")
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return np.column_stack([row, col, np.cross(row, col)])


def _modality_code(codes: Iterable[str]) -> str | None:
    """The images' Modality if it is not MR (nor unstated, nor OT), else None: a defined term of the standard
    (:data:`_DEFINED_MODALITIES`) as it is, anything else as ``"other"`` (the field's text is never repeated: a
    misused field could hold a name)."""
    other = sorted(set(codes) - _MR_OR_UNSTATED)
    if not other:
        return None
    return other[0] if other[0] in _DEFINED_MODALITIES else "other"


def _check_modality(codes: Iterable[str]) -> None:
    """A ModalityError for images whose Modality codes say they are not MR (a CT or PET series, a dose grid, a
    DICOM SEG): the networks were trained on T1-weighted MR, and their answer on another modality means nothing."""
    code = _modality_code(codes)
    if code is not None:
        what = _MODALITY_NAMES.get(code, "not an MR scan")
        said = "its DICOM Modality is not MR" if code == "other" else f"DICOM Modality {code}"
        raise mio.ModalityError(f"The series is {what} ({said}); an MR scan (the T1-weighted series) is expected: "
                                "the networks were trained on MR only.")


def _several_orientations(slices: Sequence[_Slice]) -> bool:
    """Whether the images' orientations differ (a scout or localizer: three planes, or radial slices)."""
    return any(np.abs(s.direction - slices[0].direction).max() > _SAME_DIRECTION_TOL for s in slices)


def _check_alike(slices: Sequence[_Slice]) -> None:
    """Every image the same size, orientation, pixel spacing, time point and echo."""
    first = slices[0]
    if any(s.size != first.size for s in slices):
        raise mio.ShapeError("The series' images differ in size; one 3D volume is expected.")
    if _several_orientations(slices):
        raise mio.GeometryError("The series' images differ in orientation (a scout or localizer?); one 3D volume is "
                                "expected.")
    if any(not np.allclose(s.spacing, first.spacing, rtol=_SAME_TOL) for s in slices):
        raise mio.GeometryError("The series' images differ in pixel spacing; one 3D volume is expected.")
    stacks = {s.stack for s in slices}
    if len(stacks) > 1:
        raise mio.ShapeError(f"The series holds {len(stacks)} time points, echoes or stacks; one 3D volume is "
                             "expected: export one of them as its own series.")


def _ordered(slices: list[_Slice]) -> list[_Slice]:
    """The images sorted along the normal, checked to be evenly spaced and on one line."""
    normal = slices[0].direction[:, 2]
    slices = sorted(slices, key=lambda s: float(s.origin @ normal))
    gaps = np.diff([float(s.origin @ normal) for s in slices])
    if not np.isfinite(gaps).all():
        raise mio.GeometryError(_NO_GEOMETRY)
    step = float(np.median(gaps))
    if gaps.min() < _SAME_POSITION_MM:
        raise mio.ShapeError(
            "Several images of the series share a slice position (repeated acquisitions, echoes or time points?); "
            "one 3D volume is expected."
        )
    tolerance = _SPACING_RTOL * step + min(_ROUNDING_MM, _ROUNDING_SHARE * step)
    if np.abs(gaps - step).max() > tolerance:
        raise mio.GeometryError("The series' slices are unevenly spaced, or some are missing or damaged; a "
                                "complete, evenly spaced 3D series is expected.")
    origins = np.array([s.origin for s in slices])
    stride = (origins[-1] - origins[0]) / (len(slices) - 1)
    drift = origins - origins[0] - np.arange(len(slices))[:, None] * stride
    if np.linalg.norm(drift, axis=1).max() > tolerance:
        raise mio.GeometryError("The series' slice positions do not lie on one line (slices shifted in-plane?); a "
                                "regular 3D series is expected.")
    return slices


def _affine(slices: Sequence[_Slice]) -> np.ndarray:
    """RAS+ voxel-to-mm affine: along the rows, down the columns, then the step from slice to slice (along the
    normal, or off it for a tilted stack)."""
    first = slices[0]
    stride = (slices[-1].origin - first.origin) / (len(slices) - 1)
    lps = np.eye(4)
    lps[:3, 0] = first.direction[:, 0] * first.spacing[0]
    lps[:3, 1] = first.direction[:, 1] * first.spacing[1]
    lps[:3, 2] = stride
    lps[:3, 3] = first.origin
    return _LPS_TO_RAS @ lps


def _untilted(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A tilted stack (gantry tilt: slices step off their normal) resampled onto slices stacked along the normal,
    the same size and spacing along it, as dcm2niix does: a NIfTI's qform cannot hold the sheared grid, and
    ITK-based viewers would misplace a segmentation written on it. Other stacks are returned as they are."""
    from scipy.ndimage import affine_transform

    in_plane = affine[:3, :2]
    normal = np.cross(in_plane[:, 0], in_plane[:, 1])
    normal /= np.linalg.norm(normal)
    stride = affine[:3, 2]
    along = float(stride @ normal) * normal
    if np.linalg.norm(stride - along) <= _TILT_ATOL_MM:
        return data, affine
    straight = affine.copy()
    straight[:3, 2] = along
    to_source = np.linalg.inv(affine) @ straight  # a voxel of the straight grid -> the tilted one's
    out = affine_transform(data, to_source[:3, :3], offset=to_source[:3, 3], order=1, mode="constant", cval=0.0)
    return out.astype(np.float32, copy=False), straight


def _voxels(slices: Sequence[_Slice], shape: tuple[int, int, int]) -> np.ndarray:
    """The series' voxels as float32 (i, j, k), read one file at a time into one array."""
    import SimpleITK as sitk

    if slices[0].frame >= 0:
        return _frame_voxels(slices, shape)
    out = np.empty(shape, dtype=np.float32)
    for k, s in enumerate(slices):
        try:
            image = sitk.ReadImage(s.path)
        except RuntimeError:
            raise mio.CorruptFileError("A file of the series could not be read: it may be damaged.") from None
        if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
            raise mio.DataTypeError("The series stores complex numbers; real-valued intensities are expected.")
        plane = sitk.GetArrayViewFromImage(image).reshape(shape[1], shape[0])  # (rows, columns)
        with np.errstate(all="ignore"):
            out[:, :, k] = plane.T
    return out


def _frame_voxels(slices: Sequence[_Slice], shape: tuple[int, int, int]) -> np.ndarray:
    """Multi-frame files' voxels, frames in ``slices``' order, each with its own rescale, converted frame by frame
    (no float64 copy of a whole file), one file decoded at a time."""
    out = np.empty(shape, dtype=np.float32)
    by_file: dict[str, list[tuple[int, _Slice]]] = {}
    for k, s in enumerate(slices):
        by_file.setdefault(s.path, []).append((k, s))
    for path, members in by_file.items():
        stored, undo = _stored_frames(path, [s for _, s in members], shape)
        for k, s in members:
            frame = (stored[s.frame].astype(np.float64) - undo[1]) / undo[0]
            with np.errstate(all="ignore"):
                out[:, :, k] = (frame * s.rescale[0] + s.rescale[1]).T
    return out


def _stored_frames(path: str, frames: Sequence[_Slice], shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple]:
    """One multi-frame file's stored values, (frames, rows, columns), and the rescale to undo on them: they come
    from pydicom, else from GDCM, which applies the first frame's rescale to every frame."""
    import SimpleITK as sitk

    n = len(frames)
    undo = (1.0, 0.0)
    try:
        import pydicom

        stored = pydicom.dcmread(path).pixel_array
    except Exception:  # noqa: BLE001 - compressed without a pydicom decoder, or unreadable: GDCM decodes
        try:
            image = sitk.ReadImage(path)
        except RuntimeError:
            raise mio.CorruptFileError("A file of the series could not be read: it may be damaged.") from None
        stored = sitk.GetArrayFromImage(image)  # a copy: a view dies with the image when this function returns
        undo = min(frames, key=lambda s: s.frame).rescale
    if stored.size != n * shape[0] * shape[1]:
        raise mio.CorruptFileError("The multi-frame DICOM file holds fewer pixels than its frames need: it may be "
                                   "damaged.")
    return stored.reshape(n, shape[1], shape[0]), undo


# ----------------------------------------------------------------------------------------- writing (examples, tests)
def write_series(volume: np.ndarray, affine: np.ndarray, folder: str | os.PathLike, *,
                 patient_name: str = "PHANTOM^MNI152", max_value: int = 4095) -> list[Path]:
    """Write a 3D volume as an MR DICOM series (pydicom), one classic image per slice along axis 2, into ``folder``.

    Intensities are scaled to 0..``max_value`` and stored as int16 (no rescale tags), so a series read back
    matches ``volume`` up to that scale and rounding. The geometry tags carry ``affine`` (RAS+, converted to
    DICOM's LPS; its third column is the step between slices). New UIDs are made each call. Meant for the
    examples and the tests: it writes a phantom's name, never a patient's.

    Returns:
        The files written, in slice order.
    """
    from pydicom.uid import generate_uid

    data = np.asarray(volume, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError("write_series takes a 3D volume.")
    peak = float(data.max()) if data.size and data.max() > 0 else 1.0
    stored = np.clip(np.rint(data / peak * max_value), -32768, 32767).astype(np.int16)
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :2], axis=0)
    orientation = [*(lps[:3, 0] / spacing[0]), *(lps[:3, 1] / spacing[1])]
    uids = {"study": generate_uid(), "series": generate_uid(), "frame_of_reference": generate_uid()}
    thickness = float(np.linalg.norm(lps[:3, 2]))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(stored.shape[2]):
        position = (lps @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
        dataset = _mr_image(stored[:, :, k], position, orientation, spacing, k, uids, patient_name)
        dataset.SliceThickness = f"{thickness:.6f}"[:16]
        path = out / f"slice{k:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _mr_image(plane: np.ndarray, position: np.ndarray, orientation: Sequence[float], spacing: np.ndarray, k: int,
              uids: dict[str, str], patient_name: str):  # noqa: ANN202 - a pydicom Dataset
    """One classic MR image (explicit VR little endian) of ``plane`` (voxel axes i, j)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    def ds_values(values: Sequence[float]) -> list[str]:
        return [f"{float(v):.6f}"[:16] for v in values]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    image = Dataset()
    image.file_meta = meta
    image.SOPClassUID, image.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    image.Modality, image.PatientName, image.PatientID = "MR", patient_name, "PHANTOM"
    image.PatientBirthDate = image.PatientSex = image.ReferringPhysicianName = image.AccessionNumber = ""
    image.StudyDate, image.StudyTime, image.StudyID = "20260101", "120000", "1"
    image.StudyInstanceUID, image.SeriesInstanceUID = uids["study"], uids["series"]
    image.FrameOfReferenceUID, image.SeriesNumber = uids["frame_of_reference"], 1
    image.InstanceNumber = k + 1
    image.ImagePositionPatient = ds_values(position)
    image.ImageOrientationPatient = ds_values(orientation)
    image.PixelSpacing = ds_values([spacing[1], spacing[0]])  # between rows, then between columns
    rows = np.ascontiguousarray(plane.T)  # (rows, columns)
    image.Rows, image.Columns = rows.shape
    image.SamplesPerPixel, image.PhotometricInterpretation = 1, "MONOCHROME2"
    image.BitsAllocated, image.BitsStored, image.HighBit, image.PixelRepresentation = 16, 16, 15, 1
    image.PixelData = rows.astype("<i2").tobytes()
    return image


def zip_series(files: Sequence[Path], archive: str | os.PathLike) -> Path:
    """Zip a series' files (flat, under their own names) into ``archive``; returns its path."""
    archive = Path(archive)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, arcname=Path(f).name)
    return archive
