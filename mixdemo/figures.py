"""Static figures (PNG) for ``results/``, drawn with matplotlib's Agg backend.

The interactive figures of the app live in :mod:`mixdemo.viz`; these are the paper-style
figures written by the ``training/`` scripts, each captioned with the phantom caveat.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from mixdemo.viz import class_colour  # noqa: E402  (the app's colour-blind-safe palette)

PHANTOM_NOTE = "MNI152-derived phantoms, not patients"


def label_cmap(num_classes: int) -> ListedColormap:
    """Black background, then the app's colour of each class (``vmin=0, vmax=num_classes - 1``)."""
    return ListedColormap([(0, 0, 0)] + [tuple(v / 255 for v in class_colour(c)) for c in range(1, num_classes)])


def classes_shown(*label_maps: np.ndarray) -> int:
    """How many classes a figure's colour map spans: the phantoms' four, or more if a label map holds more."""
    return max(4, *(int(np.max(m)) + 1 for m in label_maps))


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG (tight bounding box) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def data_note(doc: dict) -> str:
    """What an evaluation's scans are, for its figures' titles: the phantoms' note unless ``doc`` names other data."""
    data = doc.get("data")
    return PHANTOM_NOTE if not data or "phantom" in data else data


def plot_dice_vs_k_png(doc: dict, path: Path) -> Path:
    """Fig. 3: Dice against the number K of TTA references, naive and learned, baseline dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, colour in (("naive", "#ef4444"), ("learned", "#2563eb")):
        pts = np.array(doc["dice_vs_k"][name])
        ax.plot(pts[:, 0], pts[:, 1], "-o", ms=3, color=colour, label=f"{name.capitalize()} + TTA")
    ax.axhline(doc["dice"]["baseline"]["avg"], ls="--", color="#444", label="Baseline (no mixing)")
    ax.set_xlabel("K (references per target)")
    ax.set_ylabel(f"mean Dice ({', '.join(doc.get('classes', ('GM', 'WM', 'CSF')))})")
    ax.set_title(f"Dice against K — {data_note(doc)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def plot_unmixing_panels_png(case: dict, path: Path, note: str = PHANTOM_NOTE) -> Path:
    """Fig. 2-style panel: target, truth, three references with their proxies, naive and learned unmixing, TTA."""
    n = len(case["references"])
    fig, axes = plt.subplots(4, n + 1, figsize=(2.2 * (n + 1), 2.4 * 4))
    c = classes_shown(case["truth"], case["naive_tta"], case["learned_tta"], *case["naive"], *case["learned"])
    show = lambda ax, img, title, lab=False: (  # noqa: E731
        ax.imshow(np.rot90(img), cmap=label_cmap(c) if lab else "gray", vmin=0, vmax=c - 1 if lab else 1,
                  interpolation="nearest"),
        ax.set_title(title, fontsize=8),
        ax.axis("off"),
    )
    show(axes[0, 0], case["image"], "target")
    show(axes[1, 0], case["truth"], "ground truth", True)
    show(axes[2, 0], case["naive_tta"], f"Naive + TTA (K={case['tta_k']})", True)
    show(axes[3, 0], case["learned_tta"], f"Learned + TTA (K={case['tta_k']})", True)
    for j in range(n):
        show(axes[0, j + 1], case["references"][j], f"reference {j + 1}")
        show(axes[1, j + 1], case["proxies"][j], f"proxy {j + 1} (sent)")
        show(axes[2, j + 1], case["naive"][j], f"Naive, ref {j + 1}", True)
        show(axes[3, j + 1], case["learned"][j], f"Learned, ref {j + 1}", True)
    fig.suptitle(f"Unmixing one target with different references — {note}", fontsize=9)
    return save_figure(fig, path)


def plot_cohort_png(images: list[np.ndarray], labels: list[np.ndarray], names: list[str], path: Path) -> Path:
    """Axial, coronal and sagittal slices of a few phantom scans with their label maps."""
    fig, axes = plt.subplots(len(images), 4, figsize=(10, 2.6 * len(images)))
    axes = np.atleast_2d(axes)
    for i, (img, lab, name) in enumerate(zip(images, labels, names)):
        cx, cy, cz = (s // 2 for s in img.shape)
        for j, (sl, title) in enumerate(((img[:, :, cz], "axial"), (img[:, cy, :], "coronal"), (img[cx, :, :], "sagittal"))):
            axes[i, j].imshow(np.rot90(sl), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_title(f"{name} {title}", fontsize=8)
            axes[i, j].axis("off")
        axes[i, 3].imshow(np.rot90(lab[:, :, cz]), cmap=label_cmap(4), vmin=0, vmax=3, interpolation="nearest")
        axes[i, 3].set_title("labels: GM orange, WM blue, CSF green", fontsize=7)
        axes[i, 3].axis("off")
    fig.suptitle(f"Phantom cohort — {PHANTOM_NOTE}", fontsize=9)
    return save_figure(fig, path)
