"""An image folder that cannot be read stops with one message that names the file or the layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.sources import ImageSet, load_source, parse_spec


def load_outlier(folder: Path) -> ImageSet:
    return load_source(parse_spec(str(folder), "outlier"), "test", str(folder.parent), download=False)


def write_png(path: Path, seed: int = 0) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(28, 28), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path.read_bytes()


def truncate(path: Path) -> None:
    """Keep the first half of the file: what an interrupted copy or download leaves."""
    data = write_png(path, seed=1)
    path.write_bytes(data[: len(data) // 2])


def not_an_image(path: Path) -> None:
    path.write_text("these are my notes, not a picture\n")


@pytest.mark.parametrize("spoil", [truncate, not_an_image], ids=["truncated", "text"])
def test_an_unreadable_image_is_named_with_the_fix(tmp_path: Path, spoil: Callable[[Path], None]) -> None:
    folder = tmp_path / "shapes"
    write_png(folder / "a" / "0.png")
    bad = folder / "b" / "1.png"
    write_png(bad)
    spoil(bad)
    with pytest.raises(ValueError) as raised:
        load_outlier(folder)
    message = str(raised.value)
    assert str(bad) in message and "replace the file with a complete image or delete it" in message


def test_a_folder_without_class_folders_lists_the_accepted_forms(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as raised:
        load_outlier(empty)
    message = str(raised.value)
    for form in (
        "IDX files",
        "ImageFolder layout, <folder>/<class>/<image>",
        ".png",
        ".npz file",
        "transform",
    ):
        assert form in message


def test_images_directly_in_the_folder_are_pointed_to_a_class_subfolder(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    write_png(loose / "0.png")
    with pytest.raises(ValueError, match="move them into a class subfolder") as raised:
        load_outlier(loose)
    assert "0.png" in str(raised.value)
