"""Kill a training run mid-epoch (SIGKILL), resume it with one command, get the uninterrupted results.

The run is a deterministic CPU config (fixed seed, trainer.deterministic=true) of 2 epochs of 16
steps with `checkpoints/last.ckpt` every 4 steps. The kill comes once a step checkpoint of the
second epoch exists, so the resume has to restore a position inside an epoch's shuffle, the random
state, the first epoch's best-checkpoint bookkeeping and the KL warm-up's ramp.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest
import torch

from common.atomic_io import remove_partial_writes
from experiments import train as train_cli
from experiments.checkpoint_io import AtomicCheckpointIO
from scoring.metrics import OOD_METRIC_NAMES
from tests.helpers import (
    REPO_ROOT,
    flat_metrics,
    load_results,
    one_thread_environment,
    run_command,
    tiny_overrides,
)

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 16  # 256 training images in batches of 16
SETTINGS = {
    "data.max_train_samples": "256",
    "data.batch_size": "16",
    "data.max_eval_samples": "64",
    "data.eval_batch_size": "64",
    "trainer.max_epochs": "2",
    "trainer.deterministic": "true",
    # The kill lands inside the KL warm-up's ramp (24 steps): the resume must continue it exactly.
    "optim.kl_warmup_epochs": "1.5",
    "checkpoint_every_n_steps": "4",
    "scores.names": "[neg_elbo,hole_posterior,hole_knn]",
    "scores.knn_reference_size": "100",
    "scores.val_every_n_epochs": "0",
    "plots.enabled": "false",
    "logger.mode": "disabled",
}


def checkpoint_step(path: Path) -> int:
    """The global step stored in a checkpoint; loading it also proves the file is complete."""
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def kill_inside_second_epoch(process: subprocess.Popen, last: Path, timeout: float = 300) -> int:
    """SIGKILL the run as soon as last.ckpt holds a step of the second epoch; return that step."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run finished before a second-epoch checkpoint was seen"
        version = last.stat().st_mtime_ns if last.is_file() else None
        if version != seen and STEPS_PER_EPOCH < checkpoint_step(last) < 2 * STEPS_PER_EPOCH:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return checkpoint_step(last)
        seen = version
        time.sleep(0.02)
    process.kill()
    raise AssertionError("no second-epoch checkpoint appeared in time")


def stray_files(out_dir: Path) -> list[Path]:
    return [
        path
        for directory in (out_dir, out_dir / "checkpoints")
        for path in directory.glob(".*")
        if path.is_file()
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out_dir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    finished = run_command("experiments.train", tiny_overrides(out_dir, **SETTINGS))
    assert finished.returncode == 0, finished.stderr[-3000:]
    return out_dir


def test_killed_run_resumes_to_the_uninterrupted_results(uninterrupted: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "interrupted"
    last = out_dir / "checkpoints" / "last.ckpt"
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "experiments.train", *tiny_overrides(out_dir, **SETTINGS)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=one_thread_environment(),
        )
        killed_at = kill_inside_second_epoch(process, last)
    assert STEPS_PER_EPOCH < killed_at < 2 * STEPS_PER_EPOCH and not (out_dir / "results.json").exists()

    resumed = run_command("experiments.train", [str(out_dir / "config.yaml"), "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr

    # Same metrics, same trained weights, same best checkpoint as the run that was never stopped.
    expected, measured = flat_metrics(load_results(uninterrupted)), flat_metrics(load_results(out_dir))
    assert set(measured) == set(expected) and len(expected) == 3 * len(OOD_METRIC_NAMES)
    for key, value in expected.items():
        assert measured[key] == pytest.approx(value, abs=1e-6), key
    reference = torch.load(uninterrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == reference["global_step"] == 2 * STEPS_PER_EPOCH
    assert all(torch.equal(final["state_dict"][key], value) for key, value in reference["state_dict"].items())
    names = sorted(path.name for path in (out_dir / "checkpoints").iterdir())
    assert names == sorted(path.name for path in (uninterrupted / "checkpoints").iterdir())

    # Nothing truncated or temporary is left: every file loads, no hidden temporaries remain.
    assert stray_files(out_dir) == []
    for checkpoint in (out_dir / "checkpoints").iterdir():
        checkpoint_step(checkpoint)
    json.loads((out_dir / "results.json").read_text())


def test_resume_without_a_checkpoint_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_cli.run_cli(
        train_cli.main,
        tiny_overrides(tmp_path / "never_ran", **{"resume": "true", "logger.mode": "disabled"}),
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "resume=true" in error and "last.ckpt does not exist" in error and "without resume=true" in error


def test_an_interrupted_checkpoint_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, target)

    def fail_halfway(checkpoint: dict, stream: IO[bytes]) -> None:
        stream.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with pytest.raises(OSError):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, target)
    assert checkpoint_step(target) == 1
    assert list(tmp_path.iterdir()) == [target]


def test_partial_writes_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    kept = [tmp_path / "last.ckpt", tmp_path / "results.json"]
    strays = [tmp_path / ".last.ckpt.4242.tmp", tmp_path / ".results.json.k3j2.tmp"]
    for path in kept + strays:
        path.write_bytes(b"x")
    remove_partial_writes(tmp_path, tmp_path / "missing")
    assert sorted(tmp_path.iterdir()) == sorted(kept)
