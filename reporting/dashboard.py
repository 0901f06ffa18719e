"""The dashboard reporter: latent-space maps, score distributions, ROC curves, images and tables.

It draws the Evaluation the evaluation callback hands it instead of scoring anything again (the
hole views score only uniform latent samples, never an input), and runs on rank 0 only (every
process holds the same gathered evaluation). Each figure is written under
``<out_dir>/plots/<stage>/`` in every format of ``plots.formats`` (png, pdf, svg; at ``plots.dpi``)
and, when a ``WandbLogger`` is attached, logged to W&B as PNG; the per-sample tables go to W&B
only (a picture cannot be sorted or filtered). Whenever a ``WandbLogger`` is attached (figures on
or off), the test evaluation also gives the run a ``test/tables/metrics`` table (one row per
outlier set and score, one column per metric) and puts the headline AUROC per outlier set in the
run summary: ``headline/<outlier>/auroc`` of the first listed score, named by ``headline/score``.

Figures (``<name>.<format>`` below; validation files carry an ``_epochNNN`` suffix):
- ``latent_space``: datasets and inlier classes (named for torchvision datasets) in latent space,
  holes shaded where the plane is latent space (R^2, S^2), points coloured by hole_knn otherwise;
- ``latent_holes``: uniform latent samples scored by hole_knn in the same plane, the most vacant
  ringed, and how vacant the samples are next to the test inliers (reporting.holes);
- ``hole_gallery``: images decoded in the most vacant distinct holes (at each one's most vacant
  sample), beside the nearest test inlier (its input and its own decoding);
- ``score_histograms``: every score, inliers vs each outlier set, with the FPR95 thresholds;
- ``roc_<outlier>``: ROC curves of every score for one outlier set, FPR95 points marked, and a
  low-FPR panel on a log axis;
- ``reconstructions``: inputs above their reconstructions, per dataset;
- ``prior_samples``: images decoded from draws of the prior.
The two hole views need the hole_knn reference: they are drawn when ``hole_knn`` or
``hole_knn_posterior`` was scored.
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

from common.atomic_io import atomic_open
from lightning_modules.base import BaseVAE
from lightning_modules.likelihoods import mean_image
from reporting.base import ReportContext
from reporting.classes import class_label, inlier_class_names
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
    render_figure,
    roc_figure,
    score_histogram_figure,
)
from reporting.hole_figures import HoleGallery, HoleMap, hole_gallery_figure, hole_map_figure
from reporting.holes import HoleSamples, distinct_holes, nearest_points, sample_holes
from scoring.config import ScoreConfig
from scoring.evaluation import Evaluation
from scoring.registry import ReferenceLatents, hole_knn

PLOTS_DIR = "plots"
# The score that ranks samples in the tables and colours points when the plane cannot be shaded.
RANKING_SCORE = "hole_knn"
# The summary prefix of the headline numbers: the first listed score's AUROC per outlier set.
HEADLINE = "headline"


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


def metrics_rows(evaluation: Evaluation) -> tuple[list[str], list[list[Any]]]:
    """The metrics as a table: one row per (outlier set, score), one column per metric."""
    rows = [
        [outlier, score, *by_metric.values()]
        for outlier, by_score in evaluation.metrics.items()
        for score, by_metric in by_score.items()
    ]
    first = next(
        (by_metric for by_score in evaluation.metrics.values() for by_metric in by_score.values()), {}
    )
    return ["outlier", "score", *first], rows


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
        if context.stage == "test" and context.loggers:
            self._log_results(evaluation, context)
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
            self._publish(figure, context, name, name + suffix)
            del figure  # built without pyplot: dropping the reference frees it
        if stage == "test" and context.loggers:
            self._log_tables(context, evaluation, columns, keep)

    def _publish(self, figure: Figure, context: ReportContext, name: str, file_stem: str) -> None:
        """Write the figure in every configured format; W&B gets the PNG whatever the formats."""
        dpi = self.settings.dpi
        formats = list(self.settings.formats) if self.out_dir is not None else []
        files = {file_format: render_figure(figure, file_format, dpi) for file_format in formats}
        for file_format, data in files.items():
            self._save(data, context.stage, f"{file_stem}.{file_format}")
        if not context.loggers:
            return
        png = files.get("png") or render_figure(figure, "png", dpi)
        for logger in context.loggers:
            logger.log_image(
                key=f"{context.stage}/plots/{name}",
                images=[Image.open(io.BytesIO(png))],
                step=context.global_step,
            )

    def _figures(
        self, context: ReportContext, evaluation: Evaluation, columns: dict[str, np.ndarray], keep: np.ndarray
    ) -> Iterator[tuple[str, Figure]]:
        """Every figure of one report, built one at a time so only one is alive at once."""
        set_names = evaluation.set_names
        model = context.model
        title = f"{model.variant} VAE, " + (
            "test" if context.stage == "test" else f"validation after epoch {context.epoch}"
        )
        class_names = inlier_class_names(context.run_info)
        plane_map, plane = self._latent_plane(model, columns, keep, class_names)
        yield (
            "latent_space",
            self._latent_figure(plane_map, plane, context.scores, evaluation, columns, keep, title),
        )
        if evaluation.reference is not None:
            yield from self._hole_figures(
                context, evaluation, evaluation.reference, columns, plane_map, plane, class_names, title
            )
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

    @staticmethod
    def _latent_plane(
        model: BaseVAE, columns: dict[str, np.ndarray], keep: np.ndarray, class_names: list[str] | None
    ) -> tuple[PlaneMap, LatentPlane]:
        """The map all latent figures of a report share (fitted on every inlier), and the kept points."""
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
            class_names,
        )
        return plane_map, plane

    def _latent_figure(
        self,
        plane_map: PlaneMap,
        plane: LatentPlane,
        scores: ScoreConfig,
        evaluation: Evaluation,
        columns: dict[str, np.ndarray],
        keep: np.ndarray,
        title: str,
    ) -> Figure:
        """Shade the plane by hole_knn where every plane point is a latent point, else colour points."""
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

    def _hole_figures(
        self,
        context: ReportContext,
        evaluation: Evaluation,
        reference: ReferenceLatents,
        columns: dict[str, np.ndarray],
        plane_map: PlaneMap,
        plane: LatentPlane,
        class_names: list[str] | None,
        title: str,
    ) -> Iterator[tuple[str, Figure]]:
        """The hole map and the hole gallery, both from one set of seeded uniform latent samples."""
        model = context.model
        samples = sample_holes(
            model.latent_kind, reference, context.scores, self.settings.hole_samples, context.seed
        )
        drawn = (
            f"{len(samples.vacancy)} latent points drawn {samples.region} (seed {context.seed}), scored by "
            f"hole_knn against the {len(reference.latents)} training-inlier reference latents "
            f"(k = {context.scores.knn_k})"
        )
        marked = samples.most_vacant(self.settings.hole_marked)
        reference_points = reference.latents.detach().double().cpu().numpy()
        shown = distinct_holes(samples, self.settings.hole_gallery, reference_points)
        holes = HoleMap(
            plane_map.project(samples.points),
            samples.vacancy,
            marked,
            shown,
            self._inlier_vacancy(columns, reference, context.scores),
            f"{drawn}; rings: the {len(marked)} most vacant; numbered squares: the hole gallery's columns. "
            f"{plane_map.limits}",
        )
        yield "latent_holes", hole_map_figure(plane, holes, evaluation.set_names[0], title)
        gallery = self._gallery(model, samples, shown, columns, context.loaders[0], class_names, drawn)
        yield "hole_gallery", hole_gallery_figure(gallery, title)

    @staticmethod
    def _inlier_vacancy(
        columns: dict[str, np.ndarray], reference: ReferenceLatents, scores: ScoreConfig
    ) -> np.ndarray:
        """hole_knn of the evaluated inliers: their column, or scored here when it was not asked for."""
        inlier = columns["dataset"] == 0
        if RANKING_SCORE in columns:
            return columns[RANKING_SCORE][inlier]
        queries = torch.as_tensor(
            columns["latent"][inlier], dtype=reference.latents.dtype, device=reference.latents.device
        )
        return hole_knn(queries, reference, scores).double().cpu().numpy()

    def _gallery(
        self,
        model: BaseVAE,
        samples: HoleSamples,
        rows: np.ndarray,
        columns: dict[str, np.ndarray],
        inlier_loader: DataLoader,
        class_names: list[str] | None,
        drawn: str,
    ) -> HoleGallery:
        """Samples ``rows`` decoded beside the nearest evaluated inlier (training latents have no image)."""
        metric = samples.metric
        inlier_rows = np.flatnonzero(columns["dataset"] == 0)
        nearest, distances = nearest_points(
            samples.points[rows], columns["latent"][inlier_rows].astype(np.float64), metric
        )
        chosen = inlier_rows[nearest]
        caption = (
            f"Columns: the {len(rows)} most vacant of {drawn}, none inside the empty ball (reaching to "
            "the nearest reference latent) of a more vacant one, so each shows a different hole. Under "
            f"each: its number in the hole map, its hole_knn, its {metric} distance to the nearest test "
            "inlier, and that inlier's class."
        )
        return HoleGallery(
            self._decode(model, samples.points[rows]),
            self._decode(model, columns["latent"][chosen]),
            fetch_images(inlier_loader.dataset, columns["index"][chosen]).numpy(),
            samples.vacancy[rows],
            distances,
            [class_label(int(label), class_names) for label in columns["label"][chosen]],
            caption,
        )

    @staticmethod
    def _decode(model: BaseVAE, latents: np.ndarray | Tensor) -> np.ndarray:
        """Expected images decoded at latent points (any float array), as [N, C, H, W] in [0, 1]."""
        # Lightning types dtype as str | torch.dtype; a module's is a torch.dtype.
        z = torch.as_tensor(latents, dtype=cast(torch.dtype, model.dtype), device=model.device)
        return mean_image(model.decode(z), model.likelihood).cpu().numpy()

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
            dtype = cast(torch.dtype, model.dtype)
            z = model.prior(torch.zeros(1, device=device, dtype=dtype)).sample(
                (self.settings.n_prior_samples,)
            )
        return self._decode(model, z)

    @staticmethod
    def _log_results(evaluation: Evaluation, context: ReportContext) -> None:
        """The final metrics as one W&B table, and the headline AUROCs in the run summary.

        The runs table of a project compares runs by their summary, so the number a reader looks
        for first (the headline score's AUROC per outlier set) goes there under a fixed name.
        """
        columns, rows = metrics_rows(evaluation)
        headline = evaluation.score_names[0] if evaluation.score_names else None
        for logger in context.loggers:
            logger.log_table(
                key=f"{context.stage}/tables/metrics", columns=columns, data=rows, step=context.global_step
            )
            if headline is None:
                continue
            summary = logger.experiment.summary
            summary[f"{HEADLINE}/score"] = headline
            for outlier, by_score in evaluation.metrics.items():
                summary[f"{HEADLINE}/{outlier}/auroc"] = by_score[headline]["auroc"]

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
    def _save(self, data: bytes, stage: str, file_name: str) -> None:
        if self.out_dir is None:
            return
        folder = self.out_dir / PLOTS_DIR / stage
        # Atomically: a run killed while drawing keeps the previous figure, never half of a new one.
        with atomic_open(folder / file_name, "wb") as stream:
            stream.write(data)
