"""What several test modules share: where the data is, tiny run settings, running the CLIs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
# The offline datasets: DATA_DIR, else ../shared/datasets beside the repository (conftest sets it).
DATA_DIR = Path(os.environ.get("DATA_DIR") or REPO_ROOT.parent / "shared" / "datasets")
DATA_MISSING = (
    f"the offline datasets are not in {DATA_DIR} (no fashion-mnist/ folder there); set DATA_DIR to the "
    "folder that holds fashion-mnist/ and mnist/ to run the end-to-end tests"
)
# Tests that read the real offline data: skipped with that message on a clone without it.
requires_data = pytest.mark.skipif(not (DATA_DIR / "fashion-mnist").is_dir(), reason=DATA_MISSING)


# Extra settings for a tiny run whose outputs a test does not read: no logger, figures or costly scores.
QUICK = {
    "logger.mode": "disabled",
    "plots.enabled": "false",
    "scores.names": "[neg_elbo]",
    "scores.val_every_n_epochs": "0",
    "trainer.limit_train_batches": "3",
}
QUICK_EVAL = ["logger.mode=disabled", "plots.enabled=false"]


def tiny_overrides(out_dir: Path, **extra: str) -> list[str]:
    """A real but tiny Fashion-MNIST vs MNIST run: seconds on two CPU cores."""
    settings = {
        "out_dir": str(out_dir),
        # The certified variant: these runs check certificates and bounds as well.
        "model.variant": "alexandroff_lipschitz",
        "model.lipschitz": "1.0",
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


def one_thread_environment() -> dict[str, str]:
    """One OpenMP thread per process: test machines are shared, and oversubscribed OpenMP threads
    spin-wait (the tests ran 6x slower with default threads on a busy 2-core machine)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The same for a run inside the test process; restores the thread count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_command(module: str, arguments: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `python -m module arguments` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=one_thread_environment(),
    )


def load_results(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "results.json").read_text())


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """results.json metrics as ``{outlier/score/metric: value}``."""
    return {
        f"{outlier}/{score}/{metric}": value
        for outlier, by_score in results["metrics"].items()
        for score, by_metric in by_score.items()
        for metric, value in by_metric.items()
    }
