"""Outliers made from the inlier test set: flips, rotation, noise and constant images.

They need no extra data and probe different failure modes: flipped / rotated images keep the
inlier's pixel statistics but break its structure, while noise and constant images keep nothing
but the image size. All of them work on uint8 ``[N, C, H, W]`` tensors and return new tensors of
the same shape and dtype; the random ones draw from a generator seeded by ``data.noise_seed``, so
an outlier set is identical across runs and processes.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Gaussian-noise parameters on the [0, 255] scale: mean mid-grey, std a quarter of the range, so
# about 95 % of the pixels fall inside [0, 255] before clamping and the images are not mostly
# saturated black/white.
GAUSSIAN_MEAN = 127.5
GAUSSIAN_STD = 63.75


@dataclass(frozen=True)
class OutlierTransform:
    """One registry entry.

    ``keeps_labels`` says whether the inlier class labels still describe the outputs (a flipped
    shoe is still labelled "shoe"); synthetic images get label -1 (unknown).
    """

    apply: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    keeps_labels: bool


def _hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images.flip(-1)


def _vflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images.flip(-2)


def _rot90(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    height, width = images.shape[-2:]
    if height != width:
        raise ValueError(
            f"The rot90 outlier needs square images, but the inlier test images are {height}x"
            f"{width}, so rotated images would not match the inlier shape. Set data.image_size to "
            "resize every dataset to a square size, or use hflip / vflip instead."
        )
    return torch.rot90(images, 1, dims=(-2, -1)).contiguous()


def _gaussian_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=generator) * GAUSSIAN_STD + GAUSSIAN_MEAN
    return noise.round_().clamp_(0, 255).to(torch.uint8)


def _uniform_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, images.shape, generator=generator, dtype=torch.uint8)


def _constant(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # One value per image and channel: a random grey level, or a random colour for RGB.
    count, channels = images.shape[:2]
    levels = torch.randint(0, 256, (count, channels, 1, 1), generator=generator, dtype=torch.uint8)
    return levels.expand(images.shape).contiguous()


OUTLIER_TRANSFORMS: dict[str, OutlierTransform] = {
    "hflip": OutlierTransform(_hflip, keeps_labels=True),
    "vflip": OutlierTransform(_vflip, keeps_labels=True),
    "rot90": OutlierTransform(_rot90, keeps_labels=True),
    "gaussian_noise": OutlierTransform(_gaussian_noise, keeps_labels=False),
    "uniform_noise": OutlierTransform(_uniform_noise, keeps_labels=False),
    "constant": OutlierTransform(_constant, keeps_labels=False),
}


def make_transform_outlier(
    name: str, images: torch.Tensor, labels: torch.Tensor, noise_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply registry entry ``name`` to the inlier test set; return ``(images, labels)``.

    Each call starts a fresh generator from ``noise_seed``, so the result depends only on the
    transform, the inlier test images and the seed, never on which other outliers were built first.
    """
    if name not in OUTLIER_TRANSFORMS:
        raise ValueError(
            f"Unknown outlier transform {name!r}; the transforms are {', '.join(sorted(OUTLIER_TRANSFORMS))}."
        )
    transform = OUTLIER_TRANSFORMS[name]
    generator = torch.Generator().manual_seed(noise_seed)
    outliers = transform.apply(images, generator)
    outlier_labels = labels.clone() if transform.keeps_labels else torch.full_like(labels, -1)
    return outliers, outlier_labels
