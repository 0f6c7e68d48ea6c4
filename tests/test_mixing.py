"""Mixing key, Eq. 2-6, patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixdemo import mixing
from mixdemo.mixing import MixKey, mix, mix_labels, naive_unmix, one_hot, sample_key, tta, tta_average

alphas = st.floats(min_value=mixing.MIN_ALPHA, max_value=1.0, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(alpha=alphas, seed=st.integers(0, 2**16))
def test_naive_unmix_of_exact_mixed_labels_returns_target(alpha, seed):
    rng = np.random.default_rng(seed)
    y_t = rng.integers(0, 4, size=(6, 5, 4))
    y_r = rng.integers(0, 4, size=(6, 5, 4))
    oh_t, oh_r = one_hot(y_t, 4), one_hot(y_r, 4)
    y_mix = mix_labels(oh_t, oh_r, alpha)  # Eq. 3
    recovered = naive_unmix(y_mix, oh_r, alpha)  # Eq. 4
    np.testing.assert_allclose(recovered, oh_t, atol=1e-4)
    assert np.array_equal(recovered.argmax(0), y_t)


def test_mixed_labels_and_naive_unmixing_are_eq3_and_eq4_written_out():
    """Hand-computed values, so that α and 1 − α swapped in both equations at once cannot pass."""
    y_t = np.array([[1.0, 0.0], [0.0, 1.0]])  # two classes (C, N): target voxel 0 is class 0, voxel 1 class 1
    y_r = np.array([[0.0, 0.0], [1.0, 1.0]])  # the reference is class 1 at both voxels
    np.testing.assert_allclose(mix_labels(y_t, y_r, 0.25), [[0.25, 0.0], [0.75, 1.0]])  # α·y + (1 − α)·y_ref
    y_mix = np.array([[0.4, 0.1], [0.6, 0.9]])
    np.testing.assert_allclose(naive_unmix(y_mix, y_r, 0.25), [[1.6, 0.4], [-0.6, 0.6]])  # (ŷ − 0.75·y_ref) / 0.25


@settings(max_examples=50, deadline=None)
@given(alpha=alphas)
def test_naive_unmix_torch_and_numpy_agree(alpha):
    y = np.random.default_rng(0).random((2, 4, 3, 3, 3)).astype(np.float32)
    r = np.random.default_rng(1).random((2, 4, 3, 3, 3)).astype(np.float32)
    a = naive_unmix(y, r, [alpha, alpha])
    b = naive_unmix(torch.from_numpy(y), torch.from_numpy(r), [alpha, alpha]).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_mix_is_eq2_with_k_references_and_per_mix_alpha():
    x = np.full((4, 4, 4), 2.0, np.float32)
    refs = np.stack([np.zeros((4, 4, 4), np.float32), np.ones((4, 4, 4), np.float32)])
    out = mix(x, refs, [0.25, 0.5])
    assert out.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(out[0], 0.25 * 2.0)
    np.testing.assert_allclose(out[1], 0.5 * 2.0 + 0.5 * 1.0)
    np.testing.assert_allclose(mix(x, refs[1], 0.3), 0.3 * 2 + 0.7 * 1)


@pytest.mark.parametrize("alpha", [0.0, 0.01, -0.2, 1.5])
def test_alpha_out_of_range_is_refused(alpha):
    with pytest.raises(ValueError, match="α must lie"):
        naive_unmix(np.zeros((4, 2, 2, 2)), np.zeros((4, 2, 2, 2)), alpha)
    with pytest.raises(ValueError, match="α must lie"):
        MixKey(("a",), (alpha,))


def test_sample_key_is_reproducible_distinct_and_in_range():
    pool = [f"r{i}" for i in range(10)]
    k1 = sample_key(pool, 5, alpha_range=(0.3, 0.6), seed=7, exclude=["r0"])
    k2 = sample_key(pool, 5, alpha_range=(0.3, 0.6), seed=7, exclude=["r0"])
    assert k1 == k2
    assert len(set(k1.reference_ids)) == 5 and "r0" not in k1.reference_ids
    assert len(set(k1.alphas)) == 1 and 0.3 <= k1.alphas[0] <= 0.6  # Eq. 5: one α for all K
    fresh = sample_key(pool, 5, seed=7, fresh_alpha_per_mix=True)
    assert len(set(fresh.alphas)) == 5


def test_sample_key_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="distinct references"):
        sample_key(["a", "b"], 3)
    with pytest.raises(ValueError, match="low ≤ high"):
        sample_key(["a", "b"], 1, alpha_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="one α per reference"):
        MixKey(("a", "b"), (0.5,))


def test_tta_averages_any_unmixer():
    preds = [np.full((2, 2), v, np.float32) for v in (1.0, 3.0)]
    refs = [np.full((2, 2), v, np.float32) for v in (10.0, 20.0)]
    out = tta(lambda p, r, a: p * a - r, preds, refs, [1.0, 0.5])  # each mix unmixed with its own reference and α
    np.testing.assert_allclose(out, ((1.0 - 10.0) + (1.5 - 20.0)) / 2)
    np.testing.assert_allclose(tta_average(np.stack(preds)), 2.0)
    one = torch.rand(1, 4, 3, 3, 3)
    assert torch.equal(tta_average(one), one.mean(0))  # K = 1: the prediction itself, without a copy
    assert tta_average(one).data_ptr() == one.data_ptr()
    with pytest.raises(ValueError, match="one α per mix"):
        tta(lambda p, r, a: p, preds, refs, [0.5])


def test_tta_variance_is_the_population_variance_over_the_k_predictions():
    p = torch.rand(3, 4, 2, 2, 2)
    assert torch.all(mixing.tta_variance(p[:1].expand(3, -1, -1, -1, -1)) == 0)
    expected = np.var(p.numpy(), axis=0)  # ddof 0: the spread of these K maps, not an estimate of a population's
    np.testing.assert_allclose(mixing.tta_variance(p).numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mixing.tta_variance(p.numpy()), expected, rtol=1e-5, atol=1e-7)
    assert torch.all(mixing.tta_variance(p[:1]) == 0)


def test_patches_centre_on_a_foreground_voxel_or_fall_anywhere_inside_the_volume():
    rng = np.random.default_rng(0)
    fg = np.array([[30, 5, 20]])  # one foreground voxel: every patch holds it, as near its centre as fits
    for _ in range(5):
        corner = mixing.sample_patch_corner((40, 40, 40), 16, rng, fg)
        assert corner == (22, 0, 12)
        sl = mixing.patch_slices(corner, 16)
        assert all(0 <= s.start and s.stop <= 40 and s.stop - s.start == 16 for s in sl)
        assert all(s.start <= v < s.stop for s, v in zip(sl, fg[0]))
    corners = {mixing.sample_patch_corner((20, 20, 20), 16, rng)[0] for _ in range(200)}  # no foreground: uniform
    assert corners == set(range(5))  # every corner 0 … n − s comes up
    with pytest.raises(ValueError, match="does not fit"):
        mixing.sample_patch_corner((8, 8, 8), 16, rng)


def test_one_hot_matches_between_backends():
    y = np.random.default_rng(0).integers(0, 4, (3, 3, 3))
    a = one_hot(y, 4)
    b = one_hot(torch.from_numpy(y), 4).numpy()
    assert a.shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a.sum(0), 1)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(0, 1), quantised=st.booleans())
def test_hard_labels_is_argmax_ties_included(seed, dim, quantised):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(3, 4, 5, 6, generator=g)
    if quantised:  # coarse values: many exact ties between classes
        probs = (probs * 3).round()
    labels = mixing.hard_labels(probs, dim)
    assert labels.dtype == torch.uint8
    assert torch.equal(labels.long(), probs.argmax(dim))


def test_mirror_flips_the_left_right_axis_of_images_and_class_maps_and_is_its_own_inverse():
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert np.array_equal(mixing.mirror(image), image[::-1]) and np.array_equal(mixing.mirror(mixing.mirror(image)), image)
    maps = torch.arange(5 * 2 * 3 * 4, dtype=torch.float32).reshape(5, 2, 3, 4)  # (C, X, Y, Z): C stays as it is
    assert torch.equal(mixing.mirror(maps), maps.flip(1)) and torch.equal(mixing.mirror(mixing.mirror(maps)), maps)
    stacked = np.stack([image, 2 * image])  # (K, X, Y, Z)
    assert np.array_equal(mixing.mirror(stacked)[1], 2 * image[::-1])
    assert mixing.mirror(image).flags.writeable and mixing.mirror(image).base is None  # a copy, not a view


def test_a_key_mirrors_every_second_mix_when_asked_and_says_so_for_every_mix_or_none():
    pool = [f"r{i}" for i in range(6)]
    plain, mirrored = sample_key(pool, 5, seed=3), sample_key(pool, 5, seed=3, mirror=True)
    assert plain.mirrored == () and plain.mirrored_mixes == []
    assert mirrored.mirrored == (False, True, False, True, False) and mirrored.mirrored_mixes == [1, 3]
    assert [mirrored.is_mirrored(k) for k in range(5)] == list(mirrored.mirrored) and not plain.is_mirrored(1)
    assert (mirrored.reference_ids, mirrored.alphas) == (plain.reference_ids, plain.alphas)  # the same draw
    assert sample_key(pool, 1, seed=3, mirror=True).mirrored == ()  # K = 1: the one mix is never mirrored
    assert MixKey(("a", "b"), (0.4, 0.4), mirrored=(False, False)) == MixKey(("a", "b"), (0.4, 0.4))
    part = mirrored.part(1, 4)
    assert (part.reference_ids, part.mirrored) == (mirrored.reference_ids[1:4], (True, False, True))
    with pytest.raises(ValueError, match="every mix or for none"):
        MixKey(("a", "b"), (0.4, 0.4), mirrored=(True,))
