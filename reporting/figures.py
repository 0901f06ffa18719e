"""Figure builders for the OOD dashboard: numpy arrays in, matplotlib Figure out.

Nothing here knows about Lightning, W&B or the model, so every figure can be tested on synthetic
arrays; ROC curves come from the metrics module, so a figure never disagrees with a metric.
Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot: there is no
global figure registry to leak into, no GUI backend is ever selected (``render_png`` rasterises
with Agg), and a figure is freed as soon as its last reference is dropped.

Colours: ``dataset_styles`` is the one place that maps dataset names to colours and markers. The
inlier set (always first in ``set_names``) is always ``INLIER_COLOR``; outlier sets take the
outlier palette in ``set_names`` order, so a set keeps its colour in every figure of a run.
Inliers and their classes are drawn in cool hues (blue, cyan, green, purple, grey) and outlier
sets in warm ones (red, orange, magenta, brown, gold), so an outlier marker never passes for an
inlier class; every colour is dark enough to read on white.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle
from matplotlib.ticker import LogFormatter

from reporting.classes import class_label
from scoring.metrics import RocCurve, roc_curve

INLIER_COLOR = "#253494"
OUTLIER_COLORS = ("#d62728", "#ff7f0e", "#e7298a", "#8c510a", "#7f0000", "#b8860b", "#f768a1", "#cc4c02")
OUTLIER_MARKERS = ("X", "^", "s", "D", "P", "v", "*", "h")
SCORE_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
# Inlier classes: cool hues at two lightnesses, none close to an outlier colour, none pale.
CLASS_COLORS = (
    "#4292c6",
    "#41ab5d",
    "#807dba",
    "#17a2b8",
    "#969696",
    "#08519c",
    "#006d2c",
    "#54278f",
    "#0e6a73",
    "#525252",
)
# More classes than CLASS_COLORS get a colour scale: viridis without its pale, warm yellow end.
MANY_CLASSES_COLORMAP: Colormap = ListedColormap(
    colormaps["viridis"](np.linspace(0.0, 0.8, 256)), name="viridis_cool"
)
UNLABELLED_COLOR = "#b0b0b0"
# The range a histogram shows and a colour scale spans: values beyond these quantiles are counted
# at the axis edge (histograms) or take the end colour, so one huge score (a diverged likelihood,
# a noise image) cannot squash every other value into one bin.
RANGE_QUANTILES = (0.005, 0.995)
HISTOGRAM_BINS = 40
DPI = 110
# The outlier TPR whose threshold the histograms mark (the FPR95 operating point).
TPR_LEVEL = 0.95


# ---------------------------------------------------------------------------- palette
@dataclass(frozen=True)
class SetStyle:
    """How one dataset is drawn everywhere: its colour and its scatter marker."""

    color: str
    marker: str


def dataset_styles(set_names: Sequence[str]) -> dict[str, SetStyle]:
    """Colour and marker of every dataset; the inlier (first) set is always ``INLIER_COLOR``."""
    styles = {set_names[0]: SetStyle(INLIER_COLOR, "o")}
    for position, name in enumerate(set_names[1:]):
        styles[name] = SetStyle(
            OUTLIER_COLORS[position % len(OUTLIER_COLORS)],
            OUTLIER_MARKERS[position % len(OUTLIER_MARKERS)],
        )
    return styles


def score_colors(score_names: Sequence[str]) -> dict[str, str]:
    """One colour per score, in score order, so a score has the same colour in every ROC figure."""
    return {name: SCORE_COLORS[position % len(SCORE_COLORS)] for position, name in enumerate(score_names)}


# ---------------------------------------------------------------------------- statistics
def roc_of(inlier_scores: np.ndarray, outlier_scores: np.ndarray) -> RocCurve:
    """The ROC curve the metrics are computed from (scoring.metrics), outliers positive.

    NaN scores (inputs a subset score such as likelihood_regret did not score) are left out, as
    the metrics leave them out.
    """
    inliers = torch.as_tensor(inlier_scores[~np.isnan(inlier_scores)], dtype=torch.float64)
    outliers = torch.as_tensor(outlier_scores[~np.isnan(outlier_scores)], dtype=torch.float64)
    labels = torch.cat(
        [torch.zeros(len(inliers), dtype=torch.bool), torch.ones(len(outliers), dtype=torch.bool)]
    )
    return roc_curve(torch.cat([inliers, outliers]), labels)


def clipped_range(values: np.ndarray) -> tuple[float, float]:
    """The ``RANGE_QUANTILES`` range of ``values``, widened when it is empty (constant values)."""
    low, high = np.quantile(values, RANGE_QUANTILES)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return float(low), float(high)


# ---------------------------------------------------------------------------- plane maps
class PlaneMap(Protocol):
    """How latent points become 2-D plot coordinates (the maps are frozen: read-only members)."""

    @property
    def axis_labels(self) -> tuple[str, str]: ...

    @property
    def description(self) -> str: ...

    @property
    def rim_radius(self) -> float | None:
        """The map's disk boundary (equal-area sphere map), if any."""
        ...

    @property
    def shadable(self) -> bool:
        """Every plane point is a latent point, so the plane can be scored (lift)."""
        ...

    @property
    def limits(self) -> str:
        """What the map can and cannot show about holes, for captions."""
        ...

    def project(self, latents: np.ndarray) -> np.ndarray: ...

    def lift(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def extent(self, projected: np.ndarray) -> tuple[float, float, float, float]: ...

    def landmarks(self) -> dict[str, np.ndarray]: ...


def _padded_extent(projected: np.ndarray, margin: float = 0.08) -> tuple[float, float, float, float]:
    """Bounding box of the points, widened by ``margin`` of its size on each side."""
    low, high = projected.min(axis=0), projected.max(axis=0)
    pad = np.maximum(high - low, 1e-6) * margin
    return float(low[0] - pad[0]), float(high[0] + pad[0]), float(low[1] - pad[1]), float(high[1] + pad[1])


class _FlatMap:
    """What the two flat maps share: a frame fitted to the points, and no landmarks to mark."""

    def extent(self, projected: np.ndarray) -> tuple[float, float, float, float]:
        return _padded_extent(projected)

    def landmarks(self) -> dict[str, np.ndarray]:
        return {}


@dataclass(frozen=True)
class IdentityMap(_FlatMap):
    """2-D latents drawn as they are; shadable when the whole plane is latent space (R^2)."""

    shadable: bool
    axis_labels: tuple[str, str] = ("z0", "z1")
    description: str = "latent coordinates"
    rim_radius: float | None = None
    limits: str = (
        "The latent space is two-dimensional and drawn as it is: what looks empty here is empty in latent "
        "space."
    )

    def project(self, latents: np.ndarray) -> np.ndarray:
        return latents[:, :2]

    def lift(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return plane, np.ones(len(plane), dtype=bool)


@dataclass(frozen=True)
class PCAMap(_FlatMap):
    """Linear projection on the top principal axes of the inlier latents (not invertible)."""

    centre: np.ndarray  # [D] inlier mean
    components: np.ndarray  # [2, D] orthonormal rows (zero rows when D < 2)
    axis_labels: tuple[str, str]  # each axis with its share of the inlier variance
    shadable: bool = False
    description: str = "PCA of the inlier latents"
    rim_radius: float | None = None

    @property
    def limits(self) -> str:
        return (
            f"PCA is a linear projection of {self.components.shape[1]}-dimensional latents: a sample's "
            "colour is its vacancy in latent space, but points drawn side by side can lie far apart "
            "there. An empty-looking area (such as the centre of the disk) is not a hole unless the "
            "samples drawn in it are vacant, and a hole can be drawn on top of inliers."
        )

    def project(self, latents: np.ndarray) -> np.ndarray:
        return (latents - self.centre) @ self.components.T

    def lift(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("A PCA plane is not latent space: its points cannot be scored.")


@dataclass(frozen=True)
class LambertMap:
    """Lambert azimuthal equal-area map of S^2 onto the disk of radius 2.

    Equal-area matters here: a vacant hole drawn twice as large IS twice as large on the sphere,
    so the sizes of holes can be compared by eye. The map is centred on the inliers' mean
    direction, which then sits undistorted in the middle; its antipode is the rim circle.
    With frame rows (e1, e2, c): a point p with a = p.e1, b = p.e2, w = p.c goes to radius
    sqrt(2 (1 - w)) (its chord distance from c) in the direction (a, b).
    """

    frame: np.ndarray  # [3, 3] orthonormal rows e1, e2, c
    shadable: bool = True
    axis_labels: tuple[str, str] = ("equal-area x", "equal-area y")
    description: str = "Lambert equal-area map of the sphere, centred on the inlier mean direction"
    rim_radius: float | None = 2.0
    limits: str = (
        "The equal-area map shows the whole sphere: a region's area is its true share of the sphere, "
        "shapes stretch towards the rim, and the rim circle is one point (the antipode of the centre)."
    )

    def project(self, latents: np.ndarray) -> np.ndarray:
        a, b, w = (latents @ self.frame.T).T
        radius = np.sqrt(np.clip(2 * (1 - w), 0, 4))
        norm = np.hypot(a, b)
        safe = np.where(norm > 0, norm, 1.0)
        # The exact antipode has no direction: put it on the rim at angle 0.
        direction = np.where(norm > 0, np.stack([a / safe, b / safe]), np.array([[1.0], [0.0]]))
        return (radius * direction).T

    def lift(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        squared = np.sum(plane**2, axis=1)
        valid = squared <= 4
        shrink = np.sqrt(np.clip(1 - squared / 4, 0, 1))
        w = 1 - np.minimum(squared, 4) / 2
        latents = (shrink[:, None] * plane) @ self.frame[:2] + w[:, None] * self.frame[2]
        return latents / np.linalg.norm(latents, axis=1, keepdims=True), valid

    def extent(self, projected: np.ndarray) -> tuple[float, float, float, float]:
        return -2.05, 2.05, -2.05, 2.05

    def landmarks(self) -> dict[str, np.ndarray]:
        """The north pole, where the Alexandroff map sends the point at infinity."""
        north = np.array([[0.0, 0.0, 1.0]])
        if north[0] @ self.frame[2] <= -1 + 1e-6:
            return {}
        return {"∞ (north pole)": self.project(north)[0]}


def sphere_frame(centre: np.ndarray) -> np.ndarray:
    """Orthonormal rows (e1, e2, c) with c along ``centre`` (the south pole if centre is ~0)."""
    norm = np.linalg.norm(centre)
    c = centre / norm if norm > 1e-6 else np.array([0.0, 0.0, -1.0])
    helper = np.eye(3)[np.argmin(np.abs(c))]
    e1 = helper - (helper @ c) * c
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(c, e1), c])


def fit_pca_map(inlier_latents: np.ndarray) -> PCAMap:
    """Top-2 principal axes of the centred inlier latents, by SVD (zero-padded below 2-D)."""
    centre = inlier_latents.mean(axis=0)
    _, singular, right = np.linalg.svd(inlier_latents - centre, full_matrices=False)
    components = np.zeros((2, inlier_latents.shape[1]))
    kept = min(2, right.shape[0])
    components[:kept] = right[:kept]
    variance = singular**2
    shares = np.zeros(2)
    shares[:kept] = variance[:kept] / max(variance.sum(), 1e-300)
    labels = (f"PC1 ({shares[0]:.0%} of inlier variance)", f"PC2 ({shares[1]:.0%} of inlier variance)")
    return PCAMap(centre, components, labels)


def fit_plane_map(latents: np.ndarray, inlier: np.ndarray, latent_kind: str) -> PlaneMap:
    """Choose the map: equal-area for S^2, the plane itself for 2-D, PCA on the inliers otherwise."""
    dim = latents.shape[1]
    if latent_kind == "sphere" and dim == 3:
        return LambertMap(sphere_frame(latents[inlier].mean(axis=0)))
    if dim == 2:
        # A circle (S^1) is drawn as it is, but the plane around it is not latent space.
        return IdentityMap(shadable=latent_kind == "euclidean")
    return fit_pca_map(latents[inlier])


def plane_grid(extent: tuple[float, float, float, float], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres of a resolution x resolution grid over ``extent``: ``(points [R*R, 2], shape)``."""
    x_min, x_max, y_min, y_max = extent
    xs = x_min + (np.arange(resolution) + 0.5) * (x_max - x_min) / resolution
    ys = y_min + (np.arange(resolution) + 0.5) * (y_max - y_min) / resolution
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1), np.array(grid_x.shape)


# ---------------------------------------------------------------------------- latent space
@dataclass
class LatentPlane:
    """Projected points and how to read the plane they are drawn on."""

    points: np.ndarray  # [N, 2]
    dataset: np.ndarray  # [N] position in set_names
    label: np.ndarray  # [N] class ids (meaningful for the inlier set)
    axis_labels: tuple[str, str]
    description: str
    rim_radius: float | None = None
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    class_names: list[str] | None = None  # inlier class names by label; None: numbers are shown


@dataclass
class Shading:
    """A score evaluated on a grid over the plane; NaN where the plane is off the map."""

    values: np.ndarray  # [rows, columns], row 0 at the bottom
    extent: tuple[float, float, float, float]
    name: str


# A positive score whose clipped range spans at least this ratio is coloured on a log scale.
LOG_SCALE_RATIO = 10.0


def score_norm(values: np.ndarray) -> Normalize:
    """Log scale for positive scores spanning orders of magnitude (hole_knn), else linear; clipped."""
    finite = values[np.isfinite(values)]
    low, high = clipped_range(finite)
    if low > 0 and high / low >= LOG_SCALE_RATIO:
        return LogNorm(vmin=low, vmax=high, clip=True)
    return Normalize(vmin=low, vmax=high, clip=True)


def class_color(label: int) -> str:
    """The colour of one inlier class when there are few enough for a legend."""
    return CLASS_COLORS[label] if label >= 0 else UNLABELLED_COLOR


def _class_colors(labels: np.ndarray) -> tuple[list[Any], Normalize | None]:
    """A colour per point; a qualitative legend for few classes, a colour scale (norm) for many."""
    if labels.size == 0 or labels.max(initial=0) < len(CLASS_COLORS):
        return [class_color(int(label)) for label in labels], None
    norm = Normalize(vmin=0, vmax=float(labels.max()))
    return [MANY_CLASSES_COLORMAP(norm(label)) if label >= 0 else UNLABELLED_COLOR for label in labels], norm


def _draw_points(
    ax: Axes, plane: LatentPlane, set_names: Sequence[str], styles: Mapping[str, SetStyle]
) -> Normalize | None:
    """Inliers coloured by class, then each outlier set in its colour and marker, labelled by name."""
    inlier = plane.dataset == 0
    colors, class_norm = _class_colors(plane.label[inlier])
    x, y = plane.points[inlier].T
    ax.scatter(
        x,
        y,
        c=colors,
        s=12,
        marker="o",
        edgecolors="white",
        linewidths=0.3,
        label=set_names[0],
        zorder=2,
    )
    for set_id, name in enumerate(set_names[1:], start=1):
        chosen = plane.dataset == set_id
        x, y = plane.points[chosen].T
        ax.scatter(
            x,
            y,
            color=styles[name].color,
            marker=styles[name].marker,
            s=22,
            edgecolors="black",
            linewidths=0.3,
            alpha=0.85,
            label=name,
            zorder=3,
        )
    return class_norm


def decorate_plane(ax: Axes, plane: LatentPlane) -> None:
    """Axis labels, the map's rim and its landmarks (the point at infinity on the sphere)."""
    ax.set_xlabel(plane.axis_labels[0])
    ax.set_ylabel(plane.axis_labels[1])
    if plane.rim_radius is not None:
        ax.add_patch(Circle((0, 0), plane.rim_radius, fill=False, color="black", linewidth=0.8, zorder=4))
        ax.set_aspect("equal")
    for text, point in plane.landmarks.items():
        ax.plot(*point, marker="*", markersize=12, color="gold", markeredgecolor="black", zorder=5)
        # The stub types xy as a tuple; matplotlib takes any pair, here an ndarray of two floats.
        ax.annotate(text, point, xytext=(6, 6), textcoords="offset points", fontsize=8, zorder=5)  # type: ignore[arg-type]


def _legends(
    fig: Figure,
    plane: LatentPlane,
    set_names: Sequence[str],
    styles: Mapping[str, SetStyle],
    class_norm: Normalize | None,
    ax: Axes,
) -> None:
    """A dataset legend, plus a class legend (few classes) or a class colour bar (many)."""
    dataset_handles = [
        Line2D(
            [],
            [],
            linestyle="",
            marker="o",
            markerfacecolor="white",
            markeredgecolor=INLIER_COLOR,
            label=f"{set_names[0]} (inlier)",
        )
    ]
    dataset_handles += [
        Line2D(
            [],
            [],
            linestyle="",
            marker=styles[name].marker,
            color=styles[name].color,
            markeredgecolor="black",
            label=name,
        )
        for name in set_names[1:]
    ]
    fig.legend(handles=dataset_handles, loc="outside right upper", title="dataset", fontsize=8)
    if class_norm is not None:
        fig.colorbar(
            ScalarMappable(norm=class_norm, cmap=MANY_CLASSES_COLORMAP),
            ax=ax,
            label=f"{set_names[0]} class (label)",
            location="left",
        )
        return
    classes = sorted({int(label) for label in plane.label[plane.dataset == 0]})
    class_handles = [
        Line2D(
            [],
            [],
            linestyle="",
            marker="o",
            markerfacecolor=class_color(label),
            markeredgecolor="white",
            label=class_label(label, plane.class_names),
        )
        for label in classes
    ]
    fig.legend(
        handles=class_handles, loc="outside right lower", title=f"{set_names[0]} class", fontsize=8, ncols=2
    )


def latent_space_figure(
    plane: LatentPlane,
    set_names: Sequence[str],
    title: str,
    shading: Shading | None = None,
    point_score: tuple[str, np.ndarray] | None = None,
) -> Figure:
    """Where every dataset lands in latent space, with the vacant holes made visible.

    With ``shading`` the background shows the hole score on a grid (dark = vacant hole). Without
    it, ``point_score`` (name, one value per point) colours the points in a second panel, since a
    projection (PCA) has no latent point behind each plane position to score.
    """
    styles = dataset_styles(set_names)
    panels = 2 if shading is None and point_score is not None else 1
    fig = Figure(figsize=(6.4 * panels + 2.2, 6.0), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    if shading is not None:
        cmap = colormaps["Greys"].with_extremes(bad=(0, 0, 0, 0))
        image = ax.imshow(
            np.ma.masked_invalid(shading.values),
            extent=shading.extent,
            origin="lower",
            cmap=cmap,
            norm=score_norm(shading.values),
            interpolation="nearest",
            alpha=0.8,
            zorder=1,
            aspect="auto",
        )  # fill the panel; only the sphere map forces equal axes
        score_colorbar(fig, image, ax, f"{shading.name} on the plane (dark = vacant hole)")
    class_norm = _draw_points(ax, plane, set_names, styles)
    decorate_plane(ax, plane)
    ax.set_title("datasets and inlier classes" if panels == 2 else plane.description, fontsize=10)
    if panels == 2:
        _score_panel(fig, axes[1], plane, set_names, styles, point_score)  # type: ignore[arg-type]
    _legends(fig, plane, set_names, styles, class_norm, ax)
    fig.suptitle(f"{title}\n{plane.description}" if panels == 2 else title)
    return fig


def score_colorbar(fig: Figure, mappable: ScalarMappable, ax: Axes, label: str) -> None:
    """A colour bar with plain numbers (2, 5, 10) rather than 2x10^0 on log scales."""
    colorbar = fig.colorbar(mappable, ax=ax, label=label, shrink=0.85)
    if isinstance(mappable.norm, LogNorm):
        colorbar.ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        colorbar.ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.5)))


def _score_panel(
    fig: Figure,
    ax: Axes,
    plane: LatentPlane,
    set_names: Sequence[str],
    styles: Mapping[str, SetStyle],
    point_score: tuple[str, np.ndarray],
) -> None:
    """The same points coloured by a score (each set keeps its marker), with a colour bar."""
    name, values = point_score
    norm = score_norm(values)
    mappable = None
    for set_id, set_name in enumerate(set_names):
        chosen = plane.dataset == set_id
        x, y = plane.points[chosen].T
        mappable = ax.scatter(
            x,
            y,
            c=values[chosen],
            cmap="viridis",
            norm=norm,
            marker=styles[set_name].marker,
            s=14 if set_id == 0 else 22,
            edgecolors="none" if set_id == 0 else "black",
            linewidths=0.3,
        )
    assert mappable is not None  # set_names holds at least the inlier set
    score_colorbar(fig, mappable, ax, f"{name} (higher = more outlying)")
    decorate_plane(ax, plane)
    ax.set_title(f"points coloured by {name}", fontsize=10)


# ---------------------------------------------------------------------------- scores
@dataclass(frozen=True)
class HistogramBins:
    """Shared bin edges of one score's panel, and whether its x axis is logarithmic."""

    edges: np.ndarray
    log: bool

    @property
    def low(self) -> float:
        return float(self.edges[0])

    @property
    def high(self) -> float:
        return float(self.edges[-1])

    def widths(self) -> np.ndarray:
        """Bin widths in the axis's own units: decades on a log axis, so densities stay comparable."""
        return np.diff(np.log10(self.edges) if self.log else self.edges)


def histogram_bins(value_sets: Sequence[np.ndarray]) -> HistogramBins:
    """Bins spanning every set's ``RANGE_QUANTILES`` range; logarithmic when positive and spanning decades.

    Each set keeps all but its own extreme 1% on the axis, so a large set cannot push a small
    one's tail off it. A likelihood-ratio-like score (hole_knn) piles most values near its
    minimum and stretches over orders of magnitude; linear bins would put nearly all of it into
    the first few.
    """
    ranges = np.array([clipped_range(values) for values in value_sets if values.size])
    low, high = float(ranges[:, 0].min()), float(ranges[:, 1].max())
    if low > 0 and high / low >= LOG_SCALE_RATIO:
        return HistogramBins(np.geomspace(low, high, HISTOGRAM_BINS + 1), log=True)
    return HistogramBins(np.linspace(low, high, HISTOGRAM_BINS + 1), log=False)


def draw_histogram(
    ax: Axes, values: np.ndarray, bins: HistogramBins, color: str, label: str, slot: int
) -> None:
    """The density of all of ``values`` over the shown range, and what lies beyond it.

    Heights are normalised by the count of *all* values, so the area drawn is the share inside the
    range; the rest is never piled into an edge bin (a fake spike) but counted beside an arrow at
    the axis edge, at height ``slot`` (one per set, so sets never overlap).
    """
    counts, _ = np.histogram(values, bins.edges)
    heights = counts / (max(values.size, 1) * bins.widths())
    ax.stairs(heights, bins.edges, fill=True, alpha=0.3, color=color, linewidth=0, label=label)
    ax.stairs(heights, bins.edges, color=color, linewidth=1.1)  # opaque outline: overlaps stay legible
    height = 0.94 - 0.08 * slot
    beyond = (
        (int(np.sum(values < bins.low)), 0.0, "<", "left", 0.025),
        (int(np.sum(values > bins.high)), 1.0, ">", "right", -0.025),
    )
    for count, edge, marker, align, offset in beyond:
        if count == 0:
            continue
        ax.plot([edge], [height], marker=marker, color=color, transform=ax.transAxes, clip_on=False)
        ax.text(
            edge + offset,
            height,
            f"{count} ({count / values.size:.1%}) {'below' if edge == 0 else 'above'}",
            transform=ax.transAxes,
            ha=align,
            va="center",
            fontsize=7,
            color=color,
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.0},
        )


def set_histogram_axis(ax: Axes, bins: HistogramBins, name: str) -> None:
    """The panel's x range is exactly the binned range; a log axis says so in both axis labels."""
    if bins.log:
        ax.set_xscale("log")
    ax.set_xlim(bins.low, bins.high)
    ax.set_xlabel(f"{name} (higher = more outlying{', log scale' if bins.log else ''})")
    ax.set_ylabel("density per decade" if bins.log else "density")


def score_histogram_figure(
    scores: Mapping[str, np.ndarray], dataset: np.ndarray, set_names: Sequence[str], title: str
) -> Figure:
    """One panel per score: inlier vs each outlier set, shared bins, densities.

    A dashed line per outlier set marks the FPR95 operating point of the ROC curve (95% of that
    set scores at or above it); the legend gives the inlier share there, the reported FPR95.
    """
    styles = dataset_styles(set_names)
    columns = min(2, len(scores))
    rows = math.ceil(len(scores) / columns)
    fig = Figure(figsize=(7.0 * columns, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, values) in zip(axes, scores.items()):
        _histogram_panel(ax, name, values, dataset, set_names, styles)
    for ax in axes[len(scores) :]:
        ax.set_visible(False)
    low, high = (f"{quantile:.1%}" for quantile in RANGE_QUANTILES)
    fig.suptitle(
        f"{title}\ndashed: threshold flagging 95% of an outlier set (legend: inlier FPR there); "
        f"axes span every set's {low}-{high} quantiles,\narrows count its values beyond them (areas are "
        "shares of all of a set's values)"
    )
    return fig


def _histogram_panel(
    ax: Axes,
    name: str,
    values: np.ndarray,
    dataset: np.ndarray,
    set_names: Sequence[str],
    styles: Mapping[str, SetStyle],
) -> None:
    scored = ~np.isnan(values)  # a subset score (likelihood_regret) is NaN where it did not score
    values, dataset = values[scored], dataset[scored]
    bins = histogram_bins([values[dataset == set_id] for set_id in range(len(set_names))])
    inlier_values = values[dataset == 0]
    for set_id, set_name in enumerate(set_names):
        chosen = values[dataset == set_id]
        if chosen.size == 0:
            continue
        draw_histogram(ax, chosen, bins, styles[set_name].color, set_name, set_id)
        if set_id > 0:
            threshold, fpr = roc_of(inlier_values, chosen).operating_point(TPR_LEVEL)
            shown = bins.low <= threshold <= bins.high
            ax.axvline(
                threshold,
                color=styles[set_name].color,
                linestyle="--",
                linewidth=1.2,
                label=f"{set_name} TPR95 threshold (FPR {fpr:.2f})"
                + ("" if shown else f", {threshold:.3g}: beyond the axis"),
            )
    set_histogram_axis(ax, bins, name)
    ax.set_title(name, fontsize=10)
    # Beside the panel, never over the bars; constrained layout makes room for it.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def roc_figure(
    set_names: Sequence[str],
    outlier_name: str,
    inlier_scores: Mapping[str, np.ndarray],
    outlier_scores: Mapping[str, np.ndarray],
    aurocs: Mapping[str, float],
) -> Figure:
    """ROC curves of every score for one outlier set (outliers positive), with the evaluation's AUROCs.

    The left panel is the whole curve; the right one has a log FPR axis, where detectors that differ
    only at low false-positive rates (what a deployed detector runs at) come apart. A dot marks
    each score's FPR95 point, taken from the curve as the metrics take it. Lines are coloured by
    score; the title takes the outlier set's colour, which needs all of ``set_names`` to be the
    same as in the other figures.
    """
    inlier_name = set_names[0]
    colors = score_colors(list(inlier_scores))
    curves = {name: roc_of(inliers, outlier_scores[name]) for name, inliers in inlier_scores.items()}
    # The smallest non-zero FPR the inlier set can show: the left edge of the log panel.
    smallest = 1 / max(1, min(int(np.sum(~np.isnan(inliers))) for inliers in inlier_scores.values()))
    fig = Figure(figsize=(10.8, 5.4), layout="constrained")
    full, low_fpr = fig.subplots(1, 2)
    low_fpr.set_xscale("log")
    for ax, chance in ((full, np.linspace(0, 1, 2)), (low_fpr, np.geomspace(smallest, 1, 64))):
        ax.plot(chance, chance, linestyle=":", color="0.5", label="chance (AUROC 0.5)")
        ax.axhline(TPR_LEVEL, color="0.6", linewidth=0.8, linestyle="--", label=f"TPR {TPR_LEVEL:.0%}")
        for name, curve in curves.items():
            _draw_roc(ax, curve, colors[name], name, aurocs[name], smallest)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel(f"false-positive rate ({inlier_name} flagged)")
        ax.set_ylabel(f"true-positive rate ({outlier_name} flagged)")
    full.set_xlim(0, 1)
    full.set_aspect("equal")
    full.set_title(
        f"ROC: {outlier_name} (positive) vs {inlier_name}",
        color=dataset_styles(set_names)[outlier_name].color,
    )
    full.legend(loc="lower right", fontsize=8)
    low_fpr.set_xlim(smallest, 1)
    low_fpr.set_title(
        f"low-FPR region (log axis; left edge: 1 of {round(1 / smallest)} inliers)", fontsize=10
    )
    return fig


def _draw_roc(ax: Axes, curve: RocCurve, color: str, name: str, auroc: float, smallest: float) -> None:
    """One score's curve with a dot at its FPR95 point (``operating_point``, as the metric is computed).

    On a log axis an FPR of 0 has no place; its dot is drawn at the axis's left edge.
    """
    threshold, fpr = curve.operating_point(TPR_LEVEL)
    tpr = float(curve.tpr[curve.thresholds == threshold][0])
    label = f"{name} (AUROC {auroc:.3f}, FPR95 {fpr:.3f})"
    ax.plot(curve.fpr.numpy(), curve.tpr.numpy(), color=color, linewidth=1.6, label=label)
    shown = max(fpr, smallest) if ax.get_xscale() == "log" else fpr
    ax.plot(
        [shown], [tpr], linestyle="", marker="o", markersize=6, color=color, markeredgecolor="black", zorder=5
    )


# ---------------------------------------------------------------------------- images
def tile_images(images: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
    """Images [N, C, H, W] in [0, 1] as one mosaic [rows*H, columns*W] (C=1) or [..., 3] (C=3).

    White padding separates the tiles; one imshow draws them all, far cheaper than one axes each.
    """
    count, channels, height, width = images.shape
    rows = max(1, math.ceil(count / columns))
    mosaic = np.ones((rows * (height + pad) - pad, columns * (width + pad) - pad, channels))
    for position, image in enumerate(images):
        row, column = divmod(position, columns)
        top, left = row * (height + pad), column * (width + pad)
        mosaic[top : top + height, left : left + width] = np.clip(image.transpose(1, 2, 0), 0, 1)
    return mosaic[..., 0] if channels == 1 else mosaic


def label_rows(ax: Axes, labels: Sequence[str], tile_height: int, pad: int = 1) -> None:
    """Name each row of a ``tile_images`` mosaic at its own height (call after ``show_mosaic``)."""
    ax.set_yticks([row * (tile_height + pad) + (tile_height - 1) / 2 for row in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.tick_params(axis="y", length=0)


def show_mosaic(ax: Axes, mosaic: np.ndarray) -> None:
    ax.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def reconstruction_figure(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], set_names: Sequence[str], title: str
) -> Figure:
    """Per dataset: a row of inputs above the row of their reconstructions ([N, C, H, W] each), each
    row named, so nobody has to guess which of two near-identical rows is the model's."""
    styles = dataset_styles(set_names)
    columns = max(len(inputs) for inputs, _ in pairs.values())
    fig = Figure(figsize=(max(5.0, 0.75 * columns + 1.5), 1.7 * len(pairs) + 0.7), layout="constrained")
    axes = fig.subplots(len(pairs), 1, squeeze=False)[:, 0]
    for ax, (name, (inputs, reconstructions)) in zip(axes, pairs.items()):
        show_mosaic(ax, tile_images(np.concatenate([inputs, reconstructions]), columns=len(inputs)))
        ax.set_title(name, color=styles[name].color, fontsize=10, loc="left")
        label_rows(ax, ("input", "reconstruction"), inputs.shape[2])
    fig.suptitle(title)
    return fig


def image_grid_figure(images: np.ndarray, title: str) -> Figure:
    """Images [N, C, H, W] in [0, 1] on a near-square grid."""
    columns = math.ceil(math.sqrt(len(images)))
    fig = Figure(
        figsize=(0.8 * columns + 1.0, 0.8 * math.ceil(len(images) / columns) + 0.9), layout="constrained"
    )
    ax = fig.subplots()
    show_mosaic(ax, tile_images(images, columns))
    ax.set_title(title, fontsize=10)
    return fig


def render_figure(fig: Figure, file_format: str = "png", dpi: int = DPI) -> bytes:
    """The figure as PNG, PDF or SVG bytes, cropped to its content so nothing is cut off.

    ``dpi`` sets the PNG's resolution and that of the images a PDF or SVG embeds (mosaics, shading).
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format=file_format, dpi=dpi, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()
