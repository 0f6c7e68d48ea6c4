"""Tests of mixdemo.metrics: Dice, 3D MS-SSIM, ICC(C,1) and re-identification retrieval scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.ndimage import gaussian_filter

from mixdemo.metrics import (
    MSSSIM_WEIGHTS,
    IccResult,
    ReidResult,
    dice_per_class,
    icc_c1,
    ratio_of_means_ci,
    icc_variance_components,
    mean_dice,
    msssim_3d,
    msssim_3d_batch,
    msssim_matrix,
    msssim_scales,
    reid_metrics,
)

# ---------------------------------------------------------------------------------- helpers


def smooth_volume(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random volume rescaled to [0, 1] (MRI-like spatial correlation)."""
    x = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0)
    return (x - x.min()) / (x.max() - x.min())


def block_similarity(ids: list[int], seed: int = 0) -> np.ndarray:
    """Similarity with every same-identity pair above every different-identity pair."""
    rng = np.random.default_rng(seed)
    ids_arr = np.asarray(ids)
    same = ids_arr[:, None] == ids_arr[None, :]
    return np.where(same, 0.9, 0.1) + rng.uniform(0, 0.05, size=same.shape)


# ---------------------------------------------------------------------------------- Dice


def test_dice_identical_maps_is_one() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(8, 9, 10))
    assert dice_per_class(labels, labels.copy(), [0, 1, 2, 3]) == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}


def test_dice_disjoint_maps_is_zero() -> None:
    pred = np.zeros((4, 4, 4), dtype=np.int64)
    truth = np.zeros_like(pred)
    pred[:2] = 1
    truth[2:] = 1
    assert dice_per_class(pred, truth, [1]) == {1: 0.0}


def test_dice_partial_overlap_hand_computed() -> None:
    pred = np.zeros((5, 5, 5), dtype=np.int64)
    truth = np.zeros_like(pred)
    pred[0, 0, :4] = 1  # 4 voxels
    truth[0, 0, 1:5] = 1  # 4 voxels on this row (3 shared) ...
    truth[1, 0, :2] = 1  # ... plus 2 more: |T| = 6
    pred[4, 4, 4] = 2  # class 2: |P| = 1, |T| = 0
    # class 1: 2*3 / (4 + 6) = 0.6; class 2: 0; class 0: 2*|bg∩bg| / (|bg_P| + |bg_T|)
    bg_p, bg_t = 125 - 5, 125 - 6
    bg_both = 125 - 8  # union of foregrounds: (0,0,0..4) + (1,0,0..1) + (4,4,4)
    got = dice_per_class(pred, truth, [0, 1, 2])
    assert got[1] == pytest.approx(0.6)
    assert got[2] == 0.0
    assert got[0] == pytest.approx(2 * bg_both / (bg_p + bg_t))


def test_dice_empty_class_conventions() -> None:
    pred = np.zeros((3, 3, 3), dtype=np.int64)
    truth = np.zeros_like(pred)
    truth[1, 1, 1] = 2
    got = dice_per_class(pred, truth, [5, 2])
    assert got[5] == 1.0  # absent from both maps
    assert got[2] == 0.0  # absent from the prediction only
    assert list(got) == [5, 2]
    assert dice_per_class(truth, pred, [2]) == {2: 0.0}  # absent from the reference only


def test_dice_torch_matches_numpy_and_integral_floats_accepted() -> None:
    rng = np.random.default_rng(1)
    p, t = rng.integers(0, 3, size=(6, 6, 6)), rng.integers(0, 3, size=(6, 6, 6))
    ref = dice_per_class(p, t, [0, 1, 2])
    assert dice_per_class(torch.from_numpy(p), torch.from_numpy(t), [0, 1, 2]) == ref
    assert dice_per_class(p.astype(np.float32), t.astype(np.float32), [0, 1, 2]) == ref


def test_dice_bad_inputs_raise() -> None:
    a = np.zeros((4, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="same shape"):
        dice_per_class(a, np.zeros((4, 4, 5), dtype=np.int64), [1])
    with pytest.raises(ValueError, match="3D"):
        dice_per_class(a[None], a[None], [1])
    with pytest.raises(ValueError, match="integer"):
        dice_per_class(a + 0.5, a, [1])
    with pytest.raises(ValueError, match="at least one class"):
        dice_per_class(a, a, [])


def test_mean_dice() -> None:
    assert mean_dice({1: 0.5, 2: 1.0, 3: 0.0}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty"):
        mean_dice({})


label_maps = hnp.arrays(np.int64, (3, 4, 5), elements=st.integers(0, 3))


@settings(max_examples=60, deadline=None)
@given(label_maps, label_maps)
def test_dice_property_range_and_symmetry(p: np.ndarray, t: np.ndarray) -> None:
    classes = [0, 1, 2, 3, 7]
    pt, tp = dice_per_class(p, t, classes), dice_per_class(t, p, classes)
    assert pt == tp
    assert all(0.0 <= v <= 1.0 for v in pt.values())
    assert pt[7] == 1.0


# ---------------------------------------------------------------------------------- MS-SSIM


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((32, 32, 32), (3, 7)), ((48, 56, 40), (3, 9)), ((64, 64, 64), (4, 7)), ((128, 140, 130), (5, 7)), ((176,) * 3, (5, 11))],
)
def test_msssim_scales_rule(shape: tuple[int, int, int], expected: tuple[int, int]) -> None:
    assert msssim_scales(shape) == expected


@pytest.mark.parametrize("side", [3, 5, 8, 13, 16, 20, 31, 32, 33, 47, 63, 64, 65, 100, 127, 175, 176, 300])
def test_msssim_scales_satisfy_monai_and_geometry(side: int) -> None:
    n, k = msssim_scales((side, side + 3, side + 1))
    assert side // max(1, n - 1) ** 2 > k - 1  # MONAI's check in compute_ms_ssim
    assert side // 2 ** (n - 1) >= k  # the coarsest scale holds a whole window


def test_msssim_scales_too_small_raises() -> None:
    with pytest.raises(ValueError, match=">= 3"):
        msssim_scales((2, 32, 32))


@pytest.mark.parametrize("shape", [(32, 32, 32), (48, 56, 40)])
def test_msssim_identical_is_one(shape: tuple[int, int, int]) -> None:
    a = smooth_volume(shape, 0)
    assert msssim_3d(a, a) == pytest.approx(1.0, abs=1e-12)
    assert msssim_3d(a * 300 + 50, a * 300 + 50) == pytest.approx(1.0, abs=1e-12)


def test_msssim_decreases_with_noise_and_is_symmetric() -> None:
    a = smooth_volume((32, 32, 32), 1)
    rng = np.random.default_rng(2)
    noise = rng.normal(size=a.shape)
    values = [msssim_3d(a, a + s * noise) for s in (0.005, 0.02, 0.05, 0.1, 0.3)]
    assert all(x > y for x, y in zip(values, values[1:]))
    assert values[0] > 0.95 and values[-1] < 0.8
    b = a + 0.1 * noise
    assert msssim_3d(a, b) == pytest.approx(msssim_3d(b, a), abs=1e-12)


def test_msssim_anticorrelated_and_unrelated_are_finite_in_unit_interval() -> None:
    a = smooth_volume((32, 32, 32), 3)
    anti = msssim_3d(a, 1.0 - a)
    assert math.isfinite(anti) and 0.0 <= anti < 0.05
    unrelated = msssim_3d(a, smooth_volume((32, 32, 32), 4))
    assert math.isfinite(unrelated) and 0.0 <= unrelated < 0.6
    noise = np.random.default_rng(5).normal(size=(2, 32, 32, 32))
    assert 0.0 <= msssim_3d(noise[0], -noise[0]) <= 1.0


def test_msssim_constant_volumes() -> None:
    c = np.full((32, 32, 32), 3.0)
    assert msssim_3d(c, c) == pytest.approx(1.0)
    other = msssim_3d(c, c + 1.0)
    assert math.isfinite(other) and 0.0 <= other < 1.0


@pytest.mark.parametrize(("shape", "sigma"), [((32, 32, 32), 0.02), ((32, 32, 32), 0.3), ((48, 56, 40), 0.1), ((64, 64, 64), 0.1)])
def test_msssim_matches_monai(shape: tuple[int, int, int], sigma: float) -> None:
    from monai.metrics import MultiScaleSSIMMetric

    a = smooth_volume(shape, 6)
    b = a + sigma * np.random.default_rng(7).normal(size=shape)
    n, k = msssim_scales(shape)
    w = np.asarray(MSSSIM_WEIGHTS[:n]) / sum(MSSSIM_WEIGHTS[:n])
    data_range = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=data_range, kernel_size=k, weights=tuple(w), reduction="none")
    ref = metric(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]).item()
    assert msssim_3d(a, b) == pytest.approx(ref, abs=1e-4)  # MONAI computes in float32


def test_msssim_weights_are_the_published_ones_and_monai_s_defaults():
    """Wang et al. 2003's five scale weights, independently of the library's constant: MONAI's defaults."""
    import inspect

    from monai.metrics import MultiScaleSSIMMetric

    assert MSSSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    assert MSSSIM_WEIGHTS == inspect.signature(MultiScaleSSIMMetric).parameters["weights"].default


def test_msssim_data_range_default_is_joint_range() -> None:
    a = smooth_volume((32, 32, 32), 8) * 200
    b = a + 20 * np.random.default_rng(9).normal(size=a.shape) + 10
    joint = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    assert msssim_3d(a, b) == pytest.approx(msssim_3d(a, b, data_range=joint), abs=1e-12)
    assert msssim_3d(a, b, data_range=10 * joint) > msssim_3d(a, b)  # larger C1, C2 -> more similar


def test_msssim_takes_read_only_arrays_without_a_warning() -> None:
    """A read-only array (a memory-mapped volume, a broadcast view) is scored without torch's non-writable
    warning. In a fresh process with warnings as errors: torch warns once per process, so an earlier test in
    this one could hide it."""
    import subprocess
    import sys

    script = ("import numpy as np\n"
              "from mixdemo.metrics import msssim_3d, msssim_3d_batch\n"
              "a = np.random.default_rng(0).random((32, 32, 32)); a.setflags(write=False)\n"
              "assert abs(msssim_3d(a, a) - 1) < 1e-9\n"
              "assert msssim_3d_batch(np.broadcast_to(a, (2, 32, 32, 32)), np.stack([a, a])).shape == (2,)\n")
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_msssim_torch_input_and_batch_consistency() -> None:
    vols = np.stack([smooth_volume((32, 32, 32), s) for s in range(4)])
    other = vols[::-1].copy() + 0.05
    batch = msssim_3d_batch(vols, other)
    assert batch.shape == (4,)
    singles = [msssim_3d(vols[i], other[i]) for i in range(4)]
    np.testing.assert_allclose(batch, singles, atol=1e-12)
    np.testing.assert_allclose(msssim_3d_batch(torch.from_numpy(vols).float(), torch.from_numpy(other).float()), batch, atol=1e-5)


def test_msssim_matrix_properties() -> None:
    vols = np.stack([smooth_volume((32, 32, 32), s) for s in range(5)])
    vols[3] = vols[0] + 0.01 * np.random.default_rng(10).normal(size=vols[0].shape)  # near-duplicate of 0
    sim = msssim_matrix(vols)
    assert sim.shape == (5, 5)
    np.testing.assert_array_equal(sim, sim.T)
    np.testing.assert_array_equal(np.diag(sim), np.ones(5))
    assert np.all((sim >= 0) & (sim <= 1))
    for i, j in [(0, 1), (2, 4), (0, 3)]:
        assert sim[i, j] == pytest.approx(msssim_3d(vols[i], vols[j]), abs=1e-10)
    assert np.argmax(sim[0] - np.eye(5)[0] * 2) == 3  # the near-duplicate is the best match
    fixed = msssim_matrix(vols, data_range=1.0)
    assert fixed[1, 2] == pytest.approx(msssim_3d(vols[1], vols[2], data_range=1.0), abs=1e-10)


def test_msssim_matrix_is_the_same_in_chunks_of_a_few_pairs(monkeypatch) -> None:
    """Pairs split over several chunks (a large cohort) give every pair's value, none skipped or doubled."""
    from mixdemo import metrics

    vols = np.stack([smooth_volume((32, 32, 32), s) for s in range(5)])
    whole = msssim_matrix(vols)
    monkeypatch.setattr(metrics, "_PAIR_CHUNK_VOXELS", 3 * 32**3)  # 3 pairs a chunk: 10 pairs in 4 chunks
    np.testing.assert_allclose(msssim_matrix(vols), whole, atol=1e-12)


def test_msssim_bad_inputs_raise() -> None:
    a = np.zeros((32, 32, 32))
    with pytest.raises(ValueError, match="same shape"):
        msssim_3d(a, np.zeros((32, 32, 31)))
    with pytest.raises(ValueError, match="msssim_3d_batch"):
        msssim_3d(a[None], a[None])
    with pytest.raises(ValueError, match="finite"):
        msssim_3d(a + np.nan, a)
    with pytest.raises(ValueError, match="data_range"):
        msssim_3d(a, a, data_range=0.0)
    with pytest.raises(ValueError, match="N, X, Y, Z"):
        msssim_matrix(a)


# ---------------------------------------------------------------------------------- ICC


SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float
)


def pingouin_icc3(ratings: np.ndarray) -> tuple[float, float, float]:
    """ICC(3,1) and its 95% CI from pingouin, with pingouin's CI rounding switched off."""
    pd = pytest.importorskip("pandas")
    pg = pytest.importorskip("pingouin")
    n, k = ratings.shape
    df = pd.DataFrame({"t": np.repeat(np.arange(n), k), "r": np.tile(np.arange(k), n), "y": ratings.ravel()})
    saved = pg.options.get("round.column.CI95")
    pg.options["round.column.CI95"] = None
    try:
        out = pg.intraclass_corr(df, targets="t", raters="r", ratings="y").set_index("Type")
    finally:
        pg.options["round.column.CI95"] = saved
    row = out.loc["ICC(C,1)"] if "ICC(C,1)" in out.index else out.loc["ICC3"]
    ci = row["CI95"] if "CI95" in row.index else row["CI95%"]
    return float(row["ICC"]), float(ci[0]), float(ci[1])


def test_icc_shrout_fleiss_published_example() -> None:
    res = icc_c1(SHROUT_FLEISS)
    assert isinstance(res, IccResult)
    assert round(res.icc, 2) == 0.71  # Shrout & Fleiss (1979), Table 4, ICC(3,1)
    assert (res.n, res.k, res.note) == (6, 4, "")
    icc, lo, hi = pingouin_icc3(SHROUT_FLEISS)
    assert res.icc == pytest.approx(icc, rel=1e-10)
    assert (res.ci_low, res.ci_high) == (pytest.approx(lo, rel=1e-8), pytest.approx(hi, rel=1e-8))
    assert res.ci_low == pytest.approx(0.34, abs=0.005) and res.ci_high == pytest.approx(0.95, abs=0.005)


def test_icc_and_its_interval_by_hand_without_pingouin() -> None:
    """Shrout & Fleiss's data by hand (pingouin is a dev extra; its tests skip without it): BMS = 11.2417 and
    EMS = 1.0194 (their Table 2), F = BMS/EMS on (5, 15) df; with the tabulated F_.975(5, 15) = 3.57642 and
    F_.975(15, 5) = 6.42773, McGraw & Wong's case 3A bounds are (F_L - 1)/(F_L + 3) and (F_U - 1)/(F_U + 3)."""
    bms, ems, k = 11.241666666666667, 1.0194444444444444, 4
    f_low, f_high = bms / ems / 3.5764153, bms / ems * 6.4277282
    res = icc_c1(SHROUT_FLEISS)
    assert res.icc == pytest.approx((bms - ems) / (bms + (k - 1) * ems), rel=1e-12)  # 0.7148
    assert res.ci_low == pytest.approx((f_low - 1) / (f_low + k - 1), abs=1e-7)  # 0.3425
    assert res.ci_high == pytest.approx((f_high - 1) / (f_high + k - 1), abs=1e-7)  # 0.9459
    # two raters: ICC(C,1) = 2 cov(a, b) / (var a + var b), the consistency form (no rater-mean term)
    a, b = np.array([1.0, 3, 2, 5, 4, 6]), np.array([2.0, 3, 1, 6, 5, 5]) + 10
    expected = 2 * np.cov(a, b)[0, 1] / (np.var(a, ddof=1) + np.var(b, ddof=1))
    assert icc_c1(np.column_stack([a, b])).icc == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("n", "k", "seed"), [(20, 2, 0), (15, 3, 1), (40, 5, 2)])
def test_icc_matches_pingouin_on_random_data(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ratings = rng.normal(size=(n, 1)) * 2 + rng.normal(size=(1, k)) + rng.normal(size=(n, k))
    res = icc_c1(ratings)
    icc, lo, hi = pingouin_icc3(ratings)
    assert res.icc == pytest.approx(icc, rel=1e-9, abs=1e-12)
    assert res.ci_low == pytest.approx(lo, rel=1e-8, abs=1e-12)
    assert res.ci_high == pytest.approx(hi, rel=1e-8, abs=1e-12)
    assert res.ci_low <= res.icc <= res.ci_high


@pytest.mark.parametrize(("n", "k", "seed"), [(12, 2, 0), (30, 3, 1)])
def test_icc_variance_components_recompose_the_icc(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ratings = rng.normal(size=(n, 1)) * 0.04 + rng.normal(size=(1, k)) * 0.01 + rng.normal(size=(n, k)) * 0.03
    target_sd, residual_sd = icc_variance_components(ratings)
    assert icc_c1(ratings).icc == pytest.approx(target_sd**2 / (target_sd**2 + residual_sd**2), rel=1e-9)
    # two raters: the residual variance is half the variance of the paired differences
    if k == 2:
        assert residual_sd**2 == pytest.approx(np.var(ratings[:, 0] - ratings[:, 1], ddof=1) / 2, rel=1e-9)
    assert icc_variance_components(np.column_stack([np.ones(n), np.ones(n)])) == (0.0, 0.0)
    with pytest.raises(ValueError):
        icc_variance_components(np.ones(4))


def test_icc_identical_raters_is_one() -> None:
    scores = np.array([0.81, 0.77, 0.9, 0.65, 0.88])
    same = icc_c1(np.column_stack([scores, scores]))
    assert (same.icc, same.ci_low, same.ci_high) == (1.0, 1.0, 1.0)
    shifted = icc_c1(np.column_stack([scores, scores + 0.1, scores - 0.3]))  # consistency ignores offsets
    assert shifted.icc == 1.0 and "offset" in shifted.note


def test_icc_no_variance_is_nan_with_reason() -> None:
    res = icc_c1(np.tile([0.5, 0.7], (4, 1)))  # every target rated identically
    assert math.isnan(res.icc) and math.isnan(res.ci_low) and math.isnan(res.ci_high)
    assert "undefined" in res.note


def test_icc_confidence_level_widens_interval() -> None:
    narrow, wide = icc_c1(SHROUT_FLEISS, confidence=0.8), icc_c1(SHROUT_FLEISS, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.icc < narrow.ci_high < wide.ci_high


def test_icc_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="n_targets >= 2"):
        icc_c1(np.ones((1, 3)))
    with pytest.raises(ValueError, match="k_raters >= 2"):
        icc_c1(np.ones((5, 1)))
    with pytest.raises(ValueError, match="n_targets"):
        icc_c1(np.ones(5))
    with pytest.raises(ValueError, match="finite"):
        icc_c1(np.array([[1.0, 2.0], [np.nan, 1.0]]))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(2, 8), st.integers(2, 4)), elements=st.integers(0, 20).map(float)),
    st.data(),
)
def test_icc_property_invariant_to_rater_offsets(ratings: np.ndarray, data: st.DataObject) -> None:
    k = ratings.shape[1]
    offsets = np.array(data.draw(st.lists(st.integers(-50, 50), min_size=k, max_size=k)), dtype=float)
    base, moved = icc_c1(ratings), icc_c1(ratings + offsets[None, :])
    if math.isnan(base.icc):
        assert math.isnan(moved.icc)
        return
    assert moved.icc == pytest.approx(base.icc, rel=1e-9, abs=1e-9)
    assert moved.ci_low == pytest.approx(base.ci_low, rel=1e-7, abs=1e-9)
    assert -1.0 / (k - 1) - 1e-9 <= base.icc <= 1.0


# ---------------------------------------------------------------------------------- re-identification


def test_reid_perfect_structure() -> None:
    ids = [0, 0, 1, 1, 1, 2, 2, 3, 3]
    res = reid_metrics(block_similarity(ids), ids)
    assert isinstance(res, ReidResult)
    assert (res.f1, res.map, res.top1_accuracy, res.n_queries, res.n_skipped) == (1.0, 1.0, 1.0, 9, 0)


def test_reid_string_identities_and_torch_input() -> None:
    ids = ["a", "b", "a", "b"]
    res = reid_metrics(torch.from_numpy(block_similarity(ids)), ids)
    assert res.map == 1.0 and res.f1 == 1.0
    tensor_ids = reid_metrics(block_similarity(ids), torch.tensor([0, 1, 0, 1]))  # labels, not 0-d tensors
    assert tensor_ids.map == 1.0 and tensor_ids.n_skipped == 0


@pytest.mark.parametrize("seed", range(5))
def test_reid_matches_sklearn_on_random_cases(seed: int) -> None:
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 6, size=30)
    ids[:12] = np.repeat(np.arange(6), 2)  # every identity occurs at least twice
    sim = rng.uniform(size=(30, 30)) + 0.3 * (ids[:, None] == ids[None, :])
    res = reid_metrics(sim, list(ids))
    truth, pred, aps = [], [], []
    for i in range(30):
        others = np.delete(np.arange(30), i)
        truth.append(ids[i])
        pred.append(ids[others[np.argmax(sim[i, others])]])
        aps.append(average_precision_score(ids[others] == ids[i], sim[i, others]))
    assert res.n_queries == 30
    assert res.f1 == pytest.approx(f1_score(truth, pred, average="macro"), abs=1e-12)
    assert res.map == pytest.approx(np.mean(aps), abs=1e-12)
    assert res.top1_accuracy == pytest.approx(np.mean(np.array(truth) == np.array(pred)))


def test_reid_ties_are_pessimistic() -> None:
    ids = [0, 0, 1, 1]
    sim = np.array(
        [
            [1.0, 0.5, 0.5, 0.2],  # query 0: relevant item 1 tied with irrelevant item 2
            [0.5, 1.0, 0.2, 0.1],
            [0.1, 0.2, 1.0, 0.9],
            [0.1, 0.2, 0.9, 1.0],
        ]
    )
    res = reid_metrics(sim, ids)
    # query 0 ranks [2, 1, 3]: AP = 1/2 and wrong top-1; the other queries are perfect.
    assert res.map == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert res.top1_accuracy == pytest.approx(0.75)
    assert res.f1 < 1.0


def test_reid_tied_group_scores_below_sklearn_tie_averaging() -> None:
    from sklearn.metrics import average_precision_score

    ids = [0, 0, 0, 1]
    sim = np.array(
        [
            [1.0, 0.5, 0.5, 0.5],  # relevant 1, 2 tied with irrelevant 3 -> order [3, 1, 2]: AP 7/12
            [0.9, 1.0, 0.1, 0.2],  # order [0, 3, 2]: AP (1 + 2/3) / 2 = 5/6
            [0.9, 0.8, 1.0, 0.1],  # order [0, 1, 3]: AP 1
            [0.1, 0.2, 0.3, 1.0],  # identity 1 occurs once: skipped
        ]
    )
    res = reid_metrics(sim, ids)
    assert (res.n_queries, res.n_skipped) == (3, 1)
    assert res.map == pytest.approx((7 / 12 + 5 / 6 + 1) / 3)
    # sklearn averages over a tied group (AP 2/3 for query 0); the pessimistic convention is lower
    tied_ap = average_precision_score([True, True, False], [0.5, 0.5, 0.5])
    assert tied_ap == pytest.approx(2 / 3) and tied_ap > 7 / 12


def test_reid_constant_matrix_is_not_perfect() -> None:
    ids = [0, 0, 1, 1, 2, 2]
    res = reid_metrics(np.ones((6, 6)), ids)
    assert res.map < 1.0
    assert res.top1_accuracy == 0.0
    assert res.f1 == 0.0
    # each query ranks its 4 impostors first, then its single match at rank 5
    assert res.map == pytest.approx(1 / 5)


def test_reid_singletons_skipped_and_counted() -> None:
    ids = [0, 0, 1, 1, 9]
    res = reid_metrics(block_similarity(ids), ids)
    assert (res.n_queries, res.n_skipped) == (4, 1)
    assert res.map == 1.0


def test_reid_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="square"):
        reid_metrics(np.ones((3, 4)), [0, 0, 1])
    with pytest.raises(ValueError, match="3 labels"):
        reid_metrics(np.ones((3, 3)), [0, 0])
    with pytest.raises(ValueError, match="finite"):
        reid_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]), [0, 0])
    with pytest.raises(ValueError, match="at least twice"):
        reid_metrics(np.ones((3, 3)), [0, 1, 2])
    sim = np.ones((2, 2))
    sim[0, 0] = np.nan  # the diagonal is ignored
    assert reid_metrics(sim, [0, 0]).map == 1.0


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float64, (n, n), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0])),
    st.lists(st.integers(0, 3), min_size=n, max_size=n),
)))
def test_reid_property_scores_in_unit_interval(case: tuple[np.ndarray, list[int]]) -> None:
    sim, ids = case
    if max(np.bincount(ids)) < 2:
        with pytest.raises(ValueError):
            reid_metrics(sim, ids)
        return
    res = reid_metrics(sim, ids)
    assert 0.0 <= res.map <= 1.0 and 0.0 <= res.f1 <= 1.0 and 0.0 <= res.top1_accuracy <= 1.0
    assert res.n_queries + res.n_skipped == len(ids)
    # pessimistic ties: the same matrix scores no better than a tie-free perturbation favouring matches
    same = np.asarray(ids)[:, None] == np.asarray(ids)[None, :]
    assert res.map <= reid_metrics(sim + 1e-6 * same, ids).map + 1e-12


def test_ratio_of_means_ci_brackets_the_ratio_and_narrows_with_more_volumes():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.88, 0.94, 40)
    private = base * 0.985 + rng.normal(0, 0.004, 40)
    ratio, lo, hi = ratio_of_means_ci(private, base)
    assert ratio == pytest.approx(private.mean() / base.mean())
    assert lo < ratio < hi and hi - lo < 0.01
    _, lo6, hi6 = ratio_of_means_ci(private[:6], base[:6])
    assert hi6 - lo6 > hi - lo  # six volumes leave a wider interval than forty
    # paired: a constant per-volume ratio has no spread, however much the volumes differ
    _, lo_c, hi_c = ratio_of_means_ci(base * 0.99, base)
    assert lo_c == pytest.approx(0.99) and hi_c == pytest.approx(0.99)
    assert ratio_of_means_ci(private, base) == (ratio, lo, hi)  # seeded


def test_ratio_of_means_ci_refuses_unpaired_or_bad_input_and_leaves_one_volume_open():
    with pytest.raises(ValueError, match="paired"):
        ratio_of_means_ci([0.9, 0.8], [0.9])
    with pytest.raises(ValueError, match="finite"):
        ratio_of_means_ci([0.9, np.nan], [0.9, 0.8])
    with pytest.raises(ValueError, match="positive"):
        ratio_of_means_ci([0.9, 0.8], [0.0, 0.0])
    ratio, lo, hi = ratio_of_means_ci([0.9], [0.92])
    assert ratio == pytest.approx(0.9 / 0.92) and np.isnan(lo) and np.isnan(hi)


def test_score_command_reads_files_and_folders(tmp_path, capsys) -> None:
    """``python -m mixdemo.score``: Dice per class of two label files, a folder of the client's outputs against a
    folder of labels (with the mean), and a clear message for files on different grids."""
    import json

    from mixdemo.io import save_volume
    from mixdemo.score import main

    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:6], truth[6:9], truth[9:11] = 1, 2, 3
    pred = truth.copy()
    pred[2:4] = 0  # half of GM missed: Dice 2/3
    (tmp_path / "segs").mkdir()
    (tmp_path / "labels").mkdir()
    for folder, volume in (("segs", pred), ("labels", truth)):
        for name in ("a_seg", "b_seg"):
            save_volume(volume, np.eye(4), tmp_path / folder / f"{name}.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "segs" / "a_seg.nii.gz"), str(tmp_path / "labels" / "a_seg.nii.gz"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["a_seg"]
    assert row["GM"] == pytest.approx(2 / 3, abs=1e-4) and row["WM"] == row["CSF"] == 1.0
    assert main([str(tmp_path / "segs"), str(tmp_path / "labels")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| a", "| b", "| mean"]
    save_volume(truth[:10], np.eye(4), tmp_path / "small.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "segs" / "a_seg.nii.gz"), str(tmp_path / "small.nii.gz")]) == 2
    assert "grid" in capsys.readouterr().err
    shifted = np.eye(4)
    shifted[:3, 3] = [0, 0, 5]  # the same size, 5 mm away: the voxels do not match, and the score would lie
    save_volume(truth, shifted, tmp_path / "shifted.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "segs" / "a_seg.nii.gz"), str(tmp_path / "shifted.nii.gz")]) == 2
    assert "affines differ" in capsys.readouterr().err


def test_score_notes_a_segmentation_without_labels_and_names_a_path_that_is_not_there(tmp_path, capsys) -> None:
    """A folder's segmentation with no labels file of its name is left out of the mean, and a note says so (not
    silently); a mistyped path is named, not answered with the two-files-or-two-folders rule."""
    from mixdemo.io import save_volume
    from mixdemo.score import main

    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:6] = 1
    for folder, names in (("segs", ("a_seg", "extra_seg")), ("labels", ("a_seg",))):
        (tmp_path / folder).mkdir()
        for name in names:
            save_volume(truth, np.eye(4), tmp_path / folder / f"{name}.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "segs"), str(tmp_path / "labels")]) == 0
    assert "extra_seg.nii.gz" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.nii.gz"), str(tmp_path / "labels" / "a_seg.nii.gz")]) == 2
    assert "nope.nii.gz does not exist" in capsys.readouterr().err


def test_score_averages_the_named_classes_without_background_and_the_scans_in_the_mean_row(tmp_path, capsys) -> None:
    """``avg`` is the mean Dice of the classes named (background, whose Dice here differs, left out); ``mean``, of
    the scans' rows, column by column."""
    import json

    from mixdemo.io import save_volume
    from mixdemo.metrics import dice_per_class
    from mixdemo.score import main

    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:6], truth[6:9], truth[9:11] = 1, 2, 3
    a, b = truth.copy(), truth.copy()
    a[2:4] = 0  # GM half missed: GM 2/3
    b[6:9] = 3  # WM called CSF: WM 0, CSF 2·2/(5 + 2)
    for folder, volumes in (("segs", (a, b)), ("labels", (truth, truth))):
        (tmp_path / folder).mkdir()
        for name, volume in zip(("a_seg", "b_seg"), volumes):
            save_volume(volume, np.eye(4), tmp_path / folder / f"{name}.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "segs"), str(tmp_path / "labels"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["a"] == {"GM": 0.6667, "WM": 1.0, "CSF": 1.0, "avg": pytest.approx(8 / 9, abs=1e-4)}
    assert rows["b"] == {"GM": 1.0, "WM": 0.0, "CSF": 0.5714, "avg": pytest.approx((1 + 4 / 7) / 3, abs=1e-4)}
    assert dice_per_class(a, truth, [0])[0] != pytest.approx(1.0)  # background counted would move a's avg
    for column in ("GM", "WM", "CSF", "avg"):
        assert rows["mean"][column] == pytest.approx((rows["a"][column] + rows["b"][column]) / 2, abs=1e-4)


@pytest.mark.parametrize("classes, said", [
    ("background,GM,WM,CSF", "leave out background"),
    ("GM,GM,CSF", "names a class twice"),
    ("GM,,CSF", "a name is empty"),
    (",", "a name is empty"),
])
def test_score_refuses_class_names_that_would_mislabel_its_columns(tmp_path, capsys, classes, said) -> None:
    """split.json's list (background first) would show each class's Dice under the name before its own; a name
    twice, one column's under the other's; an empty name shifts the values after it (or leaves none)."""
    from mixdemo.io import save_volume
    from mixdemo.score import main

    save_volume(np.ones((4, 4, 4), np.uint8), np.eye(4), tmp_path / "labels.nii.gz", dtype=np.uint8)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "labels.nii.gz"), str(tmp_path / "labels.nii.gz"), "--classes", classes])
    assert stop.value.code == 2 and said in capsys.readouterr().err


def test_score_notes_a_patch_answer_and_scores_inside_its_block_when_asked(tmp_path, capsys) -> None:
    """A patch-mode segmentation labels one block and leaves the rest 0: over the whole grid the rest counts as
    missed (a note says so); ``--in-box`` scores inside the block the segmentation labels."""
    import json

    from mixdemo.io import save_volume
    from mixdemo.score import main

    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, (32, 32, 32)).astype(np.uint8)
    patch = np.zeros_like(truth)
    patch[8:16, 8:16, 8:16] = truth[8:16, 8:16, 8:16]  # right inside its block, nothing outside
    save_volume(truth, np.eye(4), tmp_path / "labels.nii.gz", dtype=np.uint8)
    save_volume(patch, np.eye(4), tmp_path / "patch.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "patch.nii.gz"), str(tmp_path / "labels.nii.gz"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["patch"]["avg"] < 0.1
    assert "labels only a 8×8×8 block" in captured.err and "--in-box" in captured.err
    assert main([str(tmp_path / "patch.nii.gz"), str(tmp_path / "labels.nii.gz"), "--json", "--in-box"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["patch"]["avg"] == 1.0 and captured.err == ""
    assert main([str(tmp_path / "labels.nii.gz"), str(tmp_path / "labels.nii.gz")]) == 0
    assert "note" not in capsys.readouterr().err  # a whole answer: no note


def test_score_says_when_a_class_it_was_not_told_of_goes_unscored(tmp_path, capsys) -> None:
    """Labels of a cohort with a fifth class: the default --classes (the phantoms') leaves class 4 out, and a note
    says so; naming it scores it."""
    import json

    from mixdemo.io import save_volume
    from mixdemo.score import main

    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:5], truth[5:8], truth[8:10], truth[10:12] = 1, 2, 3, 4
    save_volume(truth, np.eye(4), tmp_path / "labels.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "labels.nii.gz"), str(tmp_path / "labels.nii.gz"), "--json"]) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)["labels"]) == {"GM", "WM", "CSF", "avg"}
    assert "hold label 4, which --classes does not name" in captured.err
    assert main([str(tmp_path / "labels.nii.gz"), str(tmp_path / "labels.nii.gz"), "--json",
                 "--classes", "GM,WM,CSF,lesion"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["labels"]["lesion"] == 1.0 and captured.err == ""


def test_score_reads_brats_2021_labels_with_their_enhancing_tumour_as_4(tmp_path, capsys) -> None:
    """The client writes ET as 3; BraTS 2021's labels hold it as 4: --brats reads them as the client's classes (a
    note points to it without), and a value BraTS does not define is refused."""
    import json

    from mixdemo.io import save_volume
    from mixdemo.score import main

    pred = np.zeros((12, 12, 12), np.uint8)
    pred[2:5], pred[5:8], pred[8:10] = 1, 2, 3
    truth = np.where(pred == 3, 4, pred).astype(np.uint8)
    save_volume(pred, np.eye(4), tmp_path / "seg.nii.gz", dtype=np.uint8)
    save_volume(truth, np.eye(4), tmp_path / "case_seg.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "seg.nii.gz"), str(tmp_path / "case_seg.nii.gz"), "--classes", "NCR,ED,ET"]) == 0
    captured = capsys.readouterr()
    assert "| 1.000 | 1.000 | 0.000 |" in captured.out and "--brats" in captured.err
    assert main([str(tmp_path / "seg.nii.gz"), str(tmp_path / "case_seg.nii.gz"), "--brats", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["seg"] == {"NCR": 1.0, "ED": 1.0, "ET": 1.0, "avg": 1.0} and captured.err == ""
    save_volume(np.full((12, 12, 12), 5, np.uint8), np.eye(4), tmp_path / "odd_seg.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "seg.nii.gz"), str(tmp_path / "odd_seg.nii.gz"), "--brats"]) == 2
    assert "labels hold [5], which the brats layout does not define" in capsys.readouterr().err


def test_score_names_every_label_value_it_was_not_told_of_and_labels_that_hold_none_of_the_classes(tmp_path, capsys):
    """Labels written in other values (0, 10, 20, 30, as some tools store GM, WM, CSF): every class scores 0. The
    note named only the largest value, 30, and suggested naming one more class; it names each value left out and
    says that the labels hold none of the classes scored."""
    from mixdemo.io import save_volume
    from mixdemo.score import main

    pred = np.zeros((12, 12, 12), np.uint8)
    pred[2:5], pred[5:8], pred[8:10] = 1, 2, 3
    save_volume(pred, np.eye(4), tmp_path / "seg.nii.gz", dtype=np.uint8)
    save_volume(pred * 10, np.eye(4), tmp_path / "labels.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "seg.nii.gz"), str(tmp_path / "labels.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert "hold labels 10, 20, 30, which --classes does not name" in err
    assert "labels.nii.gz holds none of the values 1, 2, 3 that --classes names" in err


def test_score_names_the_file_it_cannot_read(tmp_path, capsys) -> None:
    """io's messages name no file (they reach the app's logs); the score command, given two files or two folders of
    them, said only "the label map contains non-integer values", so the user could not tell which file to mend."""
    from mixdemo.io import save_volume
    from mixdemo.score import main

    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:6] = 1
    (tmp_path / "segs").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a_seg", "b_seg"):
        save_volume(truth, np.eye(4), tmp_path / "segs" / f"{name}.nii.gz", dtype=np.uint8)
    save_volume(truth, np.eye(4), tmp_path / "labels" / "a_seg.nii.gz", dtype=np.uint8)
    save_volume(np.where(truth == 1, 0.9999, 0).astype(np.float32), np.eye(4), tmp_path / "labels" / "b_seg.nii.gz")
    assert main([str(tmp_path / "segs"), str(tmp_path / "labels")]) == 2
    assert "error: b_seg.nii.gz: The label map contains non-integer values" in capsys.readouterr().err
    assert main([str(tmp_path / "labels" / "b_seg.nii.gz"), str(tmp_path / "labels" / "a_seg.nii.gz")]) == 2
    assert "error: b_seg.nii.gz: The label map contains non-integer values" in capsys.readouterr().err


def test_score_leaves_out_hidden_files_and_matches_labels_whatever_the_case_of_their_suffix(tmp_path, capsys) -> None:
    """A folder copied from a Mac holds ``._<name>_seg.nii.gz`` resource files beside each segmentation: the score
    read them as segmentations and stopped on the first. Labels named ``<name>_seg.NII.GZ`` (a suffix io reads in any
    case) were not found for ``<name>_seg.nii.gz``."""
    import json

    from mixdemo.io import save_volume
    from mixdemo.score import main

    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:5], truth[5:8], truth[8:10] = 1, 2, 3  # every class: no note of one in neither map
    (tmp_path / "segs").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a_seg", "b_seg"):
        save_volume(truth, np.eye(4), tmp_path / "segs" / f"{name}.nii.gz", dtype=np.uint8)
        (tmp_path / "segs" / f"._{name}.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(200))  # AppleDouble
        (tmp_path / "labels" / f"._{name}.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(200))
    save_volume(truth, np.eye(4), tmp_path / "labels" / "a_seg.nii.gz", dtype=np.uint8)
    save_volume(truth, np.eye(4), tmp_path / "labels" / "b_seg.NII.GZ", dtype=np.uint8)
    assert main([str(tmp_path / "segs"), str(tmp_path / "labels"), "--json"]) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)) == {"a", "b", "mean"} and captured.err == ""


@pytest.mark.parametrize("zooms", [(0.5, 0.5, 0.5), (0.8, 0.8, 1.2)])
def test_score_is_the_dice_on_the_files_own_grid(tmp_path, capsys, zooms) -> None:
    """A segmentation and its labels on one grid of other voxels than 1 mm (a 0.5 mm or an anisotropic scan's, the
    client writing the segmentation on the scan's own grid) are scored on that grid: both were first resampled to
    1 mm by nearest neighbour, which drops or doubles planes of voxels, so the score was not their Dice."""
    import json

    from mixdemo.io import save_volume
    from mixdemo.metrics import dice_per_class, mean_dice
    from mixdemo.score import main

    truth = np.zeros((16, 16, 16), np.uint8)
    truth[4:12, 4:12, 4:12] = 1
    pred = truth.copy()
    pred[12, 4:12, 4:12] = 1  # one plane too many
    affine = np.diag([*zooms, 1.0])
    save_volume(pred, affine, tmp_path / "seg.nii.gz", dtype=np.uint8)
    save_volume(truth, affine, tmp_path / "labels.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "seg.nii.gz"), str(tmp_path / "labels.nii.gz"), "--json", "--classes", "GM"]) == 0
    dice = dice_per_class(pred, truth, [1])
    assert json.loads(capsys.readouterr().out)["seg"] == {"GM": round(dice[1], 4), "avg": round(mean_dice(dice), 4)}


def test_score_says_when_a_class_is_in_neither_map_and_so_scores_one(tmp_path, capsys) -> None:
    """A BraTS case without enhancing tumour, segmented without it: ET's Dice is 1 by the usual convention (nothing
    to find, nothing found) and counts in avg; the table showed a perfect score without a word of why."""
    import json

    from mixdemo.io import save_volume
    from mixdemo.score import main

    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:5], truth[5:8] = 1, 2
    save_volume(truth, np.eye(4), tmp_path / "labels.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "labels.nii.gz"), str(tmp_path / "labels.nii.gz"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["labels"]["CSF"] == 1.0
    assert "note: CSF is in neither labels.nii.gz nor its labels: its Dice is 1 by convention" in captured.err
    truth[8:10] = 3
    save_volume(truth, np.eye(4), tmp_path / "labels.nii.gz", dtype=np.uint8)
    assert main([str(tmp_path / "labels.nii.gz"), str(tmp_path / "labels.nii.gz")]) == 0
    assert capsys.readouterr().err == ""
