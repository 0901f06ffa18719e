"""A process killed while it writes results leaves the previous complete files in place (issue 12).

The previous results.json and scores.npz come from the real writer (``reporting.results_files``);
a child process then writes new ones with the same writer and stops at a chosen point inside the
write, where this test kills it with SIGKILL. The child stops itself (a hook around the serialiser
or the rename prints that it is there, then blocks), so the kill lands exactly at that point: no
sleeps, no races. The files travel through the real ``common.atomic_io`` code all the way.
Not covered, because no pair of renames can cover it: a kill between the two renames, where
nothing is written (see ``common.atomic_io``).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any
from unittest import mock
from zipfile import BadZipFile

import numpy as np
import pytest
import torch

import common.atomic_io as atomic_io
from common.atomic_io import TEMPORARY_SUFFIX, remove_partial_writes
from tests.helpers import REPO_ROOT, load_results, one_thread_environment

RESULT_FILES = ("results.json", "scores.npz")
SET_SIZE = 40
# Where the child stops: inside a file's serialisation with half of it on disk, or with both
# files complete but not yet renamed over the previous ones. Each maps to the temporaries that
# the kill leaves behind, and whether the one being written when it stopped is half written.
PAUSE_POINTS = {
    "scores.npz": (["scores.npz"], True),
    "results.json": (["results.json", "scores.npz"], True),
    "rename": (["results.json", "scores.npz"], False),
}


def write_results(out_dir: Path, seed: int) -> None:
    """results.json and scores.npz of a small evaluation (``seed`` tells two of them apart), written
    by ``ResultsFiles`` exactly as at the end of a test run."""
    from dataclasses import asdict

    from lightning_modules.config import ModelConfig, OptimConfig
    from lightning_modules.factory import build_model
    from reporting.base import ReportContext
    from reporting.results_files import ResultsFiles
    from scoring.config import ScoreConfig
    from scoring.evaluation import evaluate

    generator = torch.Generator().manual_seed(seed)
    dataset = torch.arange(2).repeat_interleave(SET_SIZE)
    columns = {
        "dataset": dataset,
        "index": torch.arange(SET_SIZE).repeat(2),
        "label": torch.zeros(2 * SET_SIZE, dtype=torch.long),
        "latent": torch.randn(2 * SET_SIZE, 4, generator=generator),
        "mean": torch.randn(2 * SET_SIZE, 4, generator=generator),
        "neg_elbo": torch.randn(2 * SET_SIZE, generator=generator, dtype=torch.float64) + dataset,
    }
    settings = ScoreConfig(names=["neg_elbo"])
    evaluation = evaluate(columns, ["fashion_mnist", "mnist"], settings)
    model = ModelConfig(variant="gaussian", latent_dim=4, width=4, hidden_dim=32)
    context = ReportContext(
        stage="test",
        epoch=0,
        global_step=0,
        model=build_model(asdict(model), asdict(OptimConfig()), (1, 28, 28), max_epochs=1),
        loaders=[],
        loggers=[],
        scores=settings,
        run_info={"experiment": "fault_injection", "seed": seed, "config": {"seed": seed}},
        train_seconds=None,
        evaluation_seconds=1.0,
    )
    ResultsFiles(out_dir).report(evaluation, context)


def stop(point: str, stream: IO[Any] | None = None, data: str | bytes = b"") -> None:
    """Put the first half of ``data`` on disk (a write cut short), say where this is, and block."""
    if stream is not None:
        stream.write(data[: len(data) // 2])
        stream.flush()
        os.fsync(stream.fileno())
    print(f"stopped inside {point}", flush=True)
    while True:
        signal.pause()


def write_and_stop(out_dir: Path, point: str) -> None:
    """The child: write results of seed 1 over those of seed 0, stopping at ``point``."""
    savez = np.savez_compressed

    def half_npz(stream: IO[bytes], **arrays: np.ndarray) -> None:
        buffer = io.BytesIO()
        savez(buffer, **arrays)  # type: ignore[arg-type]
        stop(point, stream, buffer.getvalue())

    def half_json(payload: Any, stream: IO[str], **options: Any) -> None:
        stop(point, stream, json.dumps(payload, **options))

    rename = os.replace

    def stop_before_rename(source: str | Path, target: str | Path) -> None:
        if Path(target).parent != out_dir:  # not a results file: let it through
            rename(source, target)
            return
        stop(point)

    hooks: dict[str, AbstractContextManager[Any]] = {
        "scores.npz": mock.patch.object(atomic_io.np, "savez_compressed", half_npz),
        "results.json": mock.patch.object(atomic_io.json, "dump", half_json),
        "rename": mock.patch.object(atomic_io.os, "replace", stop_before_rename),
    }
    with hooks[point]:
        write_results(out_dir, seed=1)
    raise AssertionError(f"the write finished without stopping inside {point}")


@pytest.mark.parametrize("point", list(PAUSE_POINTS))
def test_a_results_write_killed_midway_leaves_the_previous_files(point: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    write_results(out_dir, seed=0)
    previous = {name: (out_dir / name).read_bytes() for name in RESULT_FILES}

    log = tmp_path / "child.log"
    with open(log, "w") as stderr:  # a file, not a pipe: the child cannot block on its warnings
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; "
                "from tests.experiments.test_fault_injection import write_and_stop; "
                "write_and_stop(Path(sys.argv[1]), sys.argv[2])",
                str(out_dir),
                point,
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=one_thread_environment(),
        )
    try:
        assert child.stdout is not None
        said = child.stdout.readline().strip()
        assert said == f"stopped inside {point}", log.read_text()[-3000:]
    finally:
        child.kill()  # SIGKILL: no handler, no cleanup runs in the child
        child.wait()
    assert child.returncode == -signal.SIGKILL

    # The previous files, byte for byte, complete and readable.
    for name, content in previous.items():
        assert (out_dir / name).read_bytes() == content, f"{name} was replaced by the killed write"
    results = load_results(out_dir)
    assert results["seed"] == 0 and results["data"]["sizes"] == {"fashion_mnist": SET_SIZE, "mnist": SET_SIZE}
    with np.load(out_dir / "scores.npz") as arrays:
        assert arrays["score_neg_elbo"].shape == (2 * SET_SIZE,)
        assert all(arrays[key].size > 0 for key in arrays.files)

    # Besides them only the killed write's hidden temporaries, which no reader takes for results
    # (they do not end in .json or .npz); the one being written is cut short where it stopped.
    temporaries = {path.name: path for path in out_dir.iterdir() if path.name not in RESULT_FILES}
    assert all(name.startswith(".") and name.endswith(TEMPORARY_SUFFIX) for name in temporaries)
    # Named .<target>.<random>.tmp:
    targets = {name[1:].rsplit(".", 2)[0]: path for name, path in temporaries.items()}
    expected, cut_short = PAUSE_POINTS[point]
    assert sorted(targets) == expected
    if cut_short and point == "results.json":
        with pytest.raises(json.JSONDecodeError):
            json.loads(targets[point].read_text())
    elif cut_short:
        with pytest.raises(BadZipFile):
            np.load(targets[point])

    # A resume removes them, and the next write (not killed) replaces both files.
    remove_partial_writes(out_dir)
    assert sorted(path.name for path in out_dir.iterdir()) == sorted(RESULT_FILES)
    write_results(out_dir, seed=1)
    assert load_results(out_dir)["seed"] == 1
    assert all((out_dir / name).read_bytes() != previous[name] for name in RESULT_FILES)
