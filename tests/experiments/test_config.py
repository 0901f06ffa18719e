"""Config loading: unknown keys, wrong types and impossible values stop before any work."""

from __future__ import annotations

import pytest

from experiments.config import ConfigError, split_cli_args
from experiments.train import load_train_config


def test_default_config_loads_and_overrides_apply() -> None:
    config = load_train_config(["model.latent_dim=8", "--trainer.max_epochs=2"])
    assert config.model.latent_dim == 8
    assert config.trainer.max_epochs == 2
    assert config.experiment == "fmnist_vs_mnist"
    assert config.data.outliers == ["mnist"]


def test_split_cli_args_accepts_yaml_then_overrides_in_both_styles() -> None:
    path, overrides = split_cli_args(["a.yaml", "x=1", "--y.z=2"])
    assert path == "a.yaml"
    assert overrides == ["x=1", "y.z=2"]
    with pytest.raises(ConfigError, match="key=value"):
        split_cli_args(["x=1", "loose"])


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as error:
        load_train_config(["model.latnet_dim=3"])
    message = str(error.value)
    assert "model.latnet_dim" in message
    assert "latent_dim" in message and "variant" in message


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError, match="Valid keys at the top level"):
        load_train_config(["epochs=3"])


def test_wrong_type_is_rejected() -> None:
    with pytest.raises(ConfigError, match="latent_dim"):
        load_train_config(["model.latent_dim=many"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.variant=spherical", "Valid variants"),
        ("model.activation=tanh", "maxmin"),
        ("logger.mode=cloud", "Valid choices"),
        ("model.latent_dim=0", "latent_dim"),
        ("model.width=3", "even"),
        ("scores.names=[neg_elbo,magic]", "Valid scores"),
        ("scores.iwae_samples=1", "iwae_samples"),
        ("scores.posterior_samples=1", "posterior_samples"),
        ("scores.knn_reference_size=3", "knn_k"),  # not above the default k = 3
        ("scores.knn_recon_features=[squared_error,pixels]", "Valid choices: squared_error"),
        ("scores.knn_recon_features=[]", "at least one"),
        ("scores.knn_recon_features=[kl,kl]", "each once"),
    ],
)
def test_impossible_values_are_rejected(override: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        load_train_config([override])


@pytest.mark.parametrize("value", ["0", "-1.5", "null", "-inf"])
def test_lipschitz_variants_need_a_positive_constant(value: str) -> None:
    with pytest.raises(ValueError, match="positive number"):
        load_train_config(["model.variant=lipschitz", f"model.lipschitz={value}"])


def test_missing_config_file_lists_available_configs() -> None:
    with pytest.raises(ConfigError, match="fmnist_vs_mnist.yaml"):
        load_train_config(["experiments/configs/nope.yaml"])


def test_lipschitz_constant_is_ignored_with_a_warning_by_unconstrained_variants() -> None:
    with pytest.warns(UserWarning, match="is ignored"):
        config = load_train_config(["model.variant=gaussian", "model.lipschitz=2.0"])
    assert config.model.variant == "gaussian"


def test_schema_defaults_agree_with_the_default_yaml() -> None:
    """Every value the default YAML sets is the schema's own default: one source of defaults."""
    from omegaconf import OmegaConf

    from experiments.config import DEFAULT_CONFIG, TrainConfig

    schema = OmegaConf.structured(TrainConfig)
    written = OmegaConf.load(DEFAULT_CONFIG)
    for key in _leaf_keys(written):
        assert OmegaConf.select(written, key) == OmegaConf.select(schema, key), key


def _leaf_keys(node: object, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return [prefix]
    return [
        leaf
        for key in node
        for leaf in _leaf_keys(node[key], f"{prefix}{key!s}" if not prefix else f"{prefix}.{key!s}")
    ]
