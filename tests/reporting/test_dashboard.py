"""The dashboard: figure builders on synthetic latents, then a real tiny run with offline W&B."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.image import AxesImage, imread
from matplotlib.patches import StepPatch
from omegaconf import OmegaConf
from pytorch_lightning.loggers import WandbLogger

from callbacks.ood_evaluation import OODEvaluation
from datamodules.ood_datamodule import OODDataModule
from experiments.config import TrainConfig, load_config
from experiments.runner import build_trainer, finish_logger, run_info, to_dict
from lightning_modules.factory import build_model
from reporting.config import PlotConfig
from reporting.dashboard import Dashboard, subsample
from reporting.figures import (
    INLIER_COLOR,
    LambertMap,
    LatentPlane,
    Shading,
    dataset_styles,
    fit_plane_map,
    image_grid_figure,
    latent_space_figure,
    plane_grid,
    reconstruction_figure,
    render_figure,
    roc_figure,
    roc_of,
    score_histogram_figure,
    sphere_frame,
)
from scoring.knn import KnnMetric, hole_knn_score, reference_kth_distances
from scoring.metrics import ood_metrics
from tests.helpers import tiny_overrides

SET_NAMES = ["fashion_mnist", "mnist", "hflip"]
SIZES = (300, 80, 80)
FIGURE_NAMES = [
    "latent_space",
    "latent_holes",
    "hole_gallery",
    "score_histograms",
    "roc_mnist",
    "roc_hflip",
    "reconstructions",
    "prior_samples",
]
FORMATS = ("png", "pdf")  # W&B is sent the PNG only


# ---------------------------------------------------------------------------- helpers
def synthetic_latents(
    dim: int, sphere: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inliers in three class blobs, two outlier sets elsewhere: (latents, dataset, label)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, SIZES[0])
    centres = 3.0 * np.eye(dim)[labels % min(dim, 3)]
    latents = np.concatenate(
        [
            rng.normal(0.0, 1.0, (SIZES[0], dim)) + centres,
            rng.normal(5.0, 0.5, (SIZES[1], dim)),
            rng.normal(-4.0, 1.0, (SIZES[2], dim)),
        ]
    )
    if sphere:
        latents /= np.linalg.norm(latents, axis=1, keepdims=True)
    dataset = np.repeat(np.arange(3), SIZES)
    return latents, dataset, np.concatenate([labels, np.zeros(sum(SIZES[1:]), dtype=int)])


def hole_scores(queries: np.ndarray, inliers: np.ndarray, metric: KnnMetric) -> np.ndarray:
    reference = torch.tensor(inliers, dtype=torch.float32)
    kth = reference_kth_distances(reference, 5, metric)
    return hole_knn_score(
        torch.tensor(queries, dtype=torch.float32), reference, 5, metric, reference_kth=kth
    ).numpy()


def save(fig: Figure, path: Path) -> Path:
    path.write_bytes(render_figure(fig))
    return path


def assert_not_blank(path: Path) -> None:
    """The PNG exists and shows a real picture: varied pixels, many distinct colours."""
    assert path.is_file(), f"{path} was not written"
    pixels = imread(path)[::2, ::2, :3]  # every 4th pixel is plenty and keeps np.unique cheap
    assert pixels.std() > 0.05, f"{path} is nearly a single colour"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{path} has almost no distinct colours"


def scatter_colors(fig: Figure) -> dict[str, tuple[float, ...]]:
    """First face colour of every labelled scatter collection in the figure, by label."""
    # Matplotlib's stubs type labels as object and colours as any colour spec; a collection's
    # label is a str and its face colours an (N, 4) RGBA array.
    return {
        cast(str, artist.get_label()): tuple(cast(np.ndarray, artist.get_facecolor())[0][:3])
        for ax in fig.axes
        for artist in ax.collections
        if isinstance(artist, PathCollection) and not cast(str, artist.get_label()).startswith("_")
    }


def histogram_colors(fig: Figure) -> dict[str, tuple[float, ...]]:
    """Face colour of every labelled histogram (filled step patch) in the first panel."""
    # As above: a patch's label is a str and its face colour an RGBA tuple.
    return {
        cast(str, patch.get_label()): tuple(cast(tuple[float, ...], patch.get_facecolor())[:3])
        for patch in fig.axes[0].patches
        if isinstance(patch, StepPatch) and not cast(str, patch.get_label()).startswith("_")
    }


def latent_figure(dim: int, kind: str) -> Figure:
    """The latent-space figure through the path the dashboard takes for this latent space."""
    latents, dataset, labels = synthetic_latents(dim, sphere=kind == "sphere")
    metric: KnnMetric = "geodesic" if kind == "sphere" else "euclidean"
    plane_map = fit_plane_map(latents, dataset == 0, kind)
    points = plane_map.project(latents)
    plane = LatentPlane(
        points,
        dataset,
        labels,
        plane_map.axis_labels,
        plane_map.description,
        plane_map.rim_radius,
        plane_map.landmarks(),
    )
    if not plane_map.shadable:
        return latent_space_figure(
            plane,
            SET_NAMES,
            "synthetic",
            point_score=("hole_knn", hole_scores(latents, latents[dataset == 0], metric)),
        )
    extent = plane_map.extent(points)
    grid, shape = plane_grid(extent, 40)
    lifted, valid = plane_map.lift(grid)
    values = np.full(len(grid), np.nan)
    values[valid] = hole_scores(lifted[valid], latents[dataset == 0], metric)
    return latent_space_figure(
        plane, SET_NAMES, "synthetic", shading=Shading(values.reshape(shape), extent, "hole_knn")
    )


# ---------------------------------------------------------------------------- unit tests
def test_dataset_styles_fix_the_inlier_colour_and_keep_outlier_sets_apart() -> None:
    styles = dataset_styles(SET_NAMES)
    assert styles["fashion_mnist"].color == INLIER_COLOR
    assert dataset_styles(["cifar10", "svhn"])["cifar10"].color == INLIER_COLOR
    assert styles["mnist"] != styles["hflip"]
    assert dataset_styles(SET_NAMES) == styles  # a pure function of the names: stable across figures


@pytest.mark.parametrize(
    ("dim", "kind", "shaded", "panels"),
    [(2, "euclidean", True, 1), (8, "euclidean", False, 2), (3, "sphere", True, 1)],
)
def test_latent_space_figure_paths(tmp_path: Path, dim: int, kind: str, shaded: bool, panels: int) -> None:
    fig = latent_figure(dim, kind)
    data_axes = [ax for ax in fig.axes if ax.get_xlabel() and ax.get_label() != "<colorbar>"]
    assert len(data_axes) == panels
    has_shading = any(isinstance(artist, AxesImage) for artist in data_axes[0].get_children())
    assert has_shading == shaded
    assert_not_blank(save(fig, tmp_path / "latent.png"))


def test_lambert_map_is_equal_area_and_inverts_exactly() -> None:
    rng = np.random.default_rng(1)
    uniform = rng.normal(size=(40_000, 3))
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    plane_map = LambertMap(sphere_frame(np.array([0.3, -0.2, 0.9])))
    radius = np.linalg.norm(plane_map.project(uniform), axis=1)
    # Equal area: a uniform sphere lands uniform on the disk of radius 2, P(r < t) = t^2 / 4.
    for t in (0.5, 1.0, 1.5):
        assert np.mean(radius < t) == pytest.approx(t**2 / 4, abs=0.01)
    lifted, valid = plane_map.lift(plane_map.project(uniform[:500]))
    assert valid.all()
    np.testing.assert_allclose(lifted, uniform[:500], atol=1e-9)
    _, inside = plane_map.lift(np.array([[1.0, 1.0], [2.0, 1.0]]))
    assert inside.tolist() == [True, False]


def test_roc_and_fpr95_threshold_are_the_metrics_own() -> None:
    rng = np.random.default_rng(2)
    inliers = np.round(rng.normal(0.0, 1.0, 400), 1)  # rounded: ties must be handled like metrics
    outliers = np.round(rng.normal(1.0, 1.0, 300), 1)
    reference = ood_metrics(torch.tensor(inliers), torch.tensor(outliers))
    curve = roc_of(np.concatenate([inliers, [np.nan]]), outliers)  # NaN: an input a subset score skipped
    assert np.trapezoid(curve.tpr.numpy(), curve.fpr.numpy()) == pytest.approx(reference["auroc"], abs=1e-9)
    threshold, fpr = curve.operating_point(0.95)
    assert np.mean(outliers >= threshold) >= 0.95 > np.mean(outliers >= np.nextafter(threshold, np.inf))
    assert fpr == np.mean(inliers >= threshold) == reference["fpr95"]


def test_each_dataset_has_one_colour_in_every_figure() -> None:
    latents, dataset, _ = synthetic_latents(8)
    scores = {
        "hole_knn": hole_scores(latents, latents[dataset == 0], "euclidean"),
        "recon": latents[:, 0] ** 2,
    }
    scatter = scatter_colors(latent_figure(8, "euclidean"))
    histogram = histogram_colors(score_histogram_figure(scores, dataset, SET_NAMES, "synthetic"))
    for name in SET_NAMES[1:]:
        assert scatter[name] == pytest.approx(histogram[name])
        roc = roc_figure(
            SET_NAMES,
            name,
            {"recon": scores["recon"][dataset == 0]},
            {"recon": scores["recon"][dataset == 1]},
            {"recon": 0.5},
        )
        assert to_rgb(roc.axes[0].title.get_color()) == pytest.approx(histogram[name])
    assert histogram["fashion_mnist"] == pytest.approx(
        tuple(int(INLIER_COLOR[i : i + 2], 16) / 255 for i in (1, 3, 5))
    )


def test_score_roc_and_image_figures_render(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    dataset = np.repeat(np.arange(3), SIZES)
    scores = {
        "hole_knn": rng.lognormal(dataset * 0.5, 0.3),
        "neg_elbo": rng.normal(dataset, 1.0),
        "recon": rng.exponential(1 + dataset),
    }
    assert_not_blank(
        save(score_histogram_figure(scores, dataset, SET_NAMES, "synthetic"), tmp_path / "hist.png")
    )
    split = (
        {name: values[dataset == 0] for name, values in scores.items()},
        {name: values[dataset == 1] for name, values in scores.items()},
    )
    assert_not_blank(
        save(roc_figure(SET_NAMES, "mnist", *split, dict.fromkeys(scores, 0.5)), tmp_path / "roc.png")
    )
    grey, colour = rng.random((8, 1, 28, 28)), rng.random((16, 3, 12, 12))
    assert_not_blank(
        save(
            reconstruction_figure({name: (grey, grey / 2) for name in SET_NAMES}, SET_NAMES, "synthetic"),
            tmp_path / "recon.png",
        )
    )
    assert_not_blank(save(image_grid_figure(colour, "prior samples"), tmp_path / "grid.png"))


def test_subsample_caps_each_set_with_a_seed() -> None:
    dataset = np.repeat(np.arange(3), (1000, 50, 400))
    kept = subsample(dataset, 3, 300, seed=0)
    assert np.bincount(dataset[kept]).tolist() == [100, 50, 100]
    assert np.array_equal(kept, subsample(dataset, 3, 300, seed=0))
    assert not np.array_equal(kept, subsample(dataset, 3, 300, seed=1))


def test_validation_plots_only_when_due() -> None:
    dashboard = Dashboard(PlotConfig(every_n_epochs=2), None)
    assert dashboard._due(SimpleNamespace(stage="val", epoch=1))  # type: ignore[arg-type]
    assert not dashboard._due(SimpleNamespace(stage="val", epoch=2))  # type: ignore[arg-type]
    assert dashboard._due(SimpleNamespace(stage="test", epoch=2))  # type: ignore[arg-type]
    assert not Dashboard(PlotConfig(every_n_epochs=0), None)._due(SimpleNamespace(stage="val", epoch=1))  # type: ignore[arg-type]
    assert not Dashboard(PlotConfig(enabled=False), None)._due(SimpleNamespace(stage="test", epoch=0))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- end to end
@dataclass
class DashboardRun:
    out_dir: Path
    wandb_data_dir: Path  # W&B stages a table's images here (an artifact) until `wandb sync`


@pytest.fixture(scope="module")
def dashboard_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> DashboardRun:
    """fit (1 epoch) + test of a 2-D Gaussian VAE with the dashboard and an offline W&B logger."""
    root = tmp_path_factory.mktemp("dashboard")
    run = DashboardRun(root / "out", root / "wandb-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_DATA_DIR", str(run.wandb_data_dir))  # not the user's ~/.local/share
        train_with_dashboard(run.out_dir)
    return run


def train_with_dashboard(out_dir: Path) -> None:
    """What experiments.runner.train assembles; the evaluation callback hands the Dashboard its results."""
    overrides = tiny_overrides(
        out_dir,
        **{
            "model.latent_dim": "2",
            "data.outliers": "[mnist,hflip]",
            "scores.names": "[recon,latent_norm,hole_knn]",
            "scores.val_every_n_epochs": "1",
            "model.variant": "gaussian",
            "model.lipschitz": "null",
            "trainer.limit_train_batches": "3",  # the plots need a model, not a good one
        },
    )
    config = load_config(TrainConfig, None, overrides)
    pl.seed_everything(config.seed, workers=True)
    datamodule = OODDataModule(config.data)
    datamodule.setup("fit")
    model = build_model(
        to_dict(config.model), to_dict(config.optim), datamodule.image_shape, config.trainer.max_epochs
    )
    scores = OmegaConf.to_object(config.scores)
    # every_n_epochs=1: figures at every validation end (the default draws every second one).
    plots = PlotConfig(every_n_epochs=1, n_images=4, hole_samples=1024, formats=list(FORMATS))
    evaluation = OODEvaluation(scores, [Dashboard(plots, out_dir)], run_info(config))  # type: ignore[arg-type]
    logger = WandbLogger(project="dashboard-test", save_dir=str(out_dir), offline=True)
    trainer = build_trainer(
        config, out_dir, [evaluation], logger, enable_checkpointing=False, accelerator="cpu"
    )
    try:
        trainer.fit(model, datamodule=datamodule)
        trainer.test(model, datamodule=datamodule)
    finally:
        finish_logger(logger)


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "suffix"), [("val", "_epoch000"), ("test", "")])
def test_every_figure_is_written_in_every_format(
    dashboard_run: DashboardRun, stage: str, suffix: str
) -> None:
    folder = dashboard_run.out_dir / "plots" / stage
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        f"{name}{suffix}.{file_format}" for name in FIGURE_NAMES for file_format in FORMATS
    )
    for name in FIGURE_NAMES:
        assert_not_blank(folder / f"{name}{suffix}.png")
        assert (folder / f"{name}{suffix}.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_offline_wandb_run_holds_images_and_tables(dashboard_run: DashboardRun) -> None:
    runs = list((dashboard_run.out_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media"
    images = list((media / "images").rglob("*.png"))
    assert len(images) == 2 * len(FIGURE_NAMES)  # validation + test
    tables = {
        path.name.split("_")[0]: json.loads(path.read_text())
        for path in (media / "table").rglob("*.table.json")
    }
    assert set(tables) == {"ranked", "latents", "metrics"}
    ranked, latents = tables["ranked"], tables["latents"]
    assert ranked["columns"] == [
        "dataset",
        "group",
        "rank",
        "index",
        "class",
        "image",
        "recon",
        "latent_norm",
        "hole_knn",
    ]
    assert len(ranked["data"]) == len(SET_NAMES) * 2 * 4  # most outlying + most typical, n_images=4
    assert latents["columns"][-2:] == ["z0", "z1"]
    assert len(latents["data"]) == 3 * 150  # 150 per set, under max_points=2000
    # The run file keeps only an "Image" placeholder per cell; the pixels travel in the table's
    # run_table artifact, staged locally for `wandb sync`.
    staged = [
        path
        for path in (dashboard_run.wandb_data_dir / "artifacts" / "staging").iterdir()
        if path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ]
    assert len(staged) == len(ranked["data"])
