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


def test_state_filed_under_the_class_name_by_older_versions_restores(tmp_path: Path) -> None:
    """Checkpoints written before the key was ModelCheckpoint's file the state as
    "RelocatableCheckpoint{...}"; resuming one must still restore the best epoch (Lightning calls
    on_load_checkpoint, then loads each callback's state by its key)."""
    settings: dict[str, Any] = {"dirpath": tmp_path, "monitor": "val/elbo", "mode": "max"}
    older = RelocatableCheckpoint(**settings)
    legacy_key = older.state_key.replace(ModelCheckpoint.__qualname__, RelocatableCheckpoint.__qualname__, 1)
    assert legacy_key.startswith("RelocatableCheckpoint{")
    best = str(tmp_path / "epoch005.ckpt")
    older.best_k_models = {best: torch.tensor(-102.2)}
    older.best_model_path, older.best_model_score = best, torch.tensor(-102.2)
    checkpoint: dict[str, Any] = {"callbacks": {legacy_key: older.state_dict()}}

    ours = RelocatableCheckpoint(**settings)
    ours.on_load_checkpoint(None, None, checkpoint)  # type: ignore[arg-type]
    ours.load_state_dict(checkpoint["callbacks"][ours.state_key])
    assert ours.best_model_path == best
    assert ours.best_k_models == {best: torch.tensor(-102.2)}
