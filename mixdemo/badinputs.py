"""A generated corpus of hostile and malformed inputs, for reliability tests.

Every entry is built by code (nothing is committed): broken gzip streams, other formats renamed
``.nii``, NIfTI files with impossible shapes, values, data types or geometry, names that try
``../`` or carry patient-like identifiers. :func:`nifti_corpus` targets the scan loader (and
everything that uses it: the CLI client, the app's upload), and includes :func:`dicom_corpus` (DICOM
archives and slices); :func:`proxy_corpus` targets the server endpoint ``segment_proxy`` (``.npy`` proxies).

Each entry is a :class:`BadInput`; ``write`` puts its bytes into a folder under a *safe* file
name (``stored_name``) while ``upload_name`` keeps the hostile name for transport-level tests.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["BadInput", "nifti_corpus", "dicom_corpus", "proxy_corpus", "valid_nifti_bytes", "gzip_bomb", "mark_encrypted",
           "damage_member", "PATIENT_LIKE_NAME"]

PATIENT_LIKE_NAME = "Doe_Jane_1970-01-01_MRN424242"
"""A distinctive, identifying-looking file stem: must never appear in messages or logs."""


@dataclass(frozen=True)
class BadInput:
    """One malformed input: a short id, its bytes, and the (possibly hostile) file name it travels under."""

    key: str
    data: bytes
    upload_name: str
    what: str

    @property
    def stored_name(self) -> str:
        """A safe local file name keeping the upload name's extension (so the loader sees it)."""
        name = self.upload_name.replace("\\", "/").rsplit("/", 1)[-1]
        for ext in (".nii.gz", ".NII.GZ", ".nii", ".npy", ".npz", ".gz", ".txt", ".png", ".dcm", ".zip"):
            if name.endswith(ext):
                return f"{self.key}{ext}"
        return self.key

    def write(self, folder: str | Path) -> Path:
        """Write the bytes into ``folder`` under :attr:`stored_name`; return the path."""
        path = Path(folder) / self.stored_name
        path.write_bytes(self.data)
        return path


# ------------------------------------------------------------------------------ building blocks
def _nifti_bytes(
    data: np.ndarray,
    *,
    affine: np.ndarray | None = None,
    nifti2: bool = False,
    dtype: np.dtype | None = None,
    edit: Callable[[nib.nifti1.Nifti1Header], None] | None = None,
) -> bytes:
    """Serialise ``data`` as a single-file NIfTI (header edits applied before writing)."""
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = klass(data, np.eye(4) if affine is None else affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    if edit is not None:
        edit(img.header)
    buf = io.BytesIO()
    file_map = klass.make_file_map({"image": buf, "header": buf})
    img.to_file_map(file_map)
    return buf.getvalue()


def _phantom(shape: tuple[int, ...] = (16, 16, 16), seed: int = 0) -> np.ndarray:
    """A small non-constant float32 volume."""
    return np.random.default_rng(seed).uniform(0, 100, shape).astype(np.float32)


def valid_nifti_bytes(shape: tuple[int, int, int] = (16, 16, 16), seed: int = 0) -> bytes:
    """A small, valid, uncompressed NIfTI-1 (the base for mutations and fuzzing)."""
    return _nifti_bytes(_phantom(shape, seed))


def _patch_header(raw: bytes, offset: int, fmt: str, *values: float) -> bytes:
    """Overwrite a NIfTI-1 header field in raw bytes (little-endian)."""
    packed = struct.pack("<" + fmt, *values)
    return raw[:offset] + packed + raw[offset + len(packed):]


def _gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=1)


def _png_bytes() -> bytes:
    """A real 16×16 PNG (Pillow when present, else a hand-made minimal PNG)."""
    try:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(buf, format="PNG")
        return buf.getvalue()
    except ImportError:  # pragma: no cover - pillow ships with gradio
        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        rows = b"".join(b"\x00" + bytes(range(16)) for _ in range(16))
        ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _dicom_bytes() -> bytes:
    """A DICOM-like file: 128-byte preamble, ``DICM``, a few explicit-VR elements (with a patient name)."""

    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b" "
        return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value

    body = element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1")
    body += element(0x0010, 0x0010, b"PN", PATIENT_LIKE_NAME.encode())
    body += element(0x0008, 0x0060, b"CS", b"MR")
    return b"\x00" * 128 + b"DICM" + body + bytes(range(256)) * 4


def _dicom_slices(n: int, shape: tuple[int, int] = (16, 16)) -> list[tuple[str, bytes]]:
    """``n`` real DICOM slices of a small series (:func:`mixdemo.dicom.write_series`), named ``IM<k>``, with the
    patient-like name in their header: what a refusal must not repeat."""
    import tempfile

    from mixdemo.dicom import write_series

    with tempfile.TemporaryDirectory(prefix="mixdemo-badinputs-") as tmp:
        files = write_series(_phantom((*shape, n)), np.eye(4), tmp, patient_name=PATIENT_LIKE_NAME)
        return [(f"IM{k}", f.read_bytes()) for k, f in enumerate(files)]


def _zip(members: list[tuple[str, bytes]], encrypted_flag: bool = False) -> bytes:
    """A zip archive of ``members`` (names as given, ``../`` included); with ``encrypted_flag`` every member is
    marked password-protected, as an encrypted archive's are."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    return mark_encrypted(buf.getvalue()) if encrypted_flag else buf.getvalue()


def mark_encrypted(archive: bytes) -> bytes:
    """``archive`` with every member flagged password-protected (zipfile cannot write encryption; the flag bit, in
    each local header and central directory entry, is what an encrypted archive's readers see)."""
    out = bytearray(archive)
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := out.find(signature, start)) >= 0:
            out[start + flag_at] |= 0x1
            start += 4
    return bytes(out)


def _multi_frame(slices: list[tuple[str, bytes]]) -> bytes:
    """The slices as one multi-frame file (pydicom): the first image's header over every frame's pixels."""
    import pydicom

    images = [pydicom.dcmread(io.BytesIO(data)) for _, data in slices]
    volume = images[0]
    volume.NumberOfFrames = len(images)
    volume.PixelData = b"".join(i.PixelData for i in images)
    buf = io.BytesIO()
    volume.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _retagged(slices: list[tuple[str, bytes]], **tags: str) -> list[tuple[str, bytes]]:
    """The slices with header ``tags`` set (pydicom keywords), e.g. ``Modality="CT"``."""
    import pydicom

    retagged = []
    for name, data in slices:
        dataset = pydicom.dcmread(io.BytesIO(data))
        for keyword, value in tags.items():
            setattr(dataset, keyword, value)
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=True)
        retagged.append((name, out.getvalue()))
    return retagged


def damage_member(archive: bytes, index: int) -> bytes:
    """``archive`` with 50 bytes of one member's compressed data zeroed (its deflate stream then fails)."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        info = z.infolist()[index]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 20
    return archive[:start] + bytes(50) + archive[start + 50:]


def dicom_corpus() -> list[BadInput]:
    """Malformed DICOM inputs: archives that are not one readable 3D series, a single slice, hostile member names."""
    slices = _dicom_slices(12)
    series = _zip(slices)
    items = [
        ("zip_not_dicom", _zip([("notes.txt", b"not an image")]), "scan.zip", "a zip without DICOM"),
        ("zip_truncated", series[: len(series) // 2], "scan.zip", "a zip cut in half"),
        ("zip_damaged_member", damage_member(series, 4), "scan.zip", "a zip whose 5th member's deflate data are zeroed"),
        ("zip_empty", _zip([]), "scan.zip", "an empty zip"),
        ("zip_text", b"this is not an archive", "scan.zip", "text named .zip"),
        ("zip_encrypted", _zip(slices, encrypted_flag=True), "scan.zip", "a password-protected zip"),
        ("zip_gap", _zip(slices[:5] + slices[6:]), "scan.zip", "a series with a slice missing"),
        ("zip_thin", _zip(slices[:3]), "scan.zip", "a series of 3 slices"),
        ("zip_slip", _zip([(f"../../evil/{n}", d) for n, d in slices[:3]] + [(f"/abs/{n}", d) for n, d in slices[3:6]]),
         "scan.zip", "members named ../ and /abs (6 slices: too few)"),
        ("dicom_one_slice", slices[0][1], "scan.dcm", "a single DICOM slice"),
        ("dicom_multi_frame", _multi_frame(slices), "scan.dcm", "a multi-frame DICOM file"),
        ("zip_ct_series", _zip(_retagged(slices, Modality="CT")), "scan.zip", "a CT series (DICOM Modality CT)"),
        ("zip_patient_name", _zip(slices[:2]), f"{PATIENT_LIKE_NAME}.zip", "a patient-named zip of 2 slices"),
    ]
    return [BadInput(k, d, n, w) for k, d, n, w in items]


def gzip_bomb(decompressed_bytes: int = (1 << 30) + (8 << 20)) -> bytes:
    """A small .nii.gz whose stream inflates past the loader's 1 GiB cap (header + zeros)."""
    header = _nifti_bytes(_phantom((8, 8, 8)))[:352]
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    out = [comp.compress(header)]
    zeros = bytes(8 << 20)
    for _ in range((decompressed_bytes - len(header)) // len(zeros) + 1):
        out.append(comp.compress(zeros))
    out.append(comp.flush())
    return b"".join(out)


# NIfTI-1 header offsets (little-endian)
_DIM, _DATATYPE, _BITPIX, _PIXDIM, _VOX_OFFSET, _SCL_SLOPE, _SROW_X, _MAGIC = 40, 70, 72, 76, 108, 112, 280, 344


def _set_dims(raw: bytes, dims: tuple[int, ...]) -> bytes:
    values = [len(dims), *dims] + [1] * (7 - len(dims))
    return _patch_header(raw, _DIM, "8h", *values)


# ------------------------------------------------------------------------------ the corpora
def nifti_corpus(include_bomb: bool = False) -> list[BadInput]:
    """At least 30 malformed scan files (each must be refused with a clear message)."""
    good = valid_nifti_bytes()
    vol = _phantom()
    items: list[tuple[str, bytes, str, str]] = [
        ("empty_nii", b"", "scan.nii", "an empty file"),
        ("empty_niigz", b"", "scan.nii.gz", "an empty .nii.gz"),
        ("truncated_gzip", _gz(good)[: len(_gz(good)) // 2], "scan.nii.gz", "a gzip stream cut in half"),
        ("gzip_header_only", _gz(good)[:10], "scan.nii.gz", "only the 10-byte gzip header"),
        ("gzip_bad_crc", _gz(good)[:-8] + b"\x00" * 8, "scan.nii.gz", "gzip with a wrong CRC/length trailer"),
        ("not_gzip_named_gz", good, "scan.nii.gz", "plain NIfTI named .nii.gz"),
        ("gzip_named_nii", _gz(good), "scan.nii", "gzip data named .nii"),
        ("wrong_magic", good[:_MAGIC] + b"xyz\x00" + good[_MAGIC + 4:], "scan.nii", "NIfTI with a wrong magic"),
        ("pair_magic", good[:_MAGIC] + b"ni1\x00" + good[_MAGIC + 4:], "scan.nii", "a .hdr (pair) header named .nii"),
        ("bad_sizeof_hdr", _patch_header(good, 0, "i", 999), "scan.nii", "sizeof_hdr is not 348"),
        ("text_file", b"hello, I am not a scan\n" * 20, "scan.nii", "a text file"),
        ("random_bytes", np.random.default_rng(1).bytes(4096), "scan.nii", "random bytes"),
        ("png_renamed", _png_bytes(), "scan.nii", "a PNG renamed .nii"),
        ("dicom_renamed", _dicom_bytes(), "scan.nii", "a DICOM file renamed .nii"),
        ("dicom_renamed_gz", _gz(_dicom_bytes()), "scan.nii.gz", "a gzipped DICOM renamed .nii.gz"),
        ("nifti_2d", _nifti_bytes(_phantom((32, 32))), "scan.nii", "a 2D image"),
        ("nifti_thin_3d", _nifti_bytes(_phantom((32, 32, 1))), "scan.nii", "3D with one slice"),
        ("nifti_4d", _nifti_bytes(_phantom((16, 16, 16, 3))), "scan.nii", "a 4D series of 3 volumes"),
        ("nifti_5d", _gz(_nifti_bytes(_phantom((16, 16, 16, 2, 2)))), "scan.nii.gz", "a 5D image"),
        ("nifti2_4d", _nifti_bytes(_phantom((16, 16, 16, 2)), nifti2=True), "scan.nii", "NIfTI-2, 4D"),
        ("tiny_sides", _nifti_bytes(_phantom((4, 4, 4))), "scan.nii", "sides below the minimum"),
        ("all_nan", _nifti_bytes(np.full((16, 16, 16), np.nan, np.float32)), "scan.nii", "all NaN"),
        ("some_nan", _nifti_bytes(np.where(vol > 90, np.nan, vol).astype(np.float32)), "scan.nii", "a few NaN voxels"),
        ("some_inf", _nifti_bytes(np.where(vol > 95, np.inf, vol).astype(np.float32)), "scan.nii", "a few +Inf voxels"),
        ("float64_overflow", _nifti_bytes(np.where(vol > 95, 1e300, vol.astype(np.float64))), "scan.nii",
         "float64 values too large for float32"),
        ("all_zero", _gz(_nifti_bytes(np.zeros((16, 16, 16), np.float32))), "scan.nii.gz", "an all-zero volume"),
        ("constant", _nifti_bytes(np.full((16, 16, 16), 7, np.int16)), "scan.nii", "a constant volume"),
        ("label_map", _gz(_nifti_bytes(np.digitize(vol, [30, 60, 90]).astype(np.uint8))), "seg.nii.gz",
         "a label map given as the scan"),
        ("huge_dims_tiny_file", _set_dims(good[:352], (1000, 1000, 1000)), "scan.nii",
         "header declares 10^9 voxels, file has none"),
        ("huge_side", _set_dims(good, (30000, 16, 16)), "scan.nii", "a side of 30000 voxels"),
        ("negative_dim", _set_dims(good, (-16, 16, 16)), "scan.nii", "a negative dimension"),
        ("zero_dim", _set_dims(good, (0, 16, 16)), "scan.nii", "a zero dimension"),
        ("truncated_data", good[: len(good) - 1000], "scan.nii", "image data shorter than declared"),
        ("vox_offset_past_end", _patch_header(good, _VOX_OFFSET, "f", 1e7), "scan.nii", "vox_offset past the end"),
        ("complex64", _nifti_bytes(vol.astype(np.complex64)), "scan.nii", "complex voxels"),
        ("rgb24", _patch_header(_patch_header(good, _DATATYPE, "h", 128), _BITPIX, "h", 24), "scan.nii",
         "RGB24 datatype"),
        ("unknown_datatype", _patch_header(good, _DATATYPE, "h", 9999), "scan.nii", "datatype code 9999"),
        ("zero_voxel_size", _patch_header(good, _SROW_X, "4f", 0, 0, 0, 0), "scan.nii", "0 mm voxels"),
        ("huge_voxel_size", _nifti_bytes(vol, affine=np.diag([50.0, 50, 50, 1])), "scan.nii", "50 mm voxels"),
        ("nan_affine", _patch_header(good, _SROW_X, "4f", *[float("nan")] * 4), "scan.nii", "NaN affine"),
        ("inf_slope", _patch_header(good, _SCL_SLOPE, "f", 3e38), "scan.nii",
         "a scale slope that overflows float32"),
        ("wrong_extension", good, "scan.txt", "a valid NIfTI named .txt"),
        ("no_extension", good, "scan", "no extension at all"),
        ("upper_case_truncated", _gz(good)[:100], "SCAN.NII.GZ", "upper-case extension, truncated"),
        ("dotdot_name", _gz(good)[:200], "../../../../tmp/evil.nii.gz", "a ../ path-traversal name"),
        ("patient_name", b"\x00" * 50, f"{PATIENT_LIKE_NAME}.nii", "an identifying file name"),
    ]
    if include_bomb:
        items.append(("gzip_bomb", gzip_bomb(), "scan.nii.gz", "a gzip bomb (> 1 GiB inflated)"))
    return [BadInput(k, d, n, w) for k, d, n, w in items] + dicom_corpus()


def _npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def proxy_corpus() -> list[BadInput]:
    """Malformed ``segment_proxy`` requests (.npy files the server must refuse)."""
    rng = np.random.default_rng(0)
    ok = rng.uniform(0, 1, (1, 16, 16, 16)).astype(np.float16)
    npz = io.BytesIO()
    np.savez(npz, a=ok)
    items: list[tuple[str, bytes, str]] = [
        ("npy_empty", b"", "an empty request"),
        ("npy_text", b"this is not an array", "text"),
        ("npy_pickle", _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), "a pickled object array"),
        ("npy_npz", npz.getvalue(), "an .npz archive"),
        ("npy_npz_truncated", npz.getvalue()[: len(npz.getvalue()) // 2], "an .npz archive cut in half"),
        ("npy_truncated", _npy(ok)[:-100], "a truncated .npy"),
        ("npy_int", _npy(np.ones((16, 16, 16), np.int32)), "integer proxies"),
        ("npy_bool", _npy(np.ones((16, 16, 16), bool)), "boolean proxies"),
        ("npy_complex", _npy(np.ones((16, 16, 16), np.complex64)), "complex proxies"),
        ("npy_2d", _npy(np.ones((16, 16), np.float32)), "a 2D array"),
        ("npy_5d", _npy(np.ones((1, 1, 16, 16, 16), np.float32)), "a 5D array"),
        ("npy_too_many", _npy(np.zeros((9, 8, 8, 8), np.float16)), "9 proxies"),
        ("npy_zero_k", _npy(np.zeros((0, 8, 8, 8), np.float16)), "0 proxies"),
        ("npy_small_side", _npy(np.zeros((1, 4, 16, 16), np.float16)), "a 4-voxel side"),
        ("npy_big_side", _npy(np.zeros((1, 300, 8, 8), np.float16)), "a 300-voxel side"),
        ("npy_nan", _npy(np.full((16, 16, 16), np.nan, np.float32)), "NaN"),
        ("npy_inf", _npy(np.full((16, 16, 16), np.inf, np.float16)), "Inf"),
        ("npy_out_of_range", _npy(np.full((16, 16, 16), 100.0, np.float32)), "values out of range"),
        ("npy_nifti", _gz(valid_nifti_bytes()), "a NIfTI sent as a proxy"),
    ]
    return [BadInput(k, d, "proxy.npy", w) for k, d, w in items]
