"""Images per second of every registered score, and ``hole_posterior`` against its limit.

    python -m benchmarks.scoring [--images N] [--regret-images M] [--repeats R] [--reference-size S]

Model: a *fresh* (untrained) model of the default experiment (``experiments/configs/
fmnist_vs_mnist.yaml``), with its Lipschitz certificate refreshed and in eval mode, as the
evaluation callback scores. No score's cost depends on the weights' values (fixed K, fixed regret
steps, exact neighbour search), so a trained model would time the same.

Data: the first N Fashion-MNIST test images as one batch (N = ``data.eval_batch_size``, 1000, by
default), with the per-input seeds and positions the callback passes. Every score runs inside
``torch.inference_mode`` through ``score_batch`` with a fresh ``ScoreContext``, so scores that
share an encoding or samples in a real evaluation are each charged in full here.

* batch scores: images/s, median over rounds in which the scores take turns;
* ``likelihood_regret``: seconds per image on the first M images (``--regret-images``), all inside
  its subset, at the default ``scores.regret_steps`` and ``scores.regret_lr``;
* reference scores (``hole_knn``, ``hole_knn_posterior``, ``hole_knn_recon``): images/s of
  recording the batch's columns (encoding, posterior draws, log reconstruction errors) and scoring
  them against the reference (the training split recorded the same way, capped at
  ``--reference-size``, default the config's ``scores.knn_reference_size``) with the config's k,
  statistic and recon weight; the one-off reference set-up (recording it, then its statistics:
  the relative form's own k-th neighbour distances and the joint space's scale, R x R searches)
  is reported separately;
* ``hole_posterior`` with K = ``scores.posterior_samples`` (16) against its limit, the bare
  network work: encoder forward, K unseeded posterior draws per input, decoder forward on all
  K x N latents. ``fraction_of_limit`` = limit time / score time. The same rounds time the parts
  of the score (``breakdown``): where its time goes beyond the limit.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import default_config, interleaved_times, summary, write_result
from datamodules.ood_datamodule import OODDataModule
from experiments.runner import to_dict
from lightning_modules.base import BaseVAE
from lightning_modules.factory import build_model
from lightning_modules.likelihoods import log_likelihood
from scoring.config import ScoreConfig
from scoring.evaluation import build_reference, concatenate, reference_record
from scoring.registry import BATCH_SCORES, REFERENCE_SCORES, sample_seeds, score_batch

SEED = 0


def fresh_model(config: Any, image_shape: tuple[int, int, int]) -> BaseVAE:
    torch.manual_seed(SEED)
    model = build_model(to_dict(config.model), to_dict(config.optim), image_shape, max_epochs=1)
    model.refresh_certificate()
    return model.eval()


def batch_score_contender(model: BaseVAE, x: Tensor, name: str, settings: Any) -> Callable[[], None]:
    indices = torch.arange(x.shape[0])
    seeds = sample_seeds(indices, SEED)

    def run() -> None:
        with torch.inference_mode():
            score_batch(model, x, [name], settings, seeds, indices)

    return run


def posterior_contenders(model: BaseVAE, x: Tensor, samples: int) -> dict[str, Callable[[], None]]:
    """The limit of hole_posterior and the parts of the score, each timed on its own."""
    seeds = sample_seeds(torch.arange(x.shape[0]), SEED)
    with torch.inference_mode():
        encoding = model.encode(x)
        z = model.sample_posterior(encoding, samples, seeds)
        logits = model.decode(z)

    def limit() -> None:
        mean, scale = model.encoder(x)
        model.decode(model.latent.posterior(mean, scale).rsample((samples,)))

    parts = {
        "limit": limit,
        "encode": lambda: model.encode(x),
        "sample_posterior_seeded": lambda: model.sample_posterior(encoding, samples, seeds),
        "sample_posterior_unseeded": lambda: model.sample_posterior(encoding, samples),
        "decode": lambda: model.decode(z),
        "log_likelihood": lambda: log_likelihood(logits, x, model.likelihood),
        "log_prior_and_posterior": lambda: (model.prior(z).log_prob(z), encoding.posterior.log_prob(z)),
    }
    return {name: _in_inference_mode(run) for name, run in parts.items()}


def _in_inference_mode(run: Callable[[], Any]) -> Callable[[], None]:
    def wrapped() -> None:
        with torch.inference_mode():
            run()

    return wrapped


def reference_columns(model: BaseVAE, datamodule: OODDataModule, size: int | None) -> dict[str, Tensor]:
    """The reference of every reference score: the training split recorded as scoring records it
    (``reference_record``: latents and log reconstruction errors), the first ``size`` images."""
    loader = datamodule.reference_dataloader()
    every_reference_score = ScoreConfig(names=list(REFERENCE_SCORES))
    records = []
    with torch.inference_mode():
        for x, _, _ in loader:
            records.append(reference_record(model, x, every_reference_score))
            if size is not None and sum(part["latent"].shape[0] for part in records) >= size:
                break
    return {key: value[:size] for key, value in concatenate(records).items()}


def time_reference_scores(
    model: BaseVAE, datamodule: OODDataModule, x: Tensor, settings: Any, size: int | None, repeats: int
) -> dict[str, Any]:
    """Every reference score as evaluation computes it: the batch's columns recorded by
    ``score_batch`` (encoding, posterior draws), then the registry's score against the reference."""
    started = time.perf_counter()
    columns = reference_columns(model, datamodule, size)
    latents = columns["latent"]
    encoded = time.perf_counter()
    settings = ScoreConfig(**{**to_dict(settings), "names": list(REFERENCE_SCORES)})
    reference = build_reference(latents, model.latent_metric, settings, columns["log_recon_statistics"])
    setup = {"encode_reference_s": encoded - started, "reference_statistics_s": time.perf_counter() - encoded}
    seeds = sample_seeds(torch.arange(x.shape[0]), 0)

    def contender(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                columns, encoding = score_batch(model, x, [name], settings, seeds)
                REFERENCE_SCORES[name]({**columns, "latent": encoding.location}, reference, settings)

        return run

    times = interleaved_times({name: contender(name) for name in REFERENCE_SCORES}, repeats)
    return {
        "reference_size": latents.shape[0],
        "k": settings.knn_k,
        "statistic": settings.knn_statistic,
        "reference_setup": setup,
        "images_per_second": {name: x.shape[0] / statistics.median(found) for name, found in times.items()},
        "time": {name: summary(found) for name, found in times.items()},
    }


def time_regret(model: BaseVAE, x: Tensor, settings: Any) -> dict[str, Any]:
    run = batch_score_contender(model, x, "likelihood_regret", settings)
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    return {
        "images": x.shape[0],
        "regret_steps": settings.regret_steps,
        "regret_lr": settings.regret_lr,
        "seconds": seconds,
        "seconds_per_image": seconds / x.shape[0],
        "images_per_second": x.shape[0] / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=None, help="batch size (default data.eval_batch_size)")
    parser.add_argument("--regret-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--reference-size", type=int, default=None, help="hole_knn reference cap (default: the config's)"
    )
    args = parser.parse_args()
    config = default_config(*([f"data.eval_batch_size={args.images}"] if args.images else []))
    settings = config.scores
    reference_size = args.reference_size or settings.knn_reference_size
    datamodule = OODDataModule(config.data)
    datamodule.setup("test")
    x, _, _ = next(iter(datamodule.test_dataloader()[0]))
    images = x.shape[0]
    model = fresh_model(config, datamodule.image_shape)

    fast_scores = [name for name in BATCH_SCORES if name != "likelihood_regret"]
    contenders = {name: batch_score_contender(model, x, name, settings) for name in fast_scores}
    contenders.update(
        {
            f"part/{name}": run
            for name, run in posterior_contenders(model, x, settings.posterior_samples).items()
        }
    )
    for run in contenders.values():
        run()  # warm-up
    times = interleaved_times(contenders, args.repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": {**to_dict(config.model), "trained": False},
        "images": images,
        "repeats": args.repeats,
        "scores_images_per_second": {name: images / medians[name] for name in fast_scores},
        "likelihood_regret": time_regret(model, x[: args.regret_images], settings),
        "reference_scores": time_reference_scores(
            model, datamodule, x, settings, reference_size, args.repeats
        ),
        "hole_posterior": {
            "samples": settings.posterior_samples,
            "score_s": medians["hole_posterior"],
            "limit_s": medians["part/limit"],
            "fraction_of_limit": medians["part/limit"] / medians["hole_posterior"],
            "breakdown_s": {
                name[len("part/") :]: value for name, value in medians.items() if name.startswith("part/")
            },
        },
        "times": {name: summary(values) for name, values in times.items()},
    }
    path = write_result("scoring", result)
    print({name: round(value, 1) for name, value in result["scores_images_per_second"].items()})
    print(
        f"hole_posterior fraction of limit: {result['hole_posterior']['fraction_of_limit']:.2f}; wrote {path}"
    )


if __name__ == "__main__":
    main()
