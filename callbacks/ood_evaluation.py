"""The OOD evaluation callback: score every evaluated set, compute metrics, log, write outputs.

At validation end (every `scores.val_every_n_epochs` epochs, for reporting only: nothing here
feeds checkpoint selection) and at test end it
1. scores each batch of the inlier set and of every outlier set with the batch scores,
2. gathers per-sample records from every process and drops the sampler's padding duplicates,
3. encodes the training inliers as the hole_knn reference and computes the reference scores,
4. counts encodings outside the model's certified latent ball (Lipschitz variants),
5. computes AUROC / AUPR-In / AUPR-Out / FPR@95 / FPR@80 per (outlier set, score) and logs them
   as `<stage>/<outlier>/<score>/<metric>` (a subset score, likelihood_regret, on the inputs it
   scored: see callbacks.scores.scored_rows),
6. at test end writes `results.json` and `scores.npz` atomically (rank 0 only).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from callbacks.distributed import gather_rows, unique_record_order
from callbacks.knn import reference_kth_distances
from callbacks.metrics import ood_metrics
from callbacks.outputs import write_json, write_npz
from callbacks.scores import (
    BATCH_SCORES,
    REFERENCE_SCORES,
    SUBSET_LIMITS,
    ReferenceLatents,
    sample_seeds,
    score_batch,
    scored_rows,
)

RECORD_KEYS = ("dataset", "index", "label", "latent", "mean")
PACKAGES = ("torch", "pytorch-lightning", "torchmetrics", "torchvision", "wandb", "omegaconf", "numpy")


@dataclass
class Evaluation:
    """Everything one evaluation pass produced, identical on every process."""

    set_names: list[str]
    columns: dict[str, Tensor]  # per-sample arrays on the CPU, sorted by (dataset, index)
    score_names: list[str]
    metrics: dict[str, dict[str, dict[str, float]]]  # outlier -> score -> metric -> value
    bound_violations: Optional[dict[str, int]]
    reference: Optional[ReferenceLatents]  # the hole_knn reference, when that score was asked for


class OODEvaluation(Callback):
    def __init__(self, settings: Any, out_dir: Optional[Path] = None, run_info: Optional[dict[str, Any]] = None) -> None:
        self.settings = settings
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.run_info = run_info or {}
        self._records: list[dict[str, Tensor]] = []
        self._started = 0.0
        self._train_started: Optional[float] = None
        self.train_seconds: Optional[float] = None
        self.last_evaluation: Optional[Evaluation] = None

    # ------------------------------------------------------------------ when to run
    def _active(self, trainer: pl.Trainer, stage: str) -> bool:
        if stage == "test":
            return True
        every = self.settings.val_every_n_epochs
        return not trainer.sanity_checking and every > 0 and (trainer.current_epoch + 1) % every == 0

    def _start(self, trainer: pl.Trainer, stage: str) -> None:
        if self._active(trainer, stage):
            self._records = []
            self._started = time.perf_counter()

    def _batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, dataloader_idx: int, stage: str) -> None:
        if not self._active(trainer, stage):
            return
        x, labels, indices = batch
        seeds = sample_seeds(indices, self.run_info.get("seed", 0))
        scores, encoding = score_batch(pl_module, x, list(self.settings.names), self.settings, seeds, indices)
        self._records.append(
            {
                "dataset": torch.full_like(indices, dataloader_idx),
                "index": indices,
                "label": labels,
                "latent": encoding.location.detach(),
                "mean": encoding.mean.detach(),
                **{name: value.double() for name, value in scores.items()},
            }
        )

    # Lightning's Timer callback restores its elapsed time from the checkpoint that test() loads
    # and would count the training time up to that checkpoint twice; this clock is not restored.
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_started = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_started is not None:
            self.train_seconds = time.perf_counter() - self._train_started

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, "test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._batch(trainer, pl_module, batch, dataloader_idx, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._batch(trainer, pl_module, batch, dataloader_idx, "test")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer, "val"):
            self._log(pl_module, self._evaluate(trainer, pl_module), "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        evaluation = self._evaluate(trainer, pl_module)
        self._log(pl_module, evaluation, "test")
        if self.out_dir is not None and trainer.is_global_zero:
            self._write(trainer, pl_module, evaluation, time.perf_counter() - self._started)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Evaluation:
        set_names = list(trainer.datamodule.eval_set_names)
        keys = self._records[0].keys() if self._records else RECORD_KEYS
        local = {key: torch.cat([record[key] for record in self._records]) for key in keys}
        gathered = {key: gather_rows(pl_module, value) for key, value in local.items()}
        keep = unique_record_order(gathered["dataset"], gathered["index"])
        columns = {key: value[keep] for key, value in gathered.items()}

        reference_names = [name for name in self.settings.names if name in REFERENCE_SCORES]
        reference = None
        if reference_names:
            reference = self._reference_latents(trainer, pl_module)
            for name in reference_names:
                columns[name] = REFERENCE_SCORES[name](columns["latent"], reference, self.settings).double()

        violations = self._bound_violations(pl_module, columns, set_names)
        columns = {key: value.cpu() for key, value in columns.items()}
        score_names = [name for name in self.settings.names if name in BATCH_SCORES or name in REFERENCE_SCORES]
        metrics = self._metrics(columns, set_names, score_names, self.settings)
        evaluation = Evaluation(set_names, columns, score_names, metrics, violations, reference)
        self.last_evaluation = evaluation
        self._records = []
        return evaluation

    @staticmethod
    def _metrics(columns: dict[str, Tensor], set_names: list[str], score_names: list[str], settings: Any) -> dict[str, dict[str, dict[str, float]]]:
        """Metrics on the whole inlier and outlier sets; a subset score's on the inputs it scored."""
        dataset = columns["dataset"]
        inliers = dataset == 0
        scored = {name: scored_rows(name, columns["index"], settings, len(dataset)) for name in score_names}
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        for set_id, outlier in enumerate(set_names[1:], start=1):
            outliers = dataset == set_id
            if not outliers.any():
                continue
            metrics[outlier] = {}
            for name in score_names:
                selected = (inliers | outliers) & scored[name]
                metrics[outlier][name] = ood_metrics(columns[name][selected], outliers[selected])
        return metrics

    def _scored_sizes(self, evaluation: Evaluation) -> dict[str, dict[str, int]]:
        """Per subset score, how many inputs of each set it scored (and its metrics used)."""
        columns = evaluation.columns
        sizes: dict[str, dict[str, int]] = {}
        for name in (name for name in evaluation.score_names if name in SUBSET_LIMITS):
            scored = scored_rows(name, columns["index"], self.settings, len(columns["index"]))
            sizes[name] = {
                set_name: int((scored & (columns["dataset"] == set_id)).sum())
                for set_id, set_name in enumerate(evaluation.set_names)
            }
        return sizes

    @torch.no_grad()
    def _reference_latents(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ReferenceLatents:
        """Encode (a seeded subset of) the training inliers, sharded over processes."""
        loader = trainer.datamodule.reference_dataloader()
        size = len(loader.dataset)
        cap = self.settings.knn_reference_size
        if cap is not None and cap < size:
            generator = torch.Generator().manual_seed(int(self.run_info.get("seed", 0)))
            chosen = torch.randperm(size, generator=generator)[:cap].sort().values
        else:
            chosen = torch.arange(size)
        # Contiguous shards: gathered in rank order they are exactly the single-process reference
        # (same rows, same order), so neighbour ties resolve the same way on any process count.
        shard = chosen.tensor_split(trainer.world_size)[trainer.global_rank].tolist()
        subset_loader = DataLoader(
            Subset(loader.dataset, shard),
            batch_size=loader.batch_size,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
        )
        parts = [pl_module.encode(x.to(pl_module.device)).location for x, _, _ in subset_loader]
        latents = gather_rows(pl_module, torch.cat(parts))
        if latents.shape[0] <= self.settings.knn_k:
            raise ValueError(
                f"hole_knn needs more than scores.knn_k={self.settings.knn_k} reference latents but "
                f"the training inliers gave {latents.shape[0]}: lower scores.knn_k or use more "
                f"training data (data.max_train_samples, scores.knn_reference_size)."
            )
        metric = pl_module.latent_metric
        kth = reference_kth_distances(latents, self.settings.knn_k, metric, self.settings.knn_chunk_size)
        return ReferenceLatents(latents, metric, kth)

    @staticmethod
    def _bound_violations(pl_module: pl.LightningModule, columns: dict[str, Tensor], set_names: list[str]) -> Optional[dict[str, int]]:
        bound = pl_module.latent_bound()
        if bound is None:
            return None
        centre, radius = bound
        outside = (columns["mean"] - centre).norm(dim=1) > radius
        return {name: int(outside[columns["dataset"] == set_id].sum()) for set_id, name in enumerate(set_names)}

    # ------------------------------------------------------------------ reporting
    @staticmethod
    def _log(pl_module: pl.LightningModule, evaluation: Evaluation, stage: str) -> None:
        values = {
            f"{stage}/{outlier}/{score}/{metric}": value
            for outlier, by_score in evaluation.metrics.items()
            for score, by_metric in by_score.items()
            for metric, value in by_metric.items()
        }
        if evaluation.bound_violations is not None:
            values.update({f"{stage}/{name}/bound_violations": float(count) for name, count in evaluation.bound_violations.items()})
        # Every process holds the same gathered values: a max over processes returns them exactly
        # and tells Lightning they are synchronised (it warns about unsynced epoch values).
        pl_module.log_dict(values, sync_dist=True, reduce_fx="max", add_dataloader_idx=False)

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, evaluation: Evaluation, test_seconds: float) -> None:
        columns = evaluation.columns
        sizes = {name: int((columns["dataset"] == set_id).sum()) for set_id, name in enumerate(evaluation.set_names)}
        results = {
            "experiment": self.run_info.get("experiment"),
            "seed": self.run_info.get("seed"),
            "model": pl_module.describe(),
            "data": {"inlier": evaluation.set_names[0], "outliers": evaluation.set_names[1:], "sizes": sizes, "scored_sizes": self._scored_sizes(evaluation)},
            "scores": evaluation.score_names,
            "metrics": evaluation.metrics,
            "bound_violations": evaluation.bound_violations,
            "timing": {
                "train_seconds": self.train_seconds,
                "test_seconds": test_seconds,
                "test_images_per_second": sum(sizes.values()) / max(test_seconds, 1e-9),
            },
            "versions": {"python": platform.python_version(), **{name: metadata.version(name) for name in PACKAGES}},
            "config": self.run_info.get("config"),
        }
        arrays = {
            "dataset_names": np.array(evaluation.set_names),
            "dataset": columns["dataset"].numpy(),
            "index": columns["index"].numpy(),
            "label": columns["label"].numpy(),
            "latent": columns["latent"].float().numpy(),
            **{f"score_{name}": columns[name].numpy() for name in evaluation.score_names},
        }
        write_npz(self.out_dir / "scores.npz", arrays)
        write_json(self.out_dir / "results.json", results)
