"""Errors that used to mislead: each names what is wrong and the fix, with exit status 2.

One tiny training run is shared; the evaluations stop before writing anything (a refused
override, a directory for ckpt=) or right after loading the data (an image shape that does not
match the checkpoint, an unreadable outlier image).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import evaluate as evaluate_cli
from experiments import sweep as sweep_cli
from experiments import train as train_cli
from tests.helpers import QUICK, QUICK_EVAL, one_thread, tiny_overrides


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out_dir = tmp_path_factory.mktemp("clear_errors") / "run"
    with one_thread():
        assert train_cli.run_cli(train_cli.main, tiny_overrides(out_dir, **QUICK)) == 0
    return out_dir


def evaluate_error(capsys: pytest.CaptureFixture[str], *arguments: str) -> str:
    with one_thread():
        code = evaluate_cli.run_cli(evaluate_cli.main, [*arguments, *QUICK_EVAL])
    error = capsys.readouterr().err
    assert code == 2, error
    return error


def test_evaluate_says_model_settings_come_from_the_checkpoint(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = evaluate_error(capsys, f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "model.latent_dim=8")
    assert "come from the checkpoint" in error and "spelling" not in error


def test_a_directory_as_ckpt_lists_the_checkpoints_in_it(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder of checkpoints that is not a run folder (a run folder gives its selected epoch)."""
    error = evaluate_error(capsys, f"ckpt={run / 'checkpoints'}")
    assert "is a directory" in error and "does not exist" not in error
    assert "epoch000.ckpt" in error and "last.ckpt" in error


def test_the_image_shape_error_names_the_override_that_caused_it(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = evaluate_error(
        capsys,
        f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
        "data.image_size=32",
        f"out_dir={tmp_path / 'eval'}",
    )
    assert "data.image_size=32 (trained with data.image_size=null)" in error and "Drop that override" in error
    assert "set data.image_size" not in error


def test_an_unreadable_outlier_image_exits_2_naming_the_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "shapes" / "a" / "0.png"
    bad.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8), mode="L").save(bad)
    bad.write_bytes(bad.read_bytes()[:40])
    error = evaluate_error(
        capsys,
        f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
        f"data.outliers=[{tmp_path / 'shapes'}]",
        f"out_dir={tmp_path / 'eval'}",
    )
    assert str(bad) in error and "Traceback" not in error


def test_the_sweep_summary_records_the_logger_mode_the_trials_ran_with(tmp_path: Path) -> None:
    """The sweep file asks for online W&B runs; the local runner runs its trials offline."""
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(
        "method: grid\n"
        "parameters:\n"
        "  seed: {values: [0]}\n"
        "  logger.mode: {value: online}\n"
        "  trainer.max_epochs: {value: 2}\n"
        # A trial that exits at once: it writes no results, so it is recorded as failed.
        'command: ["${interpreter}", "-c", "pass", "${args_no_hyphens}"]\n'
    )
    for overrides, mode in (([], "offline"), (["logger.mode=disabled"], "disabled")):
        sweep_dir = tmp_path / f"sweep-{mode}"
        assert sweep_cli.run_cli(sweep_cli.main, [str(sweep_file), f"sweep_dir={sweep_dir}", *overrides]) == 2
        with open(sweep_dir / sweep_cli.SUMMARY, newline="") as stream:
            (row,) = csv.DictReader(stream)
        assert (row["logger.mode"], row["trainer.max_epochs"]) == (mode, "2")
