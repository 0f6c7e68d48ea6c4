"""Pictures for the demo: three orthogonal slices, label overlays, a legend, a heat map's colour bar and plotly figures.

Volumes are RAS+ arrays (X right, Y anterior, Z superior). Slices are shown in neurological
convention (the subject's right on the right): sagittal (anterior right), coronal, axial
(anterior up). A *montage* is the three slices side by side in one RGB image.
No Gradio here.
"""

from __future__ import annotations

import colorsys
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mixdemo.classes import CLASS_NAMES

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),  # class 1 (GM): orange (Okabe-Ito, colour-blind safe)
    (86, 180, 233),  # class 2 (WM): sky blue
    (0, 158, 115),  # class 3 (CSF): bluish green
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
    (240, 228, 66),  # yellow
)


def class_colour(c: int) -> tuple[int, int, int]:
    """The overlay colour of class ``c`` ≥ 1: Okabe-Ito's palette, then hues a golden angle apart."""
    if c <= len(PALETTE):
        return PALETTE[c - 1]
    r, g, b = colorsys.hsv_to_rgb((c * 0.618034) % 1.0, 0.7, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


CLASS_COLOURS: dict[int, tuple[int, int, int]] = {c: class_colour(c) for c in range(1, len(CLASS_NAMES))}
"""The phantoms' classes' colours (GM, WM, CSF)."""
PATCH_BOX_COLOUR = (255, 221, 0)
CANVAS = (24, 24, 24)
SCALE_TEXT = (230, 230, 230)
"""The colour bar's words and numbers (14.2:1 on the canvas)."""
SCALE_FRAME = (128, 128, 128)
"""The colour bar's 1-px outline, 4.5:1 on the canvas (its black end would otherwise merge with it)."""
HEAT_LABEL = "variance"
"""The colour bar's label (the app's one heat map is the TTA variance)."""
GAP = 4
VIEWS = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class Panel:
    """Where one view sits in a montage (pixels, before upscaling)."""

    view: str
    x0: int
    y0: int
    width: int
    height: int


# ------------------------------------------------------------------------------ slices
def _slice(volume: np.ndarray, view: str, centre: Sequence[int]) -> np.ndarray:
    """2D display slice (rows top→bottom) of a (X, Y, Z[, ...]) volume through ``centre``."""
    x, y, z = (int(c) for c in centre)
    if view == "sagittal":
        s = volume[x]  # (Y, Z, ...)
    elif view == "coronal":
        s = volume[:, y]  # (X, Z, ...)
    elif view == "axial":
        s = volume[:, :, z]  # (X, Y, ...)
    else:
        raise ValueError(f"Unknown view {view!r}; expected one of {VIEWS}.")
    return np.swapaxes(s, 0, 1)[::-1]  # rows: Z (or Y) decreasing → superior/anterior on top


def _view_axes(view: str) -> tuple[int, int]:
    """(axis along columns, axis along rows) of a view."""
    return {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}[view]


def grey_to_rgb(img: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Float slice → uint8 RGB, scaled to [0, vmax] (default: 99.5th percentile, at least 1e-6)."""
    vmax = float(np.percentile(img, 99.5)) if vmax is None else float(vmax)
    g = np.clip(img / max(vmax, 1e-6), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=-1)


def label_colours(labels_or_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float colour, foreground weight) of a label slice (H, W) or a probability slice (H, W, C)."""
    if labels_or_probs.ndim == 2:
        labels = np.clip(labels_or_probs.astype(np.int64), 0, 255)
        probs = np.eye(max(int(labels.max(initial=0)) + 1, len(CLASS_NAMES)), dtype=np.float32)[labels]
    else:
        probs = np.clip(labels_or_probs.astype(np.float32), 0, 1)
    colour = np.zeros(probs.shape[:2] + (3,), dtype=np.float32)
    weight = np.zeros(probs.shape[:2], dtype=np.float32)
    for c in range(1, probs.shape[-1]):
        colour += probs[..., c, None] * np.asarray(class_colour(c), dtype=np.float32)
        weight += probs[..., c]
    colour = colour / np.maximum(weight, 1e-6)[..., None]
    return colour, np.clip(weight, 0, 1)


def blend(base: np.ndarray, colour: np.ndarray, weight: np.ndarray, opacity: float) -> np.ndarray:
    """Alpha-blend ``colour`` over a uint8 RGB ``base`` with per-pixel ``weight × opacity``."""
    a = (np.clip(weight, 0, 1) * float(np.clip(opacity, 0, 1)))[..., None]
    return (base.astype(np.float32) * (1 - a) + colour * a).round().clip(0, 255).astype(np.uint8)


_INFERNO = np.array(  # anchors of matplotlib's 'inferno' at 0, 0.25, 0.5, 0.75, 1 (no matplotlib needed)
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


def heat_colours(values: np.ndarray, vmax: float) -> tuple[np.ndarray, np.ndarray]:
    """'inferno'-like colours and weights for a non-negative map (uncertainty)."""
    v = np.clip(values / max(float(vmax), 1e-6), 0, 1)
    x = np.linspace(0, 1, len(_INFERNO))
    colour = np.stack([np.interp(v, x, _INFERNO[:, c]) for c in range(3)], axis=-1).astype(np.float32)
    return colour, np.sqrt(v)


def _draw_box(img: np.ndarray, rows: slice, cols: slice, rgb: tuple[int, int, int]) -> None:
    """Draw a 1-px rectangle outline in place."""
    h, w = img.shape[:2]
    r0, r1 = max(rows.start, 0), min(rows.stop - 1, h - 1)
    c0, c1 = max(cols.start, 0), min(cols.stop - 1, w - 1)
    img[r0, c0 : c1 + 1] = rgb
    img[r1, c0 : c1 + 1] = rgb
    img[r0 : r1 + 1, c0] = rgb
    img[r0 : r1 + 1, c1] = rgb


def _box_in_view(region: Sequence[slice], view: str, shape: Sequence[int]) -> tuple[slice, slice]:
    """Rows/cols of a 3D region in a view's display slice."""
    col_ax, row_ax = _view_axes(view)
    n_rows = shape[row_ax]
    rs = region[row_ax]
    return slice(n_rows - rs.stop, n_rows - rs.start), region[col_ax]


# ------------------------------------------------------------------------------ montages
def layout(shape: Sequence[int], grid: bool = False) -> list[Panel]:
    """Panels of a montage of a volume of ``shape``.

    ``grid=False``: sagittal | coronal | axial in one row, vertically centred.
    ``grid=True``: sagittal | coronal on top, axial below (a squarer picture for small panels).
    """
    sizes = {v: (shape[_view_axes(v)[0]], shape[_view_axes(v)[1]]) for v in VIEWS}
    if grid:
        (ws, hs), (wc, hc), (wa, ha) = (sizes[v] for v in VIEWS)
        top = max(hs, hc)
        return [
            Panel("sagittal", 0, top - hs, ws, hs),
            Panel("coronal", ws + GAP, top - hc, wc, hc),
            Panel("axial", (ws + GAP + wc - wa) // 2, top + GAP, wa, ha),
        ]
    height = max(h for _, h in sizes.values())
    panels, x = [], 0
    for v in VIEWS:
        w, h = sizes[v]
        panels.append(Panel(v, x, (height - h) // 2, w, h))
        x += w + GAP
    return panels


def montage(
    volume: np.ndarray,
    centre: Sequence[int],
    *,
    overlay: np.ndarray | None = None,
    opacity: float = 0.5,
    heat: np.ndarray | None = None,
    heat_max: float | None = None,
    box: Sequence[slice] | None = None,
    vmax: float | None = None,
    scale: int = 2,
    grid: bool = False,
) -> np.ndarray:
    """Three orthogonal slices through ``centre`` as one uint8 RGB image.

    Args:
        volume: (X, Y, Z) intensities (grey background).
        centre: voxel the three slices pass through.
        overlay: (X, Y, Z) labels or (C, X, Y, Z) probabilities, drawn in the class colours.
        opacity: overlay opacity in [0, 1].
        heat: (X, Y, Z) non-negative map drawn in 'inferno' (e.g. the TTA variance), with its colour bar
            right of the last view (see :func:`heat_scale_layout`).
        heat_max: value shown at full colour, the top of the colour bar (default: the map's maximum).
        box: a 3D region (slices) outlined in yellow (the patch).
        vmax: intensity shown as white (default: the volume's 99.5th percentile).
        scale: integer upscaling (nearest neighbour).
        grid: two views on top and one below instead of one row (see :func:`layout`).
    """
    shape = volume.shape
    centre = [int(np.clip(c, 0, n - 1)) for c, n in zip(centre, shape)]
    vmax = float(np.percentile(volume, 99.5)) if vmax is None else vmax
    probs = None if overlay is None or overlay.ndim == 3 else np.moveaxis(overlay, 0, -1)
    panels = layout(shape, grid)
    height = max(p.y0 + p.height for p in panels)
    out = np.empty((height, max(p.x0 + p.width for p in panels), 3), dtype=np.uint8)
    out[:] = CANVAS
    hmax = None if heat is None else float(heat_max if heat_max is not None else max(float(heat.max()), 1e-6))
    for p in panels:
        img = grey_to_rgb(_slice(volume, p.view, centre), vmax)
        if overlay is not None:
            sl = _slice(probs if probs is not None else overlay, p.view, centre)
            colour, weight = label_colours(sl)
            img = blend(img, colour, weight, opacity)
        if heat is not None:
            colour, weight = heat_colours(_slice(heat, p.view, centre), hmax)  # type: ignore[arg-type]
            img = blend(img, colour, weight, max(opacity, 0.6))
        if box is not None:
            rows, cols = _box_in_view(box, p.view, shape)
            _draw_box(img, rows, cols, PATCH_BOX_COLOUR)
        out[p.y0 : p.y0 + p.height, p.x0 : p.x0 + p.width] = img
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    if hmax is not None:
        out = _draw_heat_scale(out, heat_scale_layout(shape, hmax, scale, grid), hmax)
    return out


# ------------------------------------------------------------------------------ the heat map's colour bar
@dataclass(frozen=True)
class HeatScale:
    """Where a montage's colour bar of its heat map sits, in the montage's pixels (after upscaling)."""

    x0: int
    y0: int
    width: int
    height: int
    """The bar: ``heat_max`` on its top row ``y0``, 0 on its bottom row ``y0 + height - 1``."""
    font_px: int
    image_width: int
    """The montage's width with the bar: the views' own where their free corner holds the bar, else wider."""


def heat_scale_label(value: float) -> str:
    """An end value of the colour bar to two significant figures: positional from 0.001 to below 10⁴ ("0.083",
    "0.10", "2.0", "120"), in exponent form outside ("1.2e-5", "3.4e4"); 0 is "0"."""
    value = float(value)
    if value == 0:
        return "0"
    rounded = float(f"{value:.2g}")
    if 1e-3 <= abs(rounded) < 1e4:
        return f"{rounded:.{max(0, 1 - int(np.floor(np.log10(abs(rounded)))))}f}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own sans-serif (Aileron, shipped inside Pillow: no system font needed) at ``px`` pixels; a fresh one
    each call (a few µs), so that the app's threads share no font."""
    return ImageFont.load_default(size=px)


def _text_width(text: str, px: int) -> int:
    return int(np.ceil(_font(px).getlength(text)))


def heat_scale_layout(shape: Sequence[int], heat_max: float, scale: int = 2, grid: bool = False) -> HeatScale:
    """Where :func:`montage` draws the colour bar of a heat map of ``shape`` (the label "variance" above it, its end
    values right of its ends): in the free corner right of the last view (the axial one) when that corner is wide
    enough (the ``grid`` layout's, for the patch and the whole grid alike), else in a column added to the right.
    The text is a ninth of the corner's height (8 to 36 px): about 14 px on screen in the app's panels, patch or whole."""
    panels = layout(shape, grid)
    last = panels[-1]
    views_width = max(p.x0 + p.width for p in panels) * scale
    top = (last.y0 if grid else 0) * scale
    bottom = max(p.y0 + p.height for p in panels) * scale
    font_px = int(np.clip(round((bottom - top) / 9), 8, 36))
    pad, gap = max(2, font_px // 2), max(2, font_px // 3)
    bar_width = max(3, round(0.8 * font_px))
    x0 = (last.x0 + last.width) * scale + pad
    y0 = top + 2 * font_px  # the label's line, then half a number's height above the bar
    height = max(2, bottom - font_px // 2 - y0)  # half a number's height below it
    numbers = max(_text_width(heat_scale_label(heat_max), font_px), _text_width("0", font_px))
    right = max(x0 + bar_width + gap + numbers, x0 + _text_width(HEAT_LABEL, font_px)) + gap
    return HeatScale(x0, y0, bar_width, height, font_px, max(views_width, right))


def colour_bar(height: int, width: int, heat_max: float) -> np.ndarray:
    """(height, width, 3) uint8: the :func:`heat_colours` of ``heat_max`` (top row) down to 0 (bottom row), evenly.

    The colours at full weight, as a voxel at ``heat_max`` shows at opacity 1: in the views each colour is blended
    over the grey scan with weight √(v / heat_max) × max(opacity, 0.6), so low values show mostly the scan beneath
    (at 0 the scan alone); the bar gives a value's hue, not the blend's brightness."""
    colour, _ = heat_colours(np.linspace(float(heat_max), 0.0, height), heat_max)
    return np.repeat(colour.round().astype(np.uint8)[:, None], width, axis=1)


def _draw_heat_scale(out: np.ndarray, where: HeatScale, heat_max: float) -> np.ndarray:
    """``out`` (widened with canvas where ``where`` asks) with the colour bar, its outline, label and end values."""
    if where.image_width > out.shape[1]:
        wider = np.empty((out.shape[0], where.image_width, 3), dtype=np.uint8)
        wider[:] = CANVAS
        wider[:, : out.shape[1]] = out
        out = wider
    x0, y0, w, h = where.x0, where.y0, where.width, where.height
    out[y0 : y0 + h, x0 : x0 + w] = colour_bar(h, w, heat_max)
    _draw_box(out, slice(y0 - 1, y0 + h + 1), slice(x0 - 1, x0 + w + 1), SCALE_FRAME)
    picture = Image.fromarray(out)
    draw, font = ImageDraw.Draw(picture), _font(where.font_px)
    draw.text((x0 - 1, y0 - where.font_px), HEAT_LABEL, fill=SCALE_TEXT, font=font, anchor="ls")
    number_x = x0 + w + max(2, where.font_px // 3)
    draw.text((number_x, y0), heat_scale_label(heat_max), fill=SCALE_TEXT, font=font, anchor="lm")
    draw.text((number_x, y0 + h - 1), "0", fill=SCALE_TEXT, font=font, anchor="lm")
    return np.asarray(picture).copy()


def click_to_voxel(
    shape: Sequence[int], centre: Sequence[int], px: float, py: float, scale: int = 2
) -> tuple[int, int, int] | None:
    """The voxel under a click at pixel (px, py) of a montage of ``shape`` (None outside the slices)."""
    col, row = int(px // scale), int(py // scale)
    for p in layout(shape):
        if p.x0 <= col < p.x0 + p.width and p.y0 <= row < p.y0 + p.height:
            col_ax, row_ax = _view_axes(p.view)
            new = [int(c) for c in centre]
            new[col_ax] = col - p.x0
            new[row_ax] = shape[row_ax] - 1 - (row - p.y0)
            return tuple(new)  # type: ignore[return-value]
    return None


def legend_html(names: Sequence[str] = CLASS_NAMES) -> str:
    """HTML legend of the class colours, background first in ``names`` (plus the patch box)."""
    items = [
        f'<span style="display:inline-flex;align-items:center;margin-right:14px">'
        f'<span style="width:14px;height:14px;background:rgb{class_colour(c)};border-radius:3px;'
        f'display:inline-block;margin-right:5px"></span>{html.escape(names[c])}</span>'
        for c in range(1, len(names))
    ]
    items.append(
        f'<span style="display:inline-flex;align-items:center;margin-right:14px">'
        f'<span style="width:12px;height:12px;border:2px solid rgb{PATCH_BOX_COLOUR};display:inline-block;'
        f'margin-right:5px"></span>32³ patch</span>'
    )
    return '<div class="mixdemo-legend">' + "".join(items) + "</div>"


# ------------------------------------------------------------------------------ figures
def dice_vs_k_figure(curves: Mapping[str, Sequence[float] | Sequence[tuple[int, float]]],
                     title: str = "Dice against K (TTA, Eq. 6)", class_names: Sequence[str] = CLASS_NAMES):
    """Plotly figure of mean foreground Dice (the classes of ``class_names`` but background) against the number of
    references K, one line per method: each curve the Dice at K = 1, 2, … or a list of (K, Dice) pairs."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, values in curves.items():
        pairs = [(int(v[0]), v[1]) if isinstance(v, (list, tuple)) else (k + 1, v) for k, v in enumerate(values)]
        ks, dice = [k for k, _ in pairs], [d for _, d in pairs]
        fig.add_trace(go.Scatter(x=ks, y=dice, mode="lines+markers", name=name))
    fig.update_layout(
        title=title, xaxis_title="K (references averaged)", yaxis_title=f"mean Dice ({', '.join(class_names[1:])})",
        height=320, margin=dict(l=50, r=20, t=50, b=45), template="plotly_white",
        legend=dict(orientation="h", y=-0.25),
    )
    fig.update_xaxes(dtick=1)
    if not curves:
        fig.add_annotation(text="Dice needs ground truth: pick an example (or upload labels)",
                           showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def bar_figure(groups: Mapping[str, Mapping[str, float]], title: str, yaxis: str = "score"):
    """Grouped bars: ``{series: {category: value}}``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for series, values in groups.items():
        fig.add_trace(go.Bar(name=series, x=list(values), y=list(values.values())))
    fig.update_layout(title=title, yaxis_title=yaxis, barmode="group", height=320,
                      margin=dict(l=50, r=20, t=50, b=45), template="plotly_white")
    return fig
