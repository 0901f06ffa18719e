"""Which sets and scores are evaluated must not change the trained model.

Validation runs between training steps (the sanity check before the first step, then after every
epoch) and iterates one loader per outlier set, plus the hole-score reference loader when OOD
metrics are computed at validation. Had any of it drawn from the global RNG, the posterior samples
of the following training steps, and so the weights, would depend on what is evaluated.
"""

from __future__ import annotations

from pathlib import Path

import torch

from experiments import train as train_cli
from scoring.config import SCORE_NAMES
from tests.helpers import one_thread, tiny_overrides

QUICK = {
    "logger.mode": "disabled",
    "plots.enabled": "false",
    "trainer.limit_train_batches": "3",
    # Two epochs with OOD metrics at the first validation: that validation lies between training steps.
    "trainer.max_epochs": "2",
    "scores.val_every_n_epochs": "1",
    "scores.regret_max_samples": "5",
    "scores.regret_steps": "2",
}


def trained_weights(out_dir: Path, outliers: str, scores: str) -> dict[str, torch.Tensor]:
    overrides = tiny_overrides(out_dir, **QUICK, **{"data.outliers": outliers, "scores.names": scores})
    with one_thread():
        assert train_cli.run_cli(train_cli.main, overrides) == 0
    checkpoint = torch.load(out_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return checkpoint["state_dict"]


def test_the_evaluated_sets_and_scores_do_not_change_the_trained_weights(
    tmp_path: Path, data_dir: Path
) -> None:
    one = trained_weights(tmp_path / "one", "[mnist]", f"[{','.join(SCORE_NAMES)}]")
    many = trained_weights(
        tmp_path / "many", "[mnist,hflip,vflip,uniform_noise,constant,gaussian_noise]", "[neg_elbo]"
    )
    assert one.keys() == many.keys()
    differing = [key for key in one if not torch.equal(one[key], many[key])]
    assert not differing, f"the weights depend on what is evaluated: {differing} differ"
