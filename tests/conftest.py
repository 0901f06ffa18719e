"""Shared test setup: real offline data from DATA_DIR, W&B strictly offline, quiet logs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DATA_DIR", str((REPO_ROOT.parent / "shared" / "datasets").resolve()))
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
# W&B keeps staging files and settings under the home directory by default; tests leave no trace.
_WANDB_HOME = tempfile.mkdtemp(prefix="wandb-tests-")
for _variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
    os.environ[_variable] = _WANDB_HOME


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["DATA_DIR"])
    assert (path / "fashion-mnist").is_dir(), f"DATA_DIR={path} does not hold the offline datasets"
    return path


def tiny_overrides(out_dir: Path, **extra: str) -> list[str]:
    """A real but tiny Fashion-MNIST vs MNIST run: seconds on two CPU cores."""
    settings = {
        "out_dir": str(out_dir),
        "data.max_train_samples": "600",
        "data.max_eval_samples": "150",
        "data.batch_size": "64",
        "data.eval_batch_size": "100",
        "model.latent_dim": "4",
        "model.width": "4",
        "model.hidden_dim": "32",
        "trainer.max_epochs": "1",
        "trainer.enable_progress_bar": "false",
        "trainer.log_every_n_steps": "1",
        "scores.iwae_samples": "4",
        "scores.posterior_samples": "4",
        "scores.knn_k": "5",
        "scores.knn_reference_size": "300",
        **extra,
    }
    return [f"{key}={value}" for key, value in settings.items()]
