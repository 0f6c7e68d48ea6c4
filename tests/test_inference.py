"""mixdemo.inference: S over proxies within a memory budget (batches, one pass, or Z-slabs)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from mixdemo import inference
from mixdemo.models import SegmentationNet

TINY = (4, 4, 8, 8, 16, 4)


def test_plan_slabs_whole_when_it_fits_else_fewest_slabs_that_fit():
    grid = (144, 192, 160)
    bpv = 16 * inference.BYTES_PER_VOXEL_PER_WIDTH
    assert inference.plan_slabs(grid, bpv, budget=inference.DEFAULT_CPU_BUDGET_MB * 2**20) == (160, 1)  # default: one pass
    thickness, n = inference.plan_slabs(grid, bpv, budget=2400 * 2**20)
    assert (thickness, n) == (64, 3)  # MIXDEMO_S_MEMORY_MB=2400: 3 slabs of 64 on the phantom grid
    assert thickness % 16 == 0 and 144 * 192 * thickness * bpv <= 2400 * 2**20
    assert n * thickness - (n - 1) * inference.SLAB_OVERLAP >= 160  # the slabs cover Z with the overlap
    assert inference.plan_slabs(grid, bpv, budget=1.0)[0] == 32  # too small a budget: the thinnest slab


def test_activation_estimate_scales_with_the_networks_width():
    small, paper = SegmentationNet(features=(16, 16, 32, 64, 128, 16)), SegmentationNet(features=(32, 32, 64, 128, 256, 32))
    assert inference.activation_bytes_per_voxel(paper) == pytest.approx(2 * inference.activation_bytes_per_voxel(small))


def test_slabs_agree_with_the_whole_pass_and_report_progress(monkeypatch):
    torch.manual_seed(0)
    seg = SegmentationNet(features=TINY).eval()
    x = torch.rand(1, 48, 48, 112)
    monkeypatch.setenv(inference.MEMORY_ENV, "100000")
    whole = inference.segment_proxies(seg, x)
    monkeypatch.setenv(inference.MEMORY_ENV, "1")
    seen: list[tuple[float, str]] = []
    slabs = inference.segment_proxies(seg, x, progress=lambda f, m: seen.append((f, m)))
    assert slabs.shape == whole.shape == (1, 4, 48, 48, 112)
    torch.testing.assert_close(slabs.sum(1), torch.ones(1, 48, 48, 112))
    assert (slabs.argmax(1) == whole.argmax(1)).float().mean() > 0.95
    # away from the seams (Z 32…48 is inside the first slab's Gaussian peak) slabs match closely
    torch.testing.assert_close(slabs[..., 8:24], whole[..., 8:24], atol=0.05, rtol=0)
    assert any("slab" in m for _, m in seen) and seen[-1][0] == pytest.approx(1.0)
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))


def test_slabs_put_each_voxel_s_answer_in_its_place(monkeypatch):
    """A voxel-wise network (no context) gives the same answer in slabs as in one pass wherever Gaussian blending
    weighs the slabs: a slab shifted along Z, a seam left out or a wrong crop shows as a difference."""
    torch.manual_seed(0)
    pointwise = torch.nn.Conv3d(1, 4, 1)
    with torch.no_grad():
        pointwise.weight.copy_(torch.tensor([-8.0, -2.0, 3.0, 9.0]).view(4, 1, 1, 1, 1))
    x = torch.rand(1, 40, 36, 100)  # padded to 48×48×112: the crop back to 40×36×100 is checked too
    expected = torch.softmax(pointwise(x[:, None]), 1)
    monkeypatch.setenv(inference.MEMORY_ENV, "1")  # the thinnest slabs: several seams
    slabs = inference.segment_proxies(pointwise, x)
    assert slabs.shape == expected.shape
    torch.testing.assert_close(slabs, expected.detach(), atol=1e-5, rtol=1e-5)


def _pointwise_s() -> torch.nn.Conv3d:
    """A voxel-wise S (no context): whichever path runs (batches, one pass, slabs, MONAI's windows), its answer at
    each voxel of each proxy must be ``softmax(S(x))`` there; a shifted crop or padding or mixed-up proxies show."""
    torch.manual_seed(0)
    pointwise = torch.nn.Conv3d(1, 4, 1)
    with torch.no_grad():
        pointwise.weight.copy_(torch.tensor([-8.0, -2.0, 3.0, 9.0]).view(4, 1, 1, 1, 1))
    return pointwise


def _record_batches(model: torch.nn.Module) -> list[tuple[int, ...]]:
    seen: list[tuple[int, ...]] = []
    model.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    return seen


def test_patch_batches_put_each_proxy_and_voxel_in_its_place(monkeypatch):
    """Five odd-sized proxies (padded to 32³) in batches of 2, 2 and 1: each answer in its proxy's row, cropped back."""
    pointwise = _pointwise_s()
    x = torch.rand(5, 20, 18, 17)
    one_proxy_bytes = 32**3 * inference.activation_bytes_per_voxel(pointwise)
    monkeypatch.setenv(inference.MEMORY_ENV, str(2.5 * one_proxy_bytes / 2**20))  # two proxies per batch
    seen = _record_batches(pointwise)
    out = inference.segment_proxies(pointwise, x)
    assert seen == [(2, 1, 32, 32, 32), (2, 1, 32, 32, 32), (1, 1, 32, 32, 32)]
    torch.testing.assert_close(out, torch.softmax(pointwise(x[:, None]), 1).detach(), atol=1e-6, rtol=1e-6)


def test_whole_pass_puts_each_proxy_and_voxel_in_its_place(monkeypatch):
    """Proxies too large for patch mode go one at a time in one pass when they fit the budget: padded, cropped back."""
    pointwise = _pointwise_s()
    x = torch.rand(2, 20, 18, 17)
    monkeypatch.setattr(inference, "MAX_BATCH_VOXELS", 1)  # no patch mode
    monkeypatch.setenv(inference.MEMORY_ENV, "100000")  # one pass each
    seen = _record_batches(pointwise)
    out = inference.segment_proxies(pointwise, x)
    assert seen == [(1, 1, 32, 32, 32)] * 2
    torch.testing.assert_close(out, torch.softmax(pointwise(x[:, None]), 1).detach(), atol=1e-6, rtol=1e-6)


def test_monais_windows_put_each_proxy_and_voxel_in_its_place():
    """The reference path (a given ``roi_size``) on odd sizes: several windows per padded proxy, cropped back."""
    pointwise = _pointwise_s()
    x = torch.rand(2, 20, 18, 17)
    seen = _record_batches(pointwise)
    out = inference.segment_proxies(pointwise, x, roi_size=(16, 16, 16), overlap=0.25)
    assert len(seen) == 2 * len(inference.window_slices((32, 32, 32), (16, 16, 16), 0.25)) > 2
    torch.testing.assert_close(out, torch.softmax(pointwise(x[:, None]), 1).detach(), atol=1e-5, rtol=1e-5)


def test_fused_fast_path_agrees_with_monais_forward_on_odd_sizes():
    """The fused S in patch mode against MONAI's forward of the same weights through the reference path (one
    window over the padded volume) on proxies whose sides are not multiples of 16."""
    import copy

    torch.manual_seed(0)
    seg = SegmentationNet(features=TINY).eval()
    for module in seg.modules():  # batch norms that are not the identity, so that folding them is checked too
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 20, 18, 17)
    reference = inference.segment_proxies(seg, x, roi_size=(32, 32, 32))
    fast = inference.segment_proxies(copy.deepcopy(seg).fuse_for_inference(), x)
    assert fast.shape == reference.shape == (2, 4, 20, 18, 17)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_flipped_views_and_read_only_arrays_are_taken(recwarn):
    """A mirrored view (``np.flip``: negative strides, which torch refuses) and a read-only array (a memory map,
    on which torch warns) are segmented like the same values in an ordinary array."""
    pointwise = _pointwise_s()
    x = np.random.default_rng(0).random((2, 16, 16, 16), dtype=np.float32)
    expected = inference.segment_proxies(pointwise, np.flip(x, 1).copy())
    torch.testing.assert_close(inference.segment_proxies(pointwise, np.flip(x, 1)), expected)
    read_only = np.flip(x, 1).copy()
    read_only.flags.writeable = False
    torch.testing.assert_close(inference.segment_proxies(pointwise, read_only), expected)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_no_proxies_are_refused():
    with pytest.raises(ValueError, match="at least one proxy"):
        inference.segment_proxies(_pointwise_s(), torch.zeros(0, 8, 8, 8))


def test_memory_budget_env_is_validated(monkeypatch):
    for bad in ("lots", "-5", "0", "nan"):  # a budget of no memory went through as the thinnest slabs
        monkeypatch.setenv(inference.MEMORY_ENV, bad)
        with pytest.raises(ValueError, match="positive number of megabytes"):
            inference.memory_budget(torch.device("cpu"))
    monkeypatch.setenv(inference.MEMORY_ENV, "512")
    assert inference.memory_budget(torch.device("cpu")) == 512 * 2**20
    monkeypatch.delenv(inference.MEMORY_ENV)
    assert 0 < inference.memory_budget(torch.device("cpu")) <= inference.DEFAULT_CPU_BUDGET_MB * 2**20


def test_gpu_memory_budget_counts_the_memory_pytorch_holds_free(monkeypatch):
    """On CUDA the budget is 80 % of the GPU memory S may use: the driver's free memory and the blocks PyTorch's
    caching allocator keeps from an earlier pass (reserved, not allocated). Counting the driver's alone, a second
    request for the same volume got a smaller budget than the first, and could be cut into slabs (other seams) that
    the first took in one exact pass. Patched here: no GPU."""
    monkeypatch.delenv(inference.MEMORY_ENV, raising=False)
    gb = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * gb, 8 * gb))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 4 * gb)  # an earlier pass's blocks
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * gb)  # S's weights and the like
    assert inference.memory_budget(torch.device("cuda")) == pytest.approx(0.8 * 6 * gb)
    monkeypatch.setenv(inference.MEMORY_ENV, "512")  # the variable still wins
    assert inference.memory_budget(torch.device("cuda")) == 512 * 2**20


def test_patch_batches_are_exact_and_bad_shapes_are_refused():
    seg = SegmentationNet(features=TINY).eval()
    x = torch.rand(3, 32, 32, 32)
    batched = inference.segment_proxies(seg, x)
    one_by_one = torch.cat([inference.segment_proxies(seg, x[k : k + 1]) for k in range(3)])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Proxies must be"):
        inference.segment_proxies(seg, np.zeros((1, 1, 8, 8, 8), np.float32))


def test_stacked_fills_k_results_in_place():
    from mixdemo.inference import Stacked

    parts = [torch.rand(2, 3, 4), torch.rand(1, 3, 4)]
    stack = Stacked(3)
    stack.put(0, parts[0])
    stack.put(2, parts[1])
    assert torch.equal(stack.tensor, torch.cat(parts))
    whole = torch.rand(2, 3, 4)
    one = Stacked(2)
    one.put(0, whole)
    assert one.tensor is whole  # the whole stack at once: no copy
    strided = Stacked(2)
    strided.put(0, whole.transpose(1, 2))
    assert strided.tensor.is_contiguous() and torch.equal(strided.tensor, whole.transpose(1, 2))


_REALLOC_SCRIPT = """
import resource, torch
from mixdemo.inference import keep_freed_memory
kept = keep_freed_memory()
for _ in range(3):  # glibc's heap settles within a couple of rounds
    x = torch.ones(25_000_000); del x  # 100 MB, freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(25_000_000)  # the same size again
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run_in_fresh_process(script: str, env: dict[str, str | None]) -> tuple[str, int]:
    """Run ``script`` in a fresh Python with ``env`` (None: unset) and return the two words it prints."""
    child_env = {k: v for k, v in os.environ.items() if k not in env}
    child_env.update({k: v for k, v in env.items() if v is not None})
    out = subprocess.run([sys.executable, "-c", script], env=child_env, capture_output=True, text=True, check=True)
    word, number = out.stdout.split()
    return word, int(number)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_freed_memory_serves_the_next_tensor_without_page_faults():
    """With keep_freed_memory ($MIXDEMO_KEEP_FREED_MEMORY=1) a freed 100 MB block is reused as it
    is (once the heap has settled); with 0, the allocator as it comes (a fresh mapping, faulted in page by page).
    Each in a fresh process, it being process-wide, and without huge pages, which would hide the difference."""
    no_huge_pages = {inference.HUGE_PAGES_ENV: "0"}
    kept, faults_kept = _run_in_fresh_process(_REALLOC_SCRIPT, {**no_huge_pages, inference.KEEP_FREED_ENV: "1"})
    off, faults_off = _run_in_fresh_process(_REALLOC_SCRIPT, {**no_huge_pages, inference.KEEP_FREED_ENV: "0"})
    assert (kept, off) == ("True", "False")
    assert faults_kept < 100_000_000 / 4096 / 10  # under a tenth of the block's pages
    assert faults_off > 100_000_000 / 4096 / 2  # a fresh mapping: at least half of its pages faulted in


def test_freed_memory_is_not_kept_when_turned_off(monkeypatch):
    """0 (or off, no): nothing is asked of the allocator, whatever the machine's memory (1, in a fresh process: the
    test above; here it would change this process's allocator; the default: tests/test_bench.py)."""
    decide = inference.keep_freed_memory.__wrapped__  # the uncached decision
    for off in ("0", "off", "no"):
        monkeypatch.setenv(inference.KEEP_FREED_ENV, off)
        assert decide() is False


_HAND_BACK_SCRIPT = """
import torch
from mixdemo.inference import keep_freed_memory, reusing_freed_memory
def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
with reusing_freed_memory():
    x = torch.ones(50_000_000); del x  # 200 MB, freed within the step
    inside = rss_mb()
print(keep_freed_memory(), round(inside - rss_mb()))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_a_step_keeps_freed_memory_while_it_runs_and_hands_it_back_after():
    """Within ``reusing_freed_memory`` a freed 200 MB tensor stays resident (kept for the step's next tensors);
    when the step ends the resident size falls by about as much. With the allocator as it comes the block is
    returned when it is freed, so the step's end has nothing left to hand back."""
    no_huge_pages = {inference.HUGE_PAGES_ENV: "0"}
    kept, fell_kept = _run_in_fresh_process(_HAND_BACK_SCRIPT, {**no_huge_pages, inference.KEEP_FREED_ENV: "1"})
    off, fell_off = _run_in_fresh_process(_HAND_BACK_SCRIPT, {**no_huge_pages, inference.KEEP_FREED_ENV: "0"})
    assert (kept, off) == ("True", "False")
    assert fell_kept > 150
    assert abs(fell_off) < 50


def test_s_hands_freed_memory_back_after_each_proxys_pass_and_at_the_end(monkeypatch):
    """One hand-back per proxy on the per-proxy path (here MONAI's windows) and one when the call ends,
    even when it fails."""
    calls: list[int] = []
    monkeypatch.setattr(inference, "hand_back_freed_memory", lambda: calls.append(1) or True)
    seg = SegmentationNet(features=TINY).eval()
    inference.segment_proxies(seg, np.zeros((3, 16, 16, 16), np.float32), roi_size=(16, 16, 16))
    assert len(calls) == 3 + 1
    calls.clear()
    with pytest.raises(ValueError):
        inference.segment_proxies(seg, np.zeros((16, 16), np.float32))  # not (K, X, Y, Z)
    assert len(calls) == 1


_HUGE_PAGES_SCRIPT = """
import os, resource
import mixdemo, torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(64 * 2**20)  # 256 MB: a fresh mapping
print(os.environ["THP_MEM_ALLOC_ENABLE"], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_importing_mixdemo_asks_torch_for_huge_pages():
    """``import mixdemo`` sets THP_MEM_ALLOC_ENABLE=1 before torch's first tensor and a value already set wins;
    where the kernel grants huge pages on request, a fresh 256 MB tensor is then faulted in 2 MB at a time."""
    pages = 2**28 // 4096
    on, faults_on = _run_in_fresh_process(_HUGE_PAGES_SCRIPT, {inference.HUGE_PAGES_ENV: None})
    off, faults_off = _run_in_fresh_process(_HUGE_PAGES_SCRIPT, {inference.HUGE_PAGES_ENV: "0"})
    assert (on, off) == ("1", "0")
    assert faults_off > pages / 2
    mode = inference._THP_MODE_FILE
    if not mode.exists() or "[never]" in mode.read_text():
        pytest.skip("this kernel grants no transparent huge pages")
    assert faults_on < pages / 10


def test_huge_pages_reports_the_request_and_the_kernels_mode(monkeypatch, tmp_path):
    """On only with THP_MEM_ALLOC_ENABLE=1 and a kernel mode of always or madvise."""
    mode = tmp_path / "enabled"
    monkeypatch.setattr(inference, "_THP_MODE_FILE", mode)
    monkeypatch.setenv(inference.HUGE_PAGES_ENV, "1")
    assert inference.huge_pages() is False  # no such file: not Linux, or no THP
    for text, expected in (("always [madvise] never", True), ("[always] madvise never", True),
                           ("always madvise [never]", False)):
        mode.write_text(text + "\n")
        assert inference.huge_pages() is expected
    mode.write_text("always [madvise] never\n")
    monkeypatch.setenv(inference.HUGE_PAGES_ENV, "0")
    assert inference.huge_pages() is False
