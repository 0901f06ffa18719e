"""What a default training prints: no library noise a user cannot act on, and how to upload the run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_command, tiny_overrides

# Lines Lightning, torch and wandb print with the default config that say nothing about this run.
NOISE = {
    "Lightning's litlogger tip": "litlogger",
    "Lightning's litmodels tip": "litmodels",
    "Lightning's note that limit_*_batches=1.0 was configured": "was configured so",
    "torch's LeafSpec deprecation (raised from Lightning's pytree helper)": "LeafSpec",
    "wandb's warning about the anonymous setting": "anonymous setting",
}


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, tuple[Path, str]]:
    """A tiny training of the default experiment with its W&B logger offline, as `make run` starts
    it, then an evaluation of its checkpoint: each command's out_dir and everything it printed."""
    root = tmp_path_factory.mktemp("console")
    train_dir, evaluation_dir = root / "run", root / "evaluation"
    outputs = {}
    for name, module, arguments, out_dir in (
        ("train", "experiments.train", tiny_overrides(train_dir, **{"logger.mode": "offline"}), train_dir),
        (
            "evaluate",
            "experiments.evaluate",
            [f"ckpt={train_dir / 'checkpoints' / 'last.ckpt'}", f"out_dir={evaluation_dir}"],
            evaluation_dir,
        ),
    ):
        finished: subprocess.CompletedProcess[str] = run_command(module, arguments)
        assert finished.returncode == 0, finished.stderr[-3000:]
        outputs[name] = (out_dir, finished.stdout + finished.stderr)
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("what", list(NOISE))
def test_the_default_commands_print_no_library_noise(
    commands: dict[str, tuple[Path, str]], command: str, what: str
) -> None:
    _, output = commands[command]
    assert NOISE[what] not in output, f"{what} is printed"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_each_command_ends_with_its_outputs_and_the_wandb_sync_command(
    commands: dict[str, tuple[Path, str]], command: str
) -> None:
    out_dir, output = commands[command]
    assert f"Outputs in {out_dir}: " in output
    assert f"Results written to {out_dir / 'results.json'}" in output
    sync_commands = re.findall(r"^  wandb sync (\S+)$", output, flags=re.MULTILINE)
    assert len(sync_commands) == 1, output[-2000:]
    synced = Path(sync_commands[0])
    assert synced.parent == out_dir / "wandb" and synced.name.startswith("offline-run-")
    assert list(synced.glob("run-*.wandb")), "the command names a folder without the run's data"
