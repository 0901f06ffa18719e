"""The command line of the entry points: --help, --print-config, any Trainer argument, the L in
default out_dirs, and sweep files checked by W&B's own validator. None of these trains a model."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from experiments import evaluate as evaluate_cli
from experiments import sweep as sweep_cli
from experiments import train as train_cli
from experiments.config import ConfigError, EvaluateConfig, TrainConfig, TrainerConfig, load_config
from experiments.help import UNDOCUMENTED, documented_keys
from experiments.train import load_train_config
from experiments.trainer_args import FRAMEWORK_ARGUMENTS, trainer_argument_names


def schema_keys(schema: type) -> list[str]:
    """Every dotted leaf key of a config schema, read from OmegaConf (not from the help module)."""

    def leaves(node: DictConfig, prefix: str) -> list[str]:
        keys = []
        for key, value in node.items_ex(resolve=False):
            name = f"{prefix}{key!s}"
            keys.extend(leaves(value, name + ".") if isinstance(value, DictConfig) else [name])
        return keys

    return leaves(OmegaConf.structured(schema), "")


# ---------------------------------------------------------------------------- --help
ENTRY_POINTS: list[tuple[ModuleType, type]] = [
    (train_cli, TrainConfig),
    (evaluate_cli, EvaluateConfig),
    (sweep_cli, TrainConfig),  # its key=value overrides go to every trial's training
]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize(("module", "schema"), ENTRY_POINTS, ids=["train", "evaluate", "sweep"])
def test_help_lists_every_key_with_its_default_and_exits_0(
    module: ModuleType, schema: type, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert module.cli([flag]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(str(module.__doc__).strip().splitlines()[0])
    # Key lines are indented two spaces per group level; their docs, four more.
    lines = re.findall(r"^( *)([\w.]+) = ", shown, flags=re.MULTILINE)
    listed = [key for indent, key in lines if len(indent) == 2 * key.count(".")]
    assert sorted(listed) == sorted(schema_keys(schema))
    assert re.search(r"^\s*trainer\.max_epochs = 10$", shown, flags=re.MULTILINE)
    if schema is TrainConfig:
        lipschitz = shown.split("model.lipschitz = null\n", 1)[1].splitlines()[0]
        assert "fixed Lipschitz constant of the encoder" in lipschitz


def test_help_runs_nothing_else(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--help wins over everything else on the line, even arguments that would fail."""
    assert train_cli.cli(["model.latnet_dim=3", f"out_dir={tmp_path / 'run'}", "--help"]) == 0
    assert "model.latent_dim" in capsys.readouterr().out and not (tmp_path / "run").exists()


KEY_GROUPS = sorted({key.split(".")[0] if "." in key else "" for key in documented_keys(TrainConfig)})


@pytest.mark.parametrize("group", KEY_GROUPS, ids=lambda group: group or "top-level")
def test_every_key_has_a_doc(group: str) -> None:
    """A key's doc is the comment above its field: every field of every block has one."""
    keys = {**documented_keys(TrainConfig), **documented_keys(EvaluateConfig)}
    in_group = {key: doc for key, doc in keys.items() if (key.split(".")[0] if "." in key else "") == group}
    assert in_group
    assert [key for key, doc in in_group.items() if doc == UNDOCUMENTED] == []


# ---------------------------------------------------------------------------- --print-config
def test_print_config_prints_the_resolved_config_and_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "data"
    monkeypatch.setenv("DATA_DIR", str(missing))
    monkeypatch.chdir(tmp_path)  # the default out_dir is relative: outputs/... would appear here
    assert train_cli.cli(["--print-config", "trainer.accumulate_grad_batches=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["data_dir"] == str(missing)
    assert printed["trainer"]["accumulate_grad_batches"] == 2
    assert re.fullmatch(r"outputs/fmnist_vs_mnist/alexandroff_Linf/seed0/\d{8}-\d{6}", printed["out_dir"])
    assert "print_config" not in printed and "--print-config" not in str(printed)
    assert list(tmp_path.iterdir()) == []


def test_print_config_reports_a_bad_key_like_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli.cli(["--print-config", "model.latnet_dim=3"]) == 2
    assert "Unknown config key 'model.latnet_dim'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- any Trainer argument
def test_any_trainer_argument_reaches_the_trainer(tmp_path: Path) -> None:
    from experiments.runner import build_trainer

    config = load_train_config(["trainer.accumulate_grad_batches=2", "trainer.accelerator=cpu"])
    assert config.trainer.accumulate_grad_batches == 2
    trainer = build_trainer(config, tmp_path, [], False)
    assert trainer.accumulate_grad_batches == 2


def test_a_misspelt_trainer_argument_exits_2_with_the_close_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli.cli(["trainer.acumulate_grad_batches=2"]) == 2
    error = capsys.readouterr().err
    assert error.count("error:") == 1 and "'trainer.acumulate_grad_batches'" in error
    assert "Did you mean 'trainer.accumulate_grad_batches'?" in error


@pytest.mark.parametrize("key", sorted(FRAMEWORK_ARGUMENTS))
def test_trainer_arguments_the_framework_sets_are_refused_saying_why(key: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"'trainer\.{key}' cannot be set: {re.escape(FRAMEWORK_ARGUMENTS[key])}"
    ):
        load_train_config([f"trainer.{key}=null"])


def test_the_trainer_block_keys_are_lightning_trainer_arguments() -> None:
    own = {entry.name for entry in fields(TrainerConfig)}
    assert own <= trainer_argument_names() - FRAMEWORK_ARGUMENTS.keys()


@pytest.mark.parametrize(
    ("override", "expected"),
    [("trainer.devices=0", "trainer.devices"), ("trainer.limit_val_batches=1.5", "limit_val_batches")],
)
def test_trainer_values_are_still_checked_up_front(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_train_config(["trainer.accumulate_grad_batches=2", override])


def test_trainer_arguments_stored_in_a_checkpoint_load_again() -> None:
    """An evaluation (or a resume) starts from the stored config, extra Trainer arguments included."""
    stored = {"trainer": {"accumulate_grad_batches": 2, "max_epochs": 3}}
    config = load_config(EvaluateConfig, None, ["ckpt=x.ckpt"], defaults=stored)
    assert (config.trainer.accumulate_grad_batches, config.trainer.max_epochs) == (2, 3)
    with pytest.raises(ConfigError, match="Did you mean 'trainer.max_epochs'"):
        load_config(EvaluateConfig, None, ["ckpt=x.ckpt"], defaults={"trainer": {"max_epoch": 3}})


# ---------------------------------------------------------------------------- L in the out_dir
@pytest.mark.parametrize(
    ("overrides", "folder"),
    [
        ([], "alexandroff_Linf"),
        (["model.variant=alexandroff_lipschitz", "model.lipschitz=1.0"], "alexandroff_lipschitz_L1"),
        (["model.variant=lipschitz", "model.lipschitz=0.5"], "lipschitz_L0.5"),
        (["model.variant=lipschitz", "model.lipschitz=inf"], "lipschitz_Linf"),
        (["model.variant=gaussian", "model.lipschitz=2.0"], "gaussian_Linf"),  # ignored by gaussian
    ],
)
@pytest.mark.filterwarnings("ignore:model.lipschitz=2.0 is ignored")
def test_the_default_out_dir_names_the_lipschitz_constant(overrides: list[str], folder: str) -> None:
    config = load_train_config([*overrides, "seed=3"])
    assert re.fullmatch(rf"outputs/fmnist_vs_mnist/{re.escape(folder)}/seed3/\d{{8}}-\d{{6}}", config.out_dir)


# ---------------------------------------------------------------------------- sweep files
GRID = """
method: grid
metric: {name: test/mnist/hole_knn/auroc, goal: GOAL}
parameters:
  seed: {values: [0, 1]}
command: ["${interpreter}", "-c", "pass", "${args_no_hyphens}"]
"""


def test_a_sweep_file_w_and_b_would_refuse_exits_2_with_its_validator_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(GRID.replace("GOAL", "maximise"))
    assert sweep_cli.cli([str(sweep_file), f"sweep_dir={tmp_path / 'out'}"]) == 2
    error = capsys.readouterr().err
    assert "W&B would refuse" in error and "'maximise' is not one of ['minimize', 'maximize']" in error
    assert not (tmp_path / "out").exists()


def test_valid_sweep_files_pass_the_validator(tmp_path: Path) -> None:
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(GRID.replace("GOAL", "maximize"))
    assert sweep_cli.load_sweep(sweep_file)["metric"]["goal"] == "maximize"
    sweep_cli.load_sweep(Path(sweep_cli.__file__).parent / "sweeps" / "lipschitz.yaml")


def test_a_missing_validator_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sweeps", None)  # `import sweeps` raises ImportError
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(GRID.replace("GOAL", "maximize"))
    with pytest.raises(ConfigError, match=r"pip install 'sweeps>=0\.2,<0\.3'"):
        sweep_cli.load_sweep(sweep_file)


# ---------------------------------------------------------------------------- ckpt=RUN_DIR
def make_run_folder(root: Path, *names: str) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    for name in names:
        (root / "checkpoints" / name).write_bytes(b"")
    return root


def test_a_run_folder_as_ckpt_is_its_selected_checkpoint(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run", "epoch007.ckpt", "last.ckpt")
    assert evaluate_cli.checkpoint_argument([f"ckpt={run}"]) == run / "checkpoints" / "epoch007.ckpt"


@pytest.mark.parametrize(
    ("names", "problem"),
    [(["last.ckpt"], "no selected epoch"), (["epoch001.ckpt", "epoch004.ckpt"], "2 candidates")],
)
def test_a_run_folder_without_exactly_one_selected_checkpoint_is_refused(
    tmp_path: Path, names: list[str], problem: str
) -> None:
    run = make_run_folder(tmp_path / "run", *names)
    with pytest.raises(ConfigError) as error:
        evaluate_cli.checkpoint_argument([f"ckpt={run}"])
    message = str(error.value)
    assert problem in message and all(name in message for name in names) and "ckpt=" in message
