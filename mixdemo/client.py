"""The client: load and mix locally, send only proxies, unmix locally (Kim et al., Eq. 2-6).

Used two ways:

* in the browser demo, with the in-process server (:func:`mixdemo.server.segment`);
* from the command line against a remote server, through ``gradio_client``::

    python -m mixdemo.client --server http://127.0.0.1:7860 scan.nii.gz -o seg.nii.gz \\
        [--alpha 0.5] [--tta 3] [--references DIR] [--mode patch|whole] [--centre X,Y,Z]
        [--seed S] [--separate-requests]

What leaves the machine: one ``.npy`` file named ``proxy.npy`` per request, holding the float16
proxies (K, X, Y, Z) — no NIfTI header, no affine, no file name, no α, no reference. What comes
back: the mixed probabilities. The secret key (references, their labels, α) never leaves.
A scan already on the models' 1 mm MNI grid (144×192×160, skull-stripped) is used as it is; any other
is registered to MNI space and skull-stripped on this machine (:mod:`mixdemo.preprocess`). The
segmentation is written back in the input file's own space.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import glob
import io
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

INTERRUPTED = "interrupted: no further request is sent, and a segmentation not yet written is not written."
"""What Ctrl-C prints (exit status 130), while the imports load or later."""


def _interrupted_while_loading(signum: int, frame: object) -> None:
    """Ctrl-C while the imports below load (seconds on 2 cores): the same one line, then out at once. Nothing is
    written yet, so nothing needs cleaning up, and an exception raised here could surface inside an extension's
    import as that import's own error (numpy's C extension turned it into an ImportError with its traceback)."""
    print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupted_while_loading)

import numpy as np
import torch

from mixdemo.launch import check_setting_variables, count
from mixdemo.mixing import DEFAULT_ALPHA_RANGE, MIRROR_BY_DEFAULT, MixKey, alternate_mirroring, check_alpha, hard_labels, sample_key
from mixdemo.pipeline import PrivateResult, Reference, private_labels, private_segment
from mixdemo.weights import DEFAULT_UNMIXING, unmixing_name

ProgressFn = Callable[[float, str], None]
ServerFn = Callable[[np.ndarray], torch.Tensor]

PATCH_SIZE = 32
"""Side of the patch of patch mode (the paper's PPMI patch)."""
MODES = ("patch", "whole")
MAX_PER_REQUEST = 8
"""Most proxies per request when the server does not say (``mixdemo.server.MAX_K``, reported by ``server_info``)."""
MAX_REQUEST_VOXELS = MAX_PER_REQUEST * 144 * 192 * 160
"""Most voxels per request when the server does not say (``mixdemo.server.MAX_REQUEST_VOXELS``): eight proxies on
the phantoms' grid, three on BraTS's 240×240×155."""


def proxies_per_request(shape: Sequence[int], max_k: int = MAX_PER_REQUEST, max_voxels: int = MAX_REQUEST_VOXELS) -> int:
    """How many proxies of ``shape`` (X, Y, Z) one request may carry within a server's limits."""
    return max(1, min(max_k, max_voxels // int(np.prod(shape))))


class ClientError(RuntimeError):
    """Something the user of the client must fix; the message is one plain sentence."""


WIRE_FORMAT = "mixdemo-proxy-npy/1"
"""The wire format this client speaks (``mixdemo.server.WIRE_FORMAT``, reported by ``server_info``)."""


def _positive_int(value: object) -> bool:
    """Whether a value of ``server_info`` reads as a count (what ``int()`` takes, 1 or more; not a bool)."""
    try:
        return not isinstance(value, bool) and int(value) >= 1  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return False


def version_mismatch(why: str) -> str:
    """The message for a server of another version of this project: ``why`` it is (one clause)."""
    return (f"The server is another version of Mixup-Privacy than this client ({why}): update the client or the "
            "server, or use a client of the server's version.")


# ------------------------------------------------------------------------------ grid
@dataclass(frozen=True)
class GridFit:
    """How a volume was centre-cropped/padded onto the references' grid (per-axis slices)."""

    source_shape: tuple[int, int, int]
    src: tuple[slice, slice, slice]
    dst: tuple[slice, slice, slice]

    def restore(self, grid_volume: np.ndarray) -> np.ndarray:
        """Put a grid volume back onto the source shape (zeros where the grid did not reach)."""
        out = np.zeros(self.source_shape, dtype=grid_volume.dtype)
        out[self.src] = grid_volume[self.dst]
        return out


def conform_to_grid(volume: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, GridFit]:
    """Centre-crop / zero-pad ``volume`` to ``shape``; returns the grid volume and how to undo it."""
    src, dst = [], []
    for n, m in zip(volume.shape, shape):
        if n >= m:
            a = (n - m) // 2
            src.append(slice(a, a + m))
            dst.append(slice(0, m))
        else:
            a = (m - n) // 2
            src.append(slice(0, n))
            dst.append(slice(a, a + n))
    out = np.zeros(tuple(shape), dtype=volume.dtype)
    out[tuple(dst)] = volume[tuple(src)]
    return out, GridFit(tuple(volume.shape), tuple(src), tuple(dst))  # type: ignore[arg-type]


@dataclass(eq=False)
class Target:
    """A target on the models' grid, and how to write labels back into the input file's space."""

    image: np.ndarray  # float32 GRID_SHAPE, normalised
    scan: object  # mixdemo.io.Scan of the input
    fit: GridFit | None = None  # index-space crop/pad (scans already on the grid)
    prepared: object | None = None  # mixdemo.preprocess.Prepared (registered scans)
    warning: str | None = None

    def labels_on_input(self, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid labels (X, Y, Z), or class scores (C, X, Y, Z) whose arg-max they are, carried onto the input file's own
        grid: uint8 labels and their RAS+ affine. A registered scan's are resampled, each class's score
        (``preprocess.scores_to_source_grid``, the better) or share (``preprocess.labels_to_source_grid``) interpolated;
        any other scan's labels go back voxel for voxel (nearest neighbour where its file's orientation differs)."""
        if self.prepared is not None:
            from mixdemo.preprocess import labels_to_source_grid, scores_to_source_grid

            carry = scores_to_source_grid if prediction.ndim == 4 else labels_to_source_grid
            return carry(prediction, self.prepared, self.scan), self.prepared.source_affine
        from mixdemo.io import labels_on_source_grid

        labels = hard_labels(torch.from_numpy(prediction)).numpy() if prediction.ndim == 4 else prediction
        return labels_on_source_grid(self.fit.restore(labels), self.scan), self.scan.source_affine  # type: ignore

    def save_labels(self, prediction: np.ndarray, path: str | os.PathLike) -> None:
        """Write grid labels, or the labels of grid class scores (:meth:`labels_on_input`), as NIfTI on the input file's
        own grid (atomic)."""
        from mixdemo.io import save_volume

        save_volume(*self.labels_on_input(prediction), path, dtype=np.uint8)

    @property
    def needs_scores(self) -> bool:
        """Whether its labels are resampled onto the file's grid (a registered scan), which class scores do better
        than labels (:meth:`labels_on_input`)."""
        return self.prepared is not None

    def truth_from_file(self, path: str | os.PathLike, check: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """Ground-truth labels of this target on the grid, from a label file on the input scan's grid: cropped
        or padded as the scan was, or for a registered scan carried from the file's own grid by the scan's own
        transform in one resampling (each label's share interpolated: :func:`mixdemo.preprocess.labels_to_model_grid`).
        ``check`` sees the file's labels first (a refusal of their values then costs no resampling)."""
        from mixdemo.io import load_labels, load_labels_for

        if self.prepared is not None:
            from mixdemo.preprocess import labels_to_model_grid

            labels, affine = load_labels_for(path, like=self.scan)  # type: ignore[arg-type]
            if check:
                check(labels)
            return labels_to_model_grid(labels, self.prepared, self.scan, affine=affine)  # type: ignore[arg-type]
        labels = load_labels(path, like=self.scan)  # type: ignore[arg-type]
        if check:
            check(labels)
        return conform_to_grid(labels, self.image.shape)[0]


def load_target(path: str | os.PathLike, *, progress: ProgressFn | None = None,
                grid: Sequence[int] | None = None, grid_confirmed: bool = False, series: int | None = None) -> Target:
    """Load a scan and bring it onto the models' grid, on the client.

    A scan already in model space (on the 144×192×160 MNI grid, its header's affine the grid's, and skull-stripped,
    e.g. the phantoms; :func:`mixdemo.preprocess.check_model_space`) is used as it is; any other is registered
    to MNI space with :func:`mixdemo.preprocess.to_model_space` (skull-stripped and normalised there).
    ``grid``: the references' grid when it is not that one (models retrained on other data, e.g. BraTS
    on its 240×240×155 grid): the scan must then already lie on it, as the references do (registered
    and skull-stripped by the user), and is used as it is. ``grid_confirmed``: the server said its model works on
    ``grid`` too, so a scan off it is the one to register. ``series``: of a DICOM input holding several, which
    (:func:`mixdemo.dicom.read_series`).
    """
    from dataclasses import replace

    from mixdemo.io import load_scan, normalize_intensity
    from mixdemo.phantoms import GRID_SHAPE

    from mixdemo.preprocess import check_model_space, to_model_space

    raw = load_scan(path, normalize=False, series=series, refuse_label_maps=True)  # read once (a DICOM series is unpacked once), normalised below
    scan = replace(raw, data=normalize_intensity(raw.data))
    if grid is not None and tuple(grid) != GRID_SHAPE:
        if scan.data.shape != tuple(grid):
            raise ClientError(_grid_mismatch(scan.data.shape, grid, grid_confirmed))
        image, fit = conform_to_grid(scan.data, tuple(grid))
        return Target(image=image, scan=scan, fit=fit)
    # used as it is only if its voxels are the grid's: one of the grid's shape placed elsewhere by its header (in MNI
    # space all the same) is resampled onto the grid by to_model_space, not taken voxels-off against the references
    if scan.data.shape == GRID_SHAPE and (check := check_model_space(scan)).ok and check.on_grid:
        image, fit = conform_to_grid(scan.data, GRID_SHAPE)
        return Target(image=image, scan=scan, fit=fit)
    prepared = to_model_space(raw, progress=progress)
    return Target(image=prepared.image, scan=raw, prepared=prepared, warning=prepared.warning)


def _grid_mismatch(scan_shape: Sequence[int], ref_shape: Sequence[int], confirmed: bool) -> str:
    """Why a scan and the references cannot be mixed: the scan's fault once the server has confirmed the references'
    grid, else without presuming which side is off the model's grid."""
    if confirmed:
        return (f"The scan's grid {_shape_text(scan_shape)} is not the references' and the server model's "
                f"{_shape_text(ref_shape)}; register the scan to their space first.")
    return (f"The scan's grid {_shape_text(scan_shape)} is not the references' {_shape_text(ref_shape)}; both must lie "
            "on the server model's grid: register whichever is off it (the scan or the references).")


def check_reference_grid(ref_shape: Sequence[int], server_grid: Sequence[int] | None) -> None:
    """A :class:`ClientError` when the references do not lie on the grid the server says its model works on."""
    if server_grid is not None and tuple(ref_shape) != tuple(server_grid):
        raise ClientError(f"The references lie on a {_shape_text(ref_shape)} grid, but the server's model works on "
                          f"{_shape_text(server_grid)}; register the references to its space (or use references "
                          "made for this server) first.")


def check_classes(server_classes: Sequence[str] | None, unmix: torch.nn.Module | None,
                  references: Sequence[Reference]) -> None:
    """A :class:`ClientError` when the client's D or its references do not fit the classes the server's S gives
    (``None``: the server does not say; the phantoms' four are then assumed, as :meth:`RemoteServer.num_classes`
    does). A D loaded from its folder must also have been trained on the classes the server names (its training
    record's names: four tissue classes are not a BraTS model's four)."""
    from mixdemo.classes import CLASS_NAMES
    from mixdemo.weights import recorded_classes

    names = list(server_classes or CLASS_NAMES)
    said = f"the server's model gives {len(names)} classes ({', '.join(names)})"
    if unmix is not None and getattr(unmix, "num_classes", len(names)) != len(names):
        raise ClientError(f"The client's D unmixes {unmix.num_classes} classes, but {said}: use a D trained with "
                          "this server's S (--unmixing).")
    trained = recorded_classes(getattr(unmix, "training_record", None) or {})
    if server_classes is not None and trained is not None and trained != names:
        raise ClientError(f"The client's D was trained on the classes {', '.join(trained)}, but {said}: use a D "
                          "trained with this server's S (--unmixing; MIXDEMO_WEIGHTS_DIR for the folder training wrote).")
    top = max((int(r.labels.max(initial=0)) for r in references), default=0)
    if top >= len(names):
        raise ClientError(f"The references' labels reach {top}, but {said}, labelled 0 to {len(names) - 1}: use "
                          "references labelled as the server's model was trained (--references).")


def default_centre(volume: np.ndarray) -> tuple[int, int, int]:
    """Centre of the non-zero bounding box (the grid centre for an empty volume)."""
    idx = np.argwhere(volume > 0.05 * float(volume.max() or 1))
    if not len(idx):
        return tuple(n // 2 for n in volume.shape)  # type: ignore[return-value]
    return tuple(int(v) for v in (idx.min(0) + idx.max(0)) // 2)  # type: ignore[return-value]


def patch_region(centre: Sequence[int], shape: Sequence[int], size: int = PATCH_SIZE) -> tuple[slice, slice, slice]:
    """Slices of the ``size``³ patch centred (as near as fits) on ``centre``."""
    if any(size > n for n in shape):
        raise ClientError(f"The volume {tuple(shape)} is smaller than a {size}³ patch.")
    corner = [min(max(int(c) - size // 2, 0), n - size) for c, n in zip(centre, shape)]
    return tuple(slice(c, c + size) for c in corner)  # type: ignore[return-value]


# ------------------------------------------------------------------------------ one round trip
@dataclass
class ClientRun:
    """A private segmentation of one target: the key, the region it covers and the result."""

    key: MixKey
    region: tuple[slice, slice, slice]
    grid_shape: tuple[int, int, int]
    result: PrivateResult

    def labels(self, which: str = "learned_tta") -> np.ndarray:
        """Label map on the whole grid (0 outside the region in patch mode)."""
        if which.startswith("learned") and self.result.learned is None:
            which = which.replace("learned", "naive")
        out = np.zeros(self.grid_shape, dtype=np.uint8)
        out[self.region] = self.result.labels(which)
        return out

    def scores(self, which: str = "learned_tta") -> np.ndarray:
        """The (C, X, Y, Z) class scores on the whole grid whose arg-max is :meth:`labels` (background's outside the
        region in patch mode): what a registered scan's labels are carried back from."""
        if which.startswith("learned") and self.result.learned is None:
            which = which.replace("learned", "naive")
        part = self.result.scores(which)
        return _on_whole_grid(part, self.region, self.grid_shape)


def check_k(k: int, n_references: int | None = None) -> None:
    """A :class:`ClientError` unless 1 ≤ ``k`` ≤ ``n_references`` (the bank's size, when known)."""
    if n_references is None:
        if k < 1:
            raise ClientError(f"K (--tta) must be at least 1; got {k}.")
    elif not 1 <= k <= n_references:
        raise ClientError(f"K must be between 1 and the number of references ({n_references}); got {k}.")


SAME_SCAN_TOLERANCE = 1e-3
"""A reference whose image differs from the target's by less than this at every voxel (intensities normalised to
[0, 1]) is the target's own scan, read alike (the same file: 0). Not an average: two scans of one brain that differ
only in a small lesion are two scans (the BraTS test cases differ by 0.003 on average)."""


def copies_of_target(target: np.ndarray, references: Sequence[Reference]) -> list[str]:
    """The ids of the references that are the target's own scan (:data:`SAME_SCAN_TOLERANCE`): mixed with itself, a
    scan's proxy α·x + (1 − α)·x is the scan, sent unmixed (a references folder holding the target's case, read as the
    target is). The same scan prepared another way (registered on its own) is not recognised."""
    def same(image: np.ndarray) -> bool:  # every 97th voxel first: any other scan differs there (a run's cost: ~0)
        return image.shape == target.shape and all(
            np.allclose(a, b, rtol=0.0, atol=SAME_SCAN_TOLERANCE)
            for a, b in ((image.ravel()[::97], target.ravel()[::97]), (image, target)))

    return [r.ref_id for r in references if same(r.image)]


SELF_REFERENCE = ("mixed with itself, a scan's proxy is the scan, sent unmixed")


def make_key(
    pool: Sequence[str],
    k: int,
    *,
    alpha: float | None = None,
    reference_ids: Sequence[str] | None = None,
    seed: int | None = None,
    mirror: bool = MIRROR_BY_DEFAULT,
) -> MixKey:
    """The client's secret: given references or K random ones; α fixed or ~ U(DEFAULT_ALPHA_RANGE); with ``mirror``
    the target mirrored in every second mix (:func:`mixdemo.mixing.alternate_mirroring`)."""
    if alpha is not None:
        check_alpha(alpha)
    if reference_ids:
        unknown = [r for r in reference_ids if r not in pool]
        if unknown:
            raise ClientError(f"Unknown reference(s): {', '.join(unknown)}.")
        a = alpha if alpha is not None else float(np.random.default_rng(seed).uniform(*DEFAULT_ALPHA_RANGE))
        return MixKey(tuple(reference_ids), (float(a),) * len(reference_ids), seed or 0,
                      mirrored=alternate_mirroring(len(reference_ids)) if mirror else ())
    check_k(k, len(pool))
    rng = (alpha, alpha) if alpha is not None else DEFAULT_ALPHA_RANGE
    return sample_key(list(pool), k, alpha_range=rng, seed=seed, mirror=mirror)


def run_private(
    target: np.ndarray,
    references: Sequence[Reference],
    key: MixKey,
    server: ServerFn,
    unmix_model: torch.nn.Module | None,
    *,
    mode: str = "patch",
    centre: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
) -> ClientRun:
    """Mix (Eq. 2/5), call ``server`` with the proxies only, unmix (Eq. 4 / D) and average (Eq. 6).

    In ``patch`` mode only the 32³ patch at ``centre`` of the target and of each reference is mixed.
    """
    region, refs = _region_and_references(target, references, key, mode, centre)
    result = private_segment(target[region], refs, key, in_requests(server, target[region].shape), unmix_model,
                             progress=progress)
    return ClientRun(key=key, region=region, grid_shape=tuple(target.shape), result=result)  # type: ignore[arg-type]


def run_private_labels(
    target: np.ndarray,
    references: Sequence[Reference],
    key: MixKey,
    server: ServerFn,
    unmix_model: torch.nn.Module | None,
    *,
    mode: str = "patch",
    centre: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    scores: bool = False,
) -> np.ndarray:
    """:func:`run_private`'s labels (learned TTA, or naive TTA without D) on the whole grid, 0 outside the
    region, computed as :func:`mixdemo.pipeline.private_labels` does: one request's proxies at a time, so the
    client holds what one request needs, not K of everything. With ``scores``, the class scores whose arg-max
    those labels are (:func:`mixdemo.pipeline.private_labels`'s): (C, X, Y, Z) float32, background's outside the
    region; for a scan whose labels are resampled onto its file's grid."""
    region, refs = _region_and_references(target, references, key, mode, centre)
    per_call = per_request(server, target[region].shape)
    part = private_labels(target[region], refs, key, server, unmix_model, per_call=per_call, progress=progress,
                          scores=scores)
    if scores:
        return _on_whole_grid(part, region, target.shape)
    out = np.zeros(target.shape, dtype=np.uint8)
    out[region] = part
    return out


def _on_whole_grid(scores: np.ndarray, region: tuple[slice, slice, slice], grid_shape: Sequence[int]) -> np.ndarray:
    """(C, X, Y, Z) scores of a region placed on the whole grid, background's 1 (and every other class's 0) elsewhere."""
    if scores.shape[1:] == tuple(grid_shape):
        return scores
    out = np.zeros((scores.shape[0], *grid_shape), dtype=np.float32)
    out[0] = 1.0
    out[(slice(None), *region)] = scores
    return out


def per_request(server: ServerFn, shape: Sequence[int]) -> int:
    """How many proxies of ``shape`` one call of ``server`` may carry: what a remote server reports, else the
    limits of this package's server (:func:`proxies_per_request`)."""
    return server.per_request(shape) if isinstance(server, RemoteServer) else proxies_per_request(shape)


def in_requests(server: ServerFn, shape: Sequence[int]) -> ServerFn:
    """``server`` called with at most one request's proxies of ``shape`` at a time (:func:`per_request`), the
    answers concatenated: K may exceed what one request holds (a :class:`RemoteServer` splits them itself)."""
    if isinstance(server, RemoteServer):
        return server
    step = per_request(server, shape)
    return lambda proxies: torch.cat([server(proxies[i : i + step]) for i in range(0, len(proxies), step)])


def _region_and_references(target: np.ndarray, references: Sequence[Reference], key: MixKey, mode: str,
                           centre: Sequence[int] | None) -> tuple[tuple[slice, slice, slice], list[Reference]]:
    """The region a run covers (the patch at ``centre``, or the whole grid) and the key's references cut to it."""
    if mode not in MODES:
        raise ClientError(f"Mode must be one of {', '.join(MODES)}; got {mode!r}.")
    by_id = {r.ref_id: r for r in references}
    chosen = [by_id[i] for i in key.reference_ids]
    if any(r.image.shape != target.shape for r in chosen):
        raise ClientError("The target and the references must share one grid.")
    if mode == "patch":
        region = patch_region(centre if centre is not None else default_centre(target), target.shape)
    else:
        region = tuple(slice(0, n) for n in target.shape)
    return region, [Reference(r.ref_id, r.image[region], r.labels[region]) for r in chosen]  # type: ignore[return-value]


@functools.lru_cache(maxsize=2)
def _unmixing(weights_root: str, name: str) -> torch.nn.Module:
    from mixdemo.models import UnmixingNet, pick_device
    from mixdemo.weights import WeightsError, load_model

    model = load_model(name, device=str(pick_device()))
    if not isinstance(model, UnmixingNet):
        raise WeightsError(f"The model folder {name!r} holds a {type(model).__name__}, not an unmixing network D.")
    if model.n_references != 1:  # a ClientError, not a WeightsError: never the silent naive fallback
        raise ClientError(f"The client network D {name!r} unmixes mixes of {model.n_references} references, but this "
                          "client mixes each proxy with one; choose a one-reference D, e.g. "
                          f"{DEFAULT_UNMIXING}.")
    return model


def unmixing_model(required: bool = False, name: str | None = None) -> torch.nn.Module | None:
    """The client's D from local weights: ``name``, else :func:`mixdemo.weights.unmixing_name`
    (``$MIXDEMO_UNMIXING`` or ``unmixing-p2-96-a35-cal``). None when the default D is absent, unless
    ``required``; a D named by ``name`` or the variable must exist (a WeightsError says so). A D for more than one
    reference per mix is refused (a ClientError), before any request."""
    from mixdemo.weights import UNMIXING_ENV, WeightsNotFound, unmixing_name, weights_dir

    chosen = bool(name or os.environ.get(UNMIXING_ENV))
    try:
        return _unmixing(str(weights_dir()), name or unmixing_name())
    except WeightsNotFound:  # absent; corrupt weights raise their WeightsError, never a silent fall-back to Eq. 4
        if required or chosen:
            raise
        return None


def pairing_warning(d_name: str, server_s_sha256: str | None) -> str | None:
    """A warning when the local D ``d_name`` was trained with another S than the one the server says it
    serves (its ``server_info`` checksum): D then unmixes outputs it never saw. None when they pair, or
    when the D's record or the server does not say."""
    from mixdemo.weights import other_segmentation, read_training_record, weights_dir

    paired = other_segmentation(read_training_record(weights_dir() / d_name), server_s_sha256)
    if paired is None:
        return None
    return (f"the client network D {d_name!r} was trained with the S {paired[:12]}…, but the server serves "
            f"{server_s_sha256[:12]}…: its unmixing may be off; pass --unmixing with a D trained for that server's S.")


# ------------------------------------------------------------------------------ remote server
def http_status(url: str, timeout_s: float = 10.0) -> int | None:
    """The HTTP status with which ``url`` (an ``http(s)://`` address) answers a plain GET, or None where nothing
    answers (no such host or port, a time-out) or ``url`` is a Space id: tells an address that is down from one that
    serves something else. Sends no token, and the user agent names only this client."""
    import httpx

    if not url.startswith(("http://", "https://")):
        return None
    try:
        return httpx.get(url, timeout=min(timeout_s, 10.0), follow_redirects=True,
                         headers={"user-agent": "mixdemo-client"}).status_code
    except (httpx.HTTPError, ValueError):
        return None


def tls_failed(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a failed TLS handshake (an ``https://`` address that
    speaks plain HTTP, or a certificate this machine does not trust)."""
    import ssl

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def no_telemetry():
    """While the block runs, neither ``gradio_client`` nor ``huggingface_hub`` phones Hugging Face: what connecting a
    ``gradio_client.Client`` does otherwise, whatever the server, besides its requests to the server.

    * ``gradio_client`` reads ``analytics_enabled=False`` as ``False or $GRADIO_ANALYTICS_ENABLED == "True"`` (2.7.2),
      so unless that variable says otherwise it starts a thread that sends ``HEAD
      https://huggingface.co/api/telemetry/py_client/initiated`` with a user agent naming the server's address
      (``src/http://SERVER:PORT/``) and the Python, huggingface_hub and torch versions: it is set to ``False`` here.
    * ``huggingface_hub`` builds the Client's headers (``build_hf_headers``, before this client's user agent replaces
      theirs) and, unless its telemetry is off, fetches its list of AI-agent harnesses on the way (``GET
      https://huggingface.co/api/agent-harnesses``, blocking up to 3 s, then cached for a day): its
      ``HF_HUB_DISABLE_TELEMETRY`` is set for the block.

    Both are put back afterwards. A Space id (``owner/name``) is still looked up at huggingface.co: that is where
    its address comes from."""
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("GRADIO_ANALYTICS_ENABLED"), constants.HF_HUB_DISABLE_TELEMETRY
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    constants.HF_HUB_DISABLE_TELEMETRY = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_TELEMETRY = saved_flag
        if saved_env is None:
            os.environ.pop("GRADIO_ANALYTICS_ENABLED", None)
        else:
            os.environ["GRADIO_ANALYTICS_ENABLED"] = saved_env


@contextlib.contextmanager
def no_saved_token():
    """While the block runs, ``huggingface_hub`` sends the saved login (or ``HF_TOKEN``) only to a call that passes it:
    ``gradio_client`` 2.7.2 asks ``huggingface_hub.space_info(space_id)`` with no token argument, so with the user's
    token, when a Space's answer holds no data (its rate limit's message), whatever ``token=False`` said."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_DISABLE_IMPLICIT_TOKEN
    constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = saved


CONNECT_TIMEOUT_S = 30.0
"""How long :class:`RemoteServer` waits for the server to answer while connecting (its configuration and API)."""


class RemoteServer:
    """Callable sending proxies to a Mixup-Privacy server's ``segment_proxy`` endpoint."""

    def __init__(self, url: str, *, timeout_s: float = 600.0, separate_requests: bool = False,
                 send_hf_token: bool = False) -> None:
        """Connect to ``url``.

        Args:
            url: the server's address.
            timeout_s: HTTP timeout of one request (of one segmentation); connecting, the app's configuration
                and its API list have :data:`CONNECT_TIMEOUT_S` (a server that accepts the connection and never
                answers is named within it, not after ``timeout_s``).
            separate_requests: send each proxy as its own request, in random order and each in a new session (a
                defence against averaging the K TTA proxies of one target); else one request per call (at most
                8 proxies).
            send_hf_token: send the user's Hugging Face token (``HF_TOKEN`` or the saved login) with every
                request, as ``gradio_client`` does by default: needed only for a private Space, and it tells the
                server who the user is. Off, no token is sent, and the user agent names only this client.
        """
        import httpx
        from gradio_client import Client

        self.url = url
        self.separate_requests = separate_requests
        self._send_hf_token = send_hf_token
        try:
            with no_telemetry(), self._token_kept():  # nothing to Hugging Face on the way (their docstrings)
                self._client = Client(
                    url,
                    token=None if send_hf_token else False,  # None: gradio_client's default, the saved token
                    headers={"user-agent": "mixdemo-client"},  # not the Python and library versions
                    verbose=False,
                    download_files=False,  # the answer is fetched into memory by _fetch: nothing of it on disk
                    analytics_enabled=False,  # not enough alone: see no_telemetry
                    httpx_kwargs={"timeout": min(timeout_s, CONNECT_TIMEOUT_S)},
                )
        except Exception as exc:  # noqa: BLE001 - any network failure reads the same to the user
            if isinstance(exc, httpx.TimeoutException):
                raise ClientError(f"The server at {url} accepted the connection but did not answer within "
                                  f"{CONNECT_TIMEOUT_S:.0f} s; check the address, or try again when it is less "
                                  "busy.") from None
            if tls_failed(exc) and url.startswith("https://"):
                plain = "http://" + url[len("https://"):]
                if http_status(plain, timeout_s) is not None:  # the address answers plain HTTP (python app.py's)
                    raise ClientError(f"The server at {url} speaks plain HTTP, not https: try {plain}") from None
                raise ClientError(f"The secure connection (TLS) to {url} failed: check the address, or that its "
                                  "certificate is one this machine trusts.") from None
            status = http_status(url, timeout_s)
            if status is not None and status < 400:  # something answers there, but not as a Gradio app
                raise ClientError(f"The address {url} answers (HTTP {status}) but is not a Gradio app: it is not a "
                                  "Mixup-Privacy server (python app.py serves one); check the address.") from None
            if status is not None:  # refused or not found: a wrong path, or a private Space without the token
                raise ClientError(f"The address {url} answers HTTP {status}: check the address (a private Space "
                                  "also needs --send-hf-token and a login).") from None
            raise ClientError(
                f"Could not reach a Mixup-Privacy server at {url} ({type(exc).__name__}); "
                "check the address and that the server is running."
            ) from None
        endpoints = self._endpoint_names = self._endpoints()
        if endpoints is not None and "/segment_proxy" not in endpoints:
            self.close()
            raise ClientError(f"The app at {url} has no segment_proxy endpoint: it is not a Mixup-Privacy server "
                              "(python app.py serves one); check the address.")
        self._client.httpx_kwargs["timeout"] = timeout_s  # from here on, requests that segment

    _send_hf_token = False

    def _token_kept(self) -> contextlib.AbstractContextManager:
        """Around each call of ``gradio_client``: :func:`no_saved_token` unless ``send_hf_token``."""
        return contextlib.nullcontext() if self._send_hf_token else no_saved_token()

    def _endpoints(self) -> set[str] | None:
        """The named endpoints of the app (None if its API cannot be listed: the first request then tells)."""
        try:
            with self._token_kept():
                return set(self._client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        except Exception:  # noqa: BLE001 - an API that cannot be listed is not refused here
            return None

    def new_session(self) -> None:
        """Later requests carry a new Gradio session id and no cookie, so the server cannot link them to earlier ones
        by either: ``gradio_client`` keeps the cookies set by the answer to its first request (``/config``: a load
        balancer's affinity cookie, or any the server chooses) and sends them with every later request, of every
        session, the answer's download included (:meth:`_fetch`)."""
        self._client.cookies.clear()
        self._client.reset_session()

    def info(self) -> dict:
        """The server's ``server_info`` endpoint."""
        with self._token_kept():
            return self._client.predict(api_name="/server_info")

    _endpoint_names: set[str] | None = None

    @functools.cached_property
    def _reported(self) -> dict:
        """``server_info``, asked once per connection ({} from a server without the endpoint, which still segments); a
        :class:`ClientError` naming the version mismatch when it is not in a form this client reads (another wire
        format, or not a dict).

        A server that lists the endpoint is asked twice if the first call fails, then refused: its classes, grid
        and limits are what the requests are built on, and taking this client's defaults for them (the phantoms'
        four classes) sent whole scans to a server of other classes or limits, to fail after its work."""
        listed = self._endpoint_names is not None and "/server_info" in self._endpoint_names
        for attempt in range(2 if listed else 1):
            try:
                info = self.info()
                break
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - said below, or at the request
                if not listed:
                    return {}  # a server without it (or whose API cannot be listed): the requests tell
                if _queue_full(exc):  # busy, not failing: asked again at once it is as full, and "failed twice"
                    raise ClientError(SERVER_BUSY) from None  # read as a faulty server
                if attempt == 1:
                    raise ClientError(f"The server's server_info failed twice, so this client does not know its "
                                      f"classes, grid or limits; nothing was sent. {request_failure(exc)}") from None
        if not isinstance(info, dict):
            raise ClientError(version_mismatch("its server_info is not in a form this client reads"))
        if "format" in info and info["format"] != WIRE_FORMAT:
            raise ClientError(version_mismatch(f"it speaks the wire format {str(info['format'])[:40]!r}, this client "
                                               f"{WIRE_FORMAT!r}"))
        for key in ("max_k", "max_request_voxels"):  # per_request reads them during the work: checked here, before it
            if key in info and not _positive_int(info[key]):
                raise ClientError(version_mismatch(f"it reports {key} as {str(info[key])[:40]!r}, which this client "
                                                   "does not read"))
        if not isinstance(info.get("model_sha256"), (str, type(None))):  # the D's pairing check slices it
            raise ClientError(version_mismatch(f"it reports model_sha256 as {str(info['model_sha256'])[:40]!r}, which "
                                               "this client does not read"))
        return info

    def grid_shape(self) -> tuple[int, ...] | None:
        """The grid the server says its model works on (None if it does not say; a :class:`ClientError` naming the
        version mismatch if it says it otherwise than as three sides, which this client cannot check)."""
        grid = self._reported.get("grid_shape")
        if grid is None:
            return None
        if isinstance(grid, (list, tuple)) and len(grid) == 3 and all(_positive_int(n) for n in grid):
            return tuple(int(n) for n in grid)
        raise ClientError(version_mismatch(f"it reports grid_shape as {str(grid)[:40]!r}, which this client does not "
                                           "read"))

    def classes(self) -> list[str] | None:
        """The class names the server says its model gives, background first (None if it does not say; a
        :class:`ClientError` naming the version mismatch if it says them otherwise than as two or more names)."""
        names = self._reported.get("classes")
        if names is None:
            return None
        if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise ClientError(version_mismatch(f"it reports its classes as {str(names)[:40]!r}, which this client "
                                               "does not read"))
        return names

    def num_classes(self) -> int:
        """How many classes (background included) the server's answers hold: those it names, else the phantoms'
        four (a server that does not say is an older one of this project)."""
        from mixdemo.classes import NUM_CLASSES

        return len(self.classes() or ()) or NUM_CLASSES

    def model_sha256(self) -> str | None:
        """The checksum of the S the server says it serves (None if it does not say)."""
        return self._reported.get("model_sha256")

    def per_request(self, shape: Sequence[int]) -> int:
        """How many proxies of ``shape`` one request may carry, within the limits the server reports (this
        client's defaults for a server that does not report them)."""
        return proxies_per_request(shape, int(self._reported.get("max_k", MAX_PER_REQUEST)),
                                   int(self._reported.get("max_request_voxels", MAX_REQUEST_VOXELS)))

    def __call__(self, proxies: np.ndarray) -> torch.Tensor:
        """(K, X, Y, Z) proxies → (K, C, X, Y, Z) mixed probabilities from the server."""
        k = len(proxies)
        if self.separate_requests:
            order = np.random.default_rng().permutation(k)
            out = torch.empty((k, self.num_classes(), *proxies.shape[1:]))
            for i in order:
                self.new_session()  # no session id shared by two of them
                out[i] = self._request(proxies[i : i + 1])[0]
            return out
        step = self.per_request(proxies.shape[1:])
        return torch.cat([self._request(proxies[i : i + step]) for i in range(0, k, step)])

    def _request(self, proxies: np.ndarray) -> torch.Tensor:
        from gradio_client import handle_file

        expected = (proxies.shape[0], self.num_classes(), *proxies.shape[1:])
        with tempfile.TemporaryDirectory(prefix="mixdemo-proxy-") as tmp:
            path = Path(tmp) / "proxy.npy"  # neutral name: nothing of the input's name or header
            np.save(path, np.ascontiguousarray(proxies, dtype=np.float16), allow_pickle=False)
            try:
                with self._token_kept():
                    answer = self._client.predict(handle_file(str(path)), api_name="/segment_proxy")
                probs = self._fetch(answer, answer_bytes_at_most(expected))
            except ClientError:
                raise
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - AppError carries the server's message
                raise ClientError(request_failure(exc)) from None
        if probs.shape != expected:
            raise ClientError(f"The server answered with shape {probs.shape}; expected {expected}.")
        answer = torch.from_numpy(probs.astype(np.float32))
        if not probabilities(answer):
            raise ClientError("The server answered with values that are not probabilities (outside 0 to 1, or not "
                              "numbers); its model or its precision setting is broken, and nothing was written.")
        return answer

    def _fetch(self, answer: object, most_bytes: int) -> np.ndarray:
        """The answer file the endpoint names, fetched once into memory (the server deletes it after the first
        fetch) from this server's own file route, whatever URL the answer gives: nothing of it is written to disk,
        and ``gradio_client``'s download, which leaves an empty folder in the temporary directory per answer, is
        not used. Read as a stream and refused once it passes ``most_bytes`` (:func:`answer_bytes_at_most`): a
        server that answers more than its request can need, by mistake or on purpose, does not fill the user's
        memory. A redirect is followed on the server's own host only (:func:`same_host_only`): the request's
        headers, the Hugging Face token among them with ``--send-hf-token``, go to no other."""
        import httpx
        from gradio_client.utils import encode_file_path

        path = answer.get("path") if isinstance(answer, dict) else None
        if not isinstance(path, str):
            raise ClientError("The server answered without a file; is it a Mixup-Privacy server?")
        client = self._client
        url = client.src_prefixed + "file=" + encode_file_path(path)
        content = bytearray()
        kwargs = dict(client.httpx_kwargs)
        hooks = dict(kwargs.pop("event_hooks", None) or {})
        origin = httpx.URL(url)
        hooks["request"] = [*hooks.get("request", []), same_host_only(origin.host, secure=origin.scheme == "https")]
        with httpx.Client(headers=client.headers, cookies=client.cookies, verify=client.ssl_verify,
                          follow_redirects=True, event_hooks=hooks, **kwargs) as http:
            with http.stream("GET", url) as response:
                response.raise_for_status()
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > most_bytes:
                    raise ClientError(answer_too_large(int(declared), most_bytes))
                for chunk in response.iter_bytes():
                    content += chunk
                    if len(content) > most_bytes:
                        raise ClientError(answer_too_large(None, most_bytes))
        return npy_from_bytes(content)

    def close(self) -> None:
        """Let go of the connection (at once: see :func:`close_client`)."""
        close_client(self._client)


def probabilities(values: torch.Tensor) -> bool:
    """Whether every value is a probability (a number in [0, 1]): a NaN answer (a broken model, or a precision
    the server's hardware does not hold) unmixed into an empty segmentation, written as if it were one."""
    low, high = torch.aminmax(values)  # NaN anywhere makes both NaN, and the comparisons false
    return bool(low >= 0) and bool(high <= 1)


def same_host_only(host: str, secure: bool = False) -> Callable[[object], None]:
    """An ``httpx`` request hook that refuses, before it is sent, a request to a host other than ``host``: the
    answer's download follows the server's redirects on its own host (http to https, a path behind a proxy), not
    to another, which would get the request's headers (``x-hf-authorization``, a custom header that ``httpx``
    keeps across hosts, with ``--send-hf-token``). With ``secure`` (an https address) a request in plain http is
    refused too: the answer and those headers would cross the network unencrypted."""

    def check(request) -> None:  # noqa: ANN001 - an httpx.Request
        if request.url.host != host:
            raise ClientError(f"The server sent this client to another host ({str(request.url.host)[:60]}) for its "
                              "answer; not followed. Is it a Mixup-Privacy server you trust?")
        if secure and request.url.scheme != "https":
            raise ClientError("The server sent this client from https to plain http for its answer, which would "
                              "cross the network unencrypted; not followed. Check the server's proxy settings.")

    return check


ANSWER_HEADER_BYTES = 4096
"""Room for an answer's ``.npy`` header in :func:`answer_bytes_at_most` (NumPy writes 128 bytes for these arrays)."""


def answer_bytes_at_most(shape: Sequence[int]) -> int:
    """The most bytes an answer of ``shape`` can need: its values as float32 (the wire format's are float16; a
    float32 answer is read too) and a header."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(np.float32).itemsize + ANSWER_HEADER_BYTES


def answer_too_large(declared: int | None, most_bytes: int) -> str:
    """The refusal of an answer larger than its request can need."""
    size = f"{declared / 2**20:.1f} MiB" if declared is not None else "more"
    return (f"The server answered with {size}, where this request's answer needs at most {most_bytes / 2**20:.1f} "
            "MiB; it was not read. Is it a Mixup-Privacy server of this version?")


def npy_from_bytes(content: bytes | bytearray) -> np.ndarray:
    """A ``.npy`` file's array from its bytes, without a copy and never unpickling; a :class:`ClientError` for an
    array that is not of floats or that its bytes hold only in part."""
    buffer = io.BytesIO(content)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        reader = readers.get(np.lib.format.read_magic(buffer))
        if reader is None:
            raise ClientError("The server answered with a .npy file of a format this client does not read.")
        shape, fortran_order, dtype = reader(buffer)
    except ValueError:  # numpy's word for a header it cannot parse (the magic string included)
        raise ClientError("The server answered with a file that is not a readable .npy file.") from None
    if dtype.hasobject:
        raise ClientError("The server answered with an object array; expected numbers.")
    if dtype.kind != "f":
        raise ClientError(f"The server answered with values of type {dtype}; expected floating-point probabilities.")
    count = int(np.prod(shape, dtype=np.int64))
    if len(content) - buffer.tell() < count * dtype.itemsize:
        raise ClientError(f"The server's answer was cut short: its header says {shape} values, its file holds "
                          "fewer.")
    array = np.frombuffer(content, dtype=dtype, count=count, offset=buffer.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


CONNECTION_LOST = ("The connection to the server was lost (it stopped, restarted or the network dropped); "
                   "try again.")


def _lost_connection(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, means the connection went, not a refusal (an
    ``AppError``, the server's own message, never does)."""
    import httpx
    from gradio_client.exceptions import AppError

    lost = (concurrent.futures.CancelledError, asyncio.CancelledError, httpx.NetworkError, httpx.RemoteProtocolError,
            ConnectionError)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and not isinstance(exc, AppError):
        if isinstance(exc, lost) or str(exc) == "Server stopped.":  # gradio_client's word for a server shut down
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


SERVER_BUSY = ("The server is busy: its queue of requests is full (other clients'); nothing of this scan was "
               "segmented; try again in a few minutes.")


def _queue_full(exc: BaseException) -> bool:
    """Whether ``exc`` is Gradio's refusal of a request because the server's queue is full (its ``max_size``):
    ``gradio_client``'s ``QueueError("Queue is full! Please try again.")``."""
    return type(exc).__name__ == "QueueError" and "queue is full" in str(exc).lower()


def request_failure(exc: BaseException) -> str:
    """One plain sentence for a failed request: a lost connection as such, a full queue as a busy server, else the
    server's message."""
    if _lost_connection(exc):
        return CONNECTION_LOST
    if _queue_full(exc):
        return SERVER_BUSY
    msg = str(exc).strip() or type(exc).__name__
    return f"The server refused or failed the request: {msg}"


def close_client(client) -> None:  # noqa: ANN001 - a gradio_client.Client
    """Close a ``gradio_client`` Client without waiting for its heartbeat thread.

    ``Client.close`` asks the thread to stop, then waits up to 1 s for it: the thread sits in a read of the
    server's heartbeat stream and sees the request only at the server's next message. That second was spent at
    every exit of the command-line client. The thread is a daemon and ends by itself at that next message (or
    with the process); here it is asked to stop and not waited for. Falls back to ``close`` if the Client has no
    such thread (another ``gradio_client`` version)."""
    stop = getattr(client, "_kill_heartbeat", None)
    try:
        if isinstance(stop, threading.Event):
            stop.set()
        else:
            client.close()
    except Exception:  # noqa: BLE001 - closing never fails the caller
        pass


# ------------------------------------------------------------------------------ the CLI
def segment_file(
    scan_path: str | os.PathLike,
    out_path: str | os.PathLike,
    server: ServerFn,
    *,
    references: Sequence[Reference],
    alpha: float | None = None,
    k: int = 1,
    mode: str = "whole",
    centre: Sequence[int] | None = None,
    seed: int | None = None,
    mirror: bool = MIRROR_BY_DEFAULT,
    unmix_model: torch.nn.Module | None = None,
    progress: ProgressFn | None = None,
    grid_confirmed: bool = False,
    class_names: Sequence[str] | None = None,
    software_version: str = "",
    series: int | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> MixKey:
    """Segment a scan privately with ``server`` and write the labels in the input's space; returns the key used.
    The client keeps only what one request needs at a time (:func:`run_private_labels`; for a registered scan, whose
    labels are resampled onto its file's grid, the class scores). ``grid_confirmed``: the
    server said its model works on the references' grid. An ``out_path`` ending in ``.dcm`` gets a DICOM SEG of
    the input series (:mod:`mixdemo.dicomseg`; its headers are read before any request, so a series that cannot
    carry one costs no server time), its segments named by ``class_names`` (the server's; default the
    phantoms'), ``software_version`` recorded in it. ``series``: of a DICOM input holding several, which.
    ``on_warning`` hears a registration that looks poor (without it, ``progress`` does)."""
    seg_source = _seg_source(scan_path, series) if is_dicom_seg(out_path) else None
    target = load_target(scan_path, progress=progress, grid=references[0].image.shape, grid_confirmed=grid_confirmed,
                         series=series)
    if target.warning and on_warning:
        on_warning(target.warning)
    elif target.warning and progress:
        progress(0.0, f"warning: {target.warning}")
    if target.image.shape != references[0].image.shape:
        raise ClientError("The references are not on the models' 144×192×160 grid.")
    if mode == "patch" and centre is not None and not all(0 <= c < n for c, n in zip(centre, target.image.shape)):
        raise ClientError(f"The patch centre {','.join(map(str, centre))} lies outside the "
                          f"{_shape_text(target.image.shape)} grid.")
    if copies := copies_of_target(target.image, references):  # the target's own case among the references
        references = [r for r in references if r.ref_id not in copies]
        if progress:
            progress(0.0, f"warning: {len(copies)} reference(s) are this scan itself, left out ({SELF_REFERENCE})")
        if not references:
            raise ClientError(f"Every reference is this scan itself ({SELF_REFERENCE}): give references of other "
                              "subjects.")
    key = make_key([r.ref_id for r in references], k, alpha=alpha, seed=seed, mirror=mirror)
    prediction = run_private_labels(target.image, references, key, server, unmix_model, mode=mode, centre=centre,
                                    progress=progress, scores=target.needs_scores)
    if seg_source is None:
        target.save_labels(prediction, out_path)
        return key
    from mixdemo.dicomseg import SegmentationError, write_segmentation
    from mixdemo.classes import CLASS_NAMES

    try:
        write_segmentation(*target.labels_on_input(prediction), seg_source, out_path, class_names or CLASS_NAMES,
                           software_version=software_version)
    except (SegmentationError, ValueError) as exc:  # the server's work is kept: NIfTI beside it
        target.save_labels(prediction, nifti_beside(out_path))
        raise ClientError(f"{exc} The segmentation was written as NIfTI instead, under the same name ending in "
                          ".nii.gz.") from None
    return key


def nifti_beside(path: str | os.PathLike) -> Path:
    """``path`` with its ``.dcm`` suffix replaced by ``.nii.gz``."""
    return Path(re.sub(r"\.dcm$", ".nii.gz", os.fspath(path), flags=re.IGNORECASE))


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """Whether an output path asks for a DICOM SEG (a ``.dcm`` name) rather than NIfTI."""
    return os.fspath(path).lower().endswith(".dcm")


def _seg_source(scan_path: str | os.PathLike, series: int | None = None):  # noqa: ANN202 - a SeriesReference
    from mixdemo.dicomseg import series_reference

    _check_dicom_inputs([scan_path], SEG_NEEDS_DICOM)
    return series_reference(scan_path, series)


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(int(n)) for n in shape)


def _parse_centre(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        x, y, z = (int(v) for v in text.split(","))
    except ValueError:
        raise ClientError("--centre must be three integers X,Y,Z (voxels of the MNI grid).") from None
    return x, y, z


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="python -m mixdemo.client",
        description="Privacy-preserving segmentation: mix locally, send only proxies, unmix locally.",
    )
    p.add_argument("scan", nargs="+",
                   help="input T1 scan, or several: a NIfTI (.nii/.nii.gz) or a DICOM series (a .zip of its files, or "
                        "their folder); registered to MNI locally unless already on the grid")
    p.add_argument("-o", "--output", required=True,
                   help="output label NIfTI, written in the input's space (a name ending in .dcm: a DICOM SEG of the "
                        "input series); with several scans (or one, given a name ending in / or an existing folder) a "
                        "folder, which gets <scan name>_seg.nii.gz for each "
                        "(<scan name>_seg.dcm with --dicom-seg)")
    p.add_argument("--dicom-seg", action="store_true",
                   help="write DICOM SEG objects (.dcm) that refer to the input DICOM series, for a PACS or a DICOM "
                        "viewer, instead of NIfTI (DICOM inputs only; implied by -o NAME.dcm). A SEG carries the "
                        "series' patient and study fields, as the standard requires; it is written here, never sent")
    p.add_argument("--series", type=int, default=None, metavar="N",
                   help="for one DICOM input holding several series (a whole study's export): segment series N of the "
                        "numbered list the client prints when run without --series (most files first; an enhanced "
                        "multi-frame file counts as one). Series that read alike are refused: export that one alone")
    p.add_argument("--server", required=True, help="URL of the server, e.g. http://127.0.0.1:7860")
    p.add_argument("--alpha", type=float, default=None,
                   help=f"target weight α, 0.05 to 0.95 (default: random in {DEFAULT_ALPHA_RANGE}; above 0.5 the scan "
                        "outweighs its reference in the proxy, and the README's α sweep measures what that costs)")
    p.add_argument("--tta", type=int, default=1, metavar="K",
                   help="number of references, the K of Eq. 5-6 (default: 1; each adds one proxy for the server to "
                        "segment; the README's tables use K = 10, which lifts Dice)")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror the scan left-right in every second mix and its answer back (a test-time augmentation "
                        "at no extra server cost; the README's privacy section measures it; default: "
                        f"{'on' if MIRROR_BY_DEFAULT else 'off'})")
    p.add_argument("--references", default=None, metavar="DIR",
                   help="folder of <id>/t1.nii.gz + seg.nii.gz, or of BraTS case folders for models trained on "
                        "BraTS (default: the public phantom bank, which a server can know: a demo, not privacy)")
    p.add_argument("--mode", choices=MODES, default="whole", help="whole volume (default), or one 32³ patch")
    p.add_argument("--centre", default=None, help="patch centre X,Y,Z (patch mode; default: brain centre)")
    p.add_argument("--seed", type=count(0), default=None, help="seed of the key, 0 or more (default: random)")
    p.add_argument("--unmixing", default=None, metavar="NAME",
                   help="the client network D: a model folder, e.g. unmixing-p4 (a fraction of the client time, "
                        "a lower Dice; see the README's performance section); default $MIXDEMO_UNMIXING or "
                        f"{DEFAULT_UNMIXING}")
    p.add_argument("--separate-requests", action="store_true",
                   help="send each of the K proxies as its own request, in random order, each in a new session")
    p.add_argument("--send-hf-token", action="store_true",
                   help="send your Hugging Face token (HF_TOKEN or the saved login) to the server: needed only for a "
                        "private Space, and it tells the server who you are (default: no token is sent)")
    args = p.parse_args(argv)
    args.scan = expand_wildcards(args.scan)
    check_setting_variables()  # D's precision and the allocator switch, before any work

    from mixdemo.io import ScanError
    from mixdemo.weights import WeightsError

    remote = None
    try:
        outputs, refs, unmix = _prepare(args)
        remote = RemoteServer(args.server, separate_requests=args.separate_requests, send_hf_token=args.send_hf_token)
        server_grid = remote.grid_shape()
        check_classes(remote.classes(), unmix, refs or [])  # the D's, before the public bank is built
        if refs is None:  # the public bank: its grid is known before it is built (minutes the first time)
            refs = _public_bank(args, server_grid)
        check_reference_grid(refs[0].image.shape, server_grid)
        check_classes(remote.classes(), None, refs)  # the references' labels (the D was checked above)
        if unmix is None:
            print(f"note: the default client network D ({unmixing_name()}) is not in the weights folder; using the "
                  "naive unmixing (Eq. 4), which is less accurate: give --unmixing NAME (a D's folder there, e.g. "
                  "'unmixing' as training.train writes it) for the learned one.", file=sys.stderr)
        elif warning := pairing_warning(args.unmixing or unmixing_name(), remote.model_sha256()):
            print(f"warning: {warning}", file=sys.stderr)
    except (ClientError, ScanError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if remote is not None:
            remote.close()
        return 2
    try:
        failed = _segment_scans(args, outputs, remote, refs, unmix, grid_confirmed=server_grid is not None)
    finally:
        remote.close()
    if failed and len(outputs) > 1:
        written = "none was written" if len(failed) == len(outputs) else "the others were written"
        print(f"error: {len(failed)} of {len(outputs)} scans failed (scan {', '.join(map(str, failed))}); {written}",
              file=sys.stderr)
    return 2 if failed else 0


PUBLIC_BANK_WARNING = (
    "warning: without --references the scan is mixed with the public phantom bank, which a server can know: it can "
    "then try each bank scan and α and undo the mix (the README's privacy section, 'known bank'). Keep a private "
    "bank and pass it with --references DIR for privacy.")


def _prepare(args: argparse.Namespace) -> tuple[list[Path], list[Reference] | None, torch.nn.Module | None]:
    """What main() checks and loads before it connects, cheapest first, so that a mistake in the command line is
    one message before the references load: the outputs, the references of ``--references`` (None without it:
    :func:`_public_bank` after connecting) and the client's D."""
    check_server_address(args.server)
    if len(args.scan) == 1 and not (Path(args.scan[0]).is_file() or Path(args.scan[0]).is_dir()):
        raise ClientError("The input scan could not be found.")  # one scan: nothing to go on with, so before connecting
    if args.dicom_seg or is_dicom_seg(args.output):
        _check_dicom_inputs(args.scan, SEG_NEEDS_DICOM)
    if args.series is not None:
        if args.series < 1:
            raise ClientError("--series counts from 1 (the first series an input's refusal lists).")
        if len(args.scan) > 1:
            raise ClientError("--series picks a series of one input (each study numbers its own series): give one "
                              "input with it.")
        _check_dicom_inputs(args.scan, SERIES_NEEDS_DICOM)
    if args.alpha is not None and not 0.05 <= args.alpha <= 0.95:
        raise ClientError("--alpha must lie between 0.05 and 0.95.")
    if args.alpha is not None and args.alpha > 0.5:
        print(f"warning: --alpha {args.alpha:g} makes the scan outweigh its reference in the proxy: in the README's α "
              "sweep (results/privacy.json, alpha_sweep) a server re-identifies such proxies far more often than at "
              f"the default α in {DEFAULT_ALPHA_RANGE}.", file=sys.stderr)
    if args.centre is not None and args.mode != "patch":
        raise ClientError("--centre places the patch of --mode patch; the whole mode segments the whole volume.")
    _parse_centre(args.centre)
    from mixdemo import examples

    check_k(args.tta, None if args.references else len(examples.reference_ids()))
    unmix = unmixing_model(name=args.unmixing)  # before any request: a D for several references is refused here
    outputs = output_paths(args.scan, args.output, dicom_seg=args.dicom_seg)  # after the checks that need no
    # folder (the D's included), so that a command refused by them leaves none behind
    if args.mirror and args.tta == 1:
        print("note: --mirror mirrors every second mix, and K = 1 makes only one: nothing is mirrored.", file=sys.stderr)
    args.mirror = MIRROR_BY_DEFAULT if args.mirror is None else args.mirror
    if not args.references:
        return outputs, None, unmix
    refs = examples.load_reference_dir(args.references, num_classes=None)  # checked against the server's classes
    check_k(args.tta, len(refs))
    return outputs, refs, unmix


def _public_bank(args: argparse.Namespace, server_grid: Sequence[int] | None) -> list[Reference]:
    """The public phantom bank, once the server's grid is known to be its own (a ClientError before it is built
    otherwise), with the warning that a server may know it."""
    from mixdemo import examples

    check_reference_grid(examples.reference_grid(), server_grid)
    print(PUBLIC_BANK_WARNING, file=sys.stderr)
    refs = examples.reference_bank(lambda f, m: print(m, file=sys.stderr))
    check_k(args.tta, len(refs))
    return refs


def expand_wildcards(scans: Sequence[str]) -> list[str]:
    """On Windows, whose shells (cmd, PowerShell) pass ``scans/*.nii.gz`` on as it is where a POSIX shell expands it,
    each argument with ``*``, ``?`` or ``[`` that names no file replaced by the paths it matches, sorted (kept as it
    is when it matches none: then said as a missing scan). Elsewhere the arguments as given."""
    if sys.platform != "win32":
        return list(scans)
    expanded = []
    for scan in scans:
        matched = sorted(glob.glob(scan)) if any(c in scan for c in "*?[") and not os.path.exists(scan) else []
        expanded.extend(matched or [scan])
    return expanded


def check_server_address(url: str) -> None:
    """A :class:`ClientError` unless ``url`` is an http(s) address with a host, or a Hugging Face Space id
    (``owner/name``, which ``gradio_client`` also takes)."""
    if re.fullmatch(r"https?://[^/\s?#]+(/\S*)?", url):  # lower case: gradio_client takes no other
        return
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", url):
        return
    scheme, _, rest = url.partition("://")
    if scheme.lower() in ("http", "https") and re.fullmatch(r"[^/\s?#]+(/\S*)?", rest):
        raise ClientError(f"The server address's scheme must be in lower case: try {scheme.lower()}://{rest}")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise ClientError("The server address must start with http:// or https:// and name a host.")
    raise ClientError(f"The server address needs a scheme (http:// or https://): try http://{url}")


def _segment_scans(args: argparse.Namespace, outputs: list[Path], remote: ServerFn, refs: Sequence[Reference],
                   unmix: torch.nn.Module | None, *, grid_confirmed: bool = False) -> list[int]:
    """Each scan of the command line in turn, each with its own key; returns the positions of those that failed
    (reported by position, never by file name). ``grid_confirmed``: the server said it works on the references'
    grid."""
    from mixdemo.io import ScanError
    from mixdemo.weights import WeightsError

    failed, warned = [], []
    for i, (scan, out) in enumerate(zip(args.scan, outputs)):
        tag = f"scan {i + 1} of {len(outputs)}: " if len(outputs) > 1 else ""
        warnings: list[str] = []

        def warn(message: str, tag: str = tag, warnings: list[str] = warnings) -> None:
            warnings.append(message)
            print(f"warning: {tag}{message}", file=sys.stderr)

        if isinstance(remote, RemoteServer):
            remote.new_session()  # each scan's requests in a session of their own
        try:
            if not (Path(scan).is_file() or Path(scan).is_dir()):  # a DICOM series may be a folder
                raise ClientError("The input scan could not be found.")
            key = segment_file(
                scan, out, remote, references=refs, alpha=args.alpha, k=args.tta, mode=args.mode,
                centre=_parse_centre(args.centre), seed=None if args.seed is None else args.seed + i,
                mirror=args.mirror, unmix_model=unmix, progress=lambda f, m, tag=tag: print(f"[{f:4.0%}] {tag}{m}", file=sys.stderr),
                grid_confirmed=grid_confirmed, series=args.series, on_warning=warn,
                **(_seg_naming(remote, args) if is_dicom_seg(out) else {}),
            )
        except (ClientError, ScanError, WeightsError, ValueError) as exc:  # this scan; the others go on
            print(f"error: {tag}{exc}", file=sys.stderr)
            failed.append(i + 1)
            continue
        except OSError as exc:  # e.g. the disk filled while writing: a message without the path, the others go on
            print(f"error: {tag}a file could not be read or written ({exc.strerror or type(exc).__name__}).",
                  file=sys.stderr)
            failed.append(i + 1)
            continue
        except Exception as exc:  # noqa: BLE001 - a fault of ours or a library's: alone, its traceback; in a batch,
            if len(outputs) == 1:  # the others go on (its message may hold the path: only its type is said)
                raise
            print(f"error: {tag}failed unexpectedly ({type(exc).__name__}): run this scan alone to see the details, "
                  "and please report it.", file=sys.stderr)
            failed.append(i + 1)
            continue
        check = "; check it before use: its registration warned (above)" if warnings else ""
        print(f"{tag}wrote the segmentation ({key.k} mix(es), mode {args.mode}){check}", file=sys.stderr)
        if warnings:
            warned.append(i + 1)
    if warned and len(outputs) > 1:
        print(f"warning: the registration of scan {', '.join(map(str, warned))} warned: check "
              f"{'their segmentations' if len(warned) > 1 else 'its segmentation'} before use", file=sys.stderr)
    return failed


def _seg_naming(remote: ServerFn, args: argparse.Namespace) -> dict:
    """What a DICOM SEG records of the models: the server's class names and a version naming S (its checksum)
    and the client's D."""
    if not isinstance(remote, RemoteServer):
        return {}
    sha = remote.model_sha256()
    d_name = Path(args.unmixing or unmixing_name()).name  # a folder's name, never the path to it on this machine
    version = f"S {sha[:12] if isinstance(sha, str) else 'unknown'}; D {d_name}"
    return {"class_names": remote.classes(), "software_version": version[:64]}


def output_paths(scans: Sequence[str], output: str, *, dicom_seg: bool = False) -> list[Path]:
    """Where each scan's segmentation goes: ``output`` itself for one scan (a .nii/.nii.gz name, or .dcm for a
    DICOM SEG), else, or for one scan when ``output`` names a folder (ends in ``/`` or is one, as a shell glob that
    matched one scan leaves it), ``<output>/<scan name>_seg.nii.gz`` (``_seg.dcm`` with ``dicom_seg``; two scans
    may not share a name). The folder that receives them is made and checked for writing here, before any scan is
    segmented, so a bad ``-o`` loses no work."""
    if not str(output).strip():  # -o "$OUT" with OUT unset: not the current folder by accident
        raise ClientError("The output is empty: give an output file name (.nii.gz) or a folder (-o segs/; -o ./ for "
                          "the current one).")
    file_suffixes = (".nii", ".nii.gz", ".dcm")
    names_a_file = str(output).lower().endswith(file_suffixes)
    names_folder = not names_a_file and (str(output).endswith(("/", os.sep)) or Path(output).is_dir())
    if len(scans) == 1 and not names_folder:
        if not str(output).lower().endswith(file_suffixes):
            raise ClientError("The output file name must end in .nii or .nii.gz (or .dcm for a DICOM SEG).")
        if dicom_seg and not is_dicom_seg(output):
            raise ClientError("--dicom-seg writes a DICOM SEG: give an output name ending in .dcm.")
        if Path(output).is_dir():
            raise ClientError("The output names a folder; give a .nii or .nii.gz file name.")
        writable_folder(Path(output).parent)
        return _not_replacing_inputs([Path(output)], scans)
    if str(output).lower().endswith(file_suffixes):
        raise ClientError("With several scans the output is a folder, not a file.")
    names = [scan_stem(s) for s in scans]
    if len(set(names)) < len(names):
        raise ClientError("Two input scans share a file name; their segmentations would overwrite each other.")
    folder = Path(output)
    writable_folder(folder)
    if len({n.casefold() for n in names}) < len(names) and folds_case(folder):
        raise ClientError("Two input scans' file names differ only in case, which the output folder does not tell "
                          "apart (macOS's and Windows's file systems); their segmentations would overwrite each other.")
    return _not_replacing_inputs([folder / f"{n}_seg.{'dcm' if dicom_seg else 'nii.gz'}" for n in names], scans)


def _not_replacing_inputs(outputs: list[Path], scans: Sequence[str]) -> list[Path]:
    """``outputs``, or a :class:`ClientError` (before any work) if one of them is an input scan's file (the same file,
    by any name or link) or a DICOM file in an input series' folder: written once its scan is segmented, it would
    replace the scan, or an image of the series, lost. The scan is named by its position, never its file name."""
    for out in outputs:
        for i, scan in enumerate(scans):
            try:
                same = out.exists() and (os.path.samefile(out, scan) or _is_dicom_file_in_folder(out, scan))
            except OSError:  # a scan that is not there: said where its turn comes
                same = False
            if same:
                what = "a file of the input series" if os.path.isdir(scan) else "the input scan"
                raise ClientError(f"The output would replace {what} (scan {i + 1}) with its segmentation: "
                                  "give another output name or folder.")
    return outputs


def _is_dicom_file_in_folder(path: Path, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file (an image of the series, say) in ``folder`` (a DICOM series given as its
    folder), at any depth, by any name. A NIfTI file there (a segmentation written beside the series) is not."""
    from mixdemo.dicom import has_dicom_marker

    return os.path.isdir(folder) and Path(folder).resolve() in path.resolve().parents and has_dicom_marker(path)


SEG_NEEDS_DICOM = "A DICOM SEG refers to the DICOM series it segments"
SERIES_NEEDS_DICOM = "--series picks one series of a DICOM input"


def _check_dicom_inputs(scans: Sequence[str | os.PathLike], why: str) -> None:
    """A ClientError, before any request, if something only a DICOM input has (``why`` says what) is asked of a
    scan that is not a DICOM series (named by its position, never its file name)."""
    from mixdemo.dicom import is_series_input

    nifti = [i + 1 for i, s in enumerate(scans) if Path(s).exists() and not is_series_input(s)]  # a missing one
    # is said where its turn comes, and the others go on
    if nifti:
        which = ("the input is" if len(scans) == 1 else
                 f"scan{'s' if len(nifti) > 1 else ''} {', '.join(map(str, nifti))} of {len(scans)} "
                 f"{'are' if len(nifti) > 1 else 'is'}")
        raise ClientError(f"{why}, and {which} not a DICOM series" + (": write NIfTI (.nii.gz) instead."
                                                                      if why == SEG_NEEDS_DICOM else "."))


def scan_stem(scan: str | os.PathLike) -> str:
    """A scan's name without its format's suffix: ``.nii``, ``.nii.gz``, a DICOM series' ``.zip`` or ``.dcm``, or
    nothing for a series' folder (``.`` or ``..`` named as the folder they stand for)."""
    return re.sub(r"(\.nii(\.gz)?|\.zip|\.dcm)$", "", Path(os.path.abspath(scan)).name, flags=re.IGNORECASE)


def writable_folder(folder: Path) -> None:
    """Make ``folder`` (and its parents) if missing; a :class:`ClientError` if that fails or it cannot be written
    (found out by making and removing a file there)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ClientError("The output folder could not be made: a file stands where a folder is needed.") from None
    except OSError as exc:
        raise ClientError(f"The output folder could not be made ({exc.strerror or type(exc).__name__}).") from None
    try:  # a real write: os.access says yes to root everywhere, and to special filesystems such as /proc
        fd, probe = tempfile.mkstemp(prefix=".mixdemo-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError:
        raise ClientError("The output folder cannot be written to.") from None


def folds_case(folder: Path) -> bool:
    """Whether ``folder`` takes names that differ only in case for one file (macOS's and Windows's usual file systems;
    a FAT or SMB mount elsewhere): found by making a file there and looking for it under its name in the other case."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".mixdemo-case-", dir=folder)
    except OSError:
        return True  # cannot tell: as if it did, which at worst refuses names that differ only in case
    os.close(fd)
    try:
        return os.path.exists(os.path.join(os.path.dirname(probe), os.path.basename(probe).swapcase()))
    finally:
        os.unlink(probe)


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a scheduler's stop) leave as an exception does, so that cleanups run: the half-written
    output's temporary file (a DICOM SEG's holds the patient's name) and a series' unpacked copy are deleted."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def cli(argv: list[str] | None = None) -> int:
    """``python -m mixdemo.client``: :func:`main`, with SIGTERM leaving as an exception does and Ctrl-C said in one
    line (exit status 130), not as a traceback out of gradio_client's wait."""
    if hasattr(sys.stdout, "reconfigure"):  # --help's α, ≥, − escaped where stdout's encoding lacks them (Windows'
        sys.stdout.reconfigure(errors="backslashreplace")  # cp1252 when piped or redirected), as on stderr
    exit_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on Ctrl-C is a KeyboardInterrupt
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
