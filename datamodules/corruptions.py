"""Synthetic outliers made from the inlier *validation* split, for choosing settings (not for reporting).

The default configuration is chosen on these (README, "Choosing the default"), so they must share
nothing with the evaluation suite: no flips, no noise, no constant images, no second dataset. Each
corruption takes uint8 ``[N, C, H, W]`` images and a seeded generator and returns new images of the
same shape and dtype; the random ones depend only on the images and the seed. The first six keep
the image's structure; the two *far* ones of round 3 (``pixel_permute``, ``mosaic``) destroy its
fine structure, so the suite can also reward a score that sees inputs far from every inlier. Round
9's two photometric ones (``contrast``, ``brightness``) keep the structure but move the pixel
statistics out of the inliers' range: ImageNet-C's corruptions of those names (Hendrycks &
Dietterich 2019) at its most severe level, 5.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Corruption = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
BLUR_SIGMA = 1.5  # pixels
PATCH_GRID = 4  # patch_shuffle permutes a 4 x 4 grid of patches (7 x 7 pixels at 28 x 28)
ERASE_FRACTION = 0.5  # erase blanks a square of half the image side (14 x 14 at 28 x 28)
MOSAIC_CELL = 7  # mosaic averages cells of 7 x 7 pixels (a 4 x 4 mosaic at 28 x 28)
# ImageNet-C's severity 5 of its contrast and brightness corruptions (Hendrycks & Dietterich 2019).
CONTRAST_FACTOR = 0.05  # the deviation from the image's mean intensity is scaled by this
BRIGHTNESS_SHIFT = 0.5  # added to every intensity in [0, 1] (ImageNet-C adds it to HSV's value)


def invert(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return 255 - images


def rot90(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rot90(images, 1, dims=(-2, -1)).contiguous()


def blur(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    radius = int(3 * BLUR_SIGMA)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * BLUR_SIGMA**2))
    kernel = kernel / kernel.sum()
    x = images.float().flatten(0, 1).unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.view(images.shape).round().clamp(0, 255).to(torch.uint8)


def patch_shuffle(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cut each image into a PATCH_GRID x PATCH_GRID grid of patches and permute them (per image)."""
    count, channels, height, width = images.shape
    rows, cols = height // PATCH_GRID, width // PATCH_GRID
    cropped = images[..., : rows * PATCH_GRID, : cols * PATCH_GRID]
    patches = cropped.reshape(count, channels, PATCH_GRID, rows, PATCH_GRID, cols).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(count, PATCH_GRID * PATCH_GRID, channels, rows, cols)
    order = torch.stack([torch.randperm(PATCH_GRID * PATCH_GRID, generator=generator) for _ in range(count)])
    shuffled = patches[torch.arange(count).unsqueeze(1), order]
    shuffled = shuffled.reshape(count, PATCH_GRID, PATCH_GRID, channels, rows, cols).permute(0, 3, 1, 4, 2, 5)
    result = images.clone()
    result[..., : rows * PATCH_GRID, : cols * PATCH_GRID] = shuffled.reshape(cropped.shape)
    return result


def mixup(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The mean of each image and another one (a derangement of the set: never itself)."""
    count = images.shape[0]
    shift = int(torch.randint(1, max(count, 2), (1,), generator=generator))
    partners = images.roll(shift, dims=0)
    return ((images.float() + partners.float()) / 2).round().to(torch.uint8)


def erase(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    count, _, height, width = images.shape
    size_h, size_w = int(height * ERASE_FRACTION), int(width * ERASE_FRACTION)
    top = torch.randint(0, height - size_h + 1, (count,), generator=generator)
    left = torch.randint(0, width - size_w + 1, (count,), generator=generator)
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    inside = (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + size_h).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + size_w).view(-1, 1, 1))
    )
    return images.masked_fill(inside.unsqueeze(1), 0)


def pixel_permute(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Permute each image's pixels at random: the inliers' intensities without any spatial structure."""
    count = images.shape[0]
    flat = images.flatten(1)
    order = torch.stack([torch.randperm(flat.shape[1], generator=generator) for _ in range(count)])
    return flat.gather(1, order).view(images.shape)


def mosaic(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Replace each MOSAIC_CELL x MOSAIC_CELL cell by its mean: the silhouette without any detail."""
    height, width = images.shape[-2:]
    means = F.avg_pool2d(images.float(), MOSAIC_CELL, ceil_mode=True)
    cells = means.repeat_interleave(MOSAIC_CELL, dim=-2).repeat_interleave(MOSAIC_CELL, dim=-1)
    return cells[..., :height, :width].round().to(torch.uint8).contiguous()


def contrast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scale each image's deviation from its own mean intensity (per channel) by CONTRAST_FACTOR:
    a nearly flat image at the inlier's mean grey, the garment or digit a faint trace in it."""
    x = images.float()
    means = x.mean(dim=(-2, -1), keepdim=True)
    return ((x - means) * CONTRAST_FACTOR + means).round().clamp(0, 255).to(torch.uint8)


def brightness(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Add BRIGHTNESS_SHIFT to every intensity (clipped at white): a grey background. For grey images
    ImageNet-C's shift of HSV's value is exactly this shift of the intensity."""
    shifted = images.float() + BRIGHTNESS_SHIFT * 255
    return shifted.round().clamp(0, 255).to(torch.uint8)


SELECTION_CORRUPTIONS: dict[str, Corruption] = {
    "invert": invert,
    "rot90": rot90,
    "blur": blur,
    "patch_shuffle": patch_shuffle,
    "mixup": mixup,
    "erase": erase,
    "pixel_permute": pixel_permute,
    "mosaic": mosaic,
    "contrast": contrast,
    "brightness": brightness,
}


def corrupt(name: str, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply corruption ``name`` with a fresh generator seeded by ``seed``."""
    if name not in SELECTION_CORRUPTIONS:
        raise ValueError(
            f"Unknown corruption {name!r}; the corruptions are {', '.join(SELECTION_CORRUPTIONS)}."
        )
    return SELECTION_CORRUPTIONS[name](images, torch.Generator().manual_seed(seed))
