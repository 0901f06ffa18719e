"""What the validation-end OOD evaluation (the curves over epochs in W&B) adds to every epoch.

    python -m benchmarks.validation_curves [--train-samples 6400] [--eval-samples 0] [--epochs 2]
                                           [--repeats 3] [--results-dir DIR] [key=value ...]

Three contenders fit the default experiment's model (``experiments/configs/fmnist_vs_mnist.yaml``
plus the overrides given) from the same seed, on the same data, for ``--epochs`` epochs, with no
logger, checkpointing, progress bar or sanity check:

* ``with_curves``: the default, OOD metrics and the dashboard's figures at every validation end on
  the seeded subset of ``scores.val_max_samples`` images per set (``scores.val_every_n_epochs=1``);
* ``without_curves``: the same validation (the inlier ELBO that selects the checkpoint) without
  them (``scores.val_every_n_epochs=0``);
* ``train_only``: no validation at all, for the training time per image.

The extra time per epoch is the median over rounds of (with - without) / epochs. It does not
depend on the training slice (the subset is capped, not the slice); the training time does, so the
result also scales the measured training time per image to the whole training split:
``overhead_fraction_of_full_epoch`` is the figure to hold against the 15% budget. The slice is a
seeded subset of the training split (``--train-samples``, 0 = all) and of every evaluated set
(``--eval-samples``, 0 = whole sets as the default run has them).

A quick check that the script runs, writing its (meaningless) figures elsewhere:
``--train-samples 256 --eval-samples 200 --epochs 1 --repeats 1 --results-dir /tmp/bench``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sized
from pathlib import Path
from typing import cast

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from benchmarks.common import RESULTS_DIR, default_config, interleaved_times, summary, write_result
from datamodules.ood_datamodule import OODDataModule
from experiments.runner import evaluation_callback, to_dict
from lightning_modules.factory import build_model

SEED = 0


def fit(config: DictConfig, datamodule: OODDataModule, validate: bool) -> None:
    """``config.trainer.max_epochs`` epochs of the default model, with the run's evaluation callback."""
    pl.seed_everything(SEED, verbose=False)
    model = build_model(
        to_dict(config.model), to_dict(config.optim), datamodule.image_shape, config.trainer.max_epochs
    )
    out_dir = Path(tempfile.mkdtemp(prefix="bench-validation-curves-"))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=config.trainer.max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0,
        callbacks=[evaluation_callback(config, out_dir)],
        default_root_dir=str(out_dir),
    )
    trainer.fit(model, datamodule=datamodule)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--train-samples", type=int, default=6400, help="training images (0 = the whole split)"
    )
    parser.add_argument("--eval-samples", type=int, default=0, help="images per evaluated set (0 = all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON file goes")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, applied to every contender")
    args = parser.parse_args()

    def cap(count: int) -> str:
        return str(count) if count else "null"

    base = [
        f"data.max_train_samples={cap(args.train_samples)}",
        f"data.max_eval_samples={cap(args.eval_samples)}",
        f"trainer.max_epochs={args.epochs}",
        *args.overrides,
    ]
    with_curves = default_config(*base)
    if not with_curves.scores.val_every_n_epochs:
        parser.error(
            "the config evaluates at test end only (scores.val_every_n_epochs=0): nothing to measure"
        )
    without_curves = default_config(*base, "scores.val_every_n_epochs=0")
    datamodule = OODDataModule(with_curves.data)
    datamodule.setup("fit")
    contenders = {
        "with_curves": lambda: fit(with_curves, datamodule, validate=True),
        "without_curves": lambda: fit(without_curves, datamodule, validate=True),
        "train_only": lambda: fit(without_curves, datamodule, validate=False),
    }
    fit(with_curves, datamodule, validate=True)  # warm-up: first-use costs of every code path
    times = interleaved_times(contenders, args.repeats)

    epochs = args.epochs
    extra_per_epoch = statistics.median(
        (with_time - without_time) / epochs
        for with_time, without_time in zip(times["with_curves"], times["without_curves"])
    )
    train_images = len(cast(Sized, datamodule.train_dataloader().dataset))
    train_seconds_per_image = statistics.median(times["train_only"]) / epochs / train_images
    full_split = OODDataModule(default_config().data)
    full_split.setup("fit")
    full_train_images = len(cast(Sized, full_split.train_dataloader().dataset))
    full_epoch_seconds = train_seconds_per_image * full_train_images
    result = {
        "config": "experiments/configs/fmnist_vs_mnist.yaml",
        "overrides": base,
        "scores": OmegaConf.to_container(with_curves.scores),
        "plots_enabled": with_curves.plots.enabled,
        "epochs": epochs,
        "train_images": train_images,
        "evaluated_set_sizes": {
            name: len(cast(Sized, loader.dataset))
            for name, loader in zip(datamodule.eval_set_names, datamodule.val_dataloader())
        },
        "repeats": args.repeats,
        "times": {name: summary(values) for name, values in times.items()},
        "extra_seconds_per_epoch": extra_per_epoch,
        "train_seconds_per_image": train_seconds_per_image,
        "full_train_images": full_train_images,
        "full_epoch_train_seconds_estimate": full_epoch_seconds,
        "overhead_fraction_of_full_epoch": extra_per_epoch / full_epoch_seconds,
    }
    path = write_result("validation_curves", result, args.results_dir)
    print(
        f"validation-end evaluation: +{extra_per_epoch:.2f} s per epoch = "
        f"{result['overhead_fraction_of_full_epoch']:.1%} of a full training epoch "
        f"(~{full_epoch_seconds:.0f} s); wrote {path}"
    )


if __name__ == "__main__":
    main()
