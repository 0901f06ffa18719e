"""How separable flipped images are at all, and where a hole score loses them (issue 10).

    python -m benchmarks.flip_separability [SCORES ...] [--flips F ...] [--epochs E] [--name NAME]

Horizontally flipped Fashion-MNIST is the one set of the evaluation suite on which no score of any
model comes near issue 10's target (0.80). Whether that is a limit of the data or of the models
is a question about the flipped images alone, so this benchmark measures, for each flip of the
inlier test set (the transforms of ``datamodules.transforms``, exactly as the evaluation builds
them):

- ``mass_offset``: a detector made from the training inliers alone. It scores an image by how
  far its centre of mass along the flip's axis sits on the side opposite to the training
  inliers' mean centre (a flip mirrors the centre about the image's middle). It needs nothing but
  one number from the training split, so it shows how much a single global cue carries;
- ``mass_centre_knn``: the kNN vacancy (k = 3, mean Euclidean distance) of the image's centre of
  mass along its rows and its columns among the training inliers' centres: the same cue seen as a
  hole score sees it (round 12 put it into ``hole_knn_recon``'s joint space). Beside
  ``mass_offset`` it says how much of the cue is a *shift* into a thinner part of the inliers'
  range, which a one-sided detector sees and a vacancy barely does;
- ``pixel_knn``: the kNN vacancy of the image among the training images themselves, in pixel
  space (``HoleDetector``, k = 3, mean Euclidean distance): the input-space counterpart of
  ``hole_knn``, a detector made from the training inliers alone that sees where every pixel sits;
- ``flip_classifier``: a small CNN trained on the training split to tell each image from its flip,
  then tested on the inlier test set and its flip. It is told the outlier kind, so it is no
  detector; it measures how separable the two sets are with the pixels the models see;
- ``latent_geometry`` (for each SCORES file given, from the latents it stores): where the model
  puts a flipped image. The distance from the latent of each flipped image to its unflipped
  original's, beside the inliers' nearest-neighbour distance (a test inlier to the nearest other
  test inlier), and the flipped image's nearest-neighbour distance among the test inliers without
  its own original, with the AUROC of that distance against the inliers'. A large first distance
  and a small last one mean the encoder tells a garment from its mirror but the mirror lands
  among *other* inliers: a more orientation-sensitive encoder would not make it a hole;
- ``per_class`` (for each SCORES file given, a ``scores.npz`` of ``experiments.train`` or
  ``experiments.evaluate`` whose sets include the flip): the AUROC of every score in it for each
  class's flipped images against all inliers, beside the same class *unflipped* against all
  inliers. The unflipped column is what the class gets for what it is; the difference is what the
  score sees of the flip.

It selects nothing (the outlier sets are the test sets; the default was chosen by the README's
rule). Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.common import DEFAULT_DATA_DIR, write_result
from common.atomic_io import atomic_open
from datamodules.sources import ImageSet, load_source, parse_spec
from datamodules.transforms import make_transform_outlier
from scoring.detectors import HoleDetector
from scoring.image_moments import mass_centre
from scoring.metrics import ood_metrics

# The axis of each flip in [N, C, H, W] images.
FLIP_AXES = {"hflip": 3, "vflip": 2}
NOISE_SEED = 1234  # unused by the flips; make_transform_outlier takes one for every transform


def mass_offset_scores(train_images: Tensor, images: Tensor, axis: int) -> Tensor:
    """``[N]`` how far each image's centre of mass lies on the far side of the middle from the
    training inliers' mean centre (higher = more outlying; the direction is the training split's)."""
    middle = (images.shape[axis] - 1) / 2
    side = torch.sign(mass_centre(train_images, axis).mean() - middle)
    return -side * (mass_centre(images, axis) - middle)


def mass_centre_knn_scores(train_images: Tensor, images: Tensor, k: int = 3) -> Tensor:
    """``[N]`` mean distance of each image's (row, column) centre of mass to the k nearest of the
    training images' centres."""

    def centres(batch: Tensor) -> Tensor:
        return torch.stack([mass_centre(batch, axis) for axis in (2, 3)], dim=1)

    return HoleDetector(k=k, statistic="mean_distance").fit(centres(train_images)).score(centres(images))


def pixel_knn_scores(train_images: Tensor, images: Tensor, k: int = 3) -> Tensor:
    """``[N]`` mean Euclidean distance of each flattened image to its k nearest training images."""
    reference = train_images.flatten(1).float() / 255
    return HoleDetector(k=k, statistic="mean_distance").fit(reference).score(images.flatten(1).float() / 255)


def flip_classifier(channels: int) -> nn.Module:
    """A small CNN (two 3 x 3 convolutions, one hidden dense layer) with one logit: flipped or not."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(7),
        nn.Flatten(), nn.Linear(64 * 49, 128), nn.ReLU(), nn.Linear(128, 1),
    )  # fmt: skip


def flip_classifier_scores(
    train_images: Tensor, images: Tensor, axis: int, epochs: int, seed: int, batch_size: int = 128
) -> Tensor:
    """``[N]`` logits that ``images`` are flipped, from a classifier trained on ``train_images``,
    each batch flipped at random with probability 1/2 (Adam, learning rate 1e-3)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = flip_classifier(train_images.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(train_images), generator=generator).split(batch_size):
            inputs = train_images[batch].float() / 255
            flipped = torch.rand(len(batch), generator=generator) < 0.5
            inputs = torch.where(flipped[:, None, None, None], inputs.flip(axis), inputs)
            loss = nn.functional.binary_cross_entropy_with_logits(model(inputs).squeeze(1), flipped.float())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        return torch.cat([model(chunk.float() / 255).squeeze(1) for chunk in images.split(1000)])


def per_class_aurocs(scores_file: Path, flip: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{score: {class: {"flipped", "unflipped"}}}`` AUROCs against all inliers (set 0 of the file)."""
    stored = np.load(scores_file)
    set_names = [str(name) for name in stored["dataset_names"]]
    if flip not in set_names:
        raise ValueError(f"{scores_file} holds no {flip!r} set (its sets: {', '.join(set_names)}).")
    dataset, labels = torch.from_numpy(stored["dataset"]), torch.from_numpy(stored["label"])
    inlier, flipped = dataset == 0, dataset == set_names.index(flip)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for key in (key for key in stored.files if key.startswith("score_")):
        scores = torch.from_numpy(stored[key])
        result[key.removeprefix("score_")] = {
            str(label): {
                "flipped": ood_metrics(scores[inlier], scores[flipped & (labels == label)])["auroc"],
                "unflipped": ood_metrics(scores[inlier], scores[inlier & (labels == label)])["auroc"],
            }
            for label in labels[inlier].unique().tolist()
        }
    return result


def latent_geometry(scores_file: Path, flip: str) -> dict[str, float]:
    """Where the model's latents put each flipped image: medians of its distance to its own
    original's latent, of the inliers' nearest-neighbour distance and of its own nearest-neighbour
    distance among the inliers without its original, and that distance's AUROC against the
    inliers'. A transform outlier's row i is the transform of inlier row i (``datamodules``), so the
    ``index`` columns pair them."""
    stored = np.load(scores_file)
    set_names = [str(name) for name in stored["dataset_names"]]
    if flip not in set_names:
        raise ValueError(f"{scores_file} holds no {flip!r} set (its sets: {', '.join(set_names)}).")

    def latents(set_id: int) -> Tensor:
        rows = stored["dataset"] == set_id
        return torch.from_numpy(stored["latent"][rows][np.argsort(stored["index"][rows])]).double()

    inliers, flipped = latents(0), latents(set_names.index(flip))
    if inliers.shape != flipped.shape:
        raise ValueError(f"{scores_file}: {flip!r} has {len(flipped)} rows, the inliers {len(inliers)}.")
    own = torch.arange(len(inliers))
    among_inliers = torch.cdist(inliers, inliers)
    among_inliers[own, own] = float("inf")  # not itself
    to_inliers = torch.cdist(flipped, inliers)
    to_inliers[own, own] = float("inf")  # not its own original, which no training split holds
    inlier_nearest, flipped_nearest = among_inliers.min(1).values, to_inliers.min(1).values
    return {
        "original_distance_median": float((flipped - inliers).norm(dim=1).median()),
        "inlier_nearest_median": float(inlier_nearest.median()),
        "flipped_nearest_median": float(flipped_nearest.median()),
        "nearest_auroc": ood_metrics(inlier_nearest, flipped_nearest)["auroc"],
    }


def measure_flip(
    train: ImageSet, test: ImageSet, flip: str, epochs: int, seed: int, scores_files: list[Path]
) -> dict[str, Any]:
    """Every measurement of the module docstring for one flip."""
    axis = FLIP_AXES[flip]
    flipped, _ = make_transform_outlier(flip, test.images, test.labels, NOISE_SEED)
    offsets = [mass_offset_scores(train.images, images, axis) for images in (test.images, flipped)]
    centre_vacancies = [mass_centre_knn_scores(train.images, images) for images in (test.images, flipped)]
    vacancies = [pixel_knn_scores(train.images, images) for images in (test.images, flipped)]
    logits = flip_classifier_scores(train.images, torch.cat([test.images, flipped]), axis, epochs, seed)
    inlier_logits, flipped_logits = logits[: len(test)], logits[len(test) :]
    return {
        "mass_centre": {
            "train_mean": float(mass_centre(train.images, axis).mean()),
            "test_mean": float(mass_centre(test.images, axis).mean()),
            "flipped_mean": float(mass_centre(flipped, axis).mean()),
        },
        "mass_offset_auroc": ood_metrics(*offsets)["auroc"],
        "mass_offset_auroc_per_class": {
            str(label): ood_metrics(offsets[0], offsets[1][test.labels == label])["auroc"]
            for label in test.labels.unique().tolist()
        },
        "mass_centre_knn_auroc": ood_metrics(*centre_vacancies)["auroc"],
        "pixel_knn_auroc": ood_metrics(*vacancies)["auroc"],
        "flip_classifier_auroc": ood_metrics(inlier_logits, flipped_logits)["auroc"],
        "flip_classifier_auroc_per_class": {
            str(label): ood_metrics(inlier_logits, flipped_logits[test.labels == label])["auroc"]
            for label in test.labels.unique().tolist()
        },
        "latent_geometry": {str(path): latent_geometry(path, flip) for path in scores_files},
        "per_class": {str(path): per_class_aurocs(path, flip) for path in scores_files},
    }


def class_names(inlier: str) -> list[str] | None:
    """The label names torchvision gives the named inlier set, for the table's header."""
    from torchvision import datasets

    known = {"fashion_mnist": datasets.FashionMNIST, "mnist": datasets.MNIST}
    return list(known[inlier].classes) if inlier in known else None


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# How separable flipped images are",
        "",
        f"`python -m benchmarks.flip_separability`, inliers `{result['inlier']}` (test split), "
        f"classifier {result['epochs']} epochs, seed {result['seed']}. AUROC, flipped test images as "
        "the positive class. An analysis on the test sets: it selects nothing.",
    ]
    for flip, found in result["flips"].items():
        centre = found["mass_centre"]
        lines += [
            "",
            f"## {flip}",
            "",
            f"- centre of mass along the flip's axis: training inliers {centre['train_mean']:.2f} px, test "
            f"inliers {centre['test_mean']:.2f}, flipped {centre['flipped_mean']:.2f}",
            f"- `mass_offset` (training inliers only): AUROC {found['mass_offset_auroc']:.4f}",
            f"- `mass_centre_knn` (training inliers only): AUROC {found['mass_centre_knn_auroc']:.4f}",
            f"- `pixel_knn` (training inliers only): AUROC {found['pixel_knn_auroc']:.4f}",
            f"- `flip_classifier` (told the outlier kind): AUROC {found['flip_classifier_auroc']:.4f}",
        ]
        for path, geometry in found["latent_geometry"].items():
            lines.append(
                f"- latents of `{path}`: a flipped image lies {geometry['original_distance_median']:.3f} "
                f"(median) from its original; an inlier's nearest other inlier "
                f"{geometry['inlier_nearest_median']:.3f}, "
                f"a flipped image's nearest inlier but its original {geometry['flipped_nearest_median']:.3f} "
                f"(that distance as a score: AUROC {geometry['nearest_auroc']:.4f})"
            )
        classes = list(found["flip_classifier_auroc_per_class"])
        names = class_names(result["inlier"])
        header = [names[int(c)] if names else c for c in classes]
        lines += ["", "| per class | " + " | ".join(header) + " |", "|---|" + "---|" * len(classes)]
        for detector in ("mass_offset", "flip_classifier"):
            by_class = found[f"{detector}_auroc_per_class"]
            lines.append(f"| `{detector}` | " + " | ".join(f"{by_class[c]:.3f}" for c in classes) + " |")
        for path, scores in found["per_class"].items():
            for score, by_class in scores.items():
                for column in ("flipped", "unflipped"):
                    cells = " | ".join(f"{by_class[c][column]:.3f}" if c in by_class else "" for c in classes)
                    lines.append(f"| `{score}` {column}, `{path}` | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scores", nargs="*", type=Path, help="scores.npz files whose per-class AUROCs to add")
    parser.add_argument("--inlier", default="fashion_mnist")
    parser.add_argument("--flips", nargs="+", choices=list(FLIP_AXES), default=list(FLIP_AXES))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="flip_separability")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    arguments = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments)
    data_dir = os.environ.get("DATA_DIR", str(DEFAULT_DATA_DIR))
    spec = parse_spec(args.inlier, "inlier")
    train, test = (load_source(spec, split, data_dir, download=False) for split in ("train", "test"))
    result = {
        "command": " ".join(["python -m benchmarks.flip_separability", *arguments]),
        "inlier": args.inlier,
        "epochs": args.epochs,
        "seed": args.seed,
        "flips": {
            flip: measure_flip(train, test, flip, args.epochs, args.seed, args.scores) for flip in args.flips
        },
    }
    path = write_result(args.name, result, args.results_dir)
    with atomic_open(args.results_dir / f"{args.name}.md", "w") as stream:
        stream.write(markdown(result))
    print(f"Wrote {path} and {args.name}.md.")


if __name__ == "__main__":
    main()
