"""The server's S over proxies of any size, within a memory budget: the one implementation that
``mixdemo.server`` (the remote endpoint) and ``mixdemo.pipeline`` (local runs) share.

It imports no client code (no mixing, no unmixing, no reference bank) and sees proxies only.

Policy for K proxies (K, X, Y, Z), sides padded to multiples of 16 (U-Net++):

1. Small proxies (patch mode, ≤ :data:`MAX_BATCH_VOXELS` each, within the budget) go through S together in batches:
   exact, since S is in eval mode (batch norm uses its running statistics).
2. Larger ones go one at a time, in one pass when the whole volume fits the memory budget
   (:func:`memory_budget`; exact), else in slabs: the full X × Y extent and as few Z-slabs as fit
   the budget, overlapping by ≥ :data:`SLAB_OVERLAP` voxels and blended by MONAI's Gaussian sliding
   window (the X and Y weights cancel, so only the slab seams are blended). Slabs are not exact
   at the seams (S sees zero padding there); ``python -m mixdemo.bench`` measures their time,
   peak memory and Dice against the whole pass.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from mixdemo import HUGE_PAGES_ENV  # set by the package on import
from mixdemo.launch import KEEP_FREED_ENV, S_MEMORY_ENV, SWITCH_ON, megabytes  # app.py checks these at start

ProgressFn = Callable[[float, str], None]

MEMORY_ENV = S_MEMORY_ENV
"""Environment variable: the memory (MB) S's activations may take on the CPU."""

DEFAULT_CPU_BUDGET_MB = 6144
"""Default budget on the CPU (capped at half the available RAM): the 144×192×160 phantom grid
(≈ 1.8 GB with the fused S that ``load_model`` returns, ≈ 5 GB unfused) then takes one exact pass,
as the committed evaluations did. A smaller budget, e.g. ``MIXDEMO_S_MEMORY_MB=1200``, takes Z-slabs
with slightly different seams; ``python -m mixdemo.bench`` measures both (``levers.s_memory_budget``)."""

BYTES_PER_VOXEL_PER_WIDTH = 78.0
"""Peak activation memory of one inference pass of MONAI's U-Net++ forward per padded voxel, per unit
of its first feature width (measured on the CPU, float32: ≈ 1 150 B/voxel for the shipped widths 16)."""

FUSED_BYTES_PER_VOXEL_PER_WIDTH = 28.0
"""The same for S after :meth:`~mixdemo.models.SegmentationNet.fuse_for_inference` (no concatenated
tensors; ≈ 420 B/voxel measured for widths 16, softmax output included)."""

MAX_BATCH_VOXELS = 1_000_000
"""Proxies this small (patch mode) go through S together, in one batch."""

SLAB_OVERLAP = 16
"""Least overlap (voxels) between neighbouring slabs."""


_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)
_TRIM_THRESHOLD_BYTES = 2**31 - 1  # the largest glibc takes: a free top of the heap beyond 2 GiB is still returned
_THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _available_memory_bytes() -> float | None:
    """Memory the kernel could give this process now (Linux), else None."""
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def huge_pages() -> bool:
    """Whether PyTorch was asked for transparent huge pages (:data:`HUGE_PAGES_ENV` is ``1``) and the kernel
    grants them on request (its mode is ``always`` or ``madvise``). The kernel still falls back to 4 kB
    pages where it has no free 2 MB ones."""
    if os.environ.get(HUGE_PAGES_ENV, "").strip() != "1":
        return False
    try:
        mode = _THP_MODE_FILE.read_text()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


@functools.cache
def _c_function(name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """A function of the C library this process runs on, looked up once (None where it has none)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def freed_memory_kept_by_choice() -> bool:
    """Whether this process asks to keep freed memory within each step (:func:`keep_freed_memory`):
    ``$MIXDEMO_KEEP_FREED_MEMORY`` ``1`` or ``0``; unset or ``auto``, where S runs in bfloat16 on the CPU
    (:func:`mixdemo.weights.s_precision`; not where a CUDA GPU is present, where S runs by default:
    :func:`mixdemo.models.pick_device`). The allocator rule (``python -m mixdemo.bench``,
    ``levers.allocator_rule``) held for S in bfloat16 in its deciding trial; with S in float32, on an AVX2-only
    CPU, it did not, in either of two trials (peaks over 4 GB: twice the activation bytes, kept)."""
    choice = os.environ.get(KEEP_FREED_ENV, "auto").strip().lower() or "auto"
    if choice != "auto":
        return choice in SWITCH_ON  # another value: app.py and the client refuse it at start
    from mixdemo.weights import WeightsError, s_precision

    try:
        return s_precision("cpu") == "bfloat16" and not torch.cuda.is_available()
    except WeightsError:  # an unknown $MIXDEMO_PRECISION: load_model says so; the allocator stays as it comes
        return False


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory that tensors free in the process for the next ones (no ``mmap``
    per large block, no trimming below 2 GiB, one arena) instead of handing each block back to the kernel
    as it is freed; :func:`reusing_freed_memory` hands it back after each pass of S and each step of D.
    Asked for as :func:`freed_memory_kept_by_choice` says (by default where S runs in bfloat16). Returns
    whether it applied; once per process. Linux with glibc only (elsewhere, and on musl, whose ``mallopt`` is a
    stub, nothing changes).

    Within a pass kept memory serves the next tensors without page faults; handed back after it, the
    resident size between requests is about what it is without it. Freed blocks do not always fit the
    next ones, so the peak is higher (by about 0.5 GB at K = 10 with the fused S; MONAI's unfused forward,
    the reference path, fragments more). ``python -m mixdemo.bench`` measures both allocations
    (``levers.private_k10_memory``) and checks the rule that made this the default
    (``levers.allocator_rule``; the README's performance section says how it has fared). Process-wide, hence applied by
    :func:`mixdemo.weights.load_model` (fast path) and by the steps themselves, not on import.
    """
    if not freed_memory_kept_by_choice() or not sys.platform.startswith("linux"):
        return False
    mallopt = _c_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) for param, value in
               ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES), (_M_ARENA_MAX, 1)))


def hand_back_freed_memory() -> bool:
    """Where :func:`keep_freed_memory` applies, return the heap's free pages to the kernel (glibc's
    ``malloc_trim``): the resident size falls back and the pages that held freed tensors are unmapped.
    Returns whether anything was handed back (nothing is where freed memory is not kept)."""
    trim = _c_function("malloc_trim") if keep_freed_memory() else None
    if trim is None:  # freed memory not kept, or not glibc
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


@contextlib.contextmanager
def reusing_freed_memory() -> Iterator[None]:
    """A step (a function call or a ``with`` block) in which freed memory is kept for the step's next tensors
    (:func:`keep_freed_memory`, where it applies) and handed back to the kernel when the step ends, even on
    error (:func:`hand_back_freed_memory`)."""
    keep_freed_memory()
    try:
        yield
    finally:
        hand_back_freed_memory()


class Stacked:
    """A (K, …) CPU tensor filled slice by slice, allocated when the first slice comes: K results without
    a list and a concatenation, which would hold all of them twice at the end."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tensor: torch.Tensor | None = None

    def put(self, start: int, part: torch.Tensor) -> None:
        """Copy ``part`` (n, …) into rows ``start`` … ``start + n`` (a contiguous part that is the whole
        stack is kept as it is)."""
        if self.tensor is None and part.shape[0] == self.total and part.is_contiguous():
            self.tensor = part
            return
        if self.tensor is None:
            self.tensor = torch.empty((self.total, *part.shape[1:]), dtype=part.dtype)
        self.tensor[start : start + part.shape[0]].copy_(part)


def activation_bytes_per_voxel(model: torch.nn.Module) -> float:
    """Estimated peak memory of S per padded input voxel (scales with its first feature width; about
    a third of that for a fused S)."""
    config = getattr(model, "_hub_mixin_config", None) or {}
    first_width = (config.get("features") or [16])[0]
    per_width = FUSED_BYTES_PER_VOXEL_PER_WIDTH if getattr(model, "fused", False) else BYTES_PER_VOXEL_PER_WIDTH
    return per_width * float(first_width)


def memory_budget(device: torch.device) -> float:
    """Bytes S's activations may take: ``$MIXDEMO_S_MEMORY_MB`` if set; on CUDA 80 % of the free
    GPU memory (the driver's, plus what PyTorch's caching allocator holds that no tensor uses: an earlier pass's
    activations, which would otherwise shrink the budget of the next pass); on the CPU :data:`DEFAULT_CPU_BUDGET_MB`, or half the available RAM if that is less."""
    asked = megabytes(MEMORY_ENV)  # a ValueError naming it when it is no positive number
    if asked is not None:
        return asked * 2**20
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return 0.8 * (torch.cuda.mem_get_info(device)[0] + cached)
    budget = float(DEFAULT_CPU_BUDGET_MB * 2**20)
    available = _available_memory_bytes()
    return budget if available is None else min(budget, available / 2)


def _ceil16(n: float) -> int:
    return int(math.ceil(n / 16) * 16)


def plan_slabs(padded: Sequence[int], bytes_per_voxel: float, budget: float) -> tuple[int, int]:
    """(slab thickness along Z, number of slabs) for a padded volume: 1 slab = the whole volume.

    The fewest slabs whose thickness ``⌈(Z + (n − 1)·overlap) / n⌉₁₆`` fits the budget; at least 32
    voxels thick (below that the budget is too small to honour: 32 is used anyway).
    """
    x, y, z = padded
    for n in range(1, z // 16 + 1):
        thickness = min(z, _ceil16((z + (n - 1) * SLAB_OVERLAP) / n))
        if x * y * thickness * bytes_per_voxel <= budget or thickness <= 32:
            return thickness, n if thickness < z else 1
    return min(z, 32), max(1, math.ceil(z / 16))


def window_slices(shape: Sequence[int], roi: Sequence[int], overlap: float | Sequence[float]) -> list[tuple[slice, ...]]:
    """The windows MONAI's ``sliding_window_inference`` visits on a volume of ``shape`` (≥ ``roi``);
    ``overlap`` one value or one per axis, as MONAI takes it."""
    from monai.data.utils import dense_patch_slices

    overlaps = tuple(overlap) if isinstance(overlap, Sequence) else (overlap,) * len(roi)
    interval = tuple(r if r == n else max(int(r * (1 - o)), 1) for r, n, o in zip(roi, shape, overlaps))
    return [tuple(sl) for sl in dense_patch_slices(tuple(shape), tuple(roi), interval)]


def _pad16(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pad spatial dims of (B, C, X, Y, Z) up to multiples of 16 (U-Net++ needs it)."""
    shape = tuple(x.shape[-3:])
    pads = [(-n) % 16 for n in shape]
    if any(pads):
        x = torch.nn.functional.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
    return x, shape  # type: ignore[return-value]


def _windows(
    model: torch.nn.Module, x: torch.Tensor, roi: Sequence[int], overlap: float | Sequence[float], report: Callable[[int], None]
) -> torch.Tensor:
    """MONAI's Gaussian sliding window of S over one padded (1, 1, X, Y, Z) volume; ``report(windows done)``."""
    done = [0]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        out = model(window)
        done[0] += window.shape[0]
        report(done[0])
        return out

    return sliding_window_inference(x, tuple(roi), 1, predictor, overlap=overlap, mode="gaussian")


def _to_tensor(proxies: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(proxies, np.ndarray) and (not proxies.flags.writeable or min(proxies.strides, default=0) < 0):
        proxies = np.array(proxies, dtype=np.float32)  # a flipped view or a read-only map: torch takes neither as it is
    x = torch.as_tensor(np.asarray(proxies) if isinstance(proxies, np.ndarray) else proxies, dtype=torch.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"Proxies must be (K, X, Y, Z) or (X, Y, Z); got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:  # nothing to segment: no (0, C, …) result to return, C being S's
        raise ValueError("Proxies must hold at least one proxy; got none.")
    return x


@torch.inference_mode()
@reusing_freed_memory()
def segment_proxies(
    seg_model: torch.nn.Module,
    proxies: torch.Tensor | np.ndarray,
    *,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.125,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Softmax probabilities ŷ_mix of S for K proxies (K, X, Y, Z) → (K, C, X, Y, Z) float32 on the CPU.

    ``roi_size=None`` follows the module's policy (batches, one pass, or slabs within the memory
    budget); a given ``roi_size`` forces MONAI's sliding window with that window and ``overlap``
    (the reference path the tests compare against). Freed memory is kept within each whole-volume pass
    and handed back after it (:func:`reusing_freed_memory`).
    """
    device = next(seg_model.parameters()).device
    x = _to_tensor(proxies)
    k_total = x.shape[0]
    shape = tuple(x.shape[-3:])
    padded = tuple(_ceil16(n) for n in shape)
    voxels = int(np.prod(padded))
    bpv = activation_bytes_per_voxel(seg_model)
    budget = memory_budget(device)
    crop = (slice(None), slice(None), slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))

    def say(fraction: float, message: str) -> None:
        if progress is not None:
            progress(min(fraction, 1.0), message)

    if roi_size is None and voxels <= MAX_BATCH_VOXELS and voxels * bpv <= budget:  # patch mode: batches, exact
        per_batch = max(1, min(MAX_BATCH_VOXELS // voxels, int(budget // (voxels * bpv)) or 1))
        outs = Stacked(k_total)
        for start in range(0, k_total, per_batch):
            xb, _ = _pad16(x[start : start + per_batch, None].to(device))
            outs.put(start, torch.softmax(seg_model(xb), 1)[crop].float().cpu())
            done = min(start + per_batch, k_total)
            say(done / k_total, f"server: {done}/{k_total} proxy(ies) segmented in batches")
        return outs.tensor

    outs = Stacked(k_total)
    for k in range(k_total):
        xk, _ = _pad16(x[k : k + 1, None].to(device))
        if roi_size is not None:
            roi = tuple(min(r, n) for r, n in zip(roi_size, padded))
            ov: float | Sequence[float] = overlap
            what = "window"
        else:
            thickness, n_slabs = plan_slabs(padded, bpv, budget)
            if n_slabs == 1:
                say(k / k_total, f"server: proxy {k + 1}/{k_total} (whole volume)")
                outs.put(k, torch.softmax(seg_model(xk), 1)[crop].float().cpu())
                hand_back_freed_memory()  # kept within the pass, handed back after it: the peak stays one pass's
                say((k + 1) / k_total, f"server: proxy {k + 1}/{k_total} done")
                continue
            roi = (padded[0], padded[1], thickness)
            interval = math.ceil((padded[2] - thickness) / (n_slabs - 1))
            ov = (0.0, 0.0, 1.0 - (interval + 0.5) / thickness)  # MONAI's int(roi·(1 − ov)) = interval
            what = "slab"
        total = len(window_slices(padded, roi, ov))
        logits = _windows(seg_model, xk, roi, ov, lambda done, k=k, total=total: say(
            (k + min(done / total, 1.0)) / k_total, f"server: proxy {k + 1}/{k_total}, {what} {min(done, total)}/{total}"))
        outs.put(k, torch.softmax(logits, 1)[crop].float().cpu())
        del logits
        hand_back_freed_memory()
    return outs.tensor
