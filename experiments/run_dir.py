"""A run folder is one run's alone: claimed before anything is written, never overwritten or mixed.

Researchers leave runs going overnight, start a second one into the same folder by mistake, copy
folders between machines and resume them. Everything here keeps one folder = one run:

- :func:`claim_run_dir` takes an exclusive ``flock`` on ``OUT_DIR/.run.lock`` before the run
  writes anything and holds it until the run ends. The kernel drops the lock when the process dies
  (even by SIGKILL), so a killed run can always be resumed, while a second live process gets one
  clear error naming the holder's pid and host.
- :func:`check_new_run_dir` refuses a folder that holds anything at all, not only checkpoints.
- :func:`check_resume_compatible` lets a resume change only what does not decide the trained
  weights (:data:`CHANGEABLE_ON_RESUME`), so a resumed run never mixes two configurations.
- :func:`finished_results` tells a resume of a run that already tested from an interrupted one.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_only

LOCK_NAME = ".run.lock"
RESULTS_NAME = "results.json"

# What a resume may change: how long the run trains, where and on what hardware it runs, what is
# evaluated and how it is shown. Anything else (model.*, optim.*, seed, experiment, the data that
# trains and validates, the remaining trainer keys) decides the trained weights or the selected
# checkpoint, so changing it would leave a folder mixed from two runs. `block.*` covers a whole block.
CHANGEABLE_ON_RESUME = (
    "out_dir",
    "resume",
    "retest",
    "checkpoint_every_n_steps",
    "trainer.max_epochs",
    "trainer.accelerator",
    "trainer.limit_test_batches",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    # Only the outlier sets depend on these: which sets, their noise, where the same files are read
    # from (a copied folder on another machine), how they are loaded.
    "data.outliers",
    "data.noise_seed",
    "data.data_dir",
    "data.download",
    "data.num_workers",
    "scores.*",
    "plots.*",
    "logger.*",
)


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message names the folder and the fix."""


def is_launching_process() -> bool:
    """Whether this process owns the run folder: global rank 0, on node 0.

    Lightning re-runs the entry point for every further DDP process with its rank in the
    environment; those processes work inside the folder the first one claimed. NODE_RANK covers a
    multi-node run whose nodes were started by hand (no RANK variable before the Trainer starts).
    """
    return getattr(rank_zero_only, "rank", 0) == 0 and os.environ.get("NODE_RANK", "0") == "0"


@contextmanager
def claim_run_dir(out_dir: Path, new_run_hint: str | None = None) -> Iterator[None]:
    """Hold OUT_DIR/.run.lock for the duration of the block; other DDP ranks claim nothing.

    With `new_run_hint` the folder must also be empty (see :func:`check_new_run_dir`, whose
    message ends with the hint); checked under the lock, so two new runs cannot both find it empty.
    The folder (and its parents) is created here, so an unwritable out_dir fails now, before any
    data is loaded. On the way out the lock file is removed, and so is the folder if this claim
    created it and the run wrote nothing into it: a run that failed early leaves no trace.
    """
    if not is_launching_process():
        yield
        return
    created = not out_dir.exists()
    descriptor = _acquire(out_dir)
    try:
        if new_run_hint is not None:
            check_new_run_dir(out_dir, new_run_hint)
        yield
    finally:
        try:
            (out_dir / LOCK_NAME).unlink(missing_ok=True)
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()
        finally:
            os.close(descriptor)  # releases the lock, after the file is gone (see _acquire)


def _acquire(out_dir: Path) -> int:
    lock = out_dir / LOCK_NAME
    while True:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise RunDirError(
                f"Cannot write to out_dir={out_dir} ({error.strerror or error}). Choose a folder you "
                f"can write to with out_dir=PATH, or fix its permissions."
            ) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 512, 0).decode(errors="replace").strip()
            os.close(descriptor)
            raise RunDirError(
                f"out_dir={out_dir} is in use by another run ({holder or 'a process that is starting'}; "
                f"lock file {lock}). Nothing was written. Wait for that run to end, stop it, or choose "
                f"another out_dir=PATH."
            ) from None
        # A holder that just ended removed the file it had locked: this lock guards nothing then,
        # so lock the file that is there now.
        if _is_same_file(descriptor, lock):
            break
        os.close(descriptor)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    return descriptor


def _is_same_file(descriptor: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def check_new_run_dir(out_dir: Path, hint: str) -> None:
    """Refuse a folder that holds any file or folder (apart from this run's lock): nothing is overwritten."""
    held = sorted(path.name for path in out_dir.iterdir() if path.name != LOCK_NAME)
    if held:
        shown = ", ".join(held[:6]) + (", ..." if len(held) > 6 else "")
        raise FileExistsError(
            f"{out_dir} already holds a run or other files ({shown}). Nothing there is overwritten: "
            f"choose another out_dir=PATH{hint}."
        )


def finished_results(out_dir: Path) -> Path | None:
    """results.json of a run that already tested, or None for a run still to finish."""
    results = out_dir / RESULTS_NAME
    return results if results.is_file() else None


def stored_run_config(checkpoint: Path) -> dict[str, Any]:
    """The run config a checkpoint was trained with; reading it proves the file is intact.

    Done before any data is loaded, so a truncated or corrupt last.ckpt stops a resume at once.
    """
    try:
        contents = torch.load(checkpoint, map_location="cpu", weights_only=True)
        run_config = contents["hyper_parameters"].get("run_config") or {}
    except Exception as error:  # a truncated zip, a foreign pickle, a missing key: one message
        raise RunDirError(
            f"Cannot resume from {checkpoint}: the file is truncated or corrupt, or not a checkpoint "
            f"of this framework ({type(error).__name__}: {error}). Restore an intact copy of it, or "
            f"start a new run in another out_dir=PATH (without resume=true)."
        ) from None
    return dict(run_config)


def check_resume_compatible(stored: Mapping[str, Any], current: Mapping[str, Any], out_dir: Path) -> None:
    """Refuse overrides that would make the resumed run another run than the one in the folder."""
    before, after = _flatten(stored), _flatten(current)
    changed = [
        f"{key} (the run has {before[key]!r}, now {after[key]!r})"
        for key in sorted(before.keys() & after.keys())
        if before[key] != after[key] and not _changeable(key)
    ]
    if changed:
        raise RunDirError(
            f"Cannot resume {out_dir} with {'; '.join(changed)}: these keys decide what the run trains, "
            f"so its checkpoint and outputs would mix two runs. On resume only these keys can change: "
            f"{', '.join(CHANGEABLE_ON_RESUME)}. "
            f"Drop the other overrides, or start a new run in another out_dir=PATH."
        )


def _changeable(key: str) -> bool:
    return any(
        key.startswith(allowed[:-1]) if allowed.endswith(".*") else key == allowed
        for allowed in CHANGEABLE_ON_RESUME
    )


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
