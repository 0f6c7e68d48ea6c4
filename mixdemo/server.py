"""The server side: segment proxies, nothing else.

This module is everything the (honest-but-curious) server runs. It imports no client-side
code — no mixing, no unmixing, no reference bank — and receives nothing but proxies.

Wire format of the ``segment_proxy`` endpoint (version :data:`WIRE_FORMAT`):

* request: one ``.npy`` file (NumPy format, ``allow_pickle=False``) holding float16 or float32
  proxies (float64 is read as float32; any other data type is refused from the header) of shape ``(K, X, Y, Z)`` or
  ``(X, Y, Z)``. A ``.npy`` header holds only dtype, shape and
  memory order: no NIfTI header, no affine, no patient field. The client names the file
  ``proxy.npy``; the server never looks at the name.
* response: one ``.npy`` file with float16 softmax probabilities ŷ_mix of shape ``(K, C, X, Y, Z)``
  (C: the classes ``server_info`` names, background first; the shipped S gives four: background, GM,
  WM, CSF).

The uploaded file (and the folder Gradio made for it) is deleted as soon as it has been read.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mixdemo.classes import CLASS_NAMES

if TYPE_CHECKING:  # torch loads lazily (first page fast)
    import torch

WIRE_FORMAT = "mixdemo-proxy-npy/1"
MAX_K = 8
"""Most proxies in one request."""
MAX_SIDE = 256
MIN_SIDE = 8
MAX_REQUEST_VOXELS = MAX_K * 144 * 192 * 160
log = logging.getLogger(__name__)
_OBSERVERS: list[Callable[[np.ndarray], None]] = []  # audit hooks (callables only, never data)
_MODEL_LOCK = threading.Lock()


class ProxyError(ValueError):
    """A request the server cannot use; the message is one plain sentence."""


# ------------------------------------------------------------------------------ spaces.GPU
try:  # on Hugging Face ZeroGPU Spaces only
    import spaces  # type: ignore[import-not-found]

    _gpu = spaces.GPU(duration=120)
    ZERO_GPU = True
except Exception:  # noqa: BLE001 - the package is optional

    def _gpu(fn: Callable) -> Callable:
        return fn

    ZERO_GPU = False


# ------------------------------------------------------------------------------ model
@functools.lru_cache(maxsize=2)
def _load(weights_root: str) -> torch.nn.Module:
    from mixdemo.models import pick_device
    from mixdemo.weights import load_model

    return load_model("segmentation", device=str(pick_device()))


def segmentation_model() -> torch.nn.Module:
    """The server's S (cached per weights folder). Raises ``WeightsError`` with a clear message."""
    from mixdemo.weights import weights_dir

    with _MODEL_LOCK:
        return _load(str(weights_dir()))


def model_classes(record: dict | None = None) -> list[str]:
    """The classes the served S gives, background first: its training ``record``'s (read when not given; older
    records, which name none: the phantoms'). Reads one small file (no torch)."""
    from mixdemo.weights import recorded_classes

    if record is None:
        record = served_record()
    return recorded_classes(record) or list(CLASS_NAMES)  # no record at all: the phantoms' too


def served_record() -> dict:
    """The training record of the S the server loads: its local folder's, or the Hub cache's where it came from
    (:func:`mixdemo.weights.served_model_dir`); {} when there is none yet or it is unreadable (loading S says why)."""
    from mixdemo.weights import readable_training_record, served_model_dir

    folder = served_model_dir("segmentation")
    return readable_training_record(folder) if folder is not None else {}


def model_info() -> dict:
    """What the server can tell about itself (no user data)."""
    from mixdemo.models import pick_device
    from mixdemo.weights import s_precision

    record = served_record()
    return {
        "format": WIRE_FORMAT,
        "classes": model_classes(record),  # those S was trained on
        "grid_shape": record.get("grid_shape", [144, 192, 160]),
        "max_k": MAX_K,
        "max_request_voxels": MAX_REQUEST_VOXELS,
        "request": "a .npy file of float16/float32 proxies (float64 read as float32) shaped (K, X, Y, Z) or (X, Y, Z)",
        "response": "a .npy file of float16 probabilities shaped (K, C, X, Y, Z)",
        "model_sha256": record.get("sha256"),
        "model_steps": record.get("steps"),
        "precision": s_precision(pick_device()),  # S's arithmetic ($MIXDEMO_PRECISION; float32 logits either way)
    }


# ------------------------------------------------------------------------------ audit hooks
def add_observer(fn: Callable[[np.ndarray], None]) -> None:
    """Register ``fn(proxies)``, called with every array the server receives (audits and tests)."""
    _OBSERVERS.append(fn)


def remove_observer(fn: Callable[[np.ndarray], None]) -> None:
    """Unregister an observer added with :func:`add_observer`."""
    if fn in _OBSERVERS:
        _OBSERVERS.remove(fn)


# ------------------------------------------------------------------------------ requests
def check_proxies(proxies: np.ndarray) -> np.ndarray:
    """Validate a proxy array and return it as float32 (K, X, Y, Z); raise ProxyError otherwise."""
    arr = np.asarray(proxies)
    if arr.dtype.kind != "f":
        raise ProxyError(f"Proxies must be floating-point numbers; got the data type {arr.dtype}.")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ProxyError(f"Proxies must be shaped (K, X, Y, Z) or (X, Y, Z); got {arr.ndim} dimensions.")
    k, *sides = arr.shape
    if not 1 <= k <= MAX_K:
        raise ProxyError(f"A request may hold 1 to {MAX_K} proxies; got {k}.")
    if min(sides) < MIN_SIDE or max(sides) > MAX_SIDE:
        raise ProxyError(f"Each side of a proxy must have {MIN_SIDE} to {MAX_SIDE} voxels; got {tuple(sides)}.")
    if arr.size > MAX_REQUEST_VOXELS:
        raise ProxyError("The request is too large: send fewer proxies per request.")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ProxyError("The proxies contain invalid values (NaN or infinity).")
    if arr.min() < -1.0 or arr.max() > 4.0:
        raise ProxyError("The proxies' values are out of range: mix normalised scans (values in [0, 1]).")
    return arr


def read_proxy_file(path: str | os.PathLike) -> np.ndarray:
    """Read a request file (see the module docstring) and validate it; its declared size is checked from the
    header before any of it is loaded."""
    try:
        with open(path, "rb") as fh:
            if fh.read(2) == b"PK":  # a zip (.npz or other): refused before numpy opens it, damaged or not
                raise ProxyError("The request must hold one array, not an archive.")
            fh.seek(0)
            _check_declared_size(fh)
            fh.seek(0)
            arr = np.load(fh, allow_pickle=False)
    except ProxyError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise ProxyError("The request is not a NumPy .npy array file (pickled objects are refused).") from exc
    return check_proxies(arr)


def _check_declared_size(fh) -> None:  # noqa: ANN001 - an open binary file
    """ProxyError if a .npy header declares more voxels than a request may hold, or items that are not floating-point
    numbers (a few bytes of header may declare gigabytes per item: numpy would try to allocate them); a file that is
    not a .npy is left to ``np.load`` to refuse (archives were refused before, object arrays are refused there)."""
    start = fh.read(6)
    fh.seek(0)
    if start != b"\x93NUMPY":
        return
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(fh)
    if math.prod(shape) > MAX_REQUEST_VOXELS:
        raise ProxyError("The request is too large: send fewer proxies per request.")
    if dtype.kind != "f" and not dtype.hasobject:
        raise ProxyError(f"Proxies must be floating-point numbers; got the data type {dtype}.")


@_gpu
def _run(model: torch.nn.Module, proxies: np.ndarray, progress: Callable[[float, str], None] | None) -> torch.Tensor:
    """Softmax of S per proxy, by :func:`mixdemo.inference.segment_proxies` (batches for patches, one
    pass or memory-bounded slabs for volumes; the code the local pipeline runs too)."""
    from mixdemo.inference import segment_proxies

    return segment_proxies(model, proxies, progress=progress)


def segment(proxies: np.ndarray, progress: Callable[[float, str], None] | None = None) -> torch.Tensor:
    """ŷ_mix = S(x_mix) for (K, X, Y, Z) proxies → (K, C, X, Y, Z) float32 probabilities."""
    arr = check_proxies(proxies)
    for fn in list(_OBSERVERS):
        fn(arr)
    model = segmentation_model()
    log.info("segmenting %d proxy(ies) of shape %s", arr.shape[0], arr.shape[1:])
    return _run(model, arr, progress)


def segment_file(path: str | os.PathLike, progress: Callable[[float, str], None] | None = None) -> str:
    """The ``segment_proxy`` endpoint: request file → response file path (the request is deleted; the memory
    its arrays took is handed back once it is answered, :func:`mixdemo.inference.reusing_freed_memory`). A file of
    Gradio's cache that no upload of the request made (a view, a figure, another upload: :func:`mixdemo.oneshot.is_foreign`)
    is refused, neither read nor deleted."""
    from mixdemo.oneshot import is_foreign

    if is_foreign(path):
        raise ProxyError(NOT_UPLOADED)
    try:
        from mixdemo.inference import reusing_freed_memory  # torch loads lazily

        with reusing_freed_memory():
            return _answer(path, progress)
    finally:
        delete_upload(path)  # whatever failed: the request does not outlive its answer


NOT_UPLOADED = "The request names a file it did not upload: send the .npy file itself."
"""Why a request naming a file of the server's own (:func:`mixdemo.oneshot.is_foreign`) is refused."""


def delete_upload(path: str | os.PathLike) -> None:
    """Delete an uploaded file (a request, or a scan uploaded to the app), and the folder Gradio made for it (one
    per upload in Gradio's cache, named by the content's hash) once that is left empty. A file of Gradio's cache
    that is no upload of its own (:func:`mixdemo.oneshot.is_foreign`) is left alone: others are served it."""
    from mixdemo.oneshot import gradio_cache_dir, is_foreign

    if is_foreign(path):
        return
    try:
        os.unlink(path)
    except OSError:
        pass
    folder = Path(path).resolve().parent
    if folder.parent == gradio_cache_dir():
        try:
            folder.rmdir()  # only if empty: never another upload's file
        except OSError:
            pass


def _answer(path: str | os.PathLike, progress: Callable[[float, str], None] | None) -> str:
    """:func:`segment_file`'s work: read and delete the request, segment, write the response (a response
    that could not be written whole is removed)."""
    try:
        arr = read_proxy_file(path)
    finally:
        delete_upload(path)  # as soon as it is read
    probs = segment(arr, progress).numpy().astype(np.float16)
    out = response_dir() / "mixed_probs.npy"
    try:
        np.save(out, probs, allow_pickle=False)
    except BaseException:
        shutil.rmtree(out.parent, ignore_errors=True)
        raise
    return str(out)


RESPONSE_MAX_AGE_S = 600
"""Responses nobody fetched are removed this long after they were written (a fetched one is removed
at once by :class:`mixdemo.oneshot.OneShotResponses`)."""


def response_dir() -> Path:
    """A fresh folder for one response; folders older than :data:`RESPONSE_MAX_AGE_S` are removed."""
    from mixdemo.oneshot import fresh_subdir, response_root  # inside Gradio's cache: served once, then deleted

    return fresh_subdir(response_root(), RESPONSE_MAX_AGE_S)
