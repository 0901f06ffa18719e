"""Run a W&B sweep file locally and offline: one training subprocess per grid point, then a summary.

    python -m experiments.sweep SWEEP.yaml [sweep_dir=DIR] [key=value ...]

The file is the one `wandb sweep` takes (method, metric, parameters, program, command), so the same
grid runs on many machines through `wandb sweep` + `wandb agent`, or here, one trial after the
other, with no account or network. Each trial runs the sweep's `command` exactly as the agent
would build it (`${args_no_hyphens}` -> `key=value` per parameter), followed by the `key=value`
overrides given here (applied to every trial, e.g. `trainer.max_epochs=1`) and
`out_dir=SWEEP_DIR/TRIAL`. W&B logging of the trials is offline unless an override says otherwise.
The sweep file is first checked with W&B's own validator (the `sweeps` package), so what
`wandb sweep` would refuse is refused here too, before any trial starts.

- A trial whose results.json exists is skipped, so a re-run finishes an interrupted sweep; a trial
  that left `checkpoints/last.ckpt` but no results is resumed (`resume=true`).
- A failed trial is recorded (status, exit code, the last line of its log; the whole output is in
  SWEEP_DIR/logs/TRIAL.log) and the sweep goes on; the command exits with status 2 at the end.
- SWEEP_DIR/sweep_summary.csv has one row per trial: its parameters as the trial ran with them
  (the overrides above included), status and every test metric of its results.json;
  SWEEP_DIR/plots/ has one PNG per metric against the swept parameter, with the mean and standard
  deviation over seeds.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.atomic_io import atomic_open
from experiments.cli import run_cli
from experiments.config import ConfigError, TrainConfig, split_cli_args
from scoring.keys import flat_metrics

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
SUMMARY = "sweep_summary.csv"
INFINITY_LABEL = "∞ (unconstrained)"
# Trials log offline by default, even when the sweep file asks W&B agents for online runs.
LOCAL_DEFAULTS = ["logger.mode=offline"]


class SweepFailed(ValueError):
    """Some trials failed; the summary and logs are written (exit status 2 through run_cli)."""


@dataclass
class Trial:
    name: str
    parameters: dict[str, Any]  # every sweep parameter of this grid point, fixed ones included
    out_dir: Path
    status: str = "pending"
    returncode: int | None = None
    seconds: float | None = None
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)  # the process that runs the trial


# ---------------------------------------------------------------------------- the sweep file
def load_sweep(path: Path) -> dict[str, Any]:
    """Read and check the sweep file before any trial starts, so a typo costs no compute."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Sweep file {path} does not exist; pass the path of a W&B sweep YAML, e.g. "
            "experiments/sweeps/lipschitz.yaml."
        )
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(
            f"Cannot read the sweep file {path}: {error}. Fix its YAML syntax (quote items such as "
            f'"${{args}}" inside [...] lists).'
        ) from None
    if not isinstance(sweep, dict):
        raise ConfigError(
            f"The sweep file {path} holds no mapping; it needs at least `method: grid` and `parameters:`."
        )
    violations = wandb_violations(sweep)
    if violations:
        raise ConfigError(
            f"W&B would refuse the sweep file {path}: {'; '.join(violations)}. Fix the file (the keys "
            f"and values `wandb sweep` accepts are in W&B's sweep configuration reference)."
        )
    method = sweep.get("method")
    if method != "grid":
        raise ConfigError(
            f"{path} has method: {method}; only method: grid runs locally. Run it through "
            f"`wandb sweep {path}` + `wandb agent SWEEP_ID`, or set method: grid with `values` lists."
        )
    parameters = sweep.get("parameters") or {}
    for key, spec in parameters.items():
        if not isinstance(spec, dict) or not ({"values", "value"} & set(spec)):
            raise ConfigError(
                f"Sweep parameter {key!r} in {path} has no `values` list or `value`; a local grid "
                f"needs one of them (distributions such as min/max are for random / bayes sweeps)."
            )
    return sweep


def wandb_violations(sweep: dict[str, Any]) -> list[str]:
    """What W&B's own sweep validator (the `sweeps` package, also run by `wandb sweep`) finds wrong.

    Imported here, on demand: the package brings scipy and scikit-learn, which nothing else at run
    time needs, so it is a dev extra, not a base dependency.
    """
    try:
        with warnings.catch_warnings():
            # sweeps 0.2 declares its pydantic models in the v1 style, which pydantic 2 warns about.
            warnings.simplefilter("ignore")
            from sweeps import schema_violations_from_proposed_config
    except ImportError:
        raise ConfigError(
            "Checking a sweep file needs W&B's sweep validator, the `sweeps` package, which is not "
            "installed: pip install 'sweeps>=0.2,<0.3' (pip install -e '.[dev]' installs it too)."
        ) from None
    try:
        return list(schema_violations_from_proposed_config(sweep))
    except ValueError as error:  # raised instead of listed for some malformed parameters
        return [str(error)]


def swept_keys(parameters: dict[str, Any]) -> list[str]:
    """Parameters that vary over the grid (a `values` list), in file order."""
    return [key for key, spec in parameters.items() if "values" in spec]


def grid(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the `values` lists, first parameter slowest, with the fixed `value`s."""
    fixed = {key: spec["value"] for key, spec in parameters.items() if "values" not in spec}
    swept = swept_keys(parameters)
    combinations = itertools.product(*(parameters[key]["values"] for key in swept))
    return [{**dict(zip(swept, values)), **fixed} for values in combinations]


def trial_name(point: dict[str, Any], swept: list[str]) -> str:
    """`lipschitz-1.0_seed-0`: the swept values, short keys unless two would collide."""
    short = [key.rsplit(".", 1)[-1] for key in swept]
    labels = short if len(set(short)) == len(short) else swept
    parts = [f"{label}-{point[key]}" for label, key in zip(labels, swept)]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "_".join(parts)) or "trial"


def make_trials(points: list[dict[str, Any]], swept: list[str], sweep_dir: Path) -> list[Trial]:
    names = [trial_name(point, swept) for point in points]
    if len(set(names)) < len(names):
        raise ConfigError(
            f"Two grid points map to the same trial name in {names}; make the swept values distinct after "
            "replacing characters outside [A-Za-z0-9._+-]."
        )
    return [Trial(name, point, sweep_dir / name) for name, point in zip(names, points)]


def trial_command(sweep: dict[str, Any], point: dict[str, Any], extra: list[str]) -> list[str]:
    """The sweep's `command` with W&B's macros filled in as `wandb agent` does, then `extra`."""
    arguments = {
        "${env}": [],  # the agent's /usr/bin/env; here the environment is passed directly
        "${interpreter}": [sys.executable],
        "${args}": [f"--{key}={value}" for key, value in point.items()],
        "${args_no_hyphens}": [f"{key}={value}" for key, value in point.items()],
    }
    if "program" in sweep:
        arguments["${program}"] = [str(sweep["program"])]
    command: list[str] = []
    for item in sweep.get("command") or DEFAULT_COMMAND:
        item = str(item)
        if item.startswith("${") and item not in arguments:
            raise ConfigError(
                f"The sweep command uses {item}, which the local runner does not fill in; use "
                f"{', '.join(arguments)} (the train CLI reads `key=value` from ${{args_no_hyphens}})."
            )
        command.extend(arguments.get(item, [item]))
    return command + extra


# ---------------------------------------------------------------------------- running trials
def run_trials(trials: list[Trial], log_dir: Path, jobs: int = 1) -> None:
    """Run every trial, `jobs` at a time, and print one line per trial as it ends.

    The one runner of grids: the local sweep and the quality benchmark both go through it.
    """

    def run(numbered: tuple[int, Trial]) -> None:
        number, trial = numbered
        run_trial(trial, trial.command, log_dir / f"{trial.name}.log")
        detail = {
            "skipped": "skipped (results.json exists)",
            "failed": f"failed (exit {trial.returncode}): {trial.error}",
        }
        print(
            f"[{number}/{len(trials)}] {trial.name}: "
            f"{detail.get(trial.status, f'{trial.status} in {trial.seconds} s')}",
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run, enumerate(trials, start=1)))


def run_trial(trial: Trial, command: list[str], log_path: Path) -> None:
    """Run one trial to completion, its output streamed to its log file (never held in memory)."""
    results = trial.out_dir / "results.json"
    if results.is_file():
        trial.status = "skipped"
        trial.metrics = read_metrics(results)
        return
    if (trial.out_dir / "checkpoints" / "last.ckpt").is_file():
        command = [*command, "resume=true"]
    elif trial.out_dir.is_dir() and any(trial.out_dir.iterdir()):
        set_aside(trial.out_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = {key: value for key, value in os.environ.items() if key != "OOD_RUN_STARTED"}
    started = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment, check=False)
    trial.seconds = round(time.perf_counter() - started, 1)
    trial.returncode = finished.returncode
    if finished.returncode == 0 and results.is_file():
        trial.status = "completed"
        trial.metrics = read_metrics(results)
    else:
        trial.status = "failed"
        trial.error = last_line(log_path)


def set_aside(out_dir: Path) -> Path:
    """Rename a trial folder killed before its first checkpoint, so the trial can start afresh.

    A new run refuses a folder that holds anything; this one holds no checkpoint and no results
    (only what a run writes first, such as config.yaml), but it is kept, never deleted.
    """
    aside = out_dir.with_name(f"{out_dir.name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.rename(aside)
    print(f"{out_dir} held an interrupted start without a checkpoint; moved it to {aside}", flush=True)
    return aside


def last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def read_metrics(results_path: Path) -> dict[str, float]:
    """results.json flattened to W&B's keys: `test/<outlier>/<score>/<metric>`, plus the certificate."""
    results = json.loads(results_path.read_text())
    flat = flat_metrics("test", results["metrics"])
    for key in ("certified_lipschitz", "latent_radius_bound"):
        if isinstance(results["model"].get(key), (int, float)):
            flat[f"model/{key}"] = results["model"][key]
    return flat


# ---------------------------------------------------------------------------- summary and plots
def write_summary(trials: list[Trial], parameter_keys: list[str], path: Path) -> list[str]:
    """One CSV row per trial; returns the metric columns."""
    metric_keys = list(dict.fromkeys(key for trial in trials for key in trial.metrics))
    columns = ["trial", "status", "returncode", "seconds", *parameter_keys, *metric_keys, "error"]
    with atomic_open(path, "w") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for trial in trials:
            row = {
                "trial": trial.name,
                "status": trial.status,
                "returncode": trial.returncode,
                "seconds": trial.seconds,
                "error": trial.error,
            }
            writer.writerow({**row, **trial.parameters, **trial.metrics})
    return metric_keys


def is_seed(key: str) -> bool:
    return key == "seed" or key.endswith(".seed")


def numeric(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def axis_values(values: list[Any]) -> list[Any]:
    """Numbers ascending (inf last), anything else in sweep order."""
    if all(numeric(value) is not None for value in values):
        return sorted(values, key=lambda value: float(value))
    return values


def axis_label(value: Any) -> str:
    number = numeric(value)
    return INFINITY_LABEL if number is not None and math.isinf(number) and number > 0 else str(value)


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation over seeds; one seed gives a spread of 0."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / len(values))


def plot_metric(
    trials: list[Trial], metric: str, x_key: str | None, group_keys: list[str], path: Path
) -> None:
    """Mean and std over seeds of one metric against the swept parameter, on a categorical axis.

    A categorical axis keeps L = inf (the unconstrained encoder) on the plot as a labelled point.
    Each further non-seed swept parameter gives its own line; single seeds are drawn as dots.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def x_of(trial: Trial) -> Any:
        return trial.parameters[x_key] if x_key else ""

    def group_of(trial: Trial) -> tuple[Any, ...]:
        return tuple(trial.parameters[key] for key in group_keys)

    done = [trial for trial in trials if metric in trial.metrics]
    xs = axis_values(list(dict.fromkeys(x_of(trial) for trial in done)))
    groups = list(dict.fromkeys(group_of(trial) for trial in done))
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for offset, group in enumerate(groups):
        shift = 0.08 * (offset - (len(groups) - 1) / 2)
        points = []
        for index, x in enumerate(xs):
            values = [
                trial.metrics[metric] for trial in done if group_of(trial) == group and x_of(trial) == x
            ]
            if values:
                axes.plot([index + shift] * len(values), values, ".", color="grey", alpha=0.6)
                points.append((index + shift, *mean_and_std(values)))
        places, means, spreads = zip(*points)
        label = ", ".join(f"{key}={value}" for key, value in zip(group_keys, group)) or None
        axes.errorbar(places, means, yerr=spreads, marker="o", capsize=4, label=label)
    axes.set_xticks(range(len(xs)), [axis_label(x) for x in xs])
    axes.set_xlabel(x_key or "")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric}: mean ± std over seeds")
    axes.grid(alpha=0.3)
    if len(groups) > 1:
        axes.legend()
    with atomic_open(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=100)


def plot_all(trials: list[Trial], metrics: list[str], swept: list[str], plot_dir: Path) -> list[Path]:
    non_seed = [key for key in swept if not is_seed(key)]
    x_key, group_keys = (non_seed[0], non_seed[1:]) if non_seed else (None, [])
    paths = []
    for metric in metrics:
        path = plot_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", metric.replace("/", "__")) + ".png")
        plot_metric(trials, metric, x_key, group_keys, path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- command line
def split_arguments(arguments: Sequence[str]) -> tuple[Path, Path | None, list[str]]:
    """(sweep file, sweep_dir or None, overrides for every trial)."""
    sweep_path, overrides = split_cli_args(arguments)
    if sweep_path is None:
        raise ConfigError(
            "Missing the sweep file: python -m experiments.sweep SWEEP.yaml [sweep_dir=DIR] [key=value ...]."
        )
    sweep_dirs = [item.split("=", 1)[1] for item in overrides if item.startswith("sweep_dir=")]
    rest = [item for item in overrides if not item.startswith("sweep_dir=")]
    return Path(sweep_path), (Path(sweep_dirs[-1]) if sweep_dirs else None), rest


def parameters_run_with(parameters: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The sweep parameters as the trial ran with them, for its summary row.

    Overrides follow the sweep's arguments on the trial's command line, so they win: a sweep file
    that fixes `logger.mode: online` runs offline here (LOCAL_DEFAULTS), and the row must say so.
    Swept parameters cannot be overridden (`check_overrides`), so only fixed ones change.
    """
    given = dict(item.split("=", 1) for item in overrides)
    return {key: yaml.safe_load(given[key]) if key in given else value for key, value in parameters.items()}


def check_overrides(overrides: list[str], parameters: dict[str, Any]) -> None:
    clashes = [
        item
        for item in overrides
        if item.split("=", 1)[0] in swept_keys(parameters) or item.startswith("out_dir=")
    ]
    if clashes:
        raise ConfigError(
            f"The overrides {clashes} would replace what the sweep sets per trial (its swept "
            f"parameters and out_dir); edit the sweep file instead, or pass sweep_dir=DIR."
        )


def main(arguments: Sequence[str]) -> None:
    sweep_path, sweep_dir, overrides = split_arguments(arguments)
    sweep = load_sweep(sweep_path)
    parameters = sweep.get("parameters") or {}
    check_overrides(overrides, parameters)
    sweep_dir = sweep_dir or Path("outputs") / "sweeps" / str(sweep.get("name") or sweep_path.stem)
    swept = swept_keys(parameters)
    trials = make_trials(grid(parameters), swept, sweep_dir)
    for trial in trials:
        trial.command = trial_command(
            sweep, trial.parameters, [*LOCAL_DEFAULTS, *overrides, f"out_dir={trial.out_dir}"]
        )
        trial.parameters = parameters_run_with(trial.parameters, [*LOCAL_DEFAULTS, *overrides])
    run_trials(trials, sweep_dir / "logs")
    metrics = write_summary(trials, list(parameters), sweep_dir / SUMMARY)
    plots = plot_all(trials, metrics, swept, sweep_dir / "plots")
    print(f"Summary: {sweep_dir / SUMMARY}; {len(plots)} plots in {sweep_dir / 'plots'}")
    failed = [trial.name for trial in trials if trial.status == "failed"]
    if failed:
        raise SweepFailed(
            f"{len(failed)} of {len(trials)} trials failed: {', '.join(failed)}. Their output is in "
            f"{sweep_dir / 'logs'}; fix the cause and run the same command again (finished trials are "
            "skipped)."
        )


def cli(argv: Sequence[str] | None = None) -> int:
    """The command line: a sweep, or --help (its `key=value` overrides are training keys)."""
    return run_cli(main, argv, usage=__doc__ or "", schema=TrainConfig)


def entry_point() -> None:
    # Terminated, the sweep takes its running trial with it (subprocess.run kills the child on the
    # way out) instead of leaving it orphaned; a re-run resumes that trial from its last.ckpt.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sys.exit(cli())


if __name__ == "__main__":
    entry_point()
