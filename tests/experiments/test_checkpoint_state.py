"""The best-epoch checkpoint callback keeps Lightning's own state key, so its state always restores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from experiments.runner import RelocatableCheckpoint


def test_state_key_is_model_checkpoints(tmp_path: Path) -> None:
    settings: dict[str, Any] = {
        "dirpath": tmp_path,
        "monitor": "val/elbo",
        "mode": "max",
        "filename": "epoch{epoch:03d}",
    }
    assert RelocatableCheckpoint(**settings).state_key == ModelCheckpoint(**settings).state_key


def test_state_saved_by_plain_model_checkpoint_restores_the_best_epochs(tmp_path: Path) -> None:
    """A checkpoint written by ModelCheckpoint (or an older version of the class) restores fully,
    so the next better epoch replaces the previous best file instead of leaving both behind."""
    settings: dict[str, Any] = {"dirpath": tmp_path, "monitor": "val/elbo", "mode": "max", "save_top_k": 1}
    plain = ModelCheckpoint(**settings)
    best = str(tmp_path / "epoch003.ckpt")
    plain.best_k_models = {best: torch.tensor(-103.6)}
    plain.best_model_path, plain.kth_best_model_path = best, best
    plain.best_model_score = plain.kth_value = torch.tensor(-103.6)
    stored = {plain.state_key: plain.state_dict()}

    ours = RelocatableCheckpoint(**settings)
    ours.load_state_dict(stored[ours.state_key])
    assert ours.best_k_models == {best: torch.tensor(-103.6)}
    assert ours.best_model_score == torch.tensor(-103.6)
