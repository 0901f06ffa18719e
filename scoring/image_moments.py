"""Where an image's mass sits: its centre of mass along one axis (docs/method.md 4.1).

A model-free statistic, like the PNG length: a mirrored, shifted or rotated copy of an inlier can
land among the inliers in the latent space while its mass sits where no inlier's does (Fashion-MNIST's
garments and shoes are not centred by mass; MNIST's digits are). Plain tensors in and out.
"""

from __future__ import annotations

import torch
from torch import Tensor

# hole_knn_recon's statistics by image axis of [B, C, H, W] images (rows: 2, columns: 3).
MASS_CENTRE_AXES = {"mass_centre_row": 2, "mass_centre_column": 3}


def mass_centre(images: Tensor, axis: int) -> Tensor:
    """``[B]`` centre of mass of each image along ``axis`` (2: rows, 3: columns), in pixel
    indices from 0, float64. An image without mass (all zero) has its centre in the middle."""
    weights = images.double().sum(dim=tuple(a for a in (1, 2, 3) if a != axis))
    positions = torch.arange(weights.shape[1], dtype=torch.float64, device=weights.device)
    total = weights.sum(1)
    middle = torch.full_like(total, (weights.shape[1] - 1) / 2)
    return torch.where(total > 0, (weights * positions).sum(1) / total.clamp_min(1e-300), middle)


def mass_centre_statistic(images: Tensor, axis: int) -> Tensor:
    """``[B]`` the centre of mass measured from the image's edge (pixel i spans [i, i + 1]): always
    positive, as a log statistic of hole_knn_recon must be, and mirrored about the middle by a flip."""
    return mass_centre(images, axis) + 0.5
