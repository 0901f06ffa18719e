"""The compact-latent study (issue 10): which compact configuration and hole score to make the default.

    python -m benchmarks.compact_study [--stage train|select|report|all] [--seeds N] [--jobs J]
                                       [--candidates NAME ...] [--out-dir DIR] [key=value ...]

1. ``train``: every training candidate (``CANDIDATES``) x inlier benchmark (``BENCHMARKS``:
   Fashion-MNIST against MNIST and five transforms, MNIST against Fashion-MNIST) x seed, each
   one ``experiments.train`` run through the sweep runner (finished trials are skipped, killed
   ones resume from ``last.ckpt``). Each run reports its test metrics as always.
2. ``select``: the selection suite of the README ("Choosing the default"): for every seed-0 run,
   the model's validation inliers against eight corruptions of them (``datamodules.corruptions``),
   scored with every candidate hole score (``HOLE_SCORES``) through the scoring core; the result
   is cached as ``selection.json`` in the run folder. No outlier test set is read. A candidate
   without runs in ``--out-dir`` enters by its record in ``compact_study.json``
   (``benchmarks.study_record``): run folders do not outlive a session on this workplace's machines.
3. ``report``: ``benchmarks/results/compact_study.json`` and ``compact_study.md`` (the selection
   table, the rule's winner, and the test AUROCs of every run beside the classical ``gaussian``
   VAE), plus PNG plots: AUROC against epochs, AUROC against L, and the variants side by side.

The winner is chosen from the selection suite alone (``select_winner``); the test tables are
written after it and never feed back.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from benchmarks.common import (
    RESULTS_DIR,
    evaluate_command,
    hardware_info,
    read_json_if_any,
    result_path,
    seed_cell,
    study_environment,
    write_result,
)
from benchmarks.quality import BENCHMARKS, REPO_ROOT
from benchmarks.study_record import (
    carried_collapse,
    carried_selection,
    merge_tables,
    tested_by_record,
)
from common.atomic_io import atomic_open, write_json
from datamodules.corruptions import SELECTION_CORRUPTIONS, corrupt
from experiments.sweep import Trial, read_metrics, run_trials
from scoring.config import RECON_FEATURES, SCORE_NAMES, ScoreConfig, recorded_recon_features
from scoring.image_moments import MASS_CENTRE_AXES
from scoring.keys import parse_metric_key

DEFAULT_CONFIG = "experiments/configs/fmnist_vs_mnist.yaml"


def candidate(
    variant: str,
    epochs: int,
    lipschitz: float | None = None,
    latent_dim: int = 16,
    compact: bool = True,
    kl_warmup_epochs: float = 0.0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One training candidate's spec: overrides of the default experiment (`extra`: any further
    config keys, e.g. {"model.lipschitz_layers": "aol"}). Every candidate names its latent dimension
    and KL warm-up, so a change of the default experiment cannot change an old candidate."""
    spec = {"compact": compact, "variant": variant, "lipschitz": lipschitz, "epochs": epochs}
    spec |= {"latent_dim": latent_dim, "kl_warmup_epochs": kl_warmup_epochs}
    return {**spec, **({"extra": extra} if extra else {})}


# Training candidates. `compact` says whether the candidate is admissible as the default (the
# classical VAE is the comparison row only). Round 4 added the latent dimension of the sphere,
# round 6 the KL warm-up.
CANDIDATES: dict[str, dict[str, Any]] = {
    "alexandroff_lipschitz_L1_e3": candidate("alexandroff_lipschitz", 3, lipschitz=1.0),
    "alexandroff_lipschitz_L1_e10": candidate("alexandroff_lipschitz", 10, lipschitz=1.0),
    "alexandroff_lipschitz_L4_e10": candidate("alexandroff_lipschitz", 10, lipschitz=4.0),
    "alexandroff_e10": candidate("alexandroff", 10),
    "alexandroff_lipschitz_aol_L1_e10": candidate(
        "alexandroff_lipschitz", 10, lipschitz=1.0, extra={"model.lipschitz_layers": "aol"}
    ),
    **{f"alexandroff_d{dim}_e10": candidate("alexandroff", 10, latent_dim=dim) for dim in (8, 32)},
    # Round 6: the sphere at d = 16 and 32 with one epoch of KL warm-up (posterior collapse).
    "alexandroff_kl1_e10": candidate("alexandroff", 10, kl_warmup_epochs=1.0),
    "alexandroff_d32_kl1_e10": candidate("alexandroff", 10, latent_dim=32, kl_warmup_epochs=1.0),
    # Round 8: the default's training at the next doubling of the latent dimension.
    "alexandroff_d64_kl1_e10": candidate("alexandroff", 10, latent_dim=64, kl_warmup_epochs=1.0),
    "gaussian_e3": candidate("gaussian", 3, compact=False),
    "gaussian_e10": candidate("gaussian", 10, compact=False),
    # The classical VAE at round 4's default latent dimension: the matched comparison row of round 4.
    "gaussian_d32_e10": candidate("gaussian", 10, latent_dim=32, compact=False),
    # Round 8's matched comparison row: trained only if the d = 64 sphere wins (its confirmation).
    "gaussian_d64_kl1_e10": candidate("gaussian", 10, latent_dim=64, compact=False, kl_warmup_epochs=1.0),
    # Round 10's matched comparison row: the classical VAE with the default's training (d = 32,
    # one epoch of warm-up), confirmed beside a winner on that training.
    "gaussian_d32_kl1_e10": candidate("gaussian", 10, latent_dim=32, compact=False, kl_warmup_epochs=1.0),
}
# Candidate hole scores: name -> the scores settings that compute it (as `score`). Round 1 (the
# first three), round 2 (the mean distance to the k nearest, without the relative normalisation),
# round 3 (the vacancy in the joint space of latent and log squared reconstruction error at four
# weights, with round 2's k), round 4 (that joint space with the reconstruction's cross-entropy,
# and with the posterior's KL, as further coordinates) and round 5 (round 4's winner with the
# far-statistics guard, docs/method.md 4.1; round 7 adds the guard to every joint form, below);
# each round's scores were
# added before any of them was evaluated on a test set (README, "Choosing the default").
# Rounds 3 and 4 scored without the far-statistics guard, pinned: the config's default has it since round 5.
NO_GUARD: dict[str, Any] = {"knn_recon_guard": None}
HOLE_SCORES: dict[str, tuple[str, dict[str, Any]]] = {
    # Round 1's scores in the relative form, pinned: the config's default statistic changed since.
    "hole_knn": ("hole_knn", {"knn_k": 100, "knn_statistic": "relative"}),
    "hole_knn_k10": ("hole_knn", {"knn_k": 10, "knn_statistic": "relative"}),
    "hole_knn_posterior": ("hole_knn_posterior", {"knn_k": 100, "knn_statistic": "relative"}),
    **{
        f"hole_knn_distance_k{k}": ("hole_knn", {"knn_k": k, "knn_statistic": "mean_distance"})
        for k in (1, 3, 5, 10)
    },
    **{
        f"hole_knn_recon_w{weight:g}": (
            "hole_knn_recon",
            {"knn_k": 3, "knn_recon_weight": weight, "knn_recon_features": ["squared_error"], **NO_GUARD},
        )
        for weight in (0.5, 1.0, 2.0, 4.0)
    },
    **{
        f"hole_knn_recon_ce_w{weight:g}": (
            "hole_knn_recon",
            {
                "knn_k": 3,
                "knn_recon_weight": weight,
                "knn_recon_features": ["squared_error", "cross_entropy"],
                **NO_GUARD,
            },
        )
        for weight in (1.0, 2.0, 4.0)
    },
    "hole_knn_recon_ce_kl_w2": (
        "hole_knn_recon",
        {
            "knn_k": 3,
            "knn_recon_weight": 2.0,
            "knn_recon_features": ["squared_error", "cross_entropy", "kl"],
            **NO_GUARD,
        },
    ),
    # Round 5: round 4's winning score with the far-statistics guard at two conventional quantiles.
    **{
        f"hole_knn_recon_ce_kl_w2_guard{quantile:g}": (
            "hole_knn_recon",
            {
                "knn_k": 3,
                "knn_recon_weight": 2.0,
                "knn_recon_features": ["squared_error", "cross_entropy", "kl"],
                "knn_recon_guard": quantile,
            },
        )
        for quantile in (0.99, 0.999)
    },
}
# Round 7: the far-statistics guard at round 5's q = 0.99 on every earlier joint-space form. The
# suite's corruptions cannot show what the guard adds (README, round 7), so no form is chosen
# without it for want of evidence; the guard adds nothing to inputs within the inliers' range.
HOLE_SCORES |= {
    f"{name}_guard0.99": (score, {**settings, "knn_recon_guard": 0.99})
    for name, (score, settings) in list(HOLE_SCORES.items())
    if score == "hole_knn_recon" and settings["knn_recon_guard"] is None
    and f"{name}_guard0.99" not in HOLE_SCORES
}  # fmt: skip
# Round 10: the far-statistics guard on statistics of its own, [sq, ce, kl] (round 5's guard's), at
# relative weight 1 and 2, beside every guarded joint space without the KL; scored on the trainings
# with runs on disk only (round 9's three), the others ruled out by round 9 (docs/compact_study.md).
GUARD_STATISTICS = ["squared_error", "cross_entropy", "kl"]
HOLE_SCORES |= {
    f"{name}_on_sq_ce_kl_w{weight:g}": (
        score,
        {**settings, "knn_recon_guard_features": GUARD_STATISTICS, "knn_recon_guard_weight": weight},
    )
    for name, (score, settings) in list(HOLE_SCORES.items())
    if score == "hole_knn_recon" and settings["knn_recon_guard"] == 0.99
    and "kl" not in settings["knn_recon_features"]
    for weight in (1.0, 2.0)
}  # fmt: skip
# Round 11: the PNG length of the 8-bit image (input_complexity's L(x), Serra et al. 2020) as one
# more log statistic: in the guard beside [sq, ce, kl], and in the joint space beside [sq, ce] too,
# each at guard weights 1, 2 and 4, with round 10's default's joint weight; scored on the trainings
# with runs on disk (round 9's three and the classical VAE with the default's training).
GUARD_STATISTICS_PNG = [*GUARD_STATISTICS, "compressed_length"]
HOLE_SCORES |= {
    f"hole_knn_recon_{joint}_w1_guard0.99_on_sq_ce_kl_png_w{weight:g}": (
        "hole_knn_recon",
        {
            "knn_k": 3,
            "knn_recon_weight": 1.0,
            "knn_recon_features": features,
            "knn_recon_guard": 0.99,
            "knn_recon_guard_features": GUARD_STATISTICS_PNG,
            "knn_recon_guard_weight": weight,
        },
    )
    for joint, features in (
        ("ce", ["squared_error", "cross_entropy"]),
        ("ce_png", ["squared_error", "cross_entropy", "compressed_length"]),
    )
    for weight in (1.0, 2.0, 4.0)
}
# Round 12: the image's centre of mass along its rows and its columns (scoring.image_moments), both
# axes together, in the joint space beside round 11's default's [sq, ce, png], in its guard beside
# [sq, ce, kl, png], and in both; round 11's default's weights; scored on the trainings with runs
# on disk (as round 11).
MASS_CENTRE = list(MASS_CENTRE_AXES)  # [mass_centre_row, mass_centre_column]
HOLE_SCORES |= {
    f"hole_knn_recon_ce_png{joint}_w1_guard0.99_on_sq_ce_kl_png{guard}_w4": (
        "hole_knn_recon",
        {
            "knn_k": 3,
            "knn_recon_weight": 1.0,
            "knn_recon_features": ["squared_error", "cross_entropy", "compressed_length", *joint_centre],
            "knn_recon_guard": 0.99,
            "knn_recon_guard_features": [*GUARD_STATISTICS_PNG, *guard_centre],
            "knn_recon_guard_weight": 4.0,
        },
    )
    for joint, joint_centre, guard, guard_centre in (
        ("_mc", MASS_CENTRE, "", []),
        ("", [], "_mc", MASS_CENTRE),
        ("_mc", MASS_CENTRE, "_mc", MASS_CENTRE),
    )
}
# Every score but the two costly baselines (input_complexity compresses PNGs, likelihood_regret
# optimises an encoder per input): the quality benchmark reports those.
TEST_SCORES = [name for name in SCORE_NAMES if name not in ("input_complexity", "likelihood_regret")]
BUDGET = [
    "data.max_eval_samples=2000",
    f"scores.names=[{','.join(TEST_SCORES)}]",
    "plots.enabled=false",
    "logger.mode=disabled",
    "trainer.enable_progress_bar=false",
]
CORRUPTION_SEED = 1234
TIE = 0.005  # worst-case AUROCs closer than this are a tie (README, "Choosing the default")


@dataclass
class StudyRun:
    candidate: str
    benchmark: str
    seed: int
    trial: Trial


def candidate_overrides(name: str) -> list[str]:
    spec = CANDIDATES[name]
    lipschitz = "null" if spec["lipschitz"] is None else spec["lipschitz"]
    return [
        f"model.variant={spec['variant']}",
        f"model.lipschitz={lipschitz}",
        f"trainer.max_epochs={spec['epochs']}",
        f"model.latent_dim={spec['latent_dim']}",
        f"optim.kl_warmup_epochs={spec['kl_warmup_epochs']}",
        *(f"{key}={value}" for key, value in spec.get("extra", {}).items()),
    ]


def make_runs(candidates: list[str], seeds: int, out_dir: Path, overrides: list[str]) -> list[StudyRun]:
    """Seed-major, admissible candidates before the comparison rows, both benchmarks of a candidate
    together: an interrupted study holds whole selection-suite entries first."""
    ordered = sorted(candidates, key=lambda name: not CANDIDATES[name]["compact"])
    runs = []
    for seed in range(seeds):
        for candidate in ordered:
            for benchmark in BENCHMARKS:
                name = f"{benchmark}_{candidate}_seed{seed}"
                trial = Trial(
                    name, {"candidate": candidate, "benchmark": benchmark, "seed": seed}, out_dir / name
                )
                trial.command = [
                    sys.executable, "-m", "experiments.train", str(REPO_ROOT / DEFAULT_CONFIG),
                    *BENCHMARKS[benchmark], *candidate_overrides(candidate), *BUDGET, *overrides,
                    f"seed={seed}", f"out_dir={trial.out_dir}",
                ]  # fmt: skip
                runs.append(StudyRun(candidate, benchmark, seed, trial))
    return runs


# ---------------------------------------------------------------------------- selection suite
def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the run selected by validation ELBO (ModelCheckpoint keeps the best one)."""
    found = sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"Expected one selected checkpoint in {run_dir / 'checkpoints'}, found {found}."
        )
    return found[0]


def best_validation_elbo(run_dir: Path) -> float:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    for value in state["callbacks"].values():
        if "best_model_score" in value:  # the best-epoch ModelCheckpoint (whatever its class name)
            return float(value["best_model_score"])
    raise KeyError(f"No ModelCheckpoint state in {run_dir / 'checkpoints' / 'last.ckpt'}.")


@torch.no_grad()
def selection_metrics(run_dir: Path, candidates: list[str]) -> dict[str, Any]:
    """The AUROC of each of ``candidates`` (HOLE_SCORES) on validation inliers vs each corruption of them."""
    from datamodules.ood_datamodule import ImageTensorDataset, OODDataModule
    from datamodules.sources import ImageSet
    from lightning_modules.factory import load_model
    from scoring.evaluation import build_reference, evaluate

    config = OmegaConf.load(run_dir / "config.yaml")
    model = load_model(best_checkpoint(run_dir)).eval()
    model.refresh_certificate()
    datamodule = OODDataModule({**OmegaConf.to_container(config.data), "outliers": []})  # type: ignore[dict-item]
    datamodule.setup("fit")
    val_loader = datamodule.val_dataloader()[0]
    val: ImageTensorDataset = val_loader.dataset  # type: ignore[assignment]
    sets = [ImageSet("validation", val.images, val.labels)]
    sets += [
        ImageSet(name, corrupt(name, val.images, CORRUPTION_SEED), val.labels)
        for name in SELECTION_CORRUPTIONS
    ]
    names = sorted({HOLE_SCORES[candidate][0] for candidate in candidates})
    # Every statistic is recorded once; each candidate reads the columns of its own features.
    recording = ScoreConfig(
        names=names,
        posterior_samples=int(config.scores.posterior_samples),
        knn_recon_features=list(RECON_FEATURES),
    )
    columns = record_sets(model, sets, recording, int(config.seed), int(config.data.batch_size))
    trained = record_reference(model, datamodule, recording)
    results: dict[str, dict[str, float]] = {}
    for candidate in candidates:
        score, settings = HOLE_SCORES[candidate]
        scores = ScoreConfig(names=[score], posterior_samples=recording.posterior_samples, **settings)
        reference = build_reference(
            trained["latent"], model.latent_metric, scores, own_statistics(trained, scores)
        )
        statistics = own_statistics(columns, scores)
        evaluated = columns if statistics is None else {**columns, "log_recon_statistics": statistics}
        evaluation = evaluate(evaluated, [image_set.name for image_set in sets], scores, reference)
        results[candidate] = {
            corruption: values[score]["auroc"] for corruption, values in evaluation.metrics.items()
        }
    return {
        "auroc": results,
        "val_elbo": best_validation_elbo(run_dir),
        "checkpoint": best_checkpoint(run_dir).name,
    }


def record_sets(
    model: Any, sets: list[Any], recording: ScoreConfig, seed: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """Per-image columns (latents, recorded statistics, batch scores) of every image of ``sets``,
    sorted by (set, index): sets in order, loaders unshuffled."""
    from torch.utils.data import DataLoader

    from datamodules.ood_datamodule import ImageTensorDataset, collate_batch
    from scoring.evaluation import concatenate, score_record

    records = []
    for set_id, image_set in enumerate(sets):
        loader = DataLoader(ImageTensorDataset(image_set), batch_size=batch_size, collate_fn=collate_batch)
        for x, labels, indices in loader:
            records.append(score_record(model, x, labels, indices, set_id, recording, seed))
    return concatenate(records)


def record_reference(
    model: Any, datamodule: Any, recording: ScoreConfig, limit: int | None = None
) -> dict[str, torch.Tensor]:
    """The reference columns (latents, recorded statistics) of the run's training inliers (the first
    ``limit`` of them; None = all)."""
    from scoring.evaluation import concatenate, reference_record

    records, count = [], 0
    for x, _, _ in datamodule.reference_dataloader():
        if limit is not None and count >= limit:
            break
        records.append(reference_record(model, x, recording))
        count += len(x)
    columns = concatenate(records)
    return columns if limit is None else {name: column[:limit] for name, column in columns.items()}


def own_statistics(columns: dict[str, torch.Tensor], scores: ScoreConfig) -> torch.Tensor | None:
    """The recorded log statistics (every RECON_FEATURES column) that ``scores`` places in its joint space."""
    recorded = columns.get("log_recon_statistics")
    if recorded is None:
        return None
    return recorded[:, [RECON_FEATURES.index(feature) for feature in recorded_recon_features(scores)]]


def cached_selection(run: StudyRun) -> dict[str, Any] | None:
    """The run's selection-suite AUROCs; hole scores added to HOLE_SCORES, or lacking a corruption
    added to the suite, since the cache was written are computed and merged in, the others kept."""
    path = run.trial.out_dir / "selection.json"
    cached = json.loads(path.read_text()) if path.is_file() else {"auroc": {}}
    missing = [
        candidate
        for candidate in HOLE_SCORES
        if not set(SELECTION_CORRUPTIONS) <= set(cached["auroc"].get(candidate, {}))
    ]
    if not missing:
        return cached
    if not (run.trial.out_dir / "results.json").is_file():
        return None
    result = selection_metrics(run.trial.out_dir, missing)
    result["auroc"] = {**cached["auroc"], **result["auroc"]}
    write_json(path, result)
    print(f"selection suite: {run.trial.name}", flush=True)
    return result


COLLAPSE_CHECK_IMAGES = 2000
# The model's statistics the collapse check scales (the criterion of 2026-11-30; a model-free
# statistic such as round 11's compressed length cannot show a collapse).
COLLAPSE_STATISTICS = ("squared_error", "cross_entropy", "kl")


@torch.no_grad()
def collapse_check(run_dir: Path) -> dict[str, Any]:
    """Whether the run's selected checkpoint has collapsed (README, the rule's amendments), from its
    first COLLAPSE_CHECK_IMAGES training inliers only: hole_knn_recon's scales cannot be set from
    them with statistics [sq, ce, kl] (``scoring.joint.joint_weights`` raises; 2026-11-30), or
    their posterior locations' total variance is below ``COLLAPSED_VARIANCE`` (round 9;
    docs/method.md 5.1: a collapse can leave the scales non-zero, round 8's d = 64 sphere did)."""
    from datamodules.ood_datamodule import OODDataModule
    from lightning_modules.factory import load_model
    from scoring.joint import DegenerateReferenceError, joint_weights
    from scoring.latent_activity import COLLAPSED_VARIANCE, latent_activity

    config = OmegaConf.load(run_dir / "config.yaml")
    model = load_model(best_checkpoint(run_dir)).eval()
    datamodule = OODDataModule({**OmegaConf.to_container(config.data), "outliers": []})  # type: ignore[dict-item]
    datamodule.setup("fit")
    recording = ScoreConfig(names=["hole_knn_recon"], knn_recon_features=list(COLLAPSE_STATISTICS))
    trained = record_reference(model, datamodule, recording, COLLAPSE_CHECK_IMAGES)
    variance = latent_activity(trained["latent"])["latent_variance"]
    try:
        joint_weights(trained["latent"], trained["log_recon_statistics"], 3, 1.0)
        unscalable = False
    except DegenerateReferenceError:
        unscalable = True
    return {
        "collapsed": unscalable or variance < COLLAPSED_VARIANCE,
        "unscalable": unscalable,
        "latent_variance": variance,
        "checkpoint": best_checkpoint(run_dir).name,
    }


def cached_collapse(run: StudyRun) -> bool | None:
    """``collapse_check`` of a finished run, kept in its folder (collapse.json); None while
    unfinished. A cache from before round 9 lacks the latent variance and is checked again."""
    path = run.trial.out_dir / "collapse.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if "latent_variance" in cached:
            return bool(cached["collapsed"])
    if not (run.trial.out_dir / "results.json").is_file():
        return None
    checked = collapse_check(run.trial.out_dir)
    write_json(path, checked)
    return bool(checked["collapsed"])


class UndecidedRule(ValueError):
    """The rule cannot choose: a candidate carried without some of the suite's corruptions may still
    win (its worst case on the recorded pairs, an upper bound, reaches the measured winner's tie)."""

    def __init__(self, candidates: list[str]) -> None:
        self.candidates = candidates
        super().__init__(
            f"The rule cannot decide without {' '.join(candidates)}: their record lacks corruptions "
            "added to the suite since, and their worst case on the recorded pairs reaches the tie of "
            "the measured winner. Train their seed-0 runs: python -m benchmarks.compact_study "
            f"--stage train --jobs 2 --candidates {' '.join(candidates)}"
        )


def select_winner(
    selection: dict[str, dict[str, Any]], collapsed: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The README's rule over admissible (candidate, hole score) pairs with both benchmarks measured;
    ``collapsed`` names the candidates with a collapsed checkpoint among their seeds (inadmissible).

    A row carried without some corruptions (``partial``, benchmarks/study_record.py) has as its
    worst case an upper bound on the full one: it is ruled out when that bound is below the tie of
    the best complete row, and otherwise the rule cannot decide (``UndecidedRule``)."""
    rows = []
    for candidate, by_benchmark in selection.items():
        if set(by_benchmark) != set(BENCHMARKS):
            continue
        missing = sorted(f"{b}/{c}" for b, result in by_benchmark.items() for c in result.get("missing", []))
        for score in HOLE_SCORES:
            if not all(score in result["auroc"] for result in by_benchmark.values()):
                continue  # a record from before the score's round (round 10: not scored on it)
            values = [v for result in by_benchmark.values() for v in result["auroc"][score].values()]
            rows.append(
                {
                    "candidate": candidate,
                    "score": score,
                    "admissible": CANDIDATES[candidate]["compact"] and candidate not in collapsed,
                    "collapsed": candidate in collapsed,
                    "carried": any(result.get("carried", False) for result in by_benchmark.values()),
                    "missing": missing,
                    "worst": min(values),
                    "mean": statistics.fmean(values),
                    "val_elbo": statistics.fmean(result["val_elbo"] for result in by_benchmark.values()),
                    "per_set": {
                        f"{b}/{c}": v for b, r in by_benchmark.items() for c, v in r["auroc"][score].items()
                    },
                }
            )
    admissible = [row for row in rows if row["admissible"]]
    complete = [row for row in admissible if not row["missing"]]
    best_worst = max((row["worst"] for row in complete), default=None)
    undecided = sorted(
        {
            row["candidate"]
            for row in admissible
            if row["missing"] and (best_worst is None or best_worst - row["worst"] <= TIE)
        }
    )
    if undecided:
        raise UndecidedRule(undecided)
    if best_worst is None:
        return {}, rows
    tied = [row for row in complete if best_worst - row["worst"] <= TIE]
    winner = max(tied, key=lambda row: (row["mean"], row["val_elbo"]))
    return winner, rows


# ---------------------------------------------------------------------------- confirmation
def confirm_dir(run: StudyRun, score: str, max_eval_samples: int | None) -> Path:
    return run.trial.out_dir / "evaluations" / f"confirm_{score}_{size_label(max_eval_samples)}"


def size_label(max_eval_samples: int | None) -> str:
    return "full" if max_eval_samples is None else f"n{max_eval_samples}"


def confirmation_results(run: StudyRun, score: str, max_eval_samples: int | None) -> list[Path]:
    """The run's confirmation results at this size: the winner's first, then every earlier round's.
    Checkpoint and per-input seeds fix every score, so a baseline measured by an earlier round's
    confirmation is the same number; a confirmation limited to the new hole score
    (``--confirm-scores``) takes the baselines from them."""
    first = confirm_dir(run, score, max_eval_samples) / "results.json"
    others = sorted(
        (run.trial.out_dir / "evaluations").glob(f"confirm_*_{size_label(max_eval_samples)}/results.json")
    )
    return [first, *(path for path in others if path != first)]


def confirm_trials(
    runs: list[StudyRun], winner: dict[str, Any], max_eval_samples: int | None, scores: list[str]
) -> list[Trial]:
    """Step 4 of the rule: the winner's runs (every seed) and the classical rows' runs, their selected
    checkpoints scored by ``experiments.evaluate`` with the winning hole score's settings on the
    test sets (``max_eval_samples`` per set, None = whole sets), ``scores`` naming what is scored
    (by default every baseline too); each evaluation lands in RUN/evaluations/confirm_<score>_<size>/."""
    _, settings = HOLE_SCORES[winner["score"]]
    compared = {winner["candidate"]} | {name for name, spec in CANDIDATES.items() if not spec["compact"]}
    trials = []
    for run in runs:
        if run.candidate not in compared or not (run.trial.out_dir / "results.json").is_file():
            continue
        out_dir = confirm_dir(run, winner["score"], max_eval_samples)
        trial = Trial(f"{run.trial.name}_confirm_{winner['score']}", run.trial.parameters, out_dir)
        trial.command = evaluate_command(run.trial.out_dir, out_dir, max_eval_samples, scores, settings)
        trials.append(trial)
    return trials


# ---------------------------------------------------------------------------- test tables and plots
def score_form(score: str, settings: dict[str, Any]) -> str:
    """``score`` labelled with the settings that change what it measures.

    The config's score defaults changed between the study's rounds, and a training run is tested
    with the defaults of its day (its results.json records them), so a table keyed by the bare
    name would put two forms of one score in a row. A setting missing from an old record has its
    value of that time: the relative statistic (before round 2) and the squared error alone
    (before round 4).
    """
    if score in ("hole_knn", "hole_knn_posterior"):
        return f"{score} k={settings['knn_k']} {settings.get('knn_statistic') or 'relative'}"
    if score == "hole_knn_recon":
        features = ",".join(settings.get("knn_recon_features") or ["squared_error"])
        guard = (
            f" guard={settings['knn_recon_guard']:g}" if settings.get("knn_recon_guard") is not None else ""
        )
        if guard and settings.get("knn_recon_guard_features"):  # round 10: the guard's own statistics
            weight = settings.get("knn_recon_guard_weight") or settings["knn_recon_weight"]
            guard += f" on [{','.join(settings['knn_recon_guard_features'])}] w={weight:g}"
        return f"{score} k={settings['knn_k']} w={settings['knn_recon_weight']:g} [{features}]{guard}"
    return score


# The test plots' score: round 1's hole_knn, the form the study's first trainings were tested with
# (runs tested with a later default carry another form and are absent from the plots).
PLOT_SCORE = score_form(*HOLE_SCORES["hole_knn"])


def test_table(
    runs: list[StudyRun], results_of: Callable[[StudyRun], list[Path]] | None = None
) -> dict[str, Any]:
    """{benchmark: {outlier: {score form: {candidate: {mean, std, seeds}}}}} of test AUROC.

    ``results_of`` names each run's results files: by default the training run's own test, else
    e.g. its confirmation evaluations (``confirmation_results``). Scores are keyed by
    ``score_form``; a form found in several files of one run counts once (the first file's).
    """
    values: dict[tuple[str, str, str, str], list[float]] = {}
    for run in runs:
        files = [run.trial.out_dir / "results.json"] if results_of is None else results_of(run)
        per_run: dict[tuple[str, str], float] = {}
        for results in (path for path in files if path.is_file()):
            settings = json.loads(results.read_text())["config"]["scores"]
            for key, value in read_metrics(results).items():
                parts = parse_metric_key(key)
                if parts is not None and parts.metric == "auroc":
                    per_run.setdefault((parts.outlier, score_form(parts.score, settings)), value)
        for (outlier, form), value in per_run.items():
            values.setdefault((run.benchmark, outlier, form, run.candidate), []).append(value)
    table: dict[str, Any] = {}
    for (benchmark, outlier, score, candidate), found in values.items():
        by_candidate = table.setdefault(benchmark, {}).setdefault(outlier, {}).setdefault(score, {})
        by_candidate[candidate] = seed_cell(found)
    return table


# Issue 10's AUROC targets per (inlier benchmark, outlier set); "gaussian_noise" etc. need >= 0.999.
TARGETS = {
    ("fashion_mnist", "mnist"): 0.995,
    ("fashion_mnist", "vflip"): 0.90,
    ("fashion_mnist", "hflip"): 0.80,
    ("fashion_mnist", "gaussian_noise"): 0.999,
    ("fashion_mnist", "uniform_noise"): 0.999,
    ("fashion_mnist", "constant"): 0.999,
    ("mnist", "fashion_mnist"): 0.995,
}


def confirmation_rows(winner: dict[str, Any], table: dict[str, Any]) -> list[dict[str, Any]]:
    """For each of issue 10's target sets: the winner's cell, the classical rows' cells with the
    same score, and each classical row's best (mean, score form); cells are ``None`` where missing."""
    score = score_form(*HOLE_SCORES[winner["score"]])
    classical = [name for name, spec in CANDIDATES.items() if not spec["compact"]]
    rows = []
    for (benchmark, outlier), target in TARGETS.items():
        by_score = table.get(benchmark, {}).get(outlier, {})
        own = by_score.get(score, {}).get(winner["candidate"])
        # The best of many one-seed cells is biased upwards against a mean over seeds: the classical
        # best counts only forms measured on at least as many seeds as the winner's cell.
        seeds = own["seeds"] if own else 1
        best = {
            name: max(
                (
                    (by[name]["mean"], found_score)
                    for found_score, by in by_score.items()
                    if name in by and by[name]["seeds"] >= seeds
                ),
                default=None,
            )
            for name in classical
        }
        same = {name: by_score.get(score, {}).get(name) for name in classical}
        rows.append(
            {
                "benchmark": benchmark,
                "outlier": outlier,
                "target": target,
                "own": own,
                "same": same,
                "best": best,
            }
        )
    return rows


def confirmation_markdown(winner: dict[str, Any], table: dict[str, Any], size: str) -> str:
    """The winner's hole score beside the classical rows (same score, and their best score per set)."""
    classical = [name for name, spec in CANDIDATES.items() if not spec["compact"]]

    def show(cell: dict[str, float] | None) -> str:
        return "n/a" if cell is None else f"{cell['mean']:.3f} ± {cell['std']:.3f} (n={cell['seeds']})"

    header = [f"`{winner['candidate']}` `{winner['score']}`"]
    header += [f"`{name}` same score" for name in classical] + [f"`{name}` best score" for name in classical]
    lines = [
        f"**Confirmation** ({size}; mean ± std over seeds): the winner's hole score against the "
        "classical VAE with the same score and with its best score on each set, and issue 10's target",
        "",
        "| inliers | outliers | " + " | ".join(header) + " | target |",
        "|---|---|" + "---|" * (len(header) + 1),
    ]
    for row in confirmation_rows(winner, table):
        cells = [show(row["own"])] + [show(row["same"][name]) for name in classical]
        for name in classical:
            best = row["best"][name]
            cells.append("n/a" if best is None else f"{best[0]:.3f} (`{best[1]}`)")
        lines.append(
            f"| {row['benchmark']} | {row['outlier']} | " + " | ".join(cells) + f" | {row['target']} |"
        )
    return "\n".join(lines) + "\n"


def admissibility(row: dict[str, Any]) -> str:
    if row["admissible"]:
        return "yes"
    return "no (a seed collapsed)" if row.get("collapsed") else "no"


def markdown(
    winner: dict[str, Any],
    rows: list[dict[str, Any]],
    table: dict[str, Any],
    candidates: list[str],
    record_tested: tuple[str, ...] = (),
) -> str:
    lines = [
        f"**Selection suite** (validation inliers vs {len(SELECTION_CORRUPTIONS)} corruptions of them, "
        "Fashion-MNIST and MNIST inliers, seed 0; no outlier test set): worst-case and mean AUROC over "
        f"the {2 * len(SELECTION_CORRUPTIONS)} pairs; measured: on this report's runs, or carried "
        "from the record of an earlier machine (benchmarks/study_record.py)",
        "",
        "| candidate | hole score | admissible | worst | mean | val ELBO | measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda row: -row["worst"]):
        mark = " **(winner)**" if row is winner else ""
        source = "record" if row.get("carried") else "runs"
        # A row carried without round 9's corruptions: its worst case is an upper bound.
        pairs = f" ({len(row['per_set'])} pairs)" if row.get("missing") else ""
        bound = "≤ " if row.get("missing") else ""
        lines.append(
            f"| `{row['candidate']}`{mark} | `{row['score']}` | {admissibility(row)} | "
            f"{bound}{row['worst']:.3f} | {row['mean']:.3f}{pairs} | {row['val_elbo']:.1f} | {source} |"
        )
    lines += ["", "**Test AUROC** (mean ± std over seeds; `n` = seeds)", ""]
    if record_tested:
        names = ", ".join(f"`{name}`" for name in record_tested)
        lines += [
            f"The test cells of {names} are the record's: this report's runs of them (seed 0, "
            "trained again for the suite) hold fewer seeds or lack a recorded score form.",
            "",
        ]
    lines.append("| inliers | outliers | score | " + " | ".join(f"`{c}`" for c in candidates) + " |")
    lines.append("|---|---|---|" + "---|" * len(candidates))
    for benchmark, by_outlier in table.items():
        for outlier, by_score in by_outlier.items():
            for score in sorted(by_score, key=lambda form: (SCORE_NAMES.index(form.split()[0]), form)):
                cells = []
                for candidate in candidates:
                    cell = by_score[score].get(candidate)
                    cells.append(
                        "n/a"
                        if cell is None
                        else f"{cell['mean']:.3f} ± {cell['std']:.3f} (n={cell['seeds']})"
                    )
                lines.append(f"| {benchmark} | {outlier} | `{score}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_study(table: dict[str, Any], directory: Path) -> list[Path]:
    """AUROC against epochs, against L, and the variants side by side (``PLOT_SCORE``), as PNGs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def cell(benchmark: str, outlier: str, score: str, candidate: str) -> dict[str, float] | None:
        return table.get(benchmark, {}).get(outlier, {}).get(score, {}).get(candidate)

    outliers = [(benchmark, outlier) for benchmark, by_outlier in table.items() for outlier in by_outlier]
    written = []
    groups = {
        "auroc_vs_epochs": [
            ("alexandroff_lipschitz L=1", "alexandroff_lipschitz_L1_e{}"),
            ("gaussian", "gaussian_e{}"),
        ],
        "auroc_vs_lipschitz": [("alexandroff_lipschitz, 10 epochs", "alexandroff_lipschitz_L{}_e10")],
    }
    axes_values = {"auroc_vs_epochs": [3, 10], "auroc_vs_lipschitz": [1, 4]}
    directory.mkdir(parents=True, exist_ok=True)
    for plot, lines in groups.items():
        figure = Figure(figsize=(4.0 * len(outliers), 3.4), layout="constrained")
        FigureCanvasAgg(figure)
        for position, (benchmark, outlier) in enumerate(outliers):
            axes = figure.add_subplot(1, len(outliers), position + 1)
            for label, pattern in lines:
                xs, means, stds = [], [], []
                for x in axes_values[plot]:
                    found = cell(benchmark, outlier, PLOT_SCORE, pattern.format(x))
                    if found is not None:
                        xs.append(x)
                        means.append(found["mean"])
                        stds.append(found["std"])
                if xs:
                    axes.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
            axes.set_title(f"{benchmark} vs {outlier}", fontsize=9)
            axes.set_xlabel("epochs" if plot == "auroc_vs_epochs" else "Lipschitz constant L")
            axes.set_ylabel(f"{PLOT_SCORE} AUROC (test)", fontsize=8)
            axes.legend(fontsize=7)
        path = directory / f"compact_study_{plot}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    figure = Figure(figsize=(1.6 * len(outliers) + 3, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    candidates = sorted(
        {c for by_outlier in table.values() for s in by_outlier.values() for c in s.get(PLOT_SCORE, {})}
    )
    width = 0.8 / max(len(candidates), 1)
    for offset, candidate in enumerate(candidates):
        heights = [(cell(b, o, PLOT_SCORE, candidate) or {"mean": math.nan})["mean"] for b, o in outliers]
        axes.bar([i + offset * width for i in range(len(outliers))], heights, width=width, label=candidate)
    axes.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(outliers))], [f"{b[:5]}→{o}" for b, o in outliers], fontsize=7
    )
    axes.set_ylim(0.5, 1.0)
    axes.set_ylabel(f"{PLOT_SCORE} AUROC (test)", fontsize=8)
    axes.legend(fontsize=7)
    path = directory / "compact_study_variants.png"
    figure.savefig(path, dpi=100)
    written.append(path)
    return written


def plot_confirmation(winner: dict[str, Any], table: dict[str, Any], directory: Path) -> Path:
    """The confirmation as a PNG: on each target set, the winner's hole score, the classical VAE with
    the same score (both with seed error bars) and the classical VAE's best score, under the target."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = confirmation_rows(winner, table)
    classical = [name for name, spec in CANDIDATES.items() if not spec["compact"]]
    series: list[tuple[str, list[float], list[float]]] = [
        (
            f"{winner['candidate']} (default)",
            [row["own"]["mean"] if row["own"] else math.nan for row in rows],
            [row["own"]["std"] if row["own"] else 0.0 for row in rows],
        )
    ]
    for name in classical:
        same = [row["same"][name] for row in rows]
        series.append(
            (
                f"{name}, same score",
                [c["mean"] if c else math.nan for c in same],
                [c["std"] if c else 0.0 for c in same],
            )
        )
        best = [row["best"][name] for row in rows]
        series.append((f"{name}, its best score", [b[0] if b else math.nan for b in best], [0.0] * len(rows)))
    # A classical row the confirmation did not measure (the study keeps several) gets no bars.
    series = series[:1] + [entry for entry in series[1:] if not all(math.isnan(mean) for mean in entry[1])]
    figure = Figure(figsize=(1.4 * len(rows) + 3, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    for offset, (label, means, stds) in enumerate(series):
        positions = [i + offset * width for i in range(len(rows))]
        axes.bar(positions, means, width=width, yerr=stds, capsize=2, label=label)
    for i, row in enumerate(rows):
        axes.hlines(row["target"], i - width / 2, i + 0.8 - width / 2, colors="black", linestyles="dashed")
    axes.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(rows))],
        [f"{row['benchmark'][:5]}→{row['outlier']}" for row in rows],
        fontsize=7,
    )
    axes.set_ylim(0.6, 1.005)
    axes.set_ylabel("AUROC (whole test sets, mean ± std over seeds)", fontsize=8)
    axes.set_title(f"{winner['score']} (dashed: issue 10's target)", fontsize=7)
    axes.legend(fontsize=7, loc="lower left")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "compact_study_confirmation.png"
    figure.savefig(path, dpi=100)
    return path


def lost_selection_entries(record: dict[str, Any], selection: dict[str, dict[str, Any]]) -> list[str]:
    """The (candidate, inlier set) seed-0 runs the study's record (``compact_study.json``) holds and
    ``selection`` lacks, even with the record's carried entries: run folders are not kept in the
    repository, so such a report would overwrite the study's record with less."""
    recorded = record.get("selection", {})
    return [
        f"{candidate}/{benchmark}"
        for candidate, by_benchmark in recorded.items()
        for benchmark in by_benchmark
        if benchmark not in selection.get(candidate, {})
    ]


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=["train", "select", "confirm", "report", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/compact_study"))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--confirm-max-eval-samples",
        type=int,
        default=None,
        help="test images per set in the confirmation (default: whole test sets, as the targets ask)",
    )
    parser.add_argument(
        "--confirm-scores",
        nargs="+",
        choices=TEST_SCORES,
        default=TEST_SCORES,
        help="scores of the confirmation (default: all but the two costly baselines); the hole score "
        "alone reuses the baselines of earlier rounds' confirmations of the same checkpoints",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every training")
    arguments = sys.argv[1:] if arguments is None else arguments
    args = parser.parse_args(arguments)
    study_environment(args.jobs)
    runs = make_runs(args.candidates, args.seeds, args.out_dir, args.overrides)
    if args.stage in ("train", "all"):
        run_trials([run.trial for run in runs], args.out_dir / "logs", args.jobs)
    # Candidates whose runs are gone from this machine enter by their record (docs/compact_study.md,
    # round 8; benchmarks/study_record.py); those with runs on disk are measured.
    record = read_json_if_any(result_path("compact_study", args.results_dir))
    on_disk = {run.candidate for run in runs if (run.trial.out_dir / "results.json").is_file()}
    selection: dict[str, dict[str, Any]] = {}
    if args.stage in ("select", "confirm", "report", "all"):
        for run in (run for run in runs if run.seed == 0):
            found = cached_selection(run)
            if found is None and run.candidate not in on_disk:
                found = carried_selection(
                    record, run.candidate, run.benchmark, HOLE_SCORES, SELECTION_CORRUPTIONS
                )
            if found is not None:
                selection.setdefault(run.candidate, {})[run.benchmark] = found
    collapsed = frozenset(run.candidate for run in runs if cached_collapse(run)) | {
        name for name in set(args.candidates) - on_disk if carried_collapse(record, name)
    }
    try:
        winner, rows = select_winner(selection, collapsed)
    except UndecidedRule as undecided:
        parser.error(str(undecided))
    if args.stage in ("confirm", "all") and winner:
        confirmations = confirm_trials(runs, winner, args.confirm_max_eval_samples, args.confirm_scores)
        run_trials(confirmations, args.out_dir / "logs", args.jobs)
    if args.stage in ("report", "all"):
        lost = lost_selection_entries(record, selection)
        if lost:
            parser.error(
                f"{result_path('compact_study', args.results_dir)} records selection runs that "
                f"{args.out_dir} does not hold ({', '.join(lost)}); the report would drop them. Pass "
                "--out-dir of the study's runs and every candidate, or move the old results away first."
            )
        size = args.confirm_max_eval_samples
        measured = test_table(runs)
        # The confirmation is the winner's: a new winner's starts afresh, and the record's moves
        # to earlier_confirmations (docs/compact_study.md keeps each round's).
        recorded_confirmation = record.get("confirmation", {})
        earlier = list(record.get("earlier_confirmations", []))
        recorded_winner = {key: record.get("winner", {}).get(key) for key in ("candidate", "score")}
        same_winner = recorded_winner == {key: winner.get(key) for key in ("candidate", "score")}
        if recorded_confirmation.get("test_auroc") and not same_winner:
            earlier.append({"winner": recorded_winner, **recorded_confirmation})
        recorded_confirmed = (
            recorded_confirmation.get("test_auroc", {})
            if same_winner and recorded_confirmation.get("max_eval_samples", size) == size
            else {}
        )
        measured_confirmed = (
            test_table(runs, lambda run: confirmation_results(run, winner["score"], size)) if winner else {}
        )
        recorded_tests = record.get("test_auroc", {})
        tested = on_disk - tested_by_record(measured, recorded_tests, on_disk)
        confirmed_here = on_disk - tested_by_record(measured_confirmed, recorded_confirmed, on_disk)
        table = merge_tables(measured, recorded_tests, tested)
        confirmed = merge_tables(measured_confirmed, recorded_confirmed, confirmed_here) if winner else {}
        result = {
            "command": " ".join(["python -m benchmarks.compact_study", *arguments]),
            "rule": "README.md, 'Choosing the default'",
            "candidates": {name: CANDIDATES[name] for name in args.candidates},
            "hole_scores": HOLE_SCORES,
            "budget": BUDGET,
            "selection": selection,
            "selection_rows": rows,
            "winner": winner,
            "test_auroc": table,
            "confirmation": {"max_eval_samples": size, "test_auroc": confirmed},
            "earlier_confirmations": earlier,
            "hardware": hardware_info(),
        }
        path = write_result("compact_study", result, args.results_dir)
        with atomic_open(args.results_dir / "compact_study.md", "w") as stream:
            stream.write(markdown(winner, rows, table, args.candidates, tuple(sorted(on_disk - tested))))
            if winner:
                label = "whole test sets" if size is None else f"{size} test images per set"
                stream.write("\n" + confirmation_markdown(winner, confirmed, label))
        plots = plot_study(table, args.results_dir)
        if winner:
            plots.append(plot_confirmation(winner, confirmed, args.results_dir))
        chosen = f"{winner['candidate']} with {winner['score']}" if winner else "none yet (runs missing)"
        print(
            f"Winner by the selection rule: {chosen}. Wrote {path}, compact_study.md and {len(plots)} plots."
        )


if __name__ == "__main__":
    main()
