"""A degenerate hole_knn_recon reference (a collapsed encoder) at validation leaves that score out of
the epoch's report and training goes on; at test it stops the run with exit status 2.

The default experiment, seed 3, had every posterior at the kappa floor after its first epoch and a
healthy latent by its eighth; the validation report used to stop that run. The collapse is made
here by a joint_weights that finds the reference degenerate, so the tiny run stays seconds long.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import scoring.evaluation as evaluation_module
from experiments import train as train_cli
from scoring.joint import DegenerateReferenceError, joint_weights
from tests.helpers import one_thread, tiny_overrides

SCORES = "[hole_knn_recon,hole_knn]"


def degenerate_for(calls: int) -> Callable[..., Tensor]:
    """joint_weights that finds the reference degenerate on its first ``calls`` calls."""
    made = 0

    def weights(*arguments: Any, **keywords: Any) -> Tensor:
        nonlocal made
        made += 1
        if made <= calls:
            raise DegenerateReferenceError("hole_knn_recon cannot scale its joint space (collapsed encoder)")
        return joint_weights(*arguments, **keywords)

    return weights


def train(out_dir: Path) -> int:
    overrides = tiny_overrides(
        out_dir,
        **{
            "scores.names": SCORES,
            "scores.val_every_n_epochs": "1",
            "trainer.max_epochs": "2",
            "trainer.limit_train_batches": "3",
            "logger.mode": "disabled",
            "plots.enabled": "false",
        },
    )
    with one_thread():
        return train_cli.run_cli(train_cli.main, overrides)


def test_a_collapsed_epoch_at_validation_leaves_the_score_out_and_training_goes_on(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluation_module, "joint_weights", degenerate_for(1))  # epoch 1's validation
    with pytest.warns(UserWarning, match="Validation of epoch 0: hole_knn_recon left out"):
        assert train(tmp_path / "run") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert sorted(results["metrics"]["mnist"]) == ["hole_knn", "hole_knn_recon"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1  # both epochs trained


def test_a_degenerate_reference_at_test_stops_the_run_with_the_clear_error(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(evaluation_module, "joint_weights", degenerate_for(10**6))
    with pytest.warns(UserWarning, match="hole_knn_recon left out"):
        assert train(tmp_path / "run") == 2
    assert "cannot scale its joint space" in capsys.readouterr().err
    assert not (tmp_path / "run" / "results.json").exists()
