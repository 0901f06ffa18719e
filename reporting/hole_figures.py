"""Figures of the vacant holes: where uniform latent samples are most vacant, and what lives there.

Numpy arrays in, ``matplotlib.figure.Figure`` out (as in ``reporting.figures``); the samples and
their vacancy come from ``reporting.holes``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from reporting.figures import (
    INLIER_COLOR,
    LatentPlane,
    decorate_plane,
    draw_histogram,
    histogram_bins,
    label_rows,
    score_colorbar,
    score_norm,
    set_histogram_axis,
    show_mosaic,
    tile_images,
)

# Dark = vacant, as in the shaded latent-space figure; the palest grey still shows on white.
VACANCY_COLORMAP = ListedColormap(colormaps["Greys"](np.linspace(0.2, 1.0, 256)), name="greys_visible")
MARK_COLOR = "#ff7f0e"
GALLERY_COLOR = "black"
SAMPLE_COLOR = "#7f7f7f"
# The share of inliers a sample must out-vacate to count as lying in a hole (the headline figure).
INLIER_QUANTILE = 0.95
CAPTION_WIDTH = 150


@dataclass
class HoleMap:
    """Projected uniform samples with their vacancy, and which of them to mark as holes."""

    points: np.ndarray  # [S, 2] samples in the plane of the latent-space figure
    vacancy: np.ndarray  # [S] hole_knn of each sample
    marked: np.ndarray  # rows of the most vacant samples
    numbered: np.ndarray  # rows shown in the hole gallery, numbered 1, 2, ... as its columns
    inlier_vacancy: np.ndarray  # hole_knn of the evaluated (test) inliers
    caption: str  # how the samples were drawn and what the projection can and cannot show


def hole_map_figure(plane: LatentPlane, holes: HoleMap, inlier_name: str, title: str) -> Figure:
    """Left: the samples in the latent-space figure's plane, darker where vacant, the most vacant
    ringed, the test inliers on top. Right: how vacant the samples are next to the test inliers."""
    fig = Figure(figsize=(13.0, 6.2), layout="constrained")
    plane_ax, histogram_ax = fig.subplots(1, 2, width_ratios=(1.15, 1.0))
    _draw_hole_plane(fig, plane_ax, plane, holes, inlier_name)
    _draw_vacancy_histogram(histogram_ax, holes, inlier_name)
    fig.suptitle(f"{title}: where the vacant holes are ({plane.description})")
    fig.supxlabel(textwrap.fill(holes.caption, CAPTION_WIDTH), fontsize=8, ha="center")
    return fig


def _draw_hole_plane(fig: Figure, ax: Axes, plane: LatentPlane, holes: HoleMap, inlier_name: str) -> None:
    order = np.argsort(holes.vacancy, kind="stable")  # the most vacant drawn last, on top
    x, y = holes.points[order].T
    samples = ax.scatter(
        x,
        y,
        c=holes.vacancy[order],
        cmap=VACANCY_COLORMAP,
        norm=score_norm(holes.vacancy),
        s=6,
        zorder=1,
        rasterized=True,  # thousands of dots: a picture inside a PDF or SVG, not thousands of paths
    )
    x, y = plane.points[plane.dataset == 0].T
    ax.scatter(
        x,
        y,
        s=10,
        color=INLIER_COLOR,
        edgecolors="white",
        linewidths=0.3,
        label=f"{inlier_name} test",
        zorder=2,
    )
    x, y = holes.points[holes.marked].T
    ax.scatter(
        x,
        y,
        s=60,
        facecolors="none",
        edgecolors=MARK_COLOR,
        linewidths=1.4,
        label=f"{len(holes.marked)} most vacant samples",
        zorder=3,
    )
    x, y = holes.points[holes.numbered].T
    ax.scatter(
        x,
        y,
        s=90,
        marker="s",
        facecolors="none",
        edgecolors=GALLERY_COLOR,
        linewidths=1.6,
        label="hole gallery columns (numbered)",
        zorder=4,
    )
    for number, (x, y) in enumerate(holes.points[holes.numbered], start=1):
        ax.annotate(
            str(number),
            (x, y),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=8,
            fontweight="bold",
            color=GALLERY_COLOR,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 0.5},
            zorder=5,
        )
    decorate_plane(ax, plane)
    score_colorbar(fig, samples, ax, "hole_knn of a sample (dark = vacant)")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.set_title(f"{len(holes.vacancy)} uniform latent samples, darker = more vacant", fontsize=10)


def _draw_vacancy_histogram(ax: Axes, holes: HoleMap, inlier_name: str) -> None:
    """Vacancy of the samples against the test inliers', with the share of samples in holes."""
    bins = histogram_bins([holes.vacancy, holes.inlier_vacancy])
    draw_histogram(ax, holes.inlier_vacancy, bins, INLIER_COLOR, f"{inlier_name} test inputs", 0)
    draw_histogram(ax, holes.vacancy, bins, SAMPLE_COLOR, "uniform latent samples", 1)
    level = float(np.quantile(holes.inlier_vacancy, INLIER_QUANTILE))
    share = float(np.mean(holes.vacancy > level))
    ax.axvline(
        level,
        color=INLIER_COLOR,
        linestyle="--",
        linewidth=1.2,
        label=f"{INLIER_QUANTILE:.0%} of test inliers below; {share:.1%} of samples above",
    )
    ax.axvline(
        float(holes.vacancy[holes.marked].min()),
        color=MARK_COLOR,
        linewidth=1.2,
        label=f"the {len(holes.marked)} ringed samples lie at or above",
    )
    set_histogram_axis(ax, bins, "hole_knn")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.16), fontsize=8)
    ax.set_title(
        f"{share:.1%} of the sampled latent space is more vacant than {INLIER_QUANTILE:.0%} of test inliers",
        fontsize=10,
    )


@dataclass
class HoleGallery:
    """Images decoded at distinct vacant samples, each beside its nearest evaluated inlier."""

    decoded: np.ndarray  # [G, C, H, W] expected images decoded at the holes
    nearest_decoded: np.ndarray  # [G, C, H, W] decoded at the nearest test inlier's latent location
    nearest_inputs: np.ndarray  # [G, C, H, W] that inlier's input image
    vacancy: np.ndarray  # [G] hole_knn of each hole sample
    distances: np.ndarray  # [G] latent distance from the hole to its nearest test inlier
    nearest_classes: Sequence[str]  # that inlier's class, as shown in legends
    caption: str


def hole_gallery_figure(gallery: HoleGallery, title: str) -> Figure:
    """Three rows per hole column: decoded at the hole, decoded at the nearest inlier, that inlier.

    Comparing the first two rows shows what the decoder makes of a place no training image maps
    to; the last two show how much of the difference is the decoder's blur rather than the hole.
    """
    count, _, height, _ = gallery.decoded.shape
    fig = Figure(figsize=(max(6.0, 1.1 * count + 2.4), 5.2), layout="constrained")
    ax = fig.subplots()
    show_mosaic(
        ax,
        tile_images(
            np.concatenate([gallery.decoded, gallery.nearest_decoded, gallery.nearest_inputs]), count
        ),
    )
    label_rows(
        ax, ("decoded at hole", "decoded at nearest\ntest inlier", "nearest test inlier\n(input)"), height
    )
    ax.set_xticks(
        [
            column * (gallery.decoded.shape[3] + 1) + (gallery.decoded.shape[3] - 1) / 2
            for column in range(count)
        ]
    )
    ax.set_xticklabels(
        [
            f"#{number}  hole_knn {vacancy:.3g}\ndistance {distance:.2g}\n{name}"
            for number, (vacancy, distance, name) in enumerate(
                zip(gallery.vacancy, gallery.distances, gallery.nearest_classes), start=1
            )
        ],
        fontsize=7,
    )
    ax.tick_params(axis="x", length=0)
    ax.set_title(
        f"{title}: hole gallery, the {count} most vacant holes (each by its most vacant sample)", fontsize=10
    )
    fig.supxlabel(textwrap.fill(gallery.caption, CAPTION_WIDTH // 2 + 10), fontsize=8)
    return fig
