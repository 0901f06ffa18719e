"""The compact-latent study trains what each candidate says: every spec key reaches the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import compact_study
from experiments.config import TrainConfig, load_config, split_cli_args


@pytest.mark.parametrize("candidate", list(compact_study.CANDIDATES))
def test_candidate_command_builds_the_config_of_its_spec(candidate: str, tmp_path: Path) -> None:
    (run,) = [r for r in compact_study.make_runs([candidate], 1, tmp_path, []) if r.benchmark == "mnist"]
    config_path, overrides = split_cli_args(run.trial.command[3:])
    config = load_config(TrainConfig, config_path, overrides)
    spec = compact_study.CANDIDATES[candidate]
    assert config.model.variant == spec["variant"]
    assert config.model.lipschitz == spec["lipschitz"]
    assert config.trainer.max_epochs == spec["epochs"]
    assert config.model.latent_dim == spec["latent_dim"]
    for key, value in spec.get("extra", {}).items():
        section, name = key.split(".")
        assert config[section][name] == value
    assert config.data.inlier == "mnist"
    assert config.out_dir == str(run.trial.out_dir)
