"""What every entry point does around its work: report user errors as one clear paragraph.

Tracebacks are for bugs. A wrong key, an impossible value, a missing dataset or a diverging loss
is the user's to fix, so it is printed as the message alone (the message names the fix) and the
process exits with status 2. Set OOD_TRACEBACK=1 to see the traceback anyway.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pytorch_lightning.utilities import rank_zero_only

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)


def run_cli(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        main(arguments)
    except USER_ERRORS as error:
        if os.environ.get("OOD_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


@rank_zero_only
def report_results(out_dir: Path) -> None:
    """Say where the outputs are, once: under DDP every process runs the entry point."""
    print(f"Results written to {out_dir / 'results.json'}")
