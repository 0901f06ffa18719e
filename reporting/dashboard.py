"""The dashboard reporter: latent-space maps, score distributions, ROC curves, images and tables.

It draws the Evaluation the evaluation callback hands it instead of scoring anything again, and
runs on rank 0 only (every process holds the same gathered evaluation). Each figure is written as a PNG under
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_modules.base import BaseVAE
from lightning_modules.likelihoods import mean_image
from reporting.base import ReportContext
from reporting.config import PlotConfig
from reporting.figures import (
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
from scoring.config import ScoreConfig
from scoring.evaluation import Evaluation
from scoring.registry import ReferenceLatents, hole_knn

PLOTS_DIR = "plots"
# The score that ranks samples in the tables and colours points when the plane cannot be shaded.
RANKING_SCORE = "hole_knn"


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


def ranking_score(score_names: list[str]) -> str | None:
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


class Dashboard:
    """Draws the evaluation of each validation (every ``plots.every_n_epochs`` epochs) and of the test."""

    def __init__(self, settings: PlotConfig, out_dir: Path | None = None) -> None:
        self.settings = settings
        self.out_dir = None if out_dir is None else Path(out_dir)

    def report(self, evaluation: Evaluation, context: ReportContext) -> None:
        if self._due(context):
            self._report(evaluation, context)

    def _due(self, context: ReportContext) -> bool:
        if not self.settings.enabled:
            return False
        if context.stage == "test":
            return True
        every = self.settings.every_n_epochs
        return every > 0 and (context.epoch + 1) % every == 0

    # ------------------------------------------------------------------ drawing and logging
    @torch.no_grad()
    def _report(self, evaluation: Evaluation, context: ReportContext) -> None:
        stage = context.stage
        columns = {key: value.numpy() for key, value in evaluation.columns.items()}
        keep = subsample(
            columns["dataset"], len(evaluation.set_names), self.settings.max_points, context.seed
        )
        suffix = f"_epoch{context.epoch:03d}" if stage == "val" else ""
        for name, figure in self._figures(context, evaluation, columns, keep):
            png = render_png(figure)
            del figure  # built without pyplot: dropping the reference frees it
            self._save(png, stage, name + suffix)
            for logger in context.loggers:
                logger.log_image(
                    key=f"{stage}/plots/{name}",
                    images=[Image.open(io.BytesIO(png))],
                    step=context.global_step,
                )
        if stage == "test" and context.loggers:
            self._log_tables(context, evaluation, columns, keep)

    def _figures(
        self, context: ReportContext, evaluation: Evaluation, columns: dict[str, np.ndarray], keep: np.ndarray
    ) -> Iterator[tuple[str, Figure]]:
        """Every figure of one report, built one at a time so only one is alive at once."""
        set_names = evaluation.set_names
        model = context.model
        title = f"{model.variant} VAE, " + (
            "test" if context.stage == "test" else f"validation after epoch {context.epoch}"
        )
        yield "latent_space", self._latent_figure(model, context.scores, evaluation, columns, keep, title)
        scores = {name: columns[name] for name in evaluation.score_names}
        yield "score_histograms", score_histogram_figure(scores, columns["dataset"], set_names, title)
        inlier = columns["dataset"] == 0
        for set_id, outlier in enumerate(set_names[1:], start=1):
            chosen = columns["dataset"] == set_id
            if chosen.any():
                yield (
                    f"roc_{file_safe(outlier)}",
                    roc_figure(
                        set_names,
                        outlier,
                        {name: values[inlier] for name, values in scores.items()},
                        {name: values[chosen] for name, values in scores.items()},
                        {name: evaluation.metrics[outlier][name]["auroc"] for name in scores},
                    ),
                )
        yield (
            "reconstructions",
            reconstruction_figure(
                self._reconstructions(model, evaluation, columns, context.loaders),
                set_names,
                f"{title}: inputs and reconstructions",
            ),
        )
        yield (
            "prior_samples",
            image_grid_figure(self._prior_samples(model, context.seed), f"{title}: decoded prior samples"),
        )

    def _latent_figure(
        self,
        model: BaseVAE,
        scores: ScoreConfig,
        evaluation: Evaluation,
        columns: dict[str, np.ndarray],
        keep: np.ndarray,
        title: str,
    ) -> Figure:
        """Shade the plane by hole_knn where every plane point is a latent point, else colour points."""
        latents = columns["latent"].astype(np.float64)
        plane_map = fit_plane_map(latents, columns["dataset"] == 0, model.latent_kind)
        plane = LatentPlane(
            plane_map.project(latents[keep]),
            columns["dataset"][keep],
            columns["label"][keep],
            plane_map.axis_labels,
            plane_map.description,
            plane_map.rim_radius,
            plane_map.landmarks(),
        )
        if plane_map.shadable and evaluation.reference is not None:
            shading = self._hole_shading(plane_map, plane.points, evaluation.reference, scores)
            return latent_space_figure(plane, evaluation.set_names, title, shading=shading)
        ranking = ranking_score(evaluation.score_names)
        point_score = None if ranking is None else (ranking, columns[ranking][keep])
        return latent_space_figure(plane, evaluation.set_names, title, point_score=point_score)

    def _hole_shading(
        self, plane_map: PlaneMap, points: np.ndarray, reference: ReferenceLatents, scores: ScoreConfig
    ) -> Shading:
        """hole_knn at the latent point behind each grid cell, with the evaluation's own settings."""
        extent = plane_map.extent(points)
        grid, shape = plane_grid(extent, self.settings.grid_resolution)
        lifted, valid = plane_map.lift(grid)
        queries = torch.as_tensor(
            lifted[valid], dtype=reference.latents.dtype, device=reference.latents.device
        )
        values = np.full(len(grid), np.nan)
        values[valid] = hole_knn(queries, reference, scores).cpu().numpy()
        return Shading(values.reshape(shape), extent, RANKING_SCORE)

    def _reconstructions(
        self,
        model: BaseVAE,
        evaluation: Evaluation,
        columns: dict[str, np.ndarray],
        loaders: list[DataLoader],
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The first n_images of every dataset (by index) and their reconstructions."""
        pairs = {}
        for set_id, name in enumerate(evaluation.set_names):
            indices = columns["index"][columns["dataset"] == set_id][: self.settings.n_images]
            if indices.size == 0:
                continue
            inputs = fetch_images(loaders[set_id].dataset, indices)
            outputs = model.reconstruct(model.encode(inputs.to(model.device)))
            pairs[name] = (inputs.numpy(), outputs.cpu().numpy())
        return pairs

    def _prior_samples(self, model: BaseVAE, seed: int) -> np.ndarray:
        """Expected images of seeded prior draws; the global RNG (training's stream) is untouched."""
        device = model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            # Lightning types dtype as str | torch.dtype; a module's is a torch.dtype.
            dtype = cast(torch.dtype, model.dtype)
            z = model.prior(torch.zeros(1, device=device, dtype=dtype)).sample(
                (self.settings.n_prior_samples,)
            )
        return mean_image(model.decode(z), model.likelihood).cpu().numpy()

    def _log_tables(
        self, context: ReportContext, evaluation: Evaluation, columns: dict[str, np.ndarray], keep: np.ndarray
    ) -> None:
        """The ranked-samples table (with images) and the latent-vector table, to W&B."""
        ranked_columns, ranked_rows = self._ranked_samples(evaluation, columns, context.loaders)
        latent_columns, latent_rows = self._latent_rows(evaluation, columns, keep)
        for logger in context.loggers:
            logger.log_table(
                key=f"{context.stage}/tables/ranked_samples",
                columns=ranked_columns,
                data=ranked_rows,
                step=context.global_step,
            )
            logger.log_table(
                key=f"{context.stage}/tables/latents",
                columns=latent_columns,
                data=latent_rows,
                step=context.global_step,
            )

    def _ranked_samples(
        self, evaluation: Evaluation, columns: dict[str, np.ndarray], loaders: list[DataLoader]
    ) -> tuple[list[str], list[list[Any]]]:
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
            for group, chosen in (
                ("most outlying", ordered[:count]),
                ("most typical", ordered[::-1][:count]),
            ):
                images: Tensor | list[Tensor] = (
                    fetch_images(loaders[set_id].dataset, columns["index"][chosen]) if chosen.size else []
                )
                for rank, (row, image) in enumerate(zip(chosen, images), start=1):
                    scores = [float(columns[name][row]) for name in evaluation.score_names]
                    rows.append(
                        [
                            set_name,
                            group,
                            rank,
                            int(columns["index"][row]),
                            int(columns["label"][row]),
                            wandb.Image(display_image(image)),
                            *scores,
                        ]
                    )
        return names, rows

    @staticmethod
    def _latent_rows(
        evaluation: Evaluation, columns: dict[str, np.ndarray], keep: np.ndarray
    ) -> tuple[list[str], list[list[Any]]]:
        """One row per plotted point, latent coordinates as z0..z{d-1} for W&B's 2-D projection."""
        dim = columns["latent"].shape[1]
        names = ["dataset", "class", *evaluation.score_names, *(f"z{axis}" for axis in range(dim))]
        rows = [
            [
                evaluation.set_names[int(columns["dataset"][row])],
                int(columns["label"][row]),
                *(float(columns[name][row]) for name in evaluation.score_names),
                *(float(value) for value in columns["latent"][row]),
            ]
            for row in keep
        ]
        return names, rows

    # ------------------------------------------------------------------ plumbing
    def _save(self, png: bytes, stage: str, file_stem: str) -> None:
        if self.out_dir is None:
            return
        folder = self.out_dir / PLOTS_DIR / stage
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{file_stem}.png").write_bytes(png)
