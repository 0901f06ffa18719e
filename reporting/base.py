"""The contract between the evaluation callback and the reporters it hands each Evaluation to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pytorch_lightning.loggers import WandbLogger
from torch.utils.data import DataLoader

from lightning_modules.base import BaseVAE
from scoring.config import ScoreConfig
from scoring.evaluation import Evaluation


@dataclass
class ReportContext:
    """Where an Evaluation came from: everything a reporter may use besides the Evaluation."""

    stage: str  # "val" or "test"
    epoch: int
    global_step: int
    model: BaseVAE
    loaders: list[DataLoader]  # the evaluated sets' loaders, in Evaluation.set_names order
    loggers: list[WandbLogger]
    scores: ScoreConfig  # the settings the Evaluation was computed with
    run_info: dict[str, Any]  # experiment, seed and the resolved config of the run
    train_seconds: float | None
    evaluation_seconds: float
    # The largest Jacobian norm of the mean map found at evaluated inputs (test only): a lower
    # bound on the Lipschitz constant, beside the certificate's upper bound.
    empirical_lipschitz: float | None = None
    # Posterior-collapse diagnostics of the inlier set's latents (scoring.latent_activity).
    latent_activity: dict[str, float] | None = None

    @property
    def seed(self) -> int:
        return int(self.run_info.get("seed", 0))


class Reporter(Protocol):
    """Receives every Evaluation on rank 0 (every process holds the same gathered one)."""

    def report(self, evaluation: Evaluation, context: ReportContext) -> None: ...
