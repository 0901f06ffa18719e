"""A tiny real run, then evaluations of it: data prepared by Lightning's own hook only, ckpt=RUN_DIR,
the checkpoint's path and SHA-256 in results.json, and DATA_DIR over the checkpoint's data path."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from datamodules.ood_datamodule import OODDataModule
from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from tests.helpers import QUICK, QUICK_EVAL, load_results, one_thread, tiny_overrides


@contextmanager
def prepare_data_calls() -> Iterator[list[str | None]]:
    """Record every OODDataModule.prepare_data call: the Trainer stage that made it, None for a call
    from outside a Trainer (the runner's own, before Lightning)."""
    calls: list[str | None] = []
    original = OODDataModule.prepare_data

    def recorded(self: OODDataModule) -> None:
        calls.append(self.trainer.state.fn.value if self.trainer is not None else None)  # type: ignore[union-attr]
        original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OODDataModule, "prepare_data", recorded)
        yield calls


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, list[str | None]]:
    """The run folder and the prepare_data calls its training made."""
    out_dir = tmp_path_factory.mktemp("run_folder") / "run"
    with one_thread(), prepare_data_calls() as calls:
        assert train_cli.run_cli(train_cli.main, tiny_overrides(out_dir, **QUICK)) == 0
    return out_dir, calls


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_leaves_prepare_data_to_the_trainer(trained: tuple[Path, list[str | None]]) -> None:
    """Lightning calls it once per fit / test, on one process per node; the runner never does."""
    assert trained[1] == ["fit", "test"]


def test_evaluating_a_run_folder_scores_its_selected_checkpoint_and_records_it(
    trained: tuple[Path, list[str | None]],
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = trained[0]
    (selected,) = (run / "checkpoints").glob("epoch*.ckpt")
    # DATA_DIR names another path to the same data: the evaluation reads from there.
    elsewhere = tmp_path / "datasets_here"
    elsewhere.symlink_to(data_dir)
    monkeypatch.setenv("DATA_DIR", str(elsewhere))
    out_dir = tmp_path / "eval"
    with one_thread(), prepare_data_calls() as calls:
        assert evaluate_cli.cli([f"ckpt={run}", f"out_dir={out_dir}", *QUICK_EVAL]) == 0
    assert calls == ["test"]
    config = load_results(out_dir)["config"]
    assert config["ckpt"] == str(selected.resolve())
    assert config["ckpt_sha256"] == sha256(selected)
    assert config["data"]["data_dir"] == str(elsewhere)


def test_print_config_of_an_evaluation_takes_the_data_folder_from_DATA_DIR(
    trained: tuple[Path, list[str | None]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = trained[0]
    missing = tmp_path / "no" / "data"
    monkeypatch.setenv("DATA_DIR", str(missing))
    before = sorted(run.rglob("*"))
    assert evaluate_cli.cli(["--print-config", f"ckpt={run}"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["data_dir"] == str(missing)
    assert printed["ckpt_sha256"] == sha256(Path(printed["ckpt"]))
    assert Path(printed["out_dir"]).parent == run.resolve() / "evaluations"
    assert sorted(run.rglob("*")) == before and not missing.exists()  # no folder, no data read

    # Without DATA_DIR the checkpoint's path stays; an explicit data.data_dir wins over both.
    monkeypatch.delenv("DATA_DIR")
    assert evaluate_cli.cli(["--print-config", f"ckpt={run}"]) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())["data"]["data_dir"]
    assert yaml.safe_load(capsys.readouterr().out)["data"]["data_dir"] == stored
    monkeypatch.setenv("DATA_DIR", str(missing))
    assert evaluate_cli.cli(["--print-config", f"ckpt={run}", "data.data_dir=/given"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["data_dir"] == "/given"


def test_a_checkpoint_that_does_not_match_the_given_sha256_is_refused(
    trained: tuple[Path, list[str | None]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = trained[0]
    out_dir = tmp_path / "eval"
    code = evaluate_cli.cli([f"ckpt={run}", f"ckpt_sha256={'ab' * 32}", f"out_dir={out_dir}", *QUICK_EVAL])
    assert code == 2
    error = capsys.readouterr().err
    assert f"ckpt_sha256={'ab' * 32} was given" in error and "drop ckpt_sha256" in error
    assert not out_dir.exists()
