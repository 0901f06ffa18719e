"""Outlier sets the study never saw: natural images that ship inside two libraries (issue 10).

    python -m benchmarks.unseen_sets RUN_DIR ... [--sets-dir DIR] [--jobs J] [--name NAME]

Issue 10 checks the default on natural-image outlier sets that are not in the repository. This
machine has no network, so this benchmark builds three such sets from images bundled with
scikit-learn and scikit-image (`pip install -e '.[bench]'`), each the same way for every run. Their
construction was fixed before any of them was evaluated:

- ``sklearn_digits``: the 1,797 handwritten digits of ``sklearn.datasets.load_digits`` (8 x 8,
  17 grey levels, bright strokes on black like MNIST), scaled to 0-255, resized to 20 x 20
  (bilinear) and padded with 4 black pixels on each side to 28 x 28, MNIST's layout. Against
  MNIST inliers they share the classes (a change of rendering, not of kind);
- ``lfw_faces``: the 200 images of ``skimage.data.lfw_subset`` (25 x 25 grey crops of Labeled
  Faces in the Wild, 100 faces and 100 not), resized to 28 x 28;
- ``photo_patches``: every non-overlapping 28 x 28 crop of eight photographs of ``skimage.data``
  (``PHOTOS``), each made grey (PIL's luma) and resized to 112 pixels on its shorter side (188
  crops).

Each RUN_DIR's selected checkpoint is scored by ``experiments.evaluate`` on its whole inlier test
set against the three sets, with the study's eight test scores (``compact_study.TEST_SCORES``) and the default
experiment's hole-score settings (``experiments/configs/fmnist_vs_mnist.yaml``), into
RUN_DIR/evaluations/unseen_sets/ (an evaluation whose results.json exists is not run again).
Writes ``benchmarks/results/<name>.json`` (every run's AUROCs) and ``.md`` (mean ± std over the
runs of each inlier set and variant: the default's hole score, the classical VAE with the same
score and its best score). It selects nothing: the default was chosen by the README's rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import (
    RESULTS_DIR,
    default_config,
    evaluate_command,
    seed_cell,
    study_environment,
    write_result,
)
from benchmarks.compact_study import TEST_SCORES
from common.atomic_io import atomic_open
from experiments.runner import to_dict
from experiments.sweep import Trial, run_trials

SIZE = 28
PHOTOS = ("camera", "coins", "moon", "page", "text", "astronaut", "chelsea", "coffee")
PHOTO_SHORT_SIDE = 4 * SIZE
HOLE_SCORE_KEYS = (
    "knn_k",
    "knn_statistic",
    "knn_recon_weight",
    "knn_recon_features",
    "knn_recon_guard",
    "knn_recon_guard_features",
    "knn_recon_guard_weight",
)
CLASSICAL = "gaussian"


def digits_in_mnist_layout(digits: np.ndarray, levels: int = 16) -> np.ndarray:
    """``[N, 28, 28]`` uint8: ``[N, 8, 8]`` digits of 0..levels scaled to 0-255, resized to 20 x 20
    and centred in a black 28 x 28 frame, as MNIST's digits are."""
    inner = SIZE - 8
    frames = np.zeros((len(digits), SIZE, SIZE), dtype=np.uint8)
    for frame, digit in zip(frames, digits):
        small = Image.fromarray(np.round(digit * 255 / levels).astype(np.uint8))
        frame[4 : 4 + inner, 4 : 4 + inner] = np.asarray(
            small.resize((inner, inner), Image.Resampling.BILINEAR)
        )
    return frames


def resized(images: np.ndarray) -> np.ndarray:
    """``[N, 28, 28]`` uint8 from ``[N, H, W]`` grey images with values in [0, 1] (bilinear)."""
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.round(image * 255).astype(np.uint8)).resize(
                    (SIZE, SIZE), Image.Resampling.BILINEAR
                )
            )
            for image in images
        ]
    )


def photo_crops(photo: np.ndarray) -> np.ndarray:
    """``[N, 28, 28]`` uint8: every non-overlapping 28 x 28 crop of a grey or RGB uint8 photograph,
    made grey and resized to ``PHOTO_SHORT_SIDE`` on its shorter side first (row-major order)."""
    image = Image.fromarray(photo).convert("L")
    scale = PHOTO_SHORT_SIDE / min(image.size)
    grey = np.asarray(
        image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    )
    rows, columns = grey.shape[0] // SIZE, grey.shape[1] // SIZE
    return np.stack(
        [
            grey[r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE]
            for r in range(rows)
            for c in range(columns)
        ]
    )


def unseen_sets() -> dict[str, np.ndarray]:
    """The three sets of the module docstring, ``[N, 28, 28]`` uint8 each."""
    from skimage import data
    from sklearn.datasets import load_digits

    return {
        "sklearn_digits": digits_in_mnist_layout(load_digits().images),
        "lfw_faces": resized(data.lfw_subset()),
        "photo_patches": np.concatenate([photo_crops(getattr(data, name)()) for name in PHOTOS]),
    }


def write_image_folder(images: np.ndarray, folder: Path) -> Path:
    """Write ``images`` as PNGs in ImageFolder layout (``folder/all/00000.png``), the form
    ``data.outliers=[name=PATH]`` reads; a folder already complete is kept as it is."""
    target = folder / "all"
    if target.is_dir() and len(list(target.glob("*.png"))) == len(images):
        return folder
    target.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(target / f"{index:05d}.png")
    return folder


def hole_score_settings() -> dict[str, Any]:
    """The default experiment's hole-score settings, so that every run is scored as the default is."""
    scores = to_dict(default_config().scores)
    return {key: scores[key] for key in HOLE_SCORE_KEYS}


def evaluation_trial(run_dir: Path, set_folders: dict[str, Path], settings: dict[str, Any]) -> Trial:
    """The run's selected checkpoint scored with the study's test scores and hole-score ``settings``."""
    out_dir = run_dir / "evaluations" / "unseen_sets"
    trial = Trial(f"{run_dir.name}_unseen_sets", {}, out_dir)
    outliers = ",".join(f"{name}={folder}" for name, folder in set_folders.items())
    trial.command = [
        *evaluate_command(run_dir, out_dir, None, TEST_SCORES, settings),
        f"data.outliers=[{outliers}]",
    ]
    return trial


def read_run(results_path: Path) -> dict[str, Any]:
    """One evaluation's inlier set, variant, seed and AUROC per (outlier set, score)."""
    results = json.loads(results_path.read_text())
    return {
        "inlier": results["data"]["inlier"],
        "variant": results["model"]["variant"],
        "seed": results["seed"],
        "auroc": {
            outlier: {score: metrics["auroc"] for score, metrics in by_score.items()}
            for outlier, by_score in results["metrics"].items()
        },
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``{inlier: {outlier: {variant: {score: {mean, std, seeds}}}}}`` over the runs of each variant."""
    grouped: dict[str, Any] = {}
    for run in runs:
        for outlier, by_score in run["auroc"].items():
            for score, auroc in by_score.items():
                cell = grouped.setdefault(run["inlier"], {}).setdefault(outlier, {})
                cell.setdefault(run["variant"], {}).setdefault(score, []).append(auroc)
    return {
        inlier: {
            outlier: {
                variant: {score: seed_cell(values) for score, values in by_score.items()}
                for variant, by_score in by_variant.items()
            }
            for outlier, by_variant in by_outlier.items()
        }
        for inlier, by_outlier in grouped.items()
    }


def markdown(summary: dict[str, Any], default_variant: str, command: str) -> str:
    count = len(TEST_SCORES)
    lines = [
        "# Outlier sets the study never saw",
        "",
        f"`{command}`. AUROC on the whole inlier test set, mean ± std over seeds (n). Hole score: the "
        "default experiment's `hole_knn_recon`. An analysis after the rule's choice: it selects nothing.",
        "",
        f"| inliers | outliers | `{default_variant}` `hole_knn_recon` | `{CLASSICAL}` same score | "
        f"`{CLASSICAL}` best of {count} scores | `{default_variant}` best of {count} scores |",
        "|---|---|---|---|---|---|",
    ]

    def show(cell: dict[str, Any] | None) -> str:
        return "n/a" if cell is None else f"{cell['mean']:.4f} ± {cell['std']:.4f} (n={cell['seeds']})"

    def best(by_score: dict[str, Any]) -> str:
        if not by_score:
            return "n/a"
        score, cell = max(by_score.items(), key=lambda item: item[1]["mean"])
        return f"{cell['mean']:.4f} (`{score}`)"

    for inlier, by_outlier in summary.items():
        for outlier, by_variant in by_outlier.items():
            own, classical = by_variant.get(default_variant, {}), by_variant.get(CLASSICAL, {})
            cells = [
                show(own.get("hole_knn_recon")),
                show(classical.get("hole_knn_recon")),
                best(classical),
                best(own),
            ]
            lines.append(f"| {inlier} | {outlier} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders (each with results.json)")
    parser.add_argument("--sets-dir", type=Path, default=Path("outputs/unseen_sets"))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--name", default="unseen_sets")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    study_environment(args.jobs)
    sets = unseen_sets()
    folders = {name: write_image_folder(images, args.sets_dir / name) for name, images in sets.items()}
    settings = hole_score_settings()
    trials = [evaluation_trial(run_dir, folders, settings) for run_dir in args.runs]
    run_trials(trials, args.sets_dir / "logs", args.jobs)
    finished = [trial for trial in trials if (trial.out_dir / "results.json").is_file()]
    runs = [{"run": str(trial.out_dir), **read_run(trial.out_dir / "results.json")} for trial in finished]
    summary = summarise(runs)
    default_variant = default_config().model.variant
    command = "python -m benchmarks.unseen_sets " + " ".join(str(run) for run in args.runs)
    path = write_result(
        args.name,
        {
            "command": command,
            "sets": {name: len(images) for name, images in sets.items()},
            "scores": TEST_SCORES,
            "hole_score_settings": settings,
            "failed": [trial.name for trial in trials if trial not in finished],
            "runs": runs,
            "summary": summary,
        },
        args.results_dir,
    )
    with atomic_open(args.results_dir / f"{args.name}.md", "w") as stream:
        stream.write(markdown(summary, default_variant, command))
    print(f"Wrote {path} and {args.name}.md ({len(finished)} of {len(trials)} runs).")


if __name__ == "__main__":
    main()
