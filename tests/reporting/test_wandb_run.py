"""The offline W&B run of a real tiny training, read back from its own files.

One `python -m experiments.train` subprocess trains two epochs with a temporary HOME; its folder
is then copied elsewhere and the original deleted, so every check below reads the copy, as
someone would who received the folder. The run file (``run-<id>.wandb``) is read record by record
with wandb's own protobuf types; wandb ships no Python reader for it, so ``wandb_records`` below
undoes its framing (a LevelDB-style log).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from wandb.proto import wandb_internal_pb2

from callbacks.ood_evaluation import OODEvaluation
from experiments.config import TrainConfig, load_config
from experiments.runner import build_logger, finish_logger
from lightning_modules.config import ModelConfig, OptimConfig
from lightning_modules.factory import build_model
from scoring.config import DEFAULT_SCORES, ScoreConfig
from tests.helpers import REPO_ROOT, load_results, one_thread_environment, tiny_overrides

EPOCHS = 2
VAL_MAX_SAMPLES = 60  # below the tiny run's 150 images per set, so the subset is exercised
SCORES = DEFAULT_SCORES  # the tiny run keeps the default scores list
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------- the .wandb file
# wandb's transaction log: a 7-byte file header (":W&B", magic 0xBEE1, version), then 32 KiB
# blocks of chunks, each with a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle,
# 4 last); a block's tail shorter than a header is padding.
BLOCK_SIZE = 32 * 1024
HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
# One record of the log; wandb's generated protobuf module comes without type stubs.
Record: Any = wandb_internal_pb2.Record  # type: ignore[attr-defined]


def wandb_records(path: Path) -> Iterator[Any]:
    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:HEADER_SIZE])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B transaction log"
    position, pending = HEADER_SIZE, b""
    while position + HEADER_SIZE <= len(data):
        left_in_block = BLOCK_SIZE - position % BLOCK_SIZE
        if left_in_block < HEADER_SIZE:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER_SIZE])
        if kind == 0:  # zero padding to the end of the block
            position += left_in_block
            continue
        if position + HEADER_SIZE + length > len(data):
            return  # a chunk still being written
        chunk = data[position + HEADER_SIZE : position + HEADER_SIZE + length]
        position += HEADER_SIZE + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(pending)
            yield record


def item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class WandbRun:
    """What the offline run file holds: the run record, config, history rows and final summary."""

    run: Any  # wandb_internal_pb2.RunRecord
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]


def complete_records(run_file: Path, timeout: float = 30.0) -> list[Any]:
    """The run file's records once it ends with the exit record: wandb-core writes the file in its
    own process and may finish it just after ``finish()`` has returned."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(run_file))
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        assert time.monotonic() < deadline, f"{run_file} got no exit record within {timeout} s"
        time.sleep(0.1)


def read_run(run_file: Path) -> WandbRun:
    run, config, history, summary = None, {}, [], {}
    for record in complete_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({item_key(item): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({item_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            summary.update({item_key(item): json.loads(item.value_json) for item in record.summary.update})
    assert run is not None, f"{run_file} holds no run record"
    return WandbRun(run, config, history, summary)


def only_run_file(out_dir: Path) -> Path:
    runs = list((out_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def by_epoch(history: list[dict[str, Any]], key: str) -> dict[int, float]:
    """The logged values of ``key`` by the epoch Lightning logged beside them."""
    return {row["epoch"]: row[key] for row in history if key in row}


# ---------------------------------------------------------------------------- the tiny run
@dataclass
class CopiedRun:
    folder: Path  # the copy; the original folder no longer exists
    home: Path
    wandb: WandbRun


@pytest.fixture(scope="module")
def copied_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> CopiedRun:
    root = tmp_path_factory.mktemp("wandb-run")
    original, copy, home = root / "original", root / "copy", root / "home"
    home.mkdir()
    environment = one_thread_environment()
    # The test session points W&B's folders at a temporary directory (conftest); this run must
    # keep its files in its own folder without that help, with HOME as the only other place.
    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        environment.pop(variable, None)
    environment["HOME"] = str(home)
    environment["MPLCONFIGDIR"] = str(root / "matplotlib")  # matplotlib's font cache is not the run's
    overrides = tiny_overrides(
        original,
        **{
            "trainer.max_epochs": str(EPOCHS),
            "logger.mode": "offline",
            "scores.val_max_samples": str(VAL_MAX_SAMPLES),
            "plots.hole_samples": "512",
        },
    )
    finished = subprocess.run(
        [sys.executable, "-m", "experiments.train", *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    return CopiedRun(copy, home, read_run(only_run_file(copy)))


# ---------------------------------------------------------------------------- self-contained folder
@pytest.mark.slow
def test_nothing_is_written_under_home(copied_run: CopiedRun) -> None:
    written = [path for path in copied_run.home.rglob("*") if path.is_file()]
    assert not written, f"the run wrote outside its folder: {written}"


@pytest.mark.slow
def test_a_copied_folder_holds_the_table_rows_and_images(copied_run: CopiedRun) -> None:
    staged = [path for path in (copied_run.folder / "wandb").rglob("*") if path.is_file()]
    tables = {}
    for path in staged:
        text = path.read_bytes()
        if text.startswith(b"{") and b'"_type": "table"' in text:
            table = json.loads(text)
            tables[tuple(table["columns"])] = table
    ranked = next(table for columns, table in tables.items() if "image" in columns)
    assert len(ranked["data"]) == 2 * 2 * 8  # 2 sets x (most outlying + most typical) x n_images
    image_column = ranked["columns"].index("image")
    # Each image cell points to a PNG the copy holds (the run file's own copy says only "Image").
    assert all(row[image_column]["_type"] == "image-file" for row in ranked["data"])
    pngs = [path for path in staged if path.read_bytes()[:8] == PNG_MAGIC]
    assert len(pngs) >= len(ranked["data"])
    metrics = next(table for columns, table in tables.items() if columns[:2] == ("outlier", "score"))
    assert [row[:2] for row in metrics["data"]] == [["mnist", score] for score in SCORES]


# ---------------------------------------------------------------------------- curves over epochs
@pytest.mark.slow
def test_ood_metrics_and_model_bounds_are_curves_over_epochs(copied_run: CopiedRun) -> None:
    history = copied_run.wandb.history
    for key in (
        "val/mnist/hole_knn/auroc",
        "val/mnist/neg_elbo/auroc",
        "val/model/certified_lipschitz",
        "val/model/latent_radius_bound",
        "val/model/latent_variance",
        "val/model/active_units",
        "val/fashion_mnist/bound_violations",
        "val/mnist/bound_violations",
    ):
        assert sorted(by_epoch(history, key)) == list(range(EPOCHS)), key
    assert all(value == 0 for value in by_epoch(history, "val/mnist/bound_violations").values())
    assert len(by_epoch(history, "test/model/empirical_lipschitz")) == 1
    assert len(by_epoch(history, "test/model/latent_variance")) == 1


@pytest.mark.slow
def test_the_learning_rate_follows_the_cosine_schedule(copied_run: CopiedRun) -> None:
    # Logged at the start of every epoch, in epoch order (these rows carry no epoch of their own).
    rates = [row["lr-Adam"] for row in copied_run.wandb.history if "lr-Adam" in row]
    lr = 1e-3  # optim.lr of the default config
    assert rates == pytest.approx(
        [lr * (1 + math.cos(math.pi * epoch / EPOCHS)) / 2 for epoch in range(EPOCHS)]
    )


# ---------------------------------------------------------------------------- summary and identity
@pytest.mark.slow
def test_the_summary_holds_the_best_validation_elbo_and_the_headline_aurocs(copied_run: CopiedRun) -> None:
    summary, history = copied_run.wandb.summary, copied_run.wandb.history
    elbo = by_epoch(history, "val/elbo")
    assert len(elbo) == EPOCHS
    assert summary["val/elbo"]["max"] == pytest.approx(max(elbo.values()))
    results = load_results(copied_run.folder)
    headline = SCORES[0]  # the first of scores.names
    assert summary["headline/score"] == headline
    assert summary["headline/mnist/auroc"] == pytest.approx(results["metrics"]["mnist"][headline]["auroc"])
    assert summary["test/model/certified_lipschitz"] == pytest.approx(results["model"]["certified_lipschitz"])
    assert summary["test/model/latent_radius_bound"] == pytest.approx(results["model"]["latent_radius_bound"])


@pytest.mark.slow
def test_the_run_is_named_grouped_and_tagged_and_its_config_logged_once(copied_run: CopiedRun) -> None:
    run = copied_run.wandb.run
    assert run.run_group == "fmnist_vs_mnist/alexandroff_lipschitz/L=1"
    assert run.display_name == "fmnist_vs_mnist/alexandroff_lipschitz/L=1/seed0"
    assert list(run.tags) == ["fmnist_vs_mnist", "alexandroff_lipschitz", "L=1", "seed0"]
    config = {key: value for key, value in copied_run.wandb.config.items() if key != "_wandb"}
    # The resolved run config, once: not again as the model's hyperparameters (run_config, ...).
    assert set(config) == set(TrainConfig.__dataclass_fields__)
    assert config["model"]["lipschitz"] == 1.0


def test_an_unconstrained_lipschitz_constant_is_logged_as_a_string(tmp_path: Path) -> None:
    before = {variable: os.environ.get(variable) for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR")}
    config = load_config(
        TrainConfig,
        None,
        tiny_overrides(tmp_path, **{"model.lipschitz": "inf", "logger.mode": "offline"}),
    )
    logger = build_logger(config, tmp_path, run_name=tmp_path.name)
    assert not isinstance(logger, bool)
    assert logger.experiment is not None  # creating the W&B run redirects its folders
    assert os.environ["WANDB_DATA_DIR"] == str(tmp_path / "wandb" / "data")
    finish_logger(logger)
    assert {variable: os.environ.get(variable) for variable in before} == before
    wandb_run = read_run(only_run_file(tmp_path))
    assert wandb_run.config["model"]["lipschitz"] == "inf"
    assert wandb_run.run.run_group == "fmnist_vs_mnist/alexandroff_lipschitz/L=inf"


# ---------------------------------------------------------------------------- the validation subset
def test_validation_scores_the_same_seeded_subset_of_every_set(tmp_path: Path) -> None:
    """Only the chosen positions are scored, and the choice is the same at every validation."""
    settings = ScoreConfig(names=["recon"], val_max_samples=7)
    sizes = (40, 25, 5)  # the last set is smaller than the cap: all of it
    loaders = [DataLoader(TensorDataset(torch.arange(size))) for size in sizes]
    trainer: Any = SimpleNamespace(sanity_checking=False, current_epoch=0, val_dataloaders=loaders)
    callback = OODEvaluation(settings, run_info={"seed": 3})
    model = build_model(
        asdict(ModelConfig(variant="gaussian", latent_dim=2, width=4, hidden_dim=8)),
        asdict(OptimConfig()),
        (1, 28, 28),
        max_epochs=1,
    )
    callback.on_validation_epoch_start(trainer, model)
    first = [mask.clone() for mask in callback._scored or []]
    for set_id, size in enumerate(sizes):
        for start in range(0, size, 10):  # batches of 10 in position order
            indices = torch.arange(start, min(start + 10, size))
            batch = (torch.rand(len(indices), 1, 28, 28), torch.zeros_like(indices), indices)
            callback.on_validation_batch_end(trainer, model, None, batch, 0, set_id)
    scored = {
        set_id: sorted(
            int(index)
            for record in callback._records
            if record["dataset"][0] == set_id
            for index in record["index"]
        )
        for set_id in range(len(sizes))
    }
    assert [len(scored[set_id]) for set_id in range(len(sizes))] == [7, 7, 5]
    for set_id, mask in enumerate(first):
        assert scored[set_id] == mask.nonzero().flatten().tolist()
    trainer.current_epoch = 1
    callback.on_validation_epoch_start(trainer, model)
    assert all(torch.equal(a, b) for a, b in zip(first, callback._scored or []))
