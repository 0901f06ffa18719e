"""Shared test setup: real offline data from DATA_DIR when present, W&B strictly offline, quiet logs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DATA_DIR", str((REPO_ROOT.parent / "shared" / "datasets").resolve()))
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
# W&B keeps staging files and settings under the home directory by default; tests leave no trace.
_WANDB_HOME = tempfile.mkdtemp(prefix="wandb-tests-")
for _variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
    os.environ[_variable] = _WANDB_HOME

from tests.helpers import DATA_DIR, DATA_MISSING  # noqa: E402  (after DATA_DIR is set above)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline datasets; a test that asks for them is skipped, naming the folder, without them."""
    if not (DATA_DIR / "fashion-mnist").is_dir():
        pytest.skip(DATA_MISSING)
    return DATA_DIR
