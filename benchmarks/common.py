"""What every benchmark shares: hardware facts, robust timing, peak-memory probes, JSON output.

Timings on a shared machine are noisy, so comparisons are made inside one process, with the
contenders interleaved round by round, and reported as medians (of times and of per-round
ratios). Memory is the resident-set high-water mark (VmHWM) of a fresh process: tracemalloc does
not see PyTorch's or faiss's native allocations, and a fresh process keeps one measurement's
allocations out of the next.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_DEFAULT_TORCH_THREADS = torch.get_num_threads()
# The offline datasets beside the repository, as in tests/conftest.py; DATA_DIR overrides it.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def default_config(*overrides: str) -> Any:
    """The default experiment's validated config (what `experiments.train` would run), plus overrides."""
    from experiments.train import load_train_config

    os.environ.setdefault("DATA_DIR", str(DEFAULT_DATA_DIR))
    return load_train_config(["out_dir=unused-by-benchmarks", "logger.mode=disabled", *overrides])


def study_environment(jobs: int) -> None:
    """The environment of a study's trainings: the offline data, and one share of the cores per
    concurrent training (OMP_NUM_THREADS = cores // jobs, unless set), with passive OpenMP waits.

    The share is part of what a run is: at one thread a training is bit-identical between runs,
    while one and two threads give different weights (summed in another order; measured on a tiny
    run, README "The compact-latent study"). Pinning it the same way in every study keeps their
    trainings of one config comparable, and keeps concurrent trainings off each other's cores.
    """
    os.environ.setdefault("DATA_DIR", str(DEFAULT_DATA_DIR))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform module only knows the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict[str, Any]:
    """Where a result was measured: CPU, cores, threads, load, library versions."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": load_average(),
        "torch_threads_default": _DEFAULT_TORCH_THREADS,
        # libgomp's default (active) waiting spins at every parallel-region barrier; on a machine
        # whose cores are shared with other jobs that alone can slow many-region code by 10x.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
    }
    for package in ("pytorch-lightning", "numpy", "faiss-cpu", "scikit-learn", "pillow"):
        try:
            info[f"{package}_version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[f"{package}_version"] = None
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: how busy the shared machine was (other jobs included)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def read_json_if_any(path: Path) -> dict[str, Any]:
    """A JSON file's content, or {} where it was not written (yet): an earlier record, a run's results."""
    return json.loads(path.read_text()) if path.is_file() else {}


def result_path(name: str, directory: Path = RESULTS_DIR) -> Path:
    return directory / f"{name}.json"


def write_result(name: str, payload: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write ``<directory>/<name>.json`` (``benchmarks/results/`` by default) with the hardware
    facts and the time of writing."""
    directory.mkdir(parents=True, exist_ok=True)
    path = result_path(name, directory)
    document = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "hardware": hardware_info(),
        **payload,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def override_value(value: Any) -> str:
    """A setting as a command-line override: lists as ``[a,b]``, None as ``null``."""
    if value is None:
        return "null"
    return f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)


def seed_cell(values: Sequence[float]) -> dict[str, Any]:
    """One table cell over the seeds' values: ``{"mean", "std" (population), "seeds"}``."""
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "seeds": len(values)}


def evaluate_command(
    run_dir: Path,
    out_dir: Path,
    max_eval_samples: int | None,
    scores: Sequence[str],
    settings: dict[str, Any] | None = None,
) -> list[str]:
    """`experiments.evaluate` of a training run's selected checkpoint: ``scores`` (with any further
    ``scores.*`` ``settings``) on ``max_eval_samples`` images per test set (None = every image),
    without plots or W&B, into ``out_dir``. The one way the studies score a trained run again."""
    return [
        sys.executable, "-m", "experiments.evaluate", f"ckpt={run_dir}", f"out_dir={out_dir}",
        f"data.max_eval_samples={override_value(max_eval_samples)}",
        f"scores.names=[{','.join(scores)}]",
        *(f"scores.{key}={override_value(value)}" for key, value in (settings or {}).items()),
        "plots.enabled=false", "logger.mode=disabled",
    ]  # fmt: skip


def interleaved_times(
    contenders: dict[str, Callable[[], Any]], repeats: int, budget_s: float = float("inf")
) -> dict[str, list[float]]:
    """Wall times of each contender over ``repeats`` rounds, the order rotating every round.

    Rotating the order spreads slow phases of a shared machine evenly over the contenders. No new
    round starts once ``budget_s`` seconds have passed (at least one round always runs), so a huge
    case measures fewer rounds instead of running for an hour.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    started_all = time.perf_counter()
    for round_index in range(repeats):
        if round_index and time.perf_counter() - started_all > budget_s:
            break
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "all_s": times}


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-round ratios: robust to a slow phase that hits one round."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def reset_peak_rss() -> int:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs 5); returns RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """This process's resident-set high-water mark in bytes."""
    return _status_kib("VmHWM") * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def vae_training_step(
    model: Any, optimiser: torch.optim.Optimizer, x: torch.Tensor, kl_weight: float = 1.0
) -> None:
    """One ELBO step of a BaseVAE as its ``training_step`` computes it, without Lightning around it
    (``kl_weight``: the KL warm-up's weight in this step, ``BaseVAE.kl_weight_at``)."""
    log_likelihood, kl = model.elbo_terms(x)
    loss = (kl_weight * kl - log_likelihood).mean()
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
