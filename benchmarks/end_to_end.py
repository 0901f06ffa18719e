"""Wall time of the default experiment, exactly as a user runs it.

    python -m benchmarks.end_to_end [--out-dir DIR] [key=value ...]

Runs ``python -m experiments.train experiments/configs/fmnist_vs_mnist.yaml out_dir=DIR [key=value
...]`` in a subprocess (W&B offline; ``DATA_DIR`` defaults to the offline datasets beside the
repository) and records its wall time, exit status and the ``timing`` block of the run's
``results.json`` (training and test seconds as the run measured them) and its metrics. This
takes many minutes on a CPU: the default experiment trains the full Fashion-MNIST split for several epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DEFAULT_DATA_DIR, write_result

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = "experiments/configs/fmnist_vs_mnist.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="run directory (default: a new temporary one)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides passed on to experiments.train")
    args = parser.parse_args()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="end-to-end-")) / "run"
    command = [sys.executable, "-m", "experiments.train", CONFIG, f"out_dir={out_dir}", *args.overrides]
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    environment.setdefault("DATA_DIR", str(DEFAULT_DATA_DIR))
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment)
    wall = time.perf_counter() - started
    results_file = out_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    path = write_result(
        "end_to_end",
        {
            "command": " ".join(command[1:]),
            "returncode": completed.returncode,
            "wall_seconds": wall,
            "out_dir": str(out_dir),
            "run_timing": results.get("timing"),
            "model": results.get("model"),
            "metrics": results.get("metrics"),
        },
    )
    print(f"{wall:.1f} s wall (exit status {completed.returncode}); wrote {path}")
    sys.exit(completed.returncode)


if __name__ == "__main__":
    main()
