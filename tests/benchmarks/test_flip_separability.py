"""The flip analysis can tell separable flips from inseparable ones, and its per-class AUROCs add up
to the run's own AUROC on the flipped set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks import flip_separability
from datamodules.sources import ImageSet
from experiments import train as train_cli
from tests.helpers import QUICK, one_thread, tiny_overrides


def image_set(images: torch.Tensor) -> ImageSet:
    return ImageSet("synthetic", images, torch.arange(len(images)) % 2)


def random_images(count: int, seed: int) -> torch.Tensor:
    return torch.randint(
        0, 128, (count, 1, 12, 12), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def test_symmetric_images_cannot_be_told_from_their_flips() -> None:
    # Mirror-symmetric images are their own flips: every measurement must give exactly 0.5.
    half = random_images(200, 0)
    symmetric = torch.cat([half[..., :6], half[..., :6].flip(3)], dim=3)
    with one_thread():
        result = flip_separability.measure_flip(
            image_set(symmetric[:120]), image_set(symmetric[120:]), "hflip", epochs=1, seed=0, scores_files=[]
        )
    assert result["mass_offset_auroc"] == 0.5
    assert result["mass_centre_knn_auroc"] == 0.5
    assert result["pixel_knn_auroc"] == 0.5
    assert result["flip_classifier_auroc"] == 0.5


def test_a_one_sided_cue_makes_flips_separable() -> None:
    # Every image brighter on its left: the flip moves the mass right, for every measurement.
    images = random_images(600, 1)
    images[..., :3] += 127
    with one_thread():
        train, test = image_set(images[:500]), image_set(images[500:])
        result = {
            flip: flip_separability.measure_flip(train, test, flip, epochs=3, seed=0, scores_files=[])
            for flip in ("hflip", "vflip")
        }
    assert result["hflip"]["mass_offset_auroc"] == 1.0
    assert result["hflip"]["flip_classifier_auroc"] > 0.99
    assert result["hflip"]["pixel_knn_auroc"] > 0.99  # every flipped image lies far from the training images
    assert result["hflip"]["mass_centre_knn_auroc"] > 0.99  # and so does its centre of mass
    assert result["hflip"]["mass_centre"]["train_mean"] < 5.5 < result["hflip"]["mass_centre"]["flipped_mean"]
    table = flip_separability.markdown({"inlier": "synthetic", "epochs": 3, "seed": 0, "flips": result})
    assert (
        f"- `mass_offset` (training inliers only): AUROC {result['hflip']['mass_offset_auroc']:.4f}" in table
    )
    assert "| per class | 0 | 1 |" in table  # no label names for a set torchvision does not name
    assert "| `mass_offset` | 1.000 | 1.000 |" in table
    # A vertical flip keeps the left-right cue, so neither measurement sees it.
    assert result["vflip"]["mass_offset_auroc"] < 0.8
    assert result["vflip"]["flip_classifier_auroc"] < 0.8
    assert result["vflip"]["pixel_knn_auroc"] < 0.8
    assert result["vflip"]["mass_centre_knn_auroc"] < 0.8


def test_per_class_aurocs_add_up_to_the_runs_auroc(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(
        run_dir,
        **{**QUICK, "data.outliers": "[hflip]", "scores.names": "[recon,hole_knn]"},
    )
    with one_thread():
        assert train_cli.run_cli(train_cli.main, overrides) == 0
    per_class = flip_separability.per_class_aurocs(run_dir / "scores.npz", "hflip")
    own = json.loads((run_dir / "results.json").read_text())["metrics"]["hflip"]
    stored = np.load(run_dir / "scores.npz")
    labels = stored["label"][stored["dataset"] == 0]
    counts = {str(label): int((labels == label).sum()) for label in set(labels.tolist())}
    for score in ("recon", "hole_knn"):
        # AUROC is linear in the outlier set: the class-size-weighted mean of the per-class values is
        # the whole set's (flips keep each image's label, so the class sizes are the inliers').
        weighted = sum(counts[c] * per_class[score][c]["flipped"] for c in counts) / sum(counts.values())
        assert weighted == pytest.approx(own[score]["auroc"], abs=1e-12)
        # The inliers against themselves: exactly 0.5 overall, whatever each class gets.
        unflipped = sum(counts[c] * per_class[score][c]["unflipped"] for c in counts) / sum(counts.values())
        assert unflipped == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError, match="holds no 'vflip' set"):
        flip_separability.per_class_aurocs(run_dir / "scores.npz", "vflip")


def write_latents(path: Path, inliers: np.ndarray, flipped: np.ndarray) -> Path:
    """A ``scores.npz`` as the evaluation writes it, with rows of each set stored out of order."""
    count = len(inliers)
    order = np.random.default_rng(0).permutation(2 * count)
    columns = {
        "dataset_names": np.array(["synthetic", "hflip"]),
        "dataset": np.repeat([0, 1], count),
        "index": np.tile(np.arange(count), 2),
        "label": np.zeros(2 * count, dtype=np.int64),
        "latent": np.concatenate([inliers, flipped]),
    }
    stored: dict[str, Any] = {
        key: value if key == "dataset_names" else value[order] for key, value in columns.items()
    }
    np.savez(path, **stored)
    return path


def test_latent_geometry_tells_a_mirror_in_a_hole_from_one_among_other_inliers(tmp_path: Path) -> None:
    inliers = np.random.default_rng(1).normal(size=(300, 4))
    # Every flip moved far from the inliers: it is its own hole.
    far = flip_separability.latent_geometry(
        write_latents(tmp_path / "far.npz", inliers, inliers + 10.0), "hflip"
    )
    assert far["original_distance_median"] == pytest.approx(20.0)
    assert far["nearest_auroc"] == pytest.approx(1.0, abs=1e-12)
    # Every flip lands exactly on another inlier's latent: far from its original, yet no hole.
    shifted = np.roll(inliers, 1, axis=0)
    among = flip_separability.latent_geometry(
        write_latents(tmp_path / "among.npz", inliers, shifted), "hflip"
    )
    assert among["original_distance_median"] > among["inlier_nearest_median"] > 0
    assert among["flipped_nearest_median"] == 0.0
    assert among["nearest_auroc"] < 0.5
    with pytest.raises(ValueError, match="holds no 'vflip' set"):
        flip_separability.latent_geometry(tmp_path / "far.npz", "vflip")
