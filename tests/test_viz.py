"""Slices, overlays, montages and figures (no Gradio)."""

from __future__ import annotations

import numpy as np
import pytest

from mixdemo import viz

SHAPE = (20, 30, 24)


def _volume():
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    return (x + 2 * y + 3 * z).astype(np.float32)


def test_montage_shape_and_layout():
    img = viz.montage(_volume(), (10, 15, 12), scale=1)
    panels = viz.layout(SHAPE)
    assert [p.view for p in panels] == ["sagittal", "coronal", "axial"]
    assert img.dtype == np.uint8 and img.shape == (30, 30 + 20 + 20 + 2 * viz.GAP, 3)
    assert viz.montage(_volume(), (10, 15, 12), scale=3).shape == (90, 3 * img.shape[1], 3)


@pytest.mark.parametrize("voxel", [(3, 7, 5), (19, 29, 23), (0, 0, 0), (11, 2, 20)])
def test_click_maps_back_to_the_voxel(voxel):
    """A click on a view's pixel of a voxel returns that voxel's two in-plane coordinates; the third stays the
    current centre's (the slice the view shows)."""
    scale = 2
    centre = (7, 13, 17)  # no coordinate equal to a tested voxel's: a click that changed nothing would show
    for p in viz.layout(SHAPE):
        col_ax, row_ax = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}[p.view]
        (through,) = {0, 1, 2} - {col_ax, row_ax}
        px = (p.x0 + voxel[col_ax]) * scale + 1
        py = (p.y0 + SHAPE[row_ax] - 1 - voxel[row_ax]) * scale + 1
        got = viz.click_to_voxel(SHAPE, centre, px, py, scale=scale)
        assert got is not None
        assert (got[col_ax], got[row_ax], got[through]) == (voxel[col_ax], voxel[row_ax], centre[through])
    assert viz.click_to_voxel(SHAPE, centre, 10_000, 0, scale=scale) is None


def test_slices_are_oriented_superior_up():
    vol = _volume()
    sag = viz._slice(vol, "sagittal", (5, 5, 5))
    assert sag.shape == (SHAPE[2], SHAPE[1])
    assert sag[0, 0] > sag[-1, 0]  # top row is the highest z


def test_overlay_colours_labels_and_probabilities():
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[:, :, :12] = 2
    img = viz.montage(np.ones(SHAPE, np.float32), (10, 15, 6), overlay=labels, opacity=1.0, scale=1, vmax=1)
    assert (img.reshape(-1, 3) == viz.CLASS_COLOURS[2]).all(1).any()
    probs = np.zeros((4,) + SHAPE, dtype=np.float32)
    probs[1], probs[2] = 0.5, 0.5
    colour, weight = viz.label_colours(np.moveaxis(probs[:, 0], 0, -1))
    assert np.allclose(weight, 1) and np.allclose(colour[0, 0], np.add(viz.CLASS_COLOURS[1], viz.CLASS_COLOURS[2]) / 2)
    none = viz.montage(np.ones(SHAPE, np.float32), (1, 1, 1), overlay=labels, opacity=0.0, scale=1, vmax=1)
    assert not (none.reshape(-1, 3) == viz.CLASS_COLOURS[2]).all(1).any()


def test_box_and_heat():
    region = (slice(2, 10), slice(5, 15), slice(4, 12))
    img = viz.montage(np.zeros(SHAPE, np.float32), (5, 8, 6), box=region, scale=1)
    assert (img.reshape(-1, 3) == viz.PATCH_BOX_COLOUR).all(1).sum() > 0
    heat = viz.montage(np.zeros(SHAPE, np.float32), (5, 8, 6), heat=_volume(), scale=1)
    assert heat.mean() > 0


def test_the_box_is_drawn_where_the_region_is_in_every_view():
    """Each box pixel, mapped back to a voxel as a click would be, lies on the region's outline: its extent on the
    view's two axes is the region's, so a flipped or shifted box shows."""
    region = (slice(2, 10), slice(5, 15), slice(4, 12))
    centre = (5, 8, 6)
    img = viz.montage(np.zeros(SHAPE, np.float32), centre, box=region, scale=1)
    for panel in viz.layout(SHAPE):
        block = img[panel.y0 : panel.y0 + panel.height, panel.x0 : panel.x0 + panel.width]
        rows, cols = np.nonzero((block == viz.PATCH_BOX_COLOUR).all(-1))
        assert len(rows), panel.view
        voxels = np.array([viz.click_to_voxel(SHAPE, centre, panel.x0 + c, panel.y0 + r, scale=1)
                           for r, c in zip(rows, cols)])
        col_axis, row_axis = viz._view_axes(panel.view)
        for axis in (col_axis, row_axis):
            assert (voxels[:, axis].min(), voxels[:, axis].max()) == (region[axis].start, region[axis].stop - 1), panel.view


def test_legend_and_figures():
    html = viz.legend_html()
    assert all(name in html for name in ("GM", "WM", "CSF"))
    fig = viz.dice_vs_k_figure({"learned TTA": [0.8, 0.85, 0.86]})
    assert list(fig.data[0].x) == [1, 2, 3] and fig.layout.yaxis.title.text == "mean Dice (GM, WM, CSF)"
    five = viz.dice_vs_k_figure({"learned TTA": [0.8]}, class_names=["background", "GM", "WM", "CSF", "lesion"])
    assert five.layout.yaxis.title.text == "mean Dice (GM, WM, CSF, lesion)"
    empty = viz.dice_vs_k_figure({})
    assert empty.layout.annotations
    bars = viz.bar_figure({"no proxy": {"F1": 0.9, "mAP": 0.95}, "mixup": {"F1": 0.1, "mAP": 0.2}}, "reid")
    assert len(bars.data) == 2
