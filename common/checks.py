"""Checks shared by the config dataclasses' ``__post_init__`` methods.

Each package validates its own config block; these helpers only keep the messages uniform. They
raise ``ValueError`` naming the full key and the valid values, so the entry points can print the
message alone (exit status 2). Nothing here imports torch, so validating a config stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """Reject ``value`` unless it is one of ``choices``."""
    if value not in choices:
        raise ValueError(
            f"Invalid value {value!r} for '{key}'. Valid choices: {', '.join(map(str, choices))}."
        )


def check_at_least(key: str, value: float | None, minimum: float, strict: bool = False) -> None:
    """Reject a number below ``minimum`` (or equal to it when ``strict``); None passes (switched off)."""
    if value is None:
        return
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"Invalid value {value!r} for '{key}': it must be {bound}.")
