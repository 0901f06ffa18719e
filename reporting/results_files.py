"""The results reporter: ``results.json`` and ``scores.npz`` of the test evaluation, written atomically."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from common.atomic_io import atomic_files, write_json, write_npz
from reporting.base import ReportContext
from scoring.evaluation import Evaluation

PACKAGES = ("torch", "pytorch-lightning", "torchmetrics", "torchvision", "wandb", "omegaconf", "numpy")


class ResultsFiles:
    """Writes the test evaluation into ``out_dir``; validation evaluations are only logged."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)

    def report(self, evaluation: Evaluation, context: ReportContext) -> None:
        if context.stage != "test":
            return
        sizes = evaluation.set_sizes()
        seconds = context.evaluation_seconds
        results = {
            "experiment": context.run_info.get("experiment"),
            "seed": context.run_info.get("seed"),
            "model": {
                **context.model.describe(),
                "empirical_lipschitz": context.empirical_lipschitz,
                **(context.latent_activity or {}),
            },
            "data": {
                "inlier": evaluation.set_names[0],
                "outliers": evaluation.set_names[1:],
                "sizes": sizes,
                "scored_sizes": evaluation.scored_sizes(context.scores),
            },
            "scores": evaluation.score_names,
            "metrics": evaluation.metrics,
            "bound_violations": evaluation.bound_violations,
            "timing": {
                "train_seconds": context.train_seconds,
                "test_seconds": seconds,
                "test_images_per_second": sum(sizes.values()) / max(seconds, 1e-9),
            },
            "versions": {
                "python": platform.python_version(),
                **{name: metadata.version(name) for name in PACKAGES},
            },
            "config": context.run_info.get("config"),
        }
        columns = evaluation.columns
        arrays = {
            "dataset_names": np.array(evaluation.set_names),
            "dataset": columns["dataset"].numpy(),
            "index": columns["index"].numpy(),
            "label": columns["label"].numpy(),
            "latent": columns["latent"].float().numpy(),
            **{f"score_{name}": columns[name].numpy() for name in evaluation.score_names},
        }
        # One group: a kill while either file is written leaves both previous files (common.atomic_io).
        with atomic_files() as files:
            write_npz(self.out_dir / "scores.npz", arrays, files)
            write_json(self.out_dir / "results.json", results, files)
