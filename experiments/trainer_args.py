"""`trainer.NAME=VALUE` for any pytorch_lightning.Trainer argument, checked against Lightning's signature.

Why not mirror every Trainer argument in the schema: Lightning has some forty, and each one left
out of the mirror was a code change away from being usable. ``TrainerConfig`` keeps the arguments
this framework gives its own default or checks before any data is read (``devices``,
``limit_*_batches``: Lightning would reject a bad value only after the data has loaded); any other
name is checked here against ``inspect.signature(pytorch_lightning.Trainer.__init__)``, so a typo
still stops the run at once, with the closest valid name. The arguments the framework passes
itself cannot be given: the run depends on them.
"""

from __future__ import annotations

import difflib
import functools
import inspect

# Trainer arguments the runner sets itself (experiments/runner.py build_trainer), and why.
FRAMEWORK_ARGUMENTS: dict[str, str] = {
    "callbacks": (
        "the framework passes its own callbacks (the best-epoch checkpoint, checkpoints/last.ckpt "
        "to resume from, the OOD evaluation)"
    ),
    "logger": "the W&B logger is built from the logger.* keys (logger.mode=disabled turns it off)",
    "default_root_dir": "it is the run's out_dir: set out_dir=PATH instead",
    "plugins": (
        "the framework's atomic checkpoint writer must save every checkpoint, so that a killed "
        "run can always resume"
    ),
    "enable_checkpointing": "the checkpoints select the tested epoch and make the run resumable",
    "barebones": "it switches off the checkpoints and logging that the run relies on",
}


@functools.cache
def trainer_argument_names() -> frozenset[str]:
    """The keyword arguments of ``pytorch_lightning.Trainer``, read from its own signature.

    Imported here, on demand, so that loading a config that uses only TrainerConfig's keys imports
    no Lightning (and no torch).
    """
    import pytorch_lightning as pl

    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = inspect.signature(pl.Trainer.__init__).parameters.values()
    return frozenset(parameter.name for parameter in parameters if parameter.kind in keyword) - {"self"}


def trainer_argument_problem(name: str) -> str | None:
    """Why `trainer.<name>` cannot be given, naming the fix; None when Lightning's Trainer takes it."""
    if name in FRAMEWORK_ARGUMENTS:
        return f"'trainer.{name}' cannot be set: {FRAMEWORK_ARGUMENTS[name]}. Drop that key."
    accepted = trainer_argument_names() - FRAMEWORK_ARGUMENTS.keys()
    if name in accepted:
        return None
    unknown = f"Unknown trainer key 'trainer.{name}': pytorch_lightning.Trainer has no argument {name!r}."
    close = difflib.get_close_matches(name, sorted(accepted), n=1)
    if close:
        return f"{unknown} Did you mean 'trainer.{close[0]}'? Fix the spelling of '{name}'."
    return f"{unknown} The trainer block takes any Trainer argument: {', '.join(sorted(accepted))}."
