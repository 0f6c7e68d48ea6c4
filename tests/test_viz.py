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


def test_each_view_shows_the_plane_through_the_centre():
    """Every pixel of every panel shows the voxel a click there would pick: the panel's plane through the centre
    (not a neighbouring plane, nor one along another axis), the right way round."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    vol = ((7 * x + 13 * y + 29 * z) % 251).astype(np.float32)  # a neighbour on any axis has another value
    centre = (6, 17, 9)
    img = viz.montage(vol, centre, vmax=255.0, scale=1)
    for p in viz.layout(SHAPE):
        for row in range(p.height):
            for col in range(p.width):
                voxel = viz.click_to_voxel(SHAPE, centre, p.x0 + col, p.y0 + row, scale=1)
                assert abs(int(img[p.y0 + row, p.x0 + col, 0]) - vol[voxel]) <= 1, (p.view, row, col, voxel)


def test_the_legend_shows_the_colour_each_class_is_drawn_in():
    """The legend's swatch of each class is the colour its voxels get in an overlay at full opacity."""
    import re

    names = ["background", "GM", "WM", "CSF", "lesion", "oedema"]
    swatches = dict((name, tuple(map(int, rgb))) for *rgb, name in
                    re.findall(r"background:rgb\((\d+), (\d+), (\d+)\);[^>]*></span>([^<]+)</span>", viz.legend_html(names)))
    assert list(swatches) == names[1:]
    for c, name in enumerate(names[1:], start=1):
        labels = np.full(SHAPE, c, dtype=np.uint8)
        img = viz.montage(np.zeros(SHAPE, np.float32), (10, 15, 12), overlay=labels, opacity=1.0, scale=1)
        assert tuple(img[15, 10]) == swatches[name], name


def test_the_heat_map_is_drawn_where_it_is_at_the_scale_asked():
    """The 'inferno' map shows where the map is non-zero only, at full colour from ``heat_max`` up."""
    heat = np.zeros(SHAPE, np.float32)
    heat[10, 15, 12] = 2.0
    grey = np.zeros(SHAPE, np.float32)
    full = viz.montage(grey, (10, 15, 12), heat=heat, heat_max=2.0, opacity=1.0, scale=1)
    half = viz.montage(grey, (10, 15, 12), heat=heat, heat_max=4.0, opacity=1.0, scale=1)
    plain = viz.montage(grey, (10, 15, 12), scale=1)
    full, half = full[:, : plain.shape[1]], half[:, : plain.shape[1]]  # the views (the colour bar is right of them)
    hot = (full != plain).any(-1)
    assert hot.sum() == 3  # the one voxel, once in each view
    assert (full[hot] == viz._INFERNO[-1]).all()  # at heat_max: the top colour
    assert (half[hot] != viz._INFERNO[-1]).any(-1).all() and (half[hot] > 0).any()  # half of it: a lower colour


def _views(shape, scale: int, grid: bool) -> tuple[slice, slice]:
    """Rows and columns of a montage that its views span (before any colour bar widens it)."""
    panels = viz.layout(shape, grid)
    return (slice(0, max(p.y0 + p.height for p in panels) * scale),
            slice(0, max(p.x0 + p.width for p in panels) * scale))


def _in_views(shape, scale: int, grid: bool) -> np.ndarray:
    """Mask of a montage's pixels inside its views."""
    rows, cols = _views(shape, scale, grid)
    mask = np.zeros((rows.stop, cols.stop), bool)
    for p in viz.layout(shape, grid):
        mask[p.y0 * scale : (p.y0 + p.height) * scale, p.x0 * scale : (p.x0 + p.width) * scale] = True
    return mask


BAR_CASES = [((32, 32, 32), 5, True), ((144, 192, 160), 2, True), (SHAPE, 4, False)]
"""The app's patch and whole-grid panels (the bar in the free corner right of the axial view), and a one-row montage
(the bar in a column added to the right)."""


@pytest.mark.parametrize("shape, scale, grid", BAR_CASES)
def test_the_colour_bar_shows_the_heat_colours_from_0_to_heat_max(shape, scale, grid):
    """Right of the axial view, a bar of the heat colours: ``heat_max``'s on its top row, 0's on its bottom row and
    each row's value between them, evenly, at full weight (a voxel at ``heat_max`` at opacity 1 shows its top colour);
    outlined, and over no view."""
    heat_max, centre = 0.3, [n // 2 for n in shape]
    heat = np.zeros(shape, np.float32)
    heat[tuple(centre)] = heat_max
    zeros = np.zeros(shape, np.float32)
    img = viz.montage(zeros, centre, heat=heat, heat_max=heat_max, opacity=1.0, scale=scale, grid=grid)
    where = viz.heat_scale_layout(shape, heat_max, scale, grid)
    assert img.shape[1] == where.image_width and where.height > 20
    bar = img[where.y0 : where.y0 + where.height, where.x0 : where.x0 + where.width]
    assert (bar == bar[:, :1]).all()  # one colour a row
    last = where.height - 1
    for row in (0, last // 4, last // 2, 3 * last // 4, last):
        colour, _ = viz.heat_colours(np.array([heat_max * (last - row) / last]), heat_max)
        assert (bar[row, 0] == colour[0].round()).all(), row
    assert (bar[0, 0] == viz._INFERNO[-1]).all() and (bar[-1, 0] == viz._INFERNO[0]).all()
    frame = img[where.y0 - 1 : where.y0 + where.height + 1, where.x0 - 1 : where.x0 + where.width + 1]
    assert (frame[[0, -1]] == viz.SCALE_FRAME).all() and (frame[:, [0, -1]] == viz.SCALE_FRAME).all()
    views = _in_views(shape, scale, grid)
    shown = img[: views.shape[0], : views.shape[1]][views]
    assert (shown == viz._INFERNO[-1]).all(-1).sum() == 3 * scale**2  # the voxel at heat_max, once in each view
    plain = viz.montage(zeros, centre, scale=scale, grid=grid)
    assert (shown != plain[views]).any(-1).sum() == 3 * scale**2  # the views show it alone: the bar covers none


def test_the_colour_bar_writes_heat_max_to_two_significant_figures_and_0():
    """The bar's top end reads ``heat_max`` (two significant figures), its bottom end 0, above it "variance": two
    maxima give two top numbers and the same rest."""
    assert [viz.heat_scale_label(v) for v in (0, 0.25, 0.0996, 0.0123, 0.001, 123.4, 2, 1e-5, 34000)] == [
        "0", "0.25", "0.10", "0.012", "0.0010", "120", "2.0", "1.0e-5", "3.4e4"]
    shape, scale = (32, 32, 32), 5
    zeros = np.zeros(shape, np.float32)
    imgs = {m: viz.montage(zeros, (16, 16, 16), heat=zeros, heat_max=m, scale=scale, grid=True) for m in (0.25, 0.012)}
    where = viz.heat_scale_layout(shape, 0.25, scale, True)
    assert viz.heat_scale_layout(shape, 0.012, scale, True) == where  # the corner holds either
    f, right = where.font_px, slice(where.x0 + where.width + 1, where.image_width)
    top = slice(where.y0 - f // 2 - 2, where.y0 + f // 2 + 2)
    bottom = slice(where.y0 + where.height - 1 - f // 2 - 2, where.y0 + where.height + f // 2 + 2)
    title = slice(where.y0 - 2 * f, where.y0 - f + 1)
    a, b = imgs[0.25], imgs[0.012]
    assert (a[top, right] != b[top, right]).any()  # the maximum follows heat_max
    for rows, cols in ((bottom, right), (title, slice(where.x0 - 1, where.image_width))):
        assert (a[rows, cols] == b[rows, cols]).all()  # "0" and "variance" do not
        assert (a[rows, cols] != viz.CANVAS).any(-1).sum() > f  # and are written
    assert (a[top, right] != viz.CANVAS).any(-1).sum() > f
    assert (a.reshape(-1, 3) == viz.SCALE_TEXT).all(1).any()  # in the text colour, where its strokes are whole


@pytest.mark.parametrize("heat_max", [0.001, 0.0083, 0.25, 1.0])
@pytest.mark.parametrize("shape, scale", [((32, 32, 32), 5), ((144, 192, 160), 2)])
def test_the_app_s_uncertainty_panel_is_as_wide_as_the_others(shape, scale, heat_max):
    """In the app's panels (patch or whole grid) the bar and its numbers fit the corner right of the axial view for
    the maxima the app writes (at least 0.001, "0.0010" the widest; the variance summed over classes is at most 1)."""
    width = max(p.x0 + p.width for p in viz.layout(shape, grid=True)) * scale
    assert viz.heat_scale_layout(shape, heat_max, scale, grid=True).image_width == width
    zeros = np.zeros(shape, np.float32)
    assert viz.montage(zeros, [n // 2 for n in shape], heat=zeros, heat_max=heat_max, scale=scale, grid=True).shape == \
        viz.montage(zeros, [n // 2 for n in shape], scale=scale, grid=True).shape


@pytest.mark.parametrize("shape, scale, grid", BAR_CASES)
def test_a_montage_without_heat_has_no_colour_bar(shape, scale, grid):
    """No heat, no bar: the montage is its views' width and the bar's place is bare canvas (with heat it is not)."""
    centre, zeros = [n // 2 for n in shape], np.zeros(shape, np.float32)
    plain = viz.montage(zeros, centre, scale=scale, grid=grid)
    heat = viz.montage(zeros, centre, heat=zeros, heat_max=0.1, scale=scale, grid=grid)
    rows, cols = _views(shape, scale, grid)
    assert plain.shape[:2] == (rows.stop, cols.stop)
    where = viz.heat_scale_layout(shape, 0.1, scale, grid)
    place = (slice(where.y0 - 2 * where.font_px, where.y0 + where.height + 1), slice(where.x0 - 1, where.image_width))
    canvas = np.empty((rows.stop, where.image_width, 3), np.uint8)
    canvas[:] = viz.CANVAS
    canvas[rows, cols] = plain
    assert (canvas[place] == viz.CANVAS).all()
    assert (heat[place] != viz.CANVAS).any(-1).sum() > where.height * where.width
    assert not (plain.reshape(-1, 3) == viz._INFERNO[-1]).all(1).any()


def test_figures_name_and_place_each_series():
    fig = viz.dice_vs_k_figure({"naive TTA": [0.5, 0.6], "learned TTA": [0.8, 0.85]})
    assert [(t.name, list(t.x), list(t.y)) for t in fig.data] == [("naive TTA", [1, 2], [0.5, 0.6]),
                                                                   ("learned TTA", [1, 2], [0.8, 0.85])]
    pairs = viz.dice_vs_k_figure({"learned": [(1, 0.8), (2, 0.85), (5, 0.9)]})  # (K, Dice) pairs: plotted at their K
    assert list(pairs.data[0].x) == [1, 2, 5] and list(pairs.data[0].y) == [0.8, 0.85, 0.9]
    bars = viz.bar_figure({"no proxy": {"F1": 0.9, "mAP": 0.95}, "mixup": {"F1": 0.2, "mAP": 0.1}}, "reid", "value")
    assert [(b.name, list(b.x), list(b.y)) for b in bars.data] == [("no proxy", ["F1", "mAP"], [0.9, 0.95]),
                                                                    ("mixup", ["F1", "mAP"], [0.2, 0.1])]
    assert bars.layout.title.text == "reid" and bars.layout.yaxis.title.text == "value"


# ------------------------------------------------------------------------------ the static figures of results/
@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures ``mixdemo.figures`` draws, kept open instead of written."""
    from mixdemo import figures

    kept = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: kept.append(fig) or path)
    yield kept
    for fig in kept:
        figures.plt.close(fig)


def test_the_dice_against_k_figure_plots_each_method_at_its_k(drawn, tmp_path):
    """Fig. 3: each method's curve at the recorded K (not at its position), named after it; the baseline dashed at its
    mean Dice; the axis names the classes averaged."""
    from mixdemo import figures

    doc = {"dice_vs_k": {"naive": [[1, 0.5], [2, 0.6], [4, 0.65]], "learned": [[1, 0.8], [2, 0.85], [4, 0.9]]},
           "dice": {"baseline": {"avg": 0.95}}, "classes": ["GM", "WM", "CSF", "lesion"]}
    figures.plot_dice_vs_k_png(doc, tmp_path / "k.png")
    (ax,) = drawn[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["Naive + TTA"].get_xdata()) == [1, 2, 4] and list(lines["Naive + TTA"].get_ydata()) == [0.5, 0.6, 0.65]
    assert list(lines["Learned + TTA"].get_xdata()) == [1, 2, 4] and list(lines["Learned + TTA"].get_ydata()) == [0.8, 0.85, 0.9]
    assert set(lines["Baseline (no mixing)"].get_ydata()) == {0.95} and lines["Baseline (no mixing)"].get_linestyle() == "--"
    assert ax.get_ylabel() == "mean Dice (GM, WM, CSF, lesion)" and ax.get_xlabel().startswith("K ")


def test_the_unmixing_panels_show_each_map_under_its_title_in_the_legend_s_colours(drawn, tmp_path):
    """Fig. 2-style panels: each title over its own map (naive and learned not swapped, reference j over proxy j),
    labels drawn in the app's class colours."""
    from matplotlib.colors import to_rgb

    from mixdemo import figures

    rng = np.random.default_rng(0)
    lab = lambda c: np.full((6, 5), c, np.uint8)  # noqa: E731 - one class per map: its colour names it
    case = {"image": rng.random((6, 5)), "truth": lab(1), "naive_tta": lab(2), "learned_tta": lab(3), "tta_k": 7,
            "references": [rng.random((6, 5)) for _ in range(3)], "proxies": [rng.random((6, 5)) for _ in range(3)],
            "naive": [lab(1), lab(2), lab(3)], "learned": [lab(3), lab(1), lab(2)]}
    figures.plot_unmixing_panels_png(case, tmp_path / "p.png")
    shown = {ax.get_title(): ax.images[0] for ax in drawn[0].axes}
    expected = {"target": case["image"], "ground truth": case["truth"], "Naive + TTA (K=7)": case["naive_tta"],
                "Learned + TTA (K=7)": case["learned_tta"]}
    for j in range(3):
        expected.update({f"reference {j + 1}": case["references"][j], f"proxy {j + 1} (sent)": case["proxies"][j],
                         f"Naive, ref {j + 1}": case["naive"][j], f"Learned, ref {j + 1}": case["learned"][j]})
    assert set(shown) == set(expected)
    for title, img in expected.items():
        assert np.array_equal(np.asarray(shown[title].get_array()), np.rot90(img)), title  # axial: anterior up
    for c in (1, 2, 3):  # "Naive, ref c" shows class c alone
        panel = shown[f"Naive, ref {c}"]
        rgba = panel.to_rgba(np.asarray(panel.get_array()))[0, 0]
        assert np.allclose(rgba[:3], np.array(viz.class_colour(c)) / 255), (c, rgba)
    assert figures.label_cmap(4)(0)[:3] == to_rgb("black")


def test_the_cohort_figure_shows_each_view_through_the_centre(drawn, tmp_path):
    """The cohort figure: axial, coronal and sagittal slices through the scan's centre (anterior / superior up),
    and the axial labels in the class colours its caption names."""
    from mixdemo import figures

    x, y, z = np.meshgrid(*[np.arange(n) for n in (8, 10, 12)], indexing="ij")
    img = ((7 * x + 13 * y + 29 * z) % 251 / 251).astype(np.float32)
    lab = ((x + z) % 4).astype(np.uint8)
    figures.plot_cohort_png([img], [lab], ["sub-x"], tmp_path / "c.png")
    axes = drawn[0].axes
    views = {"axial": img[:, :, 6], "coronal": img[:, 5, :], "sagittal": img[4, :, :]}
    for ax, (view, expected) in zip(axes, views.items()):
        assert ax.get_title() == f"sub-x {view}"
        assert np.allclose(np.asarray(ax.images[0].get_array()), np.rot90(expected)), view
    labels = axes[3].images[0]
    assert np.array_equal(np.asarray(labels.get_array()), np.rot90(lab[:, :, 6]))
    colours = {"orange": viz.class_colour(1), "blue": viz.class_colour(2), "green": viz.class_colour(3)}
    caption = axes[3].get_title()
    for c, name in ((1, "GM"), (2, "WM"), (3, "CSF")):
        word = caption.split(f"{name} ")[1].split(",")[0]
        assert colours[word] == viz.class_colour(c)
        assert np.allclose(labels.to_rgba(np.array([[c]]))[0, 0, :3], np.array(viz.class_colour(c)) / 255)
