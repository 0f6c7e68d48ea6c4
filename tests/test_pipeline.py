"""Inference pipeline: the server pass, unmixing, TTA and the client's round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixdemo.mixing import MixKey, hard_labels, mirror, one_hot
from mixdemo.models import SegmentationNet, UnmixingNet
from mixdemo.pipeline import (UNMIX_ROI, PrivateResult, Reference, image_correlation, make_proxies,
                              most_similar_references, private_segment, segment_proxies, unmix_learned)


def _volume(seed: int, shape=(16, 32, 16)) -> Reference:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, shape).astype(np.uint8)
    image = np.choose(labels, [0.0, 0.6, 1.0, 0.2]).astype(np.float32)
    return Reference(f"r{seed}", image, labels)


def test_one_window_over_the_volume_is_the_whole_pass():
    torch.manual_seed(0)
    seg = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval()
    x = torch.rand(2, 32, 32, 32)
    whole = segment_proxies(seg, x)
    windowed = segment_proxies(seg, x, roi_size=(32, 32, 32))  # one window covering everything
    assert whole.shape == (2, 4, 32, 32, 32)
    torch.testing.assert_close(whole, windowed, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(whole.sum(1), torch.ones(2, 32, 32, 32))


def test_several_windows_visit_monais_windows_once_per_proxy_and_stitch_probabilities():
    from mixdemo.inference import window_slices

    torch.manual_seed(0)
    seg = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval()
    seen: list[tuple[int, ...]] = []
    seg.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    x = torch.rand(2, 48, 32, 32)
    windowed = segment_proxies(seg, x, roi_size=(16, 16, 16), overlap=0.5)
    per_proxy = len(window_slices((48, 32, 32), (16, 16, 16), 0.5))
    assert per_proxy == 5 * 3 * 3 and len(seen) == 2 * per_proxy and set(seen) == {(1, 1, 16, 16, 16)}
    torch.testing.assert_close(windowed.sum(1), torch.ones(2, 48, 32, 32))
    assert not torch.allclose(windowed, segment_proxies(seg, x), atol=1e-3)  # the windows' own context, not one pass


def test_server_pass_pads_odd_sizes_and_rejects_bad_shapes():
    seg = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval()
    out = segment_proxies(seg, np.random.rand(20, 18, 17).astype(np.float32))
    assert out.shape == (1, 4, 20, 18, 17)
    with pytest.raises(ValueError, match="Proxies must be"):
        segment_proxies(seg, torch.rand(1, 1, 1, 8, 8, 8))


def test_proxies_are_eq2_mix_by_mix_in_float32_and_a_key_of_other_size_is_refused():
    """make_proxies is mixing.mix (Eq. 2 and 5) to the bit, whatever the references' dtype, with the mirrored mixes
    taking the target's mirror image; a key naming another number of references, or another grid, is refused."""
    from mixdemo.mixing import mix

    rng = np.random.default_rng(0)
    target = rng.random((12, 10, 8)).astype(np.float32)
    refs = [Reference(f"r{i}", rng.random((12, 10, 8)).astype(np.float64 if i == 1 else np.float32),
                      np.zeros((12, 10, 8), np.uint8)) for i in range(3)]
    key = MixKey(("r0", "r1", "r2"), (0.3, 0.45, 0.77), mirrored=(False, True, False))
    proxies = make_proxies(target, refs, key)
    assert proxies.dtype == np.float32 and proxies.shape == (3, 12, 10, 8)
    for k, ref in enumerate(refs):
        x = mirror(target) if k == 1 else target
        assert np.array_equal(proxies[k], mix(x, ref.image.astype(np.float32), np.float32(key.alphas[k])))
    with pytest.raises(ValueError, match="names 3 references but 2"):
        make_proxies(target, refs[:2], key)
    with pytest.raises(ValueError, match="must share one grid"):
        make_proxies(target[:6], refs, key)


def test_round_trip_sends_only_proxies_and_recovers_target_with_an_oracle_server():
    target, refs = _volume(0), [_volume(1), _volume(2), _volume(3)]
    key = MixKey(tuple(r.ref_id for r in refs), (0.4, 0.4, 0.4))
    received = []

    def oracle_server(proxies: np.ndarray) -> torch.Tensor:
        """A perfect S: returns the exact mixed labels (Eq. 3) — and records what it was sent."""
        received.append(proxies.copy())
        mixed = [0.4 * one_hot(target.labels, 4) + 0.6 * one_hot(r.labels, 4) for r in refs]
        return torch.from_numpy(np.stack(mixed))

    result = private_segment(target.image, refs, key, oracle_server, UnmixingNet().eval())
    sent = received[0]
    np.testing.assert_allclose(sent, make_proxies(target.image, refs, key))
    for proxy, ref in zip(sent, refs):  # Eq. 2 written out: α on the target, 1 − α on the reference
        np.testing.assert_allclose(proxy, 0.4 * target.image + 0.6 * ref.image, rtol=1e-6, atol=1e-6)
    assert not any(np.allclose(p, target.image) for p in sent)  # the raw target never reaches the server
    assert np.array_equal(result.labels("naive"), target.labels)  # Eq. 4 inverts Eq. 3 exactly
    exact = np.broadcast_to(one_hot(target.labels, 4), result.naive.shape)  # scores, not just their arg-max:
    np.testing.assert_allclose(np.asarray(result.naive), exact, atol=1e-5)  # α and 1 − α swapped would not be 0/1
    assert np.array_equal(result.labels("naive_tta"), target.labels)
    assert result.learned is not None and result.learned.shape == (3, 4, 16, 32, 16)
    assert result.uncertainty().shape == target.image.shape


def test_learned_unmixing_tiles_match_a_single_patch():
    torch.manual_seed(0)
    d = UnmixingNet().eval()
    for p in d.parameters():
        torch.nn.init.normal_(p, std=0.1)
    mixed = torch.softmax(torch.randn(1, 4, 32, 32, 32), 1)
    ref = one_hot(torch.randint(0, 4, (1, 32, 32, 32)), 4)
    tiled = unmix_learned(d, mixed, ref, [0.5])
    with torch.no_grad():
        direct = torch.softmax(d(mixed, ref, torch.tensor([0.5])), 1)
    torch.testing.assert_close(tiled, direct, rtol=1e-4, atol=1e-4)


def _random_unmixer() -> UnmixingNet:
    torch.manual_seed(0)
    d = UnmixingNet().eval()
    for p in d.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return d


def _monai_reference(d: UnmixingNet, mixed: torch.Tensor, ref: torch.Tensor, alphas) -> torch.Tensor:
    """The reference path: MONAI's sliding window, one mix at a time (what unmix_learned must equal)."""
    from monai.inferers import sliding_window_inference

    outs = []
    for k, a in enumerate(alphas):
        inputs = torch.cat([mixed[k : k + 1], ref[k : k + 1].float()], 1)
        w = torch.tensor([[a, 1 - a]])
        with torch.no_grad():
            logits = sliding_window_inference(inputs, (32, 32, 32), 4, lambda t: d(t[:, :4], t[:, 4:], w.expand(len(t), -1)),
                                              overlap=0.25)
        outs.append(torch.softmax(logits, 1)[0])
    return torch.stack(outs)


@pytest.mark.parametrize("shape", [(40, 52, 36), (20, 34, 24)])  # several windows; smaller than a window
def test_batched_unmixing_equals_monai_sliding_window(shape):
    d = _random_unmixer()
    mixed = torch.softmax(torch.randn(2, 4, *shape), 1)
    ref = one_hot(torch.randint(0, 4, (2, *shape)), 4)
    fast = unmix_learned(d, mixed, ref, [0.35, 0.6], roi_size=UNMIX_ROI, batch_size=3)
    torch.testing.assert_close(fast, _monai_reference(d, mixed, ref, [0.35, 0.6]), rtol=1e-4, atol=1e-5)


def test_unmixing_skips_windows_outside_the_brain_without_changing_the_brain():
    d = _random_unmixer()
    shape = (64, 72, 40)
    mixed = torch.softmax(torch.randn(2, 4, *shape), 1)
    ref = one_hot(torch.randint(0, 4, (2, *shape)), 4)
    brain = np.zeros(shape, dtype=bool)
    brain[10:30, 20:50, 5:25] = True
    full = unmix_learned(d, mixed, ref, [0.4, 0.5], roi_size=UNMIX_ROI)
    skipped = unmix_learned(d, mixed, ref, [0.4, 0.5], brain_mask=brain, roi_size=UNMIX_ROI)
    torch.testing.assert_close(skipped[:, :, brain], full[:, :, brain], rtol=1e-5, atol=1e-6)
    assert torch.all(skipped[:, 0, -1, -1, -1] == 1.0)  # a corner no kept window reaches: background
    assert torch.allclose(skipped.sum(1), torch.ones(2, *shape))


def test_small_proxies_go_through_the_server_in_one_exact_batch():
    seg = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval()
    seen: list[tuple[int, ...]] = []
    hook = seg.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    x = torch.rand(3, 32, 32, 32)
    batched = segment_proxies(seg, x)
    assert seen == [(3, 1, 32, 32, 32)]  # one forward pass for the three proxies
    hook.remove()
    one_by_one = torch.cat([segment_proxies(seg, x[k : k + 1]) for k in range(3)])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_round_trip_checks_the_key_against_the_references():
    target, refs = _volume(0), [_volume(1)]
    with pytest.raises(ValueError, match="names 2 references"):
        private_segment(target.image, refs, MixKey(("a", "b"), (0.5, 0.5)), lambda p: None, None)


@pytest.mark.parametrize("mirrored", [(), (False, True)])
def test_labels_stay_inside_the_targets_own_brain(mirrored):
    """Also where a mix is mirrored: its answer comes back to the target's orientation before the target's brain
    bounds it (the border below is on one side only)."""
    target, refs = _volume(0), [_volume(1), _volume(2)]
    target.image[:4] = 0  # a skull-stripped border: background the client knows about
    key = MixKey(("r1", "r2"), (0.5, 0.5), mirrored=mirrored)

    def server_claiming_tissue_everywhere(proxies: np.ndarray) -> torch.Tensor:
        probs = torch.zeros(len(proxies), 4, *proxies.shape[1:])
        probs[:, 2] = 1.0  # "white matter" even where there is no brain
        return probs

    d = UnmixingNet().eval()
    with torch.no_grad():
        d.out.bias[2] += 50.0  # a D that answers "white matter" everywhere: only the brain mask makes background
    result = private_segment(target.image, refs, key, server_claiming_tissue_everywhere, d)
    for which in ("naive", "naive_tta", "learned", "learned_tta"):
        assert np.all(result.labels(which)[:4] == 0)
    for answer in result.learned:  # each mix's own answer, the mirrored one's included
        assert np.array_equal(hard_labels(answer).numpy(), np.where(target.image > 0, 2, 0))


def test_mirrored_mixes_carry_the_mirrored_target_and_their_answers_come_back_in_the_targets_orientation():
    """A key that mirrors every second mix: those proxies hold the target's mirror image, and with a perfect S
    (the exact mixed labels of what it is sent) Eq. 4 still recovers the target's own labels in every mix; D's answer
    to a mirrored mix is its answer to that proxy, mirrored back."""
    target, refs = _volume(0), [_volume(s) for s in (1, 2, 3)]
    key = MixKey(tuple(r.ref_id for r in refs), (0.4, 0.4, 0.4), mirrored=(False, True, False))
    received = []

    def oracle_server(proxies: np.ndarray) -> torch.Tensor:
        received.append(proxies.copy())
        mixed = [0.4 * one_hot(mirror(target.labels) if flag else target.labels, 4) + 0.6 * one_hot(r.labels, 4)
                 for r, flag in zip(refs, key.mirrored)]
        return torch.from_numpy(np.stack(mixed))

    torch.manual_seed(0)
    d = UnmixingNet(patch=2).eval()
    result = private_segment(target.image, refs, key, oracle_server, d)
    sent = received[0]
    np.testing.assert_allclose(sent[1], 0.4 * target.image[::-1] + 0.6 * refs[1].image, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sent[[0, 2]], make_proxies(target.image, [refs[0], refs[2]], MixKey(("r1", "r3"), (0.4, 0.4))))
    for k in range(3):
        assert np.array_equal(hard_labels(result.naive[k]).numpy(), target.labels)
    alone = unmix_learned(d, oracle_server(sent)[1:2], one_hot(torch.from_numpy(refs[1].labels[None]), 4), (0.4,),
                          brain_mask=target.image[::-1] > 0)
    torch.testing.assert_close(result.learned[1], mirror(alone[0]))


def test_whole_volume_unmixing_is_d_on_the_whole_grid_one_mix_at_a_time():
    """The default: D on the whole volume (odd sides padded by repeating the edge), background outside the brain."""
    d = _random_unmixer()
    shape = (40, 33, 36)
    mixed = torch.softmax(torch.randn(3, 4, *shape), 1)
    ref = one_hot(torch.randint(0, 4, (3, *shape)), 4)
    alphas = [0.3, 0.45, 0.5]
    whole = unmix_learned(d, mixed, ref, alphas)
    for k, a in enumerate(alphas):
        pad = (0, 0, 0, 1, 0, 0)
        x = torch.nn.functional.pad(mixed[k : k + 1], pad, mode="replicate")
        r = torch.nn.functional.pad(ref[k : k + 1].float(), pad, mode="replicate")
        with torch.no_grad():
            direct = torch.softmax(d(x, r, torch.tensor([a])), 1)[..., :33, :]
        torch.testing.assert_close(whole[k : k + 1], direct, rtol=1e-4, atol=1e-5)
    brain = np.zeros(shape, dtype=bool)
    brain[5:30, 5:25, 5:30] = True
    masked = unmix_learned(d, mixed, ref, alphas, brain_mask=brain)
    torch.testing.assert_close(masked[:, :, brain], whole[:, :, brain])
    assert torch.all(masked[:, 0][:, ~brain] == 1.0)
    # a patch-2 D: sides padded to multiples of 4
    d4 = UnmixingNet(patch=2).eval()
    patched = unmix_learned(d4, mixed, ref, alphas)
    pad = (0, 0, 0, 3, 0, 0)
    with torch.no_grad():
        direct = d4(torch.nn.functional.pad(mixed[:1], pad, mode="replicate"),
                    torch.nn.functional.pad(ref[:1].float(), pad, mode="replicate"), torch.tensor([0.3]))
    torch.testing.assert_close(patched[:1], torch.softmax(direct, 1)[..., :33, :], rtol=1e-4, atol=1e-5)
    # two references per mix: (K, 1 + R) weights reach D
    d2 = UnmixingNet(n_references=2).eval()
    two = unmix_learned(d2, mixed, torch.cat([ref, ref], 1), [[0.4, 0.3, 0.3]] * 3)
    assert two.shape == whole.shape and torch.allclose(two.sum(1), torch.ones(3, *shape))


@pytest.mark.parametrize("batch_voxels", [None, 2 * 40 * 33 * 36])
def test_streamed_tta_equals_the_mean_of_the_stacked_mixes(monkeypatch, batch_voxels):
    """unmix_learned_tta (a running sum, the K maps never held together) is Eq. 6 on unmix_learned's stack, with
    the brain mask, one mix per pass or several (small volumes batched), and K = 1 returns the one map."""
    from mixdemo import pipeline
    from mixdemo.mixing import tta_average
    from mixdemo.pipeline import unmix_learned_tta

    if batch_voxels is not None:  # two mixes per batch: K = 5 → batches of 2, 2, 1
        monkeypatch.setattr(pipeline, "MAX_BATCH_VOXELS", batch_voxels)
    d = _random_unmixer()
    shape = (40, 33, 36)
    mixed = torch.softmax(torch.randn(5, 4, *shape), 1)
    ref = one_hot(torch.randint(0, 4, (5, *shape)), 4, torch.uint8)
    alphas = [0.3, 0.35, 0.4, 0.45, 0.5]
    brain = np.zeros(shape, dtype=bool)
    brain[5:30, 5:25, 5:30] = True
    stacked = tta_average(unmix_learned(d, mixed, ref, alphas, brain_mask=brain))
    streamed = unmix_learned_tta(d, mixed, ref, alphas, brain_mask=brain)
    torch.testing.assert_close(streamed, stacked, rtol=1e-5, atol=1e-6)
    assert torch.all(streamed[0][~brain] == 1.0)
    torch.testing.assert_close(unmix_learned_tta(d, mixed[:1], ref[:1], alphas[:1]), unmix_learned(d, mixed[:1], ref[:1], alphas[:1])[0])


@pytest.mark.parametrize("k", [1, 3])
def test_labels_of_the_unmixing_are_those_of_its_tta_probabilities(k):
    """unmix_learned_labels: at K = 1 the arg-max of D's logits (no probabilities made), at K > 1 Eq. 6's labels;
    either way hard_labels(unmix_learned_tta(...)) but where float rounding ties two classes, background outside
    the brain, on a grid D pads (33 is no multiple of its 4)."""
    from mixdemo.pipeline import unmix_learned_labels, unmix_learned_tta

    d = _random_unmixer()
    shape = (40, 33, 36)
    mixed = torch.softmax(torch.randn(k, 4, *shape), 1)
    ref = one_hot(torch.randint(0, 4, (k, *shape)), 4, torch.uint8)
    alphas = [0.3, 0.4, 0.5][:k]
    brain = np.zeros(shape, dtype=bool)
    brain[5:30, 5:25, 5:30] = True
    labels = unmix_learned_labels(d, mixed, ref, alphas, brain_mask=brain)
    expected = hard_labels(unmix_learned_tta(d, mixed, ref, alphas, brain_mask=brain))
    assert labels.dtype == torch.uint8 and labels.shape == shape
    assert (labels[torch.from_numpy(~brain)] == 0).all()
    assert (labels != expected).float().mean() < 1e-4
    assert len(torch.unique(labels[torch.from_numpy(brain)])) > 1  # D's answer, not the mask's


@pytest.mark.parametrize("per_call, mirrored, k", [(1, (), 5), (2, (), 5), (5, (), 5), (3, (True, False, False, True, True), 5),
                                                  (1, (), 1), (1, (True,), 1)])
def test_labels_only_round_trip_gives_the_labels_of_the_full_one_a_request_at_a_time(per_call, mirrored, k):
    """private_labels (the command-line client's path) against private_segment's TTA labels, with D and without,
    with mirrored mixes too (requests of 3 mixes: one mirrored then two not, then two mirrored), and with one mix
    (D's arg-max, mirrored back when its mix is mirrored); with scores=True (a registered scan's path) it keeps the
    scores of private_segment's result, whose arg-max the labels are."""
    from mixdemo.pipeline import private_labels

    torch.manual_seed(0)
    seg = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval()
    unmix = UnmixingNet(patch=2).eval()
    target, refs = _volume(0), [_volume(s) for s in range(1, k + 1)]
    target.image[:2] = 0  # some background outside the brain
    key = MixKey(tuple(r.ref_id for r in refs), (0.3, 0.35, 0.4, 0.45, 0.5)[:k], mirrored=mirrored)
    calls = []

    def server(proxies: np.ndarray) -> torch.Tensor:
        calls.append(len(proxies))
        return segment_proxies(seg, proxies)

    for d, which in ((unmix, "learned_tta"), (None, "naive_tta")):
        full = private_segment(target.image, refs, key, server, d).labels(which)
        calls.clear()
        labels = private_labels(target.image, refs, key, server, d, per_call=per_call)
        assert calls == [min(per_call, k - i) for i in range(0, k, per_call)]  # the K mixes, per_call at a time
        assert labels.dtype == np.uint8 and (labels[:2] == 0).all()
        assert (labels != full).mean() < 1e-3  # the same labels but where float rounding breaks a tie
        calls.clear()
        scores = private_labels(target.image, refs, key, server, d, per_call=per_call, scores=True)
        assert calls == [min(per_call, k - i) for i in range(0, k, per_call)]
        expected = private_segment(target.image, refs, key, server, d).scores(which)
        assert scores.dtype == np.float32 and scores.shape == (4, *target.image.shape)
        assert np.allclose(scores, expected, atol=1e-5)
        assert (scores[0, :2] == 1).all() and (scores[1:, :2] == 0).all()  # background outside the brain
        assert (hard_labels(torch.from_numpy(scores)).numpy() != labels).mean() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_round_trip_s_scores_are_float32_whatever_the_server_answers_in(dtype):
    """private_labels(..., scores=True) as PrivateResult.scores: float32 scores, as the docstring says, from a server
    answering in half precision too (bfloat16 has no NumPy dtype: its answer's scores could not be returned)."""
    from mixdemo.pipeline import private_labels

    target, refs = _volume(0), [_volume(1), _volume(2)]
    key = MixKey(tuple(r.ref_id for r in refs), (0.4, 0.5))
    answer = torch.softmax(torch.randn(2, 4, *target.image.shape, generator=torch.Generator().manual_seed(0)) * 3, 1)
    server = lambda proxies: answer[: len(proxies)].to(dtype)  # noqa: E731
    scores = private_labels(target.image, refs, key, server, None, per_call=2, scores=True)
    expected = private_segment(target.image, refs, key, server, None).scores("naive_tta")
    assert scores.dtype == np.float32 and expected.dtype == np.float32
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def _brain(seed: int) -> np.ndarray:
    """An 8³ scan whose 4³ centre holds random intensities (its brain), zero around."""
    scan = np.zeros((8, 8, 8), np.float32)
    scan[2:6, 2:6, 2:6] = np.random.default_rng(seed).random((4, 4, 4)) + 0.1
    return scan


def test_image_correlation_is_pearson_over_the_voxels_of_either_brain():
    target, other = _brain(0), _brain(1)
    assert image_correlation(target, 3 * target) == pytest.approx(1.0)
    assert image_correlation(target, -target) == pytest.approx(-1.0)
    either = (target != 0) | (other != 0)
    assert image_correlation(target, other) == pytest.approx(np.corrcoef(target[either], other[either])[0, 1])
    assert image_correlation(target, (target != 0).astype(np.float32)) == 0.0  # constant on the brain: no correlation
    with pytest.raises(ValueError, match="one grid"):
        image_correlation(target, target[:4])


def test_most_similar_references_ranks_the_bank_by_correlation_with_the_target():
    target = _brain(0)
    noise = np.random.default_rng(5).normal(0, 0.05, target.shape).astype(np.float32) * (target != 0)
    bank = [Reference(name, image, np.zeros(target.shape, np.uint8))
            for name, image in (("other", _brain(1)), ("near", target + noise), ("scaled", 2 * target), ("another", _brain(2)))]
    assert [r.ref_id for r in most_similar_references(target, bank, 2)] == ["scaled", "near"]
    assert [r.ref_id for r in most_similar_references(target, bank, 4)][:2] == ["scaled", "near"]
    for k in (0, 5):
        with pytest.raises(ValueError, match="k must be between 1 and the number of references"):
            most_similar_references(target, bank, k)


def test_the_apps_dice_against_k_curve_ends_at_the_tables_tta_row_and_starts_at_its_one_reference_row():
    """The curve labels each TTA average as the table does (background outside the target's brain)."""
    from mixdemo.metrics import dice_per_class, mean_dice
    from mixdemo.pipeline import PrivateResult
    from mixdemo.ui import _dice_curves

    rng = np.random.default_rng(0)
    naive = torch.softmax(torch.from_numpy(rng.normal(size=(3, 4, 8, 8, 8)).astype(np.float32)), 1)
    brain = np.zeros((8, 8, 8), bool)
    brain[1:7, 1:7, 2:6] = True
    truth = np.where(brain, rng.integers(1, 4, (8, 8, 8)), 0).astype(np.uint8)
    result = PrivateResult(proxies=np.zeros((3, 8, 8, 8), np.float32), mixed_probs=naive, naive=naive, learned=None,
                           brain_mask=brain)
    curve = _dice_curves(result, truth)["naive TTA"]
    row = lambda which: mean_dice(dice_per_class(result.labels(which), truth, [1, 2, 3]))  # noqa: E731
    assert len(curve) == 3
    assert curve[0] == pytest.approx(row("naive")) and curve[-1] == pytest.approx(row("naive_tta"))


def test_the_uncertainty_is_the_variance_of_the_unmixing_the_tta_result_uses():
    """PrivateResult.uncertainty: per voxel, the variance across the K predictions summed over classes, of D's
    predictions when there are (the TTA result shown is D's), else of Eq. 4's."""
    g = torch.Generator().manual_seed(0)
    naive, learned = torch.rand(3, 4, 5, 6, 7, generator=g), torch.rand(3, 4, 5, 6, 7, generator=g)
    result = PrivateResult(np.zeros((3, 5, 6, 7), np.float32), naive, naive, learned)
    np.testing.assert_allclose(result.uncertainty(), learned.numpy().var(0).sum(0), rtol=1e-5)
    without_d = PrivateResult(np.zeros((3, 5, 6, 7), np.float32), naive, naive, None)
    np.testing.assert_allclose(without_d.uncertainty(), naive.numpy().var(0).sum(0), rtol=1e-5)
