"""The OOD evaluation callback: the Lightning hooks around the scoring core.

At validation end (every `scores.val_every_n_epochs` epochs, for reporting only: nothing here
feeds checkpoint selection) and at test end it
1. scores every batch of the inlier set and of each outlier set (``scoring.evaluation.score_record``);
   at validation only the inputs of a fixed seeded subset of every set (``scores.val_max_samples``),
   so that a curve over epochs follows the same images and costs little,
2. gathers the per-sample records from every process,
3. encodes the training inliers (sharded over processes; at validation at most
   ``scores.val_reference_size`` of them) as the hole_knn reference,
4. runs the scoring core's pipeline (``scoring.evaluation``): deduplication, reference scores,
   metrics, certified-ball violations,
5. logs every metric as `<stage>/<outlier>/<score>/<metric>` (``scoring.keys``), and the model's
   certificate (`<stage>/model/certified_lipschitz`, `latent_radius_bound`, at test
   `empirical_lipschitz`), the inliers' posterior-collapse diagnostics (`<stage>/model/active_units`,
   `latent_variance`) and ball violations (`<stage>/<set>/bound_violations`), then hands the
   Evaluation to the reporters it was given (results files, dashboard) on rank 0.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from callbacks.distributed import gather_rows
from lightning_modules.base import BaseVAE
from reporting.base import ReportContext, Reporter
from scoring.config import ScoreConfig
from scoring.evaluation import (
    Evaluation,
    build_reference,
    concatenate,
    deduplicate,
    evaluate,
    reference_record,
    reference_rows,
    score_record,
)
from scoring.joint import DegenerateReferenceError
from scoring.keys import flat_metrics
from scoring.latent_activity import collapse_warning, latent_activity
from scoring.registry import REFERENCE_SCORES, ReferenceLatents

# Inputs per evaluated set on which the empirical Lipschitz lower bound is searched (test only).
EMPIRICAL_LIPSCHITZ_INPUTS = 64


class EvaluationData(Protocol):
    """What the callback needs from the data module (``datamodules.OODDataModule`` has it)."""

    @property
    def eval_set_names(self) -> list[str]: ...

    def reference_dataloader(self) -> DataLoader: ...


class OODEvaluation(Callback):
    def __init__(
        self,
        settings: ScoreConfig,
        reporters: Sequence[Reporter] = (),
        run_info: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.reporters = list(reporters)
        self.run_info = run_info or {}
        self._records: list[dict[str, Tensor]] = []
        # At validation: per evaluated set, a mask over its positions of the inputs to score.
        self._scored: list[Tensor] | None = None
        self._started = 0.0
        self._train_started: float | None = None
        self._train_seconds: float | None = None

    @property
    def seed(self) -> int:
        return int(self.run_info.get("seed", 0))

    # ------------------------------------------------------------------ when to run
    def _active(self, trainer: pl.Trainer, stage: str) -> bool:
        if stage == "test":
            return True
        every = self.settings.val_every_n_epochs
        return not trainer.sanity_checking and every > 0 and (trainer.current_epoch + 1) % every == 0

    def _start(self, trainer: pl.Trainer, stage: str) -> None:
        if self._active(trainer, stage):
            self._records = []
            self._scored = self._validation_rows(trainer) if stage == "val" else None
            self._started = time.perf_counter()

    def _validation_rows(self, trainer: pl.Trainer) -> list[Tensor] | None:
        """Per validation set, the positions scored: the same seeded subset every epoch (None = all)."""
        cap = self.settings.val_max_samples
        if cap is None:
            return None
        masks = []
        for loader in self._loaders(trainer, "val"):
            size = len(loader.dataset)  # type: ignore[arg-type]
            mask = torch.zeros(size, dtype=torch.bool)
            mask[reference_rows(size, cap, self.seed)] = True
            masks.append(mask)
        return masks

    def _batch(
        self, trainer: pl.Trainer, model: BaseVAE, batch: Any, dataloader_idx: int, stage: str
    ) -> None:
        if not self._active(trainer, stage):
            return
        x, labels, indices = batch
        if self._scored is not None:
            keep = self._scored[dataloader_idx][indices.cpu()].to(indices.device)
            if not keep.any():
                return
            x, labels, indices = x[keep], labels[keep], indices[keep]
        self._records.append(
            score_record(model, x, labels, indices, dataloader_idx, self.settings, self.seed)
        )

    # Lightning's Timer callback restores its elapsed time from the checkpoint that test() loads
    # and would count the training time up to that checkpoint twice; this clock is not restored.
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_started = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_started is not None:
            self._train_seconds = time.perf_counter() - self._train_started

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, "test")

    def on_validation_batch_end(  # type: ignore[override]
        self,
        trainer: pl.Trainer,
        pl_module: BaseVAE,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch(trainer, pl_module, batch, dataloader_idx, "val")

    def on_test_batch_end(  # type: ignore[override]
        self,
        trainer: pl.Trainer,
        pl_module: BaseVAE,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch(trainer, pl_module, batch, dataloader_idx, "test")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer, "val"):
            self._finish(trainer, pl_module, "val")  # type: ignore[arg-type]

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")  # type: ignore[arg-type]

    # ------------------------------------------------------------------ evaluation and reporting
    def _finish(self, trainer: pl.Trainer, model: BaseVAE, stage: str) -> None:
        bound = model.latent_bound()
        evaluation, settings = self._evaluate(trainer, model, stage, bound)
        empirical = self._empirical_lipschitz(trainer, model, stage)
        inliers = evaluation.columns["dataset"] == 0
        activity = latent_activity(evaluation.columns["latent"][inliers])
        warning = collapse_warning(activity) if stage == "test" else None
        if warning is not None:
            rank_zero_warn(warning)
        self._log(model, evaluation, stage, empirical, bound, activity)
        if trainer.is_global_zero and self.reporters:
            context = ReportContext(
                stage=stage,
                epoch=trainer.current_epoch,
                global_step=trainer.global_step,
                model=model,
                loaders=self._loaders(trainer, stage),
                loggers=[logger for logger in trainer.loggers if isinstance(logger, WandbLogger)],
                scores=settings,
                run_info=self.run_info,
                train_seconds=self._train_seconds,
                evaluation_seconds=time.perf_counter() - self._started,
                empirical_lipschitz=empirical,
                latent_activity=activity,
            )
            for reporter in self.reporters:
                reporter.report(evaluation, context)

    def _evaluate(
        self, trainer: pl.Trainer, model: BaseVAE, stage: str, bound: tuple[Tensor, float] | None
    ) -> tuple[Evaluation, ScoreConfig]:
        """The Evaluation, and the score settings it was made with.

        At validation a degenerate hole_knn_recon reference leaves that score out of the epoch's
        report instead of stopping the run: validation metrics are reports, and an encoder can
        collapse for an epoch early in training and recover (measured: the default, seed 3, had
        every posterior at the kappa floor after epoch 1 and a healthy latent by epoch 8). At test
        the error stands: the final model must be scorable.
        """
        local = concatenate(self._records)
        self._records = []
        columns = deduplicate({key: gather_rows(trainer, value) for key, value in local.items()})
        try:
            return self._evaluate_with(trainer, model, stage, bound, columns, self.settings), self.settings
        except DegenerateReferenceError as error:
            if stage != "val":
                raise
            names = [name for name in self.settings.names if name != "hole_knn_recon"]
            rank_zero_warn(f"Validation of epoch {trainer.current_epoch}: hole_knn_recon left out: {error}")
            settings = dataclasses.replace(self.settings, names=names)
            return self._evaluate_with(trainer, model, stage, bound, columns, settings), settings

    def _evaluate_with(
        self,
        trainer: pl.Trainer,
        model: BaseVAE,
        stage: str,
        bound: tuple[Tensor, float] | None,
        columns: dict[str, Tensor],
        settings: ScoreConfig,
    ) -> Evaluation:
        data: EvaluationData = trainer.datamodule  # type: ignore[attr-defined]
        wants_reference = any(name in REFERENCE_SCORES for name in settings.names)
        reference = self._reference(trainer, model, data, stage, settings) if wants_reference else None
        return evaluate(columns, list(data.eval_set_names), settings, reference, bound)

    def _reference_cap(self, stage: str) -> int | None:
        """scores.knn_reference_size, and at validation at most scores.val_reference_size as well."""
        caps = [self.settings.knn_reference_size]
        if stage == "val":
            caps.append(self.settings.val_reference_size)
        given = [cap for cap in caps if cap is not None]
        return min(given) if given else None

    @torch.no_grad()
    def _reference(
        self, trainer: pl.Trainer, model: BaseVAE, data: EvaluationData, stage: str, settings: ScoreConfig
    ) -> ReferenceLatents:
        """The reference scores' reference: (a seeded subset of) the training inliers recorded as
        ``reference_record`` does (latents, and log reconstruction errors for hole_knn_recon),
        sharded over processes."""
        loader = data.reference_dataloader()
        chosen = reference_rows(len(loader.dataset), self._reference_cap(stage), self.seed)  # type: ignore[arg-type]
        # Contiguous shards: gathered in rank order they are exactly the single-process reference
        # (same rows, same order), so neighbour ties resolve the same way on any process count.
        shard = chosen.tensor_split(trainer.world_size)[trainer.global_rank].tolist()
        subset_loader = DataLoader(
            Subset(loader.dataset, shard),
            batch_size=loader.batch_size,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            # Its own generator: iterating draws a worker base seed, by default from the global RNG
            # of the training steps, so which scores run at validation would change training.
            generator=torch.Generator().manual_seed(self.seed),
        )
        # Encoded as the scored inputs are: the latents do not depend on the shard or batch sizes.
        columns = concatenate(
            [reference_record(model, x.to(model.device), settings) for x, _, _ in subset_loader]
        )
        gathered = {key: gather_rows(trainer, value) for key, value in columns.items()}
        return build_reference(
            gathered["latent"], model.latent_metric, settings, gathered.get("log_recon_statistics")
        )

    def _empirical_lipschitz(self, trainer: pl.Trainer, model: BaseVAE, stage: str) -> float | None:
        """At test: the largest Jacobian norm of the mean map over the first inputs of every set.

        The same fixed inputs on every process (not the sharded batches), so every rank gets the
        same value; a lower bound on the constant whose upper bound is the certificate.
        """
        if stage != "test":
            return None
        inputs = []
        for loader in self._loaders(trainer, stage):
            dataset = loader.dataset
            count = min(EMPIRICAL_LIPSCHITZ_INPUTS, len(dataset))  # type: ignore[arg-type]
            inputs.append(dataset.__getitems__(list(range(count)))[0])  # type: ignore[attr-defined]
        return model.empirical_lipschitz(torch.cat(inputs).to(model.device))

    @staticmethod
    def _log(
        model: BaseVAE,
        evaluation: Evaluation,
        stage: str,
        empirical_lipschitz: float | None,
        bound: tuple[Tensor, float] | None,
        activity: dict[str, float],
    ) -> None:
        values = flat_metrics(stage, evaluation.metrics)
        values.update({f"{stage}/model/{name}": value for name, value in activity.items()})
        certified = model.certified_lipschitz()
        if certified is not None:
            values[f"{stage}/model/certified_lipschitz"] = certified
        if bound is not None:
            values[f"{stage}/model/latent_radius_bound"] = bound[1]
        if empirical_lipschitz is not None:
            values[f"{stage}/model/empirical_lipschitz"] = empirical_lipschitz
        if evaluation.bound_violations is not None:
            values.update(
                {
                    f"{stage}/{name}/bound_violations": float(count)
                    for name, count in evaluation.bound_violations.items()
                }
            )
        # Every process holds the same gathered values: a max over processes returns them exactly
        # and tells Lightning they are synchronised (it warns about unsynced epoch values).
        model.log_dict(values, sync_dist=True, reduce_fx="max", add_dataloader_idx=False)

    @staticmethod
    def _loaders(trainer: pl.Trainer, stage: str) -> list[DataLoader]:
        """The evaluated loaders, in set_names order (the data module lists the inlier set first)."""
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        assert loaders is not None  # called at the end of that stage's epoch, whose loop holds them
        return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
