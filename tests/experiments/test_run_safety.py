"""Run folders are never lost, overwritten or mixed, and every bad input gets one clear error (exit 2).

One tiny training run is shared (the module fixture starts two trainings on one folder at once and
keeps the one that proceeded); every test that would write into it works on a copy. The other
tests stop before any data is loaded, which several of them prove by pointing data.data_dir at a
folder that does not exist: had the data been read first, that would have been the error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from experiments.config import ConfigError
from experiments.run_dir import (
    LOCK_NAME,
    RunDirError,
    check_resume_compatible,
    claim_run_dir,
)
from experiments.runner import build_logger, default_eval_dir, to_dict
from experiments.train import load_train_config
from tests.helpers import REPO_ROOT, load_results, one_thread, one_thread_environment, tiny_overrides

QUICK = {
    "logger.mode": "disabled",
    "plots.enabled": "false",
    "scores.names": "[neg_elbo,hole_knn]",
    "trainer.limit_train_batches": "3",
}
NO_DATA = {"data.data_dir": "/no/such/data/folder"}
NO_DATA_OVERRIDE = [f"{key}={value}" for key, value in NO_DATA.items()]
QUICK_EVAL = ["logger.mode=disabled", "plots.enabled=false", *NO_DATA_OVERRIDE]


@dataclass
class Race:
    out_dir: Path
    winner_seed: int
    loser_output: str


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under folder with its content hash and modification time."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def copy_run(run: Path, target: Path, keep_results: bool = True) -> Path:
    shutil.copytree(run, target, symlinks=True)
    if not keep_results:
        (target / "results.json").unlink()  # an interrupted run: it never reached its test
    return target


def new_run_config(out_dir: Path, **extra: str) -> None:
    """A config.yaml as a run writes it, without running anything."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = load_train_config(tiny_overrides(out_dir, **QUICK, **extra))
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Race:
    """Two trainings (seeds 0 and 1) started on one out_dir at the same moment."""
    folder = tmp_path_factory.mktemp("race")
    out_dir = folder / "run"
    logs = {seed: folder / f"seed{seed}.log" for seed in (0, 1)}
    processes = {}
    for seed, log in logs.items():
        with open(log, "w") as stream:  # a file, not a pipe: neither process can block on its output
            processes[seed] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "experiments.train",
                    *tiny_overrides(out_dir, **QUICK, seed=str(seed)),
                ],
                cwd=REPO_ROOT,
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=one_thread_environment(),
            )
    codes = {seed: process.wait(timeout=600) for seed, process in processes.items()}
    outputs = {seed: log.read_text() for seed, log in logs.items()}
    assert sorted(codes.values()) == [0, 2], {seed: output[-2000:] for seed, output in outputs.items()}
    winner = next(seed for seed, code in codes.items() if code == 0)
    return Race(out_dir, winner, outputs[1 - winner])


# 1. A run claims its folder; a second process gets one clear error; a killed holder frees it.


def test_two_trainings_on_one_folder_one_proceeds_the_other_exits_2_touching_nothing(race: Race) -> None:
    error = race.loser_output
    assert "Traceback" not in error
    # The loser either met the lock (naming its holder) or, had the winner already finished, its outputs.
    assert (
        "is in use by another run (pid " in error and " on host " in error
    ) or "already holds a run" in error
    assert "Nothing was written" in error or "Nothing there is overwritten" in error
    # Everything in the folder is the winner's: config, results and checkpoints of one seed.
    config = OmegaConf.load(race.out_dir / "config.yaml")
    assert config.seed == load_results(race.out_dir)["seed"] == race.winner_seed
    assert sorted(path.name for path in (race.out_dir / "checkpoints").iterdir()) == [
        "epoch000.ckpt",
        "last.ckpt",
    ]
    for checkpoint in (race.out_dir / "checkpoints").iterdir():
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
        assert stored["hyper_parameters"]["run_config"]["seed"] == race.winner_seed
    assert not (race.out_dir / LOCK_NAME).exists()  # released, and removed, when the run ended


def test_a_claimed_folder_names_its_holder_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"
    with claim_run_dir(out_dir):
        code = train_cli.run_cli(train_cli.main, tiny_overrides(out_dir, **QUICK, **NO_DATA))
        assert [path.name for path in out_dir.iterdir()] == [LOCK_NAME]
    assert code == 2
    error = capsys.readouterr().err
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in error and "another out_dir" in error
    assert not out_dir.exists()  # the claim created the folder and nothing was written into it


def test_a_killed_holder_releases_the_folder(tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom experiments.run_dir import claim_run_dir\n"
            f"with claim_run_dir(Path({str(out_dir)!r})):\n"
            "    print('claimed', flush=True)\n    time.sleep(600)",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=one_thread_environment(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        with pytest.raises(RunDirError, match=f"pid {holder.pid} on host"), claim_run_dir(out_dir):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out_dir / LOCK_NAME).exists()  # the killed holder could not clean up: its lock file stays
    with claim_run_dir(out_dir):
        assert (out_dir / LOCK_NAME).read_text() == f"pid {os.getpid()} on host {socket.gethostname()}\n"


def test_only_global_rank_zero_claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning re-runs the command for the other DDP ranks: they work inside rank 0's claim."""
    out_dir = tmp_path / "run"
    with claim_run_dir(out_dir):
        monkeypatch.setattr(rank_zero_only, "rank", 1)
        with claim_run_dir(out_dir):
            pass
        monkeypatch.setattr(rank_zero_only, "rank", 0)
        with pytest.raises(RunDirError, match="in use by another run"), claim_run_dir(out_dir):
            pass


# 2. A new run refuses any folder that holds files; evaluate never writes over a training run.


def test_train_refuses_a_folder_with_outputs_but_no_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    for name in ("results.json", "scores.npz", "config.yaml"):
        (out_dir / name).write_text(f"{name} of an earlier run")
    before = snapshot(out_dir)
    assert train_cli.run_cli(train_cli.main, tiny_overrides(out_dir, **QUICK, **NO_DATA)) == 2
    error = capsys.readouterr().err
    assert "already holds a run" in error and "config.yaml, results.json, scores.npz" in error
    assert snapshot(out_dir) == before and sorted(path.name for path in out_dir.iterdir()) == sorted(
        ["results.json", "scores.npz", "config.yaml"]
    )


def test_evaluate_refuses_to_write_over_a_training_run(
    race: Race, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(race.out_dir)
    arguments = [f"ckpt={race.out_dir / 'checkpoints' / 'last.ckpt'}", f"out_dir={race.out_dir}", *QUICK_EVAL]
    assert evaluate_cli.run_cli(evaluate_cli.main, arguments) == 2
    error = capsys.readouterr().err
    assert "already holds a run" in error and "evaluations/<time>" in error
    assert snapshot(race.out_dir) == before


def test_evaluate_writes_beside_the_training_run_by_default() -> None:
    checkpoint = Path("/runs/a/checkpoints/last.ckpt")
    assert default_eval_dir(checkpoint, "20240101-000000") == Path("/runs/a/evaluations/20240101-000000")


# 3. config.yaml is written only after the checkpoint loaded and the overrides were checked.


def test_a_resume_that_changes_the_model_stops_and_keeps_config_yaml(
    race: Race, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(race.out_dir, tmp_path / "interrupted", keep_results=False)
    before = snapshot(run)
    code = train_cli.run_cli(train_cli.main, [str(run / "config.yaml"), "resume=true", "model.latent_dim=8"])
    assert code == 2
    error = capsys.readouterr().err
    assert "model.latent_dim (the run has 4, now 8)" in error
    assert "only these keys can change" in error and "trainer.max_epochs" in error and "scores.*" in error
    assert snapshot(run) == before


def test_resume_may_change_only_what_leaves_the_trained_run_the_same(tmp_path: Path) -> None:
    stored = to_dict(load_train_config(tiny_overrides(tmp_path)))
    allowed = [
        "trainer.max_epochs=5",
        "scores.knn_k=3",
        "plots.enabled=false",
        "logger.mode=disabled",
        "data.outliers=[mnist,hflip]",
        "data.data_dir=/elsewhere",
        f"out_dir={tmp_path / 'copy'}",
    ]
    check_resume_compatible(stored, to_dict(load_train_config(tiny_overrides(tmp_path) + allowed)), tmp_path)
    for frozen in ("model.width=6", "optim.lr=0.1", "seed=3", "experiment=other", "data.batch_size=32"):
        current = to_dict(load_train_config([*tiny_overrides(tmp_path), frozen]))
        with pytest.raises(RunDirError, match=frozen.split("=")[0]):
            check_resume_compatible(stored, current, tmp_path)


# 4. A run folder is self-contained; a finished run is not re-run; W&B continues the same run.


def test_resume_goes_into_the_folder_that_holds_config_yaml(tmp_path: Path) -> None:
    new_run_config(tmp_path / "original")
    copy = copy_run(tmp_path / "original", tmp_path / "copy")
    config = load_train_config([str(copy / "config.yaml"), "resume=true"])
    assert Path(config.out_dir) == copy.absolute()
    explicit = load_train_config([str(copy / "config.yaml"), "resume=true", f"out_dir={tmp_path / 'other'}"])
    assert Path(explicit.out_dir) == tmp_path / "other"


def test_resuming_a_finished_run_says_so_and_runs_nothing(
    race: Race, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(race.out_dir, tmp_path / "copy")
    before, original = snapshot(run), snapshot(race.out_dir)
    assert train_cli.run_cli(train_cli.main, [str(run / "config.yaml"), "resume=true"]) == 0
    output = capsys.readouterr().out
    assert "holds a finished run" in output and "retest=true" in output
    assert snapshot(run) == before and snapshot(race.out_dir) == original


def test_retest_of_a_copied_run_tests_the_copy_and_leaves_the_original(
    race: Race, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    original = snapshot(race.out_dir)
    run = copy_run(race.out_dir, tmp_path / "copy")
    results_before = (run / "results.json").stat().st_mtime_ns
    with one_thread():
        code = train_cli.run_cli(train_cli.main, [str(run / "config.yaml"), "resume=true", "retest=true"])
    assert code == 0
    assert (run / "results.json").stat().st_mtime_ns != results_before
    assert load_results(run)["metrics"] == load_results(race.out_dir)["metrics"]
    assert snapshot(race.out_dir) == original
    # The best-model bookkeeping followed the copy instead of pointing into the original folder.
    assert not [warning for warning in recwarn if "dirpath has changed" in str(warning.message)]
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.resume is False and saved.retest is False  # flags of one invocation, not of the run


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path: Path) -> None:
    config = load_train_config(tiny_overrides(tmp_path, **{"logger.mode": "offline"}))
    first, resumed = (build_logger(config, tmp_path, run_name="run") for _ in range(2))
    assert not isinstance(first, bool) and not isinstance(resumed, bool)
    assert first.version and resumed.version == first.version
    assert (tmp_path / "wandb" / "run_id.txt").read_text().strip() == first.version
    assert resumed._wandb_init["resume"] == "allow"


# 5. One clear error, exit status 2, instead of a traceback.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:\n  latent_dim: [8\n", "is not valid YAML"),
        ("- model\n- trainer\n", "holds a list at the top level"),
        ("model: 5\n", "'model' is a block of keys"),
    ],
)
def test_a_bad_config_file_gets_one_clear_error(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert train_cli.run_cli(train_cli.main, [str(path)]) == 2
    error = capsys.readouterr().err
    assert expected in error and "key 'None'" not in error


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.devices=abc", "Invalid value 'abc' for 'trainer.devices'"),
        ("trainer.limit_train_batches=-5", "Invalid value -5 for 'trainer.limit_train_batches'"),
        ("trainer.limit_val_batches=1.5", "in (0, 1]"),
    ],
)
def test_bad_trainer_values_stop_before_any_data_is_read(
    override: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_train_config([override])
    out_dir = tmp_path / "run"
    assert train_cli.run_cli(train_cli.main, [*tiny_overrides(out_dir, **QUICK, **NO_DATA), override]) == 2
    assert expected in capsys.readouterr().err and not out_dir.exists()


@pytest.mark.parametrize("devices", ["2", "-1", "auto", "[0,1]", "0,1"])
def test_every_form_of_trainer_devices_is_accepted(devices: str) -> None:
    load_train_config([f"trainer.devices={devices}"])


def test_a_truncated_last_checkpoint_stops_the_resume_before_data_loading(
    race: Race, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(race.out_dir, tmp_path / "interrupted", keep_results=False)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = snapshot(run)
    code = train_cli.run_cli(train_cli.main, [str(run / "config.yaml"), "resume=true", *NO_DATA_OVERRIDE])
    assert code == 2
    error = capsys.readouterr().err
    assert f"Cannot resume from {last}" in error and "truncated or corrupt" in error
    assert snapshot(run) == before


def test_an_unwritable_out_dir_stops_before_data_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out_dir = blocker / "run"
    assert train_cli.run_cli(train_cli.main, tiny_overrides(out_dir, **QUICK, **NO_DATA)) == 2
    assert f"Cannot write to out_dir={out_dir}" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_dir_stops_before_data_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parent = tmp_path / "read_only"
    parent.mkdir(mode=0o500)
    try:
        assert train_cli.run_cli(train_cli.main, tiny_overrides(parent / "run", **QUICK, **NO_DATA)) == 2
    finally:
        parent.chmod(0o700)
    assert "Cannot write to out_dir=" in capsys.readouterr().err
