"""The unseen outlier sets are built as their docstring says, read by the framework's image-folder
loader, and summarised per inlier set and variant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import unseen_sets
from datamodules.sources import load_source, parse_spec


def test_digits_are_scaled_resized_and_framed_as_mnist_digits_are() -> None:
    digits = np.zeros((2, 8, 8))
    digits[0] = 16  # a full-intensity block
    digits[1, 3:5, 3:5] = 8
    frames = unseen_sets.digits_in_mnist_layout(digits)
    assert frames.shape == (2, 28, 28) and frames.dtype == np.uint8
    # The 4-pixel border stays black, and the full block fills the 20 x 20 inside at 255.
    assert not frames[:, :4].any() and not frames[:, -4:].any() and not frames[:, :, :4].any()
    assert (frames[0, 4:24, 4:24] == 255).all()
    assert 0 < frames[1].max() <= 128


def test_photo_crops_tile_the_resized_photograph_without_overlap() -> None:
    photo = np.arange(224 * 336, dtype=np.int64).reshape(224, 336) % 251
    crops = unseen_sets.photo_crops(photo.astype(np.uint8))
    # Shorter side 224 -> 112: 112 x 168, so 4 x 6 crops in row-major order.
    assert crops.shape == (24, 28, 28)
    colour = np.stack([photo.astype(np.uint8)] * 3, axis=-1)
    np.testing.assert_array_equal(unseen_sets.photo_crops(colour), crops)  # grey photographs stay grey


def test_a_written_set_is_read_back_by_the_framework_unchanged(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    folder = unseen_sets.write_image_folder(images, tmp_path / "mine")
    loaded = load_source(parse_spec(f"mine={folder}", "outlier"), "test", str(tmp_path), download=False)
    np.testing.assert_array_equal(loaded.images.squeeze(1).numpy(), images)
    assert unseen_sets.write_image_folder(images, tmp_path / "mine") == folder  # complete: kept


def write_results(path: Path, inlier: str, variant: str, seed: int, aurocs: dict[str, float]) -> Path:
    path.mkdir(parents=True)
    metrics = {"photo_patches": {score: {"auroc": value, "fpr95": 0.0} for score, value in aurocs.items()}}
    document = {"seed": seed, "data": {"inlier": inlier}, "model": {"variant": variant}, "metrics": metrics}
    (path / "results.json").write_text(json.dumps(document))
    return path / "results.json"


def test_the_summary_compares_the_default_with_the_classical_vae(tmp_path: Path) -> None:
    runs = [
        unseen_sets.read_run(write_results(tmp_path / name, "fashion_mnist", variant, seed, aurocs))
        for name, variant, seed, aurocs in [
            ("a0", "alexandroff", 0, {"hole_knn_recon": 0.9, "recon": 0.5}),
            ("a1", "alexandroff", 1, {"hole_knn_recon": 0.8, "recon": 0.6}),
            ("g0", "gaussian", 0, {"hole_knn_recon": 0.7, "recon": 0.95}),
        ]
    ]
    summary = unseen_sets.summarise(runs)
    own = summary["fashion_mnist"]["photo_patches"]["alexandroff"]["hole_knn_recon"]
    assert own == {"mean": pytest.approx(0.85), "std": pytest.approx(0.05), "seeds": 2}
    table = unseen_sets.markdown(summary, "alexandroff", "python -m benchmarks.unseen_sets ...")
    row = next(line for line in table.splitlines() if line.startswith("| fashion_mnist | photo_patches |"))
    assert row.split(" | ")[2:] == [
        "0.8500 ± 0.0500 (n=2)",
        "0.7000 ± 0.0000 (n=1)",
        "0.9500 (`recon`)",
        "0.8500 (`hole_knn_recon`) |",
    ]
