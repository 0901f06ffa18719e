"""What every entry point does around its work: report user errors as one clear paragraph, and
answer ``--help`` and ``--print-config`` without doing any work.

Tracebacks are for bugs. A wrong key, an impossible value, a missing dataset or a diverging loss
is the user's to fix, so it is printed as the message alone (the message names the fix) and the
process exits with status 2. Set OOD_TRACEBACK=1 to see the traceback anyway.

The two flags are the only arguments that are not `key=value`: a flag cannot be mistaken for a
setting of the run, and it never reaches the config (nor config.yaml, nor W&B).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)
HELP_FLAGS = ("-h", "--help")
PRINT_CONFIG_FLAG = "--print-config"


def run_cli(
    main: Callable[[Sequence[str]], None],
    argv: Sequence[str] | None = None,
    *,
    usage: str = "",
    schema: type | None = None,
    load_config: Callable[[Sequence[str]], DictConfig] | None = None,
) -> int:
    """Run `main` on the arguments; or, given `schema`, answer --help with `usage` and every config
    key; or, given `load_config` (the entry point's own parsing, so the printed config is the one a
    run would use), answer --print-config with the resolved config as YAML. Neither flag reads data
    or creates a folder."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        if schema is not None and any(argument in HELP_FLAGS for argument in arguments):
            from experiments.help import command_help

            print(command_help(usage, schema, can_print_config=load_config is not None))
        elif load_config is not None and PRINT_CONFIG_FLAG in arguments:
            config = load_config([argument for argument in arguments if argument != PRINT_CONFIG_FLAG])
            print(OmegaConf.to_yaml(config, resolve=True), end="")
        else:
            main(arguments)
    except USER_ERRORS as error:
        if os.environ.get("OOD_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


@rank_zero_only
def report_results(out_dir: Path) -> None:
    """Say where the outputs are, once (under DDP every process runs the entry point), and how to
    upload an offline W&B run: its folders are named by time and id, so the command is spelled out."""
    written = sorted(path.name + ("/" if path.is_dir() else "") for path in out_dir.iterdir())
    print(f"Outputs in {out_dir}: {', '.join(written)}")
    print(f"Results written to {out_dir / 'results.json'}")
    offline_runs = sorted((out_dir / "wandb").glob("offline-run-*"))  # one per start: resumes add one
    if offline_runs:
        print("The W&B run was logged offline; upload it with:")
        print("  wandb sync " + " ".join(str(path) for path in offline_runs))
