"""The input-complexity and likelihood-regret baselines, alone and inside a real Trainer run."""

from __future__ import annotations

import io
import json
import math
from copy import deepcopy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import Tensor

import scoring.likelihood_regret as regret_module
from experiments.config import ConfigError
from experiments.runner import train
from experiments.train import load_train_config
from lightning_modules.base import BaseVAE
from lightning_modules.config import ModelConfig, OptimConfig
from lightning_modules.factory import build_model, load_model
from lightning_modules.likelihoods import log_likelihood
from scoring.config import ScoreConfig
from scoring.input_complexity import compressed_bits, png_bits, quantise
from scoring.likelihood_regret import likelihood_regret, seeded_elbo
from scoring.model import batch_invariant_encoding
from scoring.registry import sample_seeds, score_batch, scored_rows
from tests.helpers import tiny_overrides

SCORES = ["neg_elbo", "input_complexity", "likelihood_regret"]
REGRET_SUBSET = 20  # of the 150 images per evaluated set in the tiny run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out_dir = tmp_path_factory.mktemp("baselines") / "out"
    overrides = tiny_overrides(
        out_dir,
        **{
            "scores.names": "[" + ",".join(SCORES) + "]",
            "scores.regret_steps": "5",
            "scores.regret_max_samples": str(REGRET_SUBSET),
            "scores.val_every_n_epochs": "0",  # test-end metrics are enough here
            # The plain VAE: its regret is large enough to test; the Lipschitz sphere variant's
            # certificate refresh would cost more than everything else in this file.
            "model.variant": "gaussian",
            "model.lipschitz": "null",
            "logger.mode": "disabled",
            "plots.enabled": "false",
        },
    )
    return train(load_train_config(overrides))


@pytest.fixture(scope="module")
def model(trained_run: Path) -> BaseVAE:
    out_dir = trained_run
    return load_model(out_dir / "checkpoints" / "last.ckpt").eval()


@pytest.fixture(scope="module")
def images(data_dir: Path) -> Tensor:
    """Six real inlier test images (Fashion-MNIST), as the data module serves them."""
    from datamodules.ood_datamodule import OODDataModule

    datamodule = OODDataModule({"data_dir": str(data_dir), "max_eval_samples": 6, "outliers": []})
    datamodule.setup("test")
    x, _, _ = next(iter(datamodule.test_dataloader()[0]))
    return x


def settings(**values: Any) -> ScoreConfig:
    """A validated ScoreConfig, as the structured config the runner passes (duck-typed)."""
    return OmegaConf.structured(ScoreConfig(**values))


def fresh_model(variant: str) -> BaseVAE:
    """An untrained tiny model of any variant (the trained one is the plain VAE)."""
    lipschitz = 1.0 if "lipschitz" in variant else None
    model = {
        **asdict(ModelConfig()),
        "variant": variant,
        "lipschitz": lipschitz,
        "latent_dim": 4,
        "width": 4,
        "hidden_dim": 32,
    }
    return build_model(model, asdict(OptimConfig()), (1, 28, 28), max_epochs=1)


# ----------------------------------------------------------------------------- input complexity
def test_input_complexity_equals_elbo_bits_minus_png_bits(model: BaseVAE, images: Tensor) -> None:
    x, indices = images[:2], torch.arange(2)
    seeds = sample_seeds(indices, 0)
    config = settings(iwae_samples=8)
    scores, _ = score_batch(model, x, ["input_complexity"], config, seeds, indices)

    # Direct recomputation: the K-sample ELBO with the same seeded draws, and Pillow's PNG of the
    # stored 8-bit pixels.
    with torch.no_grad():
        encoding = model.encode(x)
        z = model.sample_posterior(encoding, 8, seeds)
        expected_log_likelihood = log_likelihood(model.decode(z), x, model.likelihood).mean(dim=0)
        kl = torch.distributions.kl_divergence(encoding.posterior, model.prior(x))
        elbo_bits = (kl - expected_log_likelihood).double() / math.log(2)
    png = []
    for image in (x.squeeze(1).numpy() * 255).round().astype(np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", optimize=True)
        png.append(8 * len(buffer.getvalue()))
    expected = elbo_bits - torch.tensor(png, dtype=torch.float64)
    torch.testing.assert_close(scores["input_complexity"], expected, rtol=1e-6, atol=1e-3)


def test_quantisation_restores_the_stored_8_bit_pixels(images: Tensor) -> None:
    stored = quantise(images)
    assert stored.dtype == np.uint8 and stored.shape == (6, 28, 28)
    np.testing.assert_array_equal(stored.astype(np.float32) / 255.0, images.squeeze(1).numpy())
    rgb = quantise(images.expand(-1, 3, -1, -1))
    assert rgb.shape == (6, 28, 28, 3)
    with pytest.raises(ValueError, match="channels"):
        quantise(torch.rand(1, 2, 8, 8))


def test_constant_image_compresses_far_better_than_noise(images: Tensor) -> None:
    generator = torch.Generator().manual_seed(0)
    constant = torch.full((1, 1, 28, 28), 0.5)
    noise = torch.rand(1, 1, 28, 28, generator=generator)
    bits = compressed_bits(torch.cat([constant, images[:1], noise]))
    assert bits[0] < bits[1] < bits[2]
    assert bits[0] < 0.2 * bits[2]
    # Noise of 8 bits per pixel cannot be compressed below its entropy.
    assert bits[2] > 0.9 * 8 * 28 * 28
    assert png_bits(quantise(constant)[0]) == bits[0]


# ----------------------------------------------------------------------------- likelihood regret
def test_regret_improves_the_elbo_and_is_nonnegative(model: BaseVAE, images: Tensor) -> None:
    noise = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    x = torch.cat([images[:4], noise])
    seeds = sample_seeds(torch.arange(len(x)), 0)
    regret = likelihood_regret(model, x, steps=15, lr=1e-4, samples=32, seeds=seeds)
    assert regret.shape == (len(x),)
    # Up to the noise of a 32-sample ELBO difference with common random numbers (the ELBOs
    # themselves are hundreds of nats).
    assert (regret > -1.0).all(), regret
    assert regret.mean() > 1.0, regret


def test_regret_of_one_input_improves_its_own_elbo(model: BaseVAE, images: Tensor) -> None:
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    seeds = sample_seeds(torch.tensor([4]), 0)
    with torch.no_grad():
        before = seeded_elbo(model, x, batch_invariant_encoding(model, x), 64, seeds)  # as scores encode
    regret = likelihood_regret(model, x, steps=15, lr=1e-4, samples=64, seeds=seeds)
    assert regret.item() > 1.0
    torch.testing.assert_close(likelihood_regret(model, x, 15, 1e-4, 64, seeds, original_elbo=before), regret)


@pytest.mark.parametrize("variant", ["gaussian", "alexandroff_lipschitz"])
def test_regret_leaves_the_model_and_random_state_unchanged(variant: str, images: Tensor) -> None:
    model = fresh_model(variant)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    # A caller's train mode must survive, and must not let the Lipschitz layers update their
    # power-iteration buffers.
    model.train()
    model.decoder.eval()
    rng = torch.get_rng_state()
    regret = likelihood_regret(model, images[:3], 3, 1e-2, 4, sample_seeds(torch.arange(3), 0))
    assert torch.isfinite(regret).all()
    assert model.training and model.encoder.training and not model.decoder.training
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(parameter.grad is None for parameter in model.parameters())


def test_regret_equals_plain_adam_on_a_copy_of_the_encoder(model: BaseVAE, images: Tensor) -> None:
    """The stacked, vmapped, fused optimisation is a faster way to do exactly this: optimise a copy of
    the encoder on one input with torch's single-tensor Adam. (The fused update once read gradients
    whose memory layout differed from their parameters': the regrets were wrong on the CPU by up to
    several nats, and CUDA refused the step.)"""
    steps, lr, samples = 3, 1e-2, 16
    x = images[:1]
    seeds = sample_seeds(torch.tensor([7]), 0)
    copy = deepcopy(model)
    optimiser = torch.optim.Adam(copy.encoder.parameters(), lr=lr, foreach=False)
    for step in range(steps):
        optimiser.zero_grad()
        draw_seeds = regret_module.step_seeds(seeds, step, steps)
        (-seeded_elbo(copy, x, copy.encode(x), 1, draw_seeds)).sum().backward()
        optimiser.step()
    with torch.no_grad():
        after = seeded_elbo(copy, x, copy.encode(x), samples, seeds)
        before = seeded_elbo(model, x, batch_invariant_encoding(model, x), samples, seeds)
    regret = likelihood_regret(model, x, steps, lr, samples, seeds)
    torch.testing.assert_close(regret, (after - before).to(regret.dtype), rtol=1e-4, atol=1e-3)


def test_regret_per_input_does_not_depend_on_the_batch(
    model: BaseVAE, images: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stacked per-input copies with one Adam equal independent optimisations, one per input."""
    seeds = sample_seeds(torch.arange(3), 3)
    together = likelihood_regret(model, images[:3], 5, 1e-3, 16, seeds)
    monkeypatch.setattr(regret_module, "_COPY_BUDGET_BYTES", 1)  # chunks of one input
    alone = likelihood_regret(model, images[:3], 5, 1e-3, 16, seeds)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-3)


def test_regret_runs_under_inference_mode(model: BaseVAE, images: Tensor) -> None:
    """Lightning scores inside torch.inference_mode; the regret needs gradients there."""
    indices = torch.arange(3)
    config = settings(regret_steps=3, regret_max_samples=2, iwae_samples=4)
    with torch.inference_mode():
        x = images[:3].clone()
        scores, _ = score_batch(model, x, ["likelihood_regret"], config, sample_seeds(indices, 0), indices)
    regret = scores["likelihood_regret"]
    assert torch.isfinite(regret[:2]).all() and torch.isnan(regret[2])


def test_scored_rows_selects_the_first_positions_of_each_set() -> None:
    config = settings(regret_max_samples=3)
    indices = torch.tensor([0, 5, 2, 3, 1, 0])
    assert scored_rows("likelihood_regret", indices, config, 6).tolist() == [
        True,
        False,
        True,
        False,
        True,
        True,
    ]
    assert scored_rows("neg_elbo", indices, config, 6).all()
    assert scored_rows("likelihood_regret", None, config, 6).all()
    assert scored_rows("likelihood_regret", indices, settings(regret_max_samples=None), 6).all()


@pytest.mark.parametrize(
    "override, key",
    [
        ("scores.regret_steps=0", "regret_steps"),
        ("scores.regret_lr=0", "regret_lr"),
        ("scores.regret_lr=-1e-3", "regret_lr"),
        ("scores.regret_max_samples=0", "regret_max_samples"),
    ],
)
def test_invalid_regret_settings_are_rejected(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=key):
        load_train_config([f"out_dir={tmp_path}", override])


# ----------------------------------------------------------------------------- in a real run
@pytest.mark.slow
def test_tiny_run_reports_metrics_for_both_baselines(trained_run: Path) -> None:
    out_dir = trained_run
    results = json.loads((out_dir / "results.json").read_text())
    assert set(results["metrics"]["mnist"]) == set(SCORES)
    for metrics in results["metrics"]["mnist"].values():
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert results["data"]["scored_sizes"] == {
        "likelihood_regret": {"fashion_mnist": REGRET_SUBSET, "mnist": REGRET_SUBSET}
    }


@pytest.mark.slow
def test_regret_metrics_use_exactly_the_scored_subset(trained_run: Path) -> None:
    out_dir = trained_run
    metrics = json.loads((out_dir / "results.json").read_text())["metrics"]
    arrays = np.load(out_dir / "scores.npz")
    regret, index, dataset = arrays["score_likelihood_regret"], arrays["index"], arrays["dataset"]
    scored = index < REGRET_SUBSET
    assert np.isfinite(regret[scored]).all() and np.isnan(regret[~scored]).all()
    assert np.isfinite(arrays["score_input_complexity"]).all()
    labels = dataset[scored] == 1
    expected = roc_auc_score(labels, regret[scored])
    assert metrics["mnist"]["likelihood_regret"]["auroc"] == pytest.approx(expected, abs=1e-9)
    # The other scores still use every input.
    full = roc_auc_score(dataset == 1, arrays["score_input_complexity"])
    assert metrics["mnist"]["input_complexity"]["auroc"] == pytest.approx(full, abs=1e-9)


def test_dashboard_roc_leaves_out_unscored_inputs() -> None:
    """The dashboard draws a subset score from the inputs it scored (NaN elsewhere)."""
    from reporting.figures import roc_of

    inliers, outliers = np.array([0.1, 0.4, np.nan]), np.array([0.3, np.nan, 0.9])
    expected, measured = roc_of(inliers[:2], outliers[[0, 2]]), roc_of(inliers, outliers)
    for name in ("fpr", "tpr", "thresholds"):
        assert torch.equal(getattr(expected, name), getattr(measured, name))
