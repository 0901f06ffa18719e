"""Honest histogram tails, ROC operating points, palette, class names, row labels, output formats."""

from __future__ import annotations

import colorsys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.lines import Line2D
from matplotlib.patches import StepPatch
from omegaconf import OmegaConf

from reporting.classes import class_label, inlier_class_names
from reporting.config import PlotConfig
from reporting.dashboard import Dashboard
from reporting.figures import (
    CLASS_COLORS,
    INLIER_COLOR,
    OUTLIER_COLORS,
    LatentPlane,
    reconstruction_figure,
    render_figure,
    roc_figure,
    score_histogram_figure,
)
from scoring.metrics import ood_metrics
from tests.reporting.test_dashboard import SET_NAMES, synthetic_latents

FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def inlier_histogram(ax: Axes) -> np.ndarray:
    """Bin heights of the inlier set's histogram in a panel."""
    patch = next(
        patch for patch in ax.patches if isinstance(patch, StepPatch) and patch.get_label() == SET_NAMES[0]
    )
    heights, _, _ = patch.get_data()
    return np.asarray(heights)


def overflow_notes(ax: Axes) -> list[str]:
    return [text.get_text() for text in ax.texts if "above" in text.get_text() or "below" in text.get_text()]


def histogram_of(values: np.ndarray) -> Axes:
    dataset = np.zeros(len(values), dtype=int)
    return score_histogram_figure({"score": values}, dataset, SET_NAMES, "synthetic").axes[0]


# ---------------------------------------------------------------------------- histograms
def test_a_heavy_tail_gets_a_log_axis_and_no_edge_spike() -> None:
    values = np.random.default_rng(0).pareto(1.0, 20_000) + 1e-3  # positive, spans many decades
    ax = histogram_of(values)
    assert ax.get_xscale() == "log"
    low, high = ax.get_xlim()
    heights = inlier_histogram(ax)
    # A clipped histogram piles the 0.5% tail into the last bin; an honest one keeps it falling.
    assert heights[-1] <= 1.5 * heights[-4:-1].mean()
    assert overflow_notes(ax) == [
        f"{int(np.sum(values < low))} (0.5%) below",
        f"{int(np.sum(values > high))} (0.5%) above",
    ]
    assert "per decade" in ax.get_ylabel()


def test_a_few_huge_values_are_counted_not_drawn() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.0, 1.0, 5000), np.full(12, 1e6)])  # a diverged likelihood
    ax = histogram_of(values)
    assert ax.get_xscale() == "linear"
    assert ax.get_xlim()[1] < 10  # the huge values do not squash the axis
    heights = inlier_histogram(ax)
    assert heights[-1] < 0.1 * heights.max()  # no spike in the edge bin
    low, high = ax.get_xlim()
    above = int(np.sum(values > high))
    assert above >= 12 and f"{above} ({above / values.size:.1%}) above" in overflow_notes(ax)
    # The area drawn is the share of the values inside the range, never more.
    widths = np.diff(np.linspace(low, high, len(heights) + 1))
    assert np.sum(heights * widths) == pytest.approx(np.mean((values >= low) & (values <= high)))


# ---------------------------------------------------------------------------- ROC
def test_roc_marks_the_reported_fpr95_and_has_a_low_fpr_panel() -> None:
    rng = np.random.default_rng(2)
    inliers, outliers = rng.normal(0.0, 1.0, 600), rng.normal(1.5, 1.0, 400)
    metrics = ood_metrics(torch.tensor(inliers), torch.tensor(outliers))
    fig = roc_figure(SET_NAMES, "mnist", {"recon": inliers}, {"recon": outliers}, {"recon": metrics["auroc"]})
    full, low_fpr = (ax for ax in fig.axes if ax.get_xlabel())
    dots = [line for line in full.get_lines() if line.get_marker() == "o"]
    assert len(dots) == 1
    assert cast(np.ndarray, dots[0].get_xdata())[0] == metrics["fpr95"]
    assert cast(np.ndarray, dots[0].get_ydata())[0] >= 0.95
    legend = full.get_legend()
    assert legend is not None and f"FPR95 {metrics['fpr95']:.3f}" in legend.get_texts()[-1].get_text()
    assert low_fpr.get_xscale() == "log"
    assert low_fpr.get_xlim()[0] == pytest.approx(1 / 600)
    assert any(line.get_marker() == "o" for line in low_fpr.get_lines())


# ---------------------------------------------------------------------------- palette and names
def hue_degrees(color: str) -> tuple[float, float]:
    hue, saturation, _ = colorsys.rgb_to_hsv(*to_rgb(color))
    return 360 * hue, saturation


def contrast_with_white(color: str) -> float:
    """WCAG contrast ratio of a colour against a white background."""
    channels = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(color)]
    luminance = 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]
    return 1.05 / (luminance + 0.05)


def test_outlier_colours_stand_apart_from_inlier_classes_and_none_is_pale() -> None:
    for color in OUTLIER_COLORS:
        hue, _ = hue_degrees(color)
        assert hue >= 300 or hue <= 60, f"outlier colour {color} is not warm"
    for color in (*CLASS_COLORS, INLIER_COLOR):
        hue, saturation = hue_degrees(color)
        assert saturation < 0.05 or 90 <= hue <= 290, f"inlier colour {color} is not cool or grey"
    for color in (*CLASS_COLORS, *OUTLIER_COLORS):
        assert contrast_with_white(color) >= 2.5, f"{color} vanishes on white"
    nearest = min(
        np.linalg.norm(np.subtract(to_rgb(a), to_rgb(b))) for a in CLASS_COLORS for b in OUTLIER_COLORS
    )
    assert nearest > 0.3
    assert len(set(CLASS_COLORS)) == len(CLASS_COLORS) >= 10


def test_class_names_come_from_torchvision_for_named_inliers() -> None:
    def names(inlier: str) -> list[str] | None:
        return inlier_class_names({"config": {"data": {"inlier": inlier}}})

    assert names("fashion_mnist") == names("FMNIST") == names("clothes=fashion-mnist") == FASHION
    assert names("cifar10") is not None and names("cifar10")[0] == "airplane"  # type: ignore[index]
    assert names("emnist")[1] == "a"  # type: ignore[index]  # the letters split: labels 1-26
    assert names("svhn") is None and names("./my_images.npz") is None and names("no such set") is None
    assert inlier_class_names({}) is None
    assert [class_label(label, FASHION) for label in (5, 12, -1)] == ["Sandal", "12", "unlabelled"]
    assert class_label(3, None) == "3"


def test_class_names_appear_in_the_latent_legend() -> None:
    from reporting.figures import fit_plane_map, latent_space_figure

    latents, dataset, labels = synthetic_latents(2)
    plane_map = fit_plane_map(latents, dataset == 0, "euclidean")
    plane = LatentPlane(
        latents, dataset, labels, plane_map.axis_labels, plane_map.description, class_names=FASHION
    )
    fig = latent_space_figure(plane, SET_NAMES, "synthetic")
    texts = {text.get_text() for legend in fig.legends for text in legend.get_texts()}
    assert {FASHION[label] for label in np.unique(labels)} <= texts
    assert not {str(label) for label in range(10)} & texts


def test_reconstruction_rows_are_labelled_one_by_one() -> None:
    images = np.random.default_rng(0).random((4, 1, 12, 12))
    fig = reconstruction_figure({name: (images, images) for name in SET_NAMES}, SET_NAMES, "synthetic")
    for ax, name in zip(fig.axes, SET_NAMES):
        assert ax.get_title(loc="left") == name
        assert [label.get_text() for label in ax.get_yticklabels()] == ["input", "reconstruction"]
        centres = ax.get_yticks()
        assert centres[0] == pytest.approx(5.5) and centres[1] == pytest.approx(18.5)  # row middles


# ---------------------------------------------------------------------------- files
def test_plot_config_validates_dpi_and_formats() -> None:
    settings = PlotConfig()
    assert settings.dpi == 110 and settings.formats == ["png"]
    merged = OmegaConf.merge(
        OmegaConf.structured(PlotConfig), OmegaConf.from_dotlist(["formats=[png,pdf,svg]"])
    )
    assert cast(PlotConfig, OmegaConf.to_object(merged)).formats == ["png", "pdf", "svg"]
    for bad in (["jpg"], [], ["png", "png"]):
        with pytest.raises(ValueError, match="plots.formats"):
            PlotConfig(formats=bad)
    with pytest.raises(ValueError, match="plots.dpi"):
        PlotConfig(dpi=0)
    with pytest.raises(ValueError, match="plots.hole_gallery"):
        PlotConfig(hole_samples=10, hole_marked=5, hole_gallery=11)


def small_figure() -> Figure:
    fig = Figure(figsize=(2.0, 1.5))
    ax = fig.subplots()
    ax.add_line(Line2D([0, 1], [0, 1]))
    ax.imshow(np.random.default_rng(0).random((8, 8)))
    return fig


def test_every_configured_format_is_written_and_wandb_gets_png(tmp_path: Path) -> None:
    dashboard = Dashboard(PlotConfig(formats=["pdf", "svg"], dpi=50), tmp_path)
    logged: list[tuple[str, Any]] = []
    logger = SimpleNamespace(log_image=lambda key, images, step: logged.append((key, images[0])))
    context = SimpleNamespace(stage="test", loggers=[logger], global_step=3)
    dashboard._publish(small_figure(), context, "demo", "demo")  # type: ignore[arg-type]
    folder = tmp_path / "plots" / "test"
    assert sorted(path.name for path in folder.iterdir()) == ["demo.pdf", "demo.svg"]
    assert (folder / "demo.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (folder / "demo.svg").read_bytes()[:2000]
    assert [key for key, _ in logged] == ["test/plots/demo"]
    assert logged[0][1].format == "PNG"


def test_dpi_sets_the_png_resolution(tmp_path: Path) -> None:
    sizes = []
    for dpi in (50, 100):
        path = tmp_path / f"{dpi}.png"
        path.write_bytes(render_figure(small_figure(), "png", dpi))
        sizes.append(imread(path).shape[1])
    assert sizes[1] == pytest.approx(2 * sizes[0], abs=4)
