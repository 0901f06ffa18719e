"""The dashboard callback: latent-space maps, score distributions, ROC curves, images and tables.

It draws what the OOD evaluation already computed (``OODEvaluation.last_evaluation``) instead of
scoring anything again, so it must come AFTER the ``OODEvaluation`` callback in the Trainer's
callback list (Lightning calls epoch-end hooks in list order). Only rank 0 draws: every process
holds the same gathered evaluation. Each figure is written as a PNG under
``<out_dir>/plots/<stage>/`` and, when a ``WandbLogger`` is attached, logged to W&B; the
per-sample tables go to W&B only (a PNG cannot be sorted or filtered).

Figures (``<name>`` below; validation files carry an ``_epochNNN`` suffix):
- ``latent_space``: datasets and inlier classes in latent space, holes shaded where possible;
- ``score_histograms``: every score, inliers vs each outlier set, with the FPR95 thresholds;
- ``roc_<outlier>``: ROC curves of every score for one outlier set;
- ``reconstructions``: inputs above their reconstructions, per dataset;
- ``prior_samples``: images decoded from draws of the prior.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from PIL import Image
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from callbacks.figures import (
    LatentPlane,
    PlaneMap,
    Shading,
    fit_plane_map,
    image_grid_figure,
    latent_space_figure,
    plane_grid,
    reconstruction_figure,
    render_png,
    roc_figure,
    score_histogram_figure,
)
from callbacks.ood_evaluation import Evaluation, OODEvaluation
from callbacks.scores import ReferenceLatents, hole_knn
from lightning_modules.likelihoods import mean_image

PLOTS_DIR = "plots"
# The score that ranks samples in the tables and colours points when the plane cannot be shaded.
RANKING_SCORE = "hole_knn"


@dataclass
class PlotConfig:
    """The ``plots`` config block (OmegaConf-compatible types only)."""

    enabled: bool = True
    # Draw at validation end every n epochs (when the OOD evaluation ran); 0 = at test end only.
    every_n_epochs: int = 1
    # Scatter plots keep at most max_points // (number of datasets) seeded points per dataset.
    max_points: int = 2000
    # Images per dataset in reconstruction grids, and per group in the ranked-samples table.
    n_images: int = 8
    # Cells per side of the grid on which the hole score shades the latent plane.
    grid_resolution: int = 80
    n_prior_samples: int = 16


def subsample(dataset: np.ndarray, num_sets: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted rows keeping at most ``max_points // num_sets`` of each set, chosen with ``seed``.

    An equal share per set keeps a small outlier set visible next to a large inlier set.
    """
    generator = np.random.default_rng(seed)
    share = max(1, max_points // num_sets)
    kept = []
    for set_id in range(num_sets):
        rows = np.flatnonzero(dataset == set_id)
        kept.append(rows if len(rows) <= share else generator.choice(rows, share, replace=False))
    return np.sort(np.concatenate(kept))


def ranking_score(score_names: list[str]) -> Optional[str]:
    """``hole_knn`` when it was computed, else the first score (None when there is none)."""
    if RANKING_SCORE in score_names:
        return RANKING_SCORE
    return score_names[0] if score_names else None


def file_safe(name: str) -> str:
    """A dataset display name as a file-name fragment (paths and odd characters replaced)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "set"


def display_image(image: Tensor) -> np.ndarray:
    """A [C, H, W] image in [0, 1] as uint8 [H, W] (grey) or [H, W, 3] for W&B."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return pixels[..., 0] if pixels.shape[2] == 1 else pixels


def fetch_images(dataset: Dataset, indices: np.ndarray) -> Tensor:
    """Images at the given positions of an evaluation dataset (items are ``(x, y, index)``)."""
    return torch.stack([dataset[int(index)][0] for index in indices])


class Dashboard(Callback):
    """Draws the evaluation of each validation (every n epochs) and of the test."""

    def __init__(self, settings: PlotConfig, evaluation: OODEvaluation, out_dir: Optional[Path] = None) -> None:
        self.settings = settings
        self.evaluation = evaluation
        self.out_dir = None if out_dir is None else Path(out_dir)
        self._evaluation_at_epoch_start: Optional[Evaluation] = None

    # ------------------------------------------------------------------ when to draw
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A new last_evaluation object at epoch end is how we know the evaluation ran this epoch.
        self._evaluation_at_epoch_start = self.evaluation.last_evaluation

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._due_after_validation(trainer):
            self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.settings.enabled and trainer.is_global_zero and self.evaluation.last_evaluation is not None:
            self._report(trainer, pl_module, "test")

    def _due_after_validation(self, trainer: pl.Trainer) -> bool:
        every = self.settings.every_n_epochs
        latest = self.evaluation.last_evaluation
        return (
            self.settings.enabled
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and every > 0
            and (trainer.current_epoch + 1) % every == 0
            and latest is not None
            and latest is not self._evaluation_at_epoch_start
        )

    # ------------------------------------------------------------------ drawing and logging
    @torch.no_grad()
    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        evaluation = self.evaluation.last_evaluation
        assert evaluation is not None  # checked by the hooks
        columns = {key: value.numpy() for key, value in evaluation.columns.items()}
        keep = subsample(columns["dataset"], len(evaluation.set_names), self.settings.max_points, self._seed())
        loaders = self._loaders(trainer, stage)
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        suffix = f"_epoch{trainer.current_epoch:03d}" if stage == "val" else ""
        for name, figure in self._figures(trainer, pl_module, evaluation, columns, keep, loaders, stage):
            png = render_png(figure)
            del figure  # built without pyplot: dropping the reference frees it
            self._save(png, stage, name + suffix)
            for logger in loggers:
                logger.log_image(key=f"{stage}/plots/{name}", images=[Image.open(io.BytesIO(png))], step=trainer.global_step)
        if stage == "test" and loggers:
            self._log_tables(loggers, trainer, evaluation, columns, keep, loaders, stage)

    def _figures(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        evaluation: Evaluation,
        columns: dict[str, np.ndarray],
        keep: np.ndarray,
        loaders: list[DataLoader],
        stage: str,
    ) -> Iterator[tuple[str, Figure]]:
        """Every figure of one report, built one at a time so only one is alive at once."""
        set_names = evaluation.set_names
        title = f"{pl_module.variant} VAE, " + ("test" if stage == "test" else f"validation after epoch {trainer.current_epoch}")
        yield "latent_space", self._latent_figure(pl_module, evaluation, columns, keep, title)
        scores = {name: columns[name] for name in evaluation.score_names}
        yield "score_histograms", score_histogram_figure(scores, columns["dataset"], set_names, title)
        inlier = columns["dataset"] == 0
        for set_id, outlier in enumerate(set_names[1:], start=1):
            chosen = columns["dataset"] == set_id
            if chosen.any():
                yield f"roc_{file_safe(outlier)}", roc_figure(
                    set_names, outlier, {name: values[inlier] for name, values in scores.items()},
                    {name: values[chosen] for name, values in scores.items()},
                )
        yield "reconstructions", reconstruction_figure(self._reconstructions(pl_module, evaluation, columns, loaders), set_names, f"{title}: inputs and reconstructions")
        yield "prior_samples", image_grid_figure(self._prior_samples(pl_module), f"{title}: decoded prior samples")

    def _latent_figure(self, pl_module: pl.LightningModule, evaluation: Evaluation, columns: dict[str, np.ndarray], keep: np.ndarray, title: str) -> Figure:
        """Shade the plane by hole_knn where every plane point is a latent point, else colour points."""
        latents = columns["latent"].astype(np.float64)
        plane_map = fit_plane_map(latents, columns["dataset"] == 0, pl_module.latent_kind)
        plane = LatentPlane(
            plane_map.project(latents[keep]), columns["dataset"][keep], columns["label"][keep],
            plane_map.axis_labels, plane_map.description, plane_map.rim_radius, plane_map.landmarks(),
        )
        if plane_map.shadable and evaluation.reference is not None:
            shading = self._hole_shading(plane_map, plane.points, evaluation.reference)
            return latent_space_figure(plane, evaluation.set_names, title, shading=shading)
        ranking = ranking_score(evaluation.score_names)
        point_score = None if ranking is None else (ranking, columns[ranking][keep])
        return latent_space_figure(plane, evaluation.set_names, title, point_score=point_score)

    def _hole_shading(self, plane_map: PlaneMap, points: np.ndarray, reference: ReferenceLatents) -> Shading:
        """hole_knn at the latent point behind each grid cell, with the evaluation's own settings."""
        extent = plane_map.extent(points)
        grid, shape = plane_grid(extent, self.settings.grid_resolution)
        lifted, valid = plane_map.lift(grid)
        queries = torch.as_tensor(lifted[valid], dtype=reference.latents.dtype, device=reference.latents.device)
        values = np.full(len(grid), np.nan)
        values[valid] = hole_knn(queries, reference, self.evaluation.settings).cpu().numpy()
        return Shading(values.reshape(shape), extent, RANKING_SCORE)

    def _reconstructions(self, pl_module: pl.LightningModule, evaluation: Evaluation, columns: dict[str, np.ndarray], loaders: list[DataLoader]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The first n_images of every dataset (by index) and their reconstructions."""
        pairs = {}
        for set_id, name in enumerate(evaluation.set_names):
            indices = columns["index"][columns["dataset"] == set_id][: self.settings.n_images]
            if indices.size == 0:
                continue
            inputs = fetch_images(loaders[set_id].dataset, indices)
            outputs = pl_module.reconstruct(pl_module.encode(inputs.to(pl_module.device)))
            pairs[name] = (inputs.numpy(), outputs.cpu().numpy())
        return pairs

    def _prior_samples(self, pl_module: pl.LightningModule) -> np.ndarray:
        """Expected images of seeded prior draws; the global RNG (training's stream) is untouched."""
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self._seed())
            z = pl_module.prior(torch.zeros(1, device=device, dtype=pl_module.dtype)).sample((self.settings.n_prior_samples,))
        return mean_image(pl_module.decode(z), pl_module.likelihood).cpu().numpy()

    def _log_tables(
        self,
        loggers: list[WandbLogger],
        trainer: pl.Trainer,
        evaluation: Evaluation,
        columns: dict[str, np.ndarray],
        keep: np.ndarray,
        loaders: list[DataLoader],
        stage: str,
    ) -> None:
        """The ranked-samples table (with images) and the latent-vector table, to W&B."""
        ranked_columns, ranked_rows = self._ranked_samples(evaluation, columns, loaders)
        latent_columns, latent_rows = self._latent_rows(evaluation, columns, keep)
        for logger in loggers:
            logger.log_table(key=f"{stage}/tables/ranked_samples", columns=ranked_columns, data=ranked_rows, step=trainer.global_step)
            logger.log_table(key=f"{stage}/tables/latents", columns=latent_columns, data=latent_rows, step=trainer.global_step)

    def _ranked_samples(self, evaluation: Evaluation, columns: dict[str, np.ndarray], loaders: list[DataLoader]) -> tuple[list[str], list[list[Any]]]:
        """The n_images most outlying and most typical samples of every set, by the ranking score."""
        import wandb  # only needed when a W&B logger is attached

        ranking = ranking_score(evaluation.score_names)
        names = ["dataset", "group", "rank", "index", "class", "image", *evaluation.score_names]
        rows: list[list[Any]] = []
        if ranking is None:
            return names, rows
        count = self.settings.n_images
        for set_id, set_name in enumerate(evaluation.set_names):
            members = np.flatnonzero(columns["dataset"] == set_id)
            ordered = members[np.argsort(-columns[ranking][members], kind="stable")]
            for group, chosen in (("most outlying", ordered[:count]), ("most typical", ordered[::-1][:count])):
                images = fetch_images(loaders[set_id].dataset, columns["index"][chosen]) if chosen.size else []
                for rank, (row, image) in enumerate(zip(chosen, images), start=1):
                    scores = [float(columns[name][row]) for name in evaluation.score_names]
                    rows.append([set_name, group, rank, int(columns["index"][row]), int(columns["label"][row]), wandb.Image(display_image(image)), *scores])
        return names, rows

    @staticmethod
    def _latent_rows(evaluation: Evaluation, columns: dict[str, np.ndarray], keep: np.ndarray) -> tuple[list[str], list[list[Any]]]:
        """One row per plotted point, latent coordinates as z0..z{d-1} for W&B's 2-D projection."""
        dim = columns["latent"].shape[1]
        names = ["dataset", "class", *evaluation.score_names, *(f"z{axis}" for axis in range(dim))]
        rows = [
            [evaluation.set_names[int(columns["dataset"][row])], int(columns["label"][row]),
             *(float(columns[name][row]) for name in evaluation.score_names),
             *(float(value) for value in columns["latent"][row])]
            for row in keep
        ]
        return names, rows

    # ------------------------------------------------------------------ plumbing
    def _seed(self) -> int:
        return int(self.evaluation.run_info.get("seed", 0))

    @staticmethod
    def _loaders(trainer: pl.Trainer, stage: str) -> list[DataLoader]:
        """The evaluated loaders, in set_names order (the datamodule lists inlier set first)."""
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]

    def _save(self, png: bytes, stage: str, file_stem: str) -> None:
        if self.out_dir is None:
            return
        folder = self.out_dir / PLOTS_DIR / stage
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{file_stem}.png").write_bytes(png)
