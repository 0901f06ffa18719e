"""The selection-suite corruptions: shape and dtype kept, seeded, and each does what it says."""

from __future__ import annotations

import pytest
import torch

from datamodules.corruptions import (
    BRIGHTNESS_SHIFT,
    CONTRAST_FACTOR,
    ERASE_FRACTION,
    MOSAIC_CELL,
    SELECTION_CORRUPTIONS,
    corrupt,
)
from datamodules.transforms import OUTLIER_TRANSFORMS


def images(count: int = 6) -> torch.Tensor:
    return torch.randint(
        0, 256, (count, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )


@pytest.mark.parametrize("name", list(SELECTION_CORRUPTIONS))
def test_shape_dtype_and_seed(name: str) -> None:
    x = images()
    first, again = corrupt(name, x, seed=3), corrupt(name, x, seed=3)
    assert first.shape == x.shape and first.dtype == torch.uint8
    assert torch.equal(first, again)
    assert not torch.equal(first, x)


def test_none_is_in_the_evaluation_suite() -> None:
    """Selection must not see the evaluation's outliers (README, 'Choosing the default')."""
    evaluated = {"hflip", "vflip", "gaussian_noise", "uniform_noise", "constant"}
    assert not set(SELECTION_CORRUPTIONS) & evaluated
    assert evaluated <= set(OUTLIER_TRANSFORMS)


def test_patch_shuffle_permutes_patches_and_mixup_never_pairs_an_image_with_itself() -> None:
    x = images()
    shuffled = corrupt("patch_shuffle", x, seed=1)
    for row in range(len(x)):
        patches = x[row, 0].unfold(0, 7, 7).unfold(1, 7, 7).reshape(16, 49)
        moved = shuffled[row, 0].unfold(0, 7, 7).unfold(1, 7, 7).reshape(16, 49)
        assert sorted(map(tuple, patches.tolist())) == sorted(map(tuple, moved.tolist()))
    mixed = corrupt("mixup", x, seed=1).float()
    assert all(not torch.allclose(mixed[row], x[row].float(), atol=1) for row in range(len(x)))


def test_erase_blanks_one_square_and_invert_reverses() -> None:
    x = torch.full((3, 1, 28, 28), 200, dtype=torch.uint8)
    erased = corrupt("erase", x, seed=2)
    side = int(28 * ERASE_FRACTION)
    assert ((erased == 0).flatten(1).sum(dim=1) == side * side).all()
    assert torch.equal(corrupt("invert", corrupt("invert", x, 0), 0), x)


def test_pixel_permute_keeps_each_images_intensities_and_mosaic_is_constant_per_cell() -> None:
    x = images()
    permuted = corrupt("pixel_permute", x, seed=4)
    assert torch.equal(permuted.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    tiled = corrupt("mosaic", x, seed=4)
    cells = tiled[:, 0].unfold(1, MOSAIC_CELL, MOSAIC_CELL).unfold(2, MOSAIC_CELL, MOSAIC_CELL)
    assert (cells == cells[..., :1, :1]).all()
    expected = x[:, 0, :MOSAIC_CELL, :MOSAIC_CELL].float().mean(dim=(1, 2)).round()
    assert torch.equal(tiled[:, 0, 0, 0].float(), expected)


def test_contrast_keeps_each_images_mean_and_brightness_lifts_the_background() -> None:
    x = images()
    flat = corrupt("contrast", x, seed=5).float()
    means = x.float().mean(dim=(-2, -1))
    assert torch.allclose(flat.mean(dim=(-2, -1)), means, atol=0.5)  # up to rounding
    deviation = (x.float() - means[..., None, None]).abs().amax()
    assert (flat - means[..., None, None]).abs().amax() <= CONTRAST_FACTOR * deviation + 0.5
    black = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    black[:, :, 10:18, 10:18] = 250
    lifted = corrupt("brightness", black, seed=5)
    assert (lifted[:, :, :5] == round(BRIGHTNESS_SHIFT * 255)).all()
    assert (lifted[:, :, 10:18, 10:18] == 255).all()
