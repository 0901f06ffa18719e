"""The GPU path, end to end: a real Trainer fit and test on a CUDA device with every score, and the
same checkpoint evaluated on the CPU gives the same deterministic scores. Skipped without CUDA (CI
has none); run on a GPU machine with ``pytest tests/experiments/test_cuda.py``.

Why a test of its own: the CPU suite cannot see a tensor created on the wrong device, and one such
tensor (the quartile levels of ``hole_knn_recon``'s weights) once made the default score crash on
every GPU at the first validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from scoring.config import SCORE_NAMES
from tests.helpers import load_results, tiny_overrides

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
OUTLIERS = ["mnist", "constant"]
# Scores without posterior sampling: the same checkpoint gives the same values on any device, up to
# float32 rounding (cuDNN convolutions may use TF32, hence the loose tolerance).
DETERMINISTIC_SCORES = ["hole_knn", "hole_knn_recon", "latent_norm"]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out_dir = tmp_path_factory.mktemp("cuda") / "run"
    overrides = tiny_overrides(
        out_dir,
        **{
            "trainer.accelerator": "gpu",
            "logger.mode": "disabled",
            "data.outliers": "[" + ",".join(OUTLIERS) + "]",
            "scores.names": "[" + ",".join(SCORE_NAMES) + "]",
            "scores.regret_max_samples": "10",
        },
    )
    assert train_cli.run_cli(train_cli.main, overrides) == 0
    return out_dir


def test_every_score_trains_validates_and_tests_on_cuda(gpu_run: Path) -> None:
    results = load_results(gpu_run)
    assert list(results["metrics"]) == OUTLIERS
    for outlier in OUTLIERS:
        assert set(results["metrics"][outlier]) == set(SCORE_NAMES)
        for metrics in results["metrics"][outlier].values():
            assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert 0 < results["model"]["empirical_lipschitz"] <= results["model"]["certified_lipschitz"]
    assert set(results["bound_violations"].values()) == {0}


def test_the_gpu_checkpoint_scores_the_same_on_the_cpu(gpu_run: Path, tmp_path: Path) -> None:
    cpu_dir = tmp_path / "cpu"
    code = evaluate_cli.run_cli(
        evaluate_cli.main,
        [
            f"ckpt={gpu_run / 'checkpoints' / 'last.ckpt'}",
            f"out_dir={cpu_dir}",
            "trainer.accelerator=cpu",
            "logger.mode=disabled",
            "plots.enabled=false",
            "scores.names=[" + ",".join(DETERMINISTIC_SCORES) + "]",
        ],
    )
    assert code == 0
    gpu, cpu = np.load(gpu_run / "scores.npz"), np.load(cpu_dir / "scores.npz")
    np.testing.assert_array_equal(gpu["dataset"], cpu["dataset"])
    np.testing.assert_array_equal(gpu["index"], cpu["index"])
    for score in DETERMINISTIC_SCORES:
        np.testing.assert_allclose(gpu[f"score_{score}"], cpu[f"score_{score}"], rtol=1e-2, atol=1e-4)
