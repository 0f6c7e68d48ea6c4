"""Training augmentations: deterministic given parameters, labels never blended, ranges kept."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mixdemo.augment import AugmentParams, augment_patch, augment_volume, sample_augmentation

SHAPE = (40, 48, 44)


def _volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Nested ellipsoids: labels 1-3 inside, 0 outside; image a function of the labels."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    labels = np.select([r < 0.35, r < 0.6, r < 0.8], [2, 1, 3], 0).astype(np.uint8)
    rng = np.random.default_rng(seed)
    image = np.choose(labels, [0.0, 0.6, 1.0, 0.2]) * (1 + 0.02 * rng.standard_normal(SHAPE))
    return np.clip(image, 0, 1).astype(np.float32), labels


def test_sampling_is_reproducible_and_within_ranges():
    a = sample_augmentation(np.random.default_rng(5))
    assert a == sample_augmentation(np.random.default_rng(5))
    for _ in range(50):
        p = sample_augmentation(np.random.default_rng(_))
        assert all(abs(r) <= 3 for r in p.rotation_deg)
        assert all(0.97 <= s <= 1.03 for s in p.scale)
        assert all(abs(t) <= 2 for t in p.shift_mm)
        assert 0.8 <= p.gamma <= 1.25 and 0 <= p.bias_strength <= 0.15 and 0 <= p.noise_sigma <= 0.02


def test_identity_parameters_change_nothing():
    image, labels = _volume()
    out_img, out_lab = augment_volume(image, labels, AugmentParams())
    assert np.array_equal(out_lab, labels)
    assert np.allclose(out_img, image, atol=1e-6)


def test_integer_shift_moves_image_and_labels_together():
    image, labels = _volume()
    out_img, out_lab = augment_volume(image, labels, AugmentParams(shift_mm=(2.0, 0.0, -1.0)))
    assert np.array_equal(out_lab[2:, :, :-1], labels[:-2, :, 1:])
    assert np.allclose(out_img[2:, :, :-1], image[:-2, :, 1:], atol=1e-6)


def test_labels_stay_labels_and_follow_the_image():
    image, labels = _volume()
    params = replace(
        sample_augmentation(np.random.default_rng(1)), gamma=1.0, bias_strength=0.0, noise_sigma=0.0
    )
    out_img, out_lab = augment_volume(image, labels, params)
    assert out_lab.dtype == labels.dtype and set(np.unique(out_lab)) <= {0, 1, 2, 3}
    assert not np.array_equal(out_lab, labels)
    # each label's mean intensity is still the one it had: geometry shared by both
    for c, value in ((1, 0.6), (2, 1.0), (3, 0.2)):
        assert abs(float(out_img[out_lab == c].mean()) - value) < 0.08


def test_intensity_changes_keep_range_and_background():
    image, labels = _volume()
    params = AugmentParams(gamma=1.25, bias_strength=0.15, noise_sigma=0.02, seed=3)
    out_img, out_lab = augment_volume(image, labels, params)
    assert np.array_equal(out_lab, labels)
    assert out_img.dtype == np.float32 and out_img.min() >= 0 and out_img.max() <= 1
    assert not out_img[labels == 0].any()
    assert not np.allclose(out_img, image, atol=1e-3)
    again, _ = augment_volume(image, labels, params)
    assert np.array_equal(again, out_img)


def test_patch_equals_the_volume_transform_cut_at_the_patch():
    image, labels = _volume()
    params = replace(sample_augmentation(np.random.default_rng(2)), noise_sigma=0.0)
    corner, size = (5, 9, 7), 16
    centre = tuple(c + (size - 1) / 2 for c in corner)
    vol_img, vol_lab = augment_volume(image, labels, params, centre=centre)
    sl = tuple(slice(c, c + size) for c in corner)
    p_img, p_lab = augment_patch(image, labels, corner, size, params)
    assert p_img.shape == p_lab.shape == (size,) * 3
    assert np.array_equal(p_lab, vol_lab[sl])
    assert np.allclose(p_img, vol_img[sl], atol=1e-5)


def test_bad_inputs_are_refused():
    image, labels = _volume()
    with pytest.raises(ValueError, match="shape"):
        augment_volume(image, labels[:-1], AugmentParams())
    with pytest.raises(ValueError, match="integer"):
        augment_volume(image, labels.astype(np.float32), AugmentParams())
    with pytest.raises(ValueError, match="gamma_range"):
        sample_augmentation(np.random.default_rng(0), gamma_range=(0.0, 1.0))


def test_labels_take_the_image_s_geometry_voxel_by_voxel():
    """A rotation, scale and shift well beyond the sampled ranges: wherever the trilinear image still shows one
    class's value unblended (the class all around the source point), the nearest-neighbour labels name that class."""
    image, labels = _volume()
    values = (0.0, 0.6, 1.0, 0.2)
    image = np.choose(labels, values).astype(np.float32)  # no noise: a voxel's value tells its class
    params = AugmentParams(rotation_deg=(12.0, -9.0, 7.0), scale=(1.1, 0.9, 1.05), shift_mm=(1.5, -2.5, 0.5))
    out_img, out_lab = augment_volume(image, labels, params)
    assert not np.array_equal(out_lab, labels)
    for c, value in enumerate(values):
        pure = np.abs(out_img - value) < 1e-5
        assert pure.sum() > 500 and (out_lab[pure] == c).mean() > 0.995, c


def test_scale_stretches_the_axis_it_names():
    """``scale[i]`` stretches the content along axis i (about the centre), the other axes untouched."""
    image, labels = _volume()
    out_img, out_lab = augment_volume(image, labels, AugmentParams(scale=(1.25, 1.0, 1.0)))

    def extent(lab: np.ndarray, axis: int) -> int:
        return int(np.any(lab > 0, axis=tuple(a for a in range(3) if a != axis)).sum())

    assert extent(out_lab, 0) >= extent(labels, 0) + 6
    assert extent(out_lab, 1) == extent(labels, 1) and extent(out_lab, 2) == extent(labels, 2)
    assert extent(out_img, 0) == extent(out_lab, 0)


def test_intensity_changes_never_touch_the_labels():
    """The same geometry with and without gamma, bias and noise gives the same labels, even where a labelled
    tissue is nearly black (a dark class is not background)."""
    image, labels = _volume()
    image = np.where(labels == 3, 0.02, image).astype(np.float32)  # CSF nearly black
    spatial = replace(sample_augmentation(np.random.default_rng(4)), gamma=1.0, bias_strength=0.0, noise_sigma=0.0)
    full = replace(spatial, gamma=1.25, bias_strength=0.15, noise_sigma=0.02, seed=9)
    _, plain = augment_volume(image, labels, spatial)
    out_img, out_lab = augment_volume(image, labels, full)
    assert np.array_equal(out_lab, plain)
    assert (out_lab == 3).sum() > 1000 and not np.array_equal(out_img, augment_volume(image, labels, spatial)[0])
