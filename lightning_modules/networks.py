"""Convolutional encoder and decoder shared by every VAE variant.

One topology for all variants, so that comparisons between them measure the compactness mechanism
and nothing else. Downsampling is space-to-depth (an orthogonal permutation) rather than a strided
convolution, and convolutions use circular padding at stride 1: with those choices the FFT bound on
each convolution's operator norm is exact, so a Lipschitz encoder's certificate is tight instead
of a loose over-estimate. Without a Lipschitz constant the same layers are plain nn.Conv2d /
nn.Linear.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn

from lightning_modules.config import ACTIVATION_CHOICES
from lightning_modules.lipschitz import (
    AOLConv2d,
    AOLLinear,
    InvertibleDownsample,
    LipschitzConv2d,
    LipschitzLinear,
    MaxMin,
)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"maxmin": MaxMin, "relu": nn.ReLU}
if tuple(ACTIVATIONS) != ACTIVATION_CHOICES:  # the config's list is the one source of names
    raise ImportError("lightning_modules.config.ACTIVATION_CHOICES and networks.ACTIVATIONS disagree.")


def check_image_shape(image_shape: tuple[int, int, int]) -> None:
    channels, height, width = image_shape
    if height % 4 or width % 4:
        raise ValueError(
            f"Images of size {height}x{width} cannot pass the encoder's two 2x downsamplings: "
            f"height and width must be multiples of 4. Set data.image_size to a multiple of 4 "
            f"(for example 28 or 32)."
        )
    if channels < 1:
        raise ValueError(f"Images need at least one channel, got shape {image_shape}.")


def _aol_conv(
    in_channels: int, out_channels: int, kernel_size: int, padding: int, padding_mode: str
) -> nn.Conv2d:
    """An AOLConv2d where the encoder asks for a 'same'-size convolution (its padding is implied)."""
    if padding != (kernel_size - 1) // 2:
        raise ValueError(f"AOL convolutions are 'same'-size: padding must be {(kernel_size - 1) // 2}")
    return AOLConv2d(in_channels, out_channels, kernel_size, padding_mode=padding_mode)


class Encoder(nn.Module):
    """x -> (mean parameters, scale parameters).

    With `lipschitz=L` every layer of the mean path (trunk + mean head) has operator norm at most 1
    and the output is multiplied by L, so the mean map is L-Lipschitz. `lipschitz_layers` says how:
    "spectral" divides each weight by its power-iteration operator norm, "aol" rescales it as in
    AOL (almost-orthogonal layers), docs/method.md section 3. The scale head is
    free: it does not move the latent location, so it cannot break the compactness guarantee.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        width: int,
        hidden_dim: int,
        mean_dim: int,
        scale_dim: int,
        activation: str,
        lipschitz: float | None,
        power_iterations: int,
        lipschitz_layers: str = "spectral",
    ) -> None:
        super().__init__()
        check_image_shape(image_shape)
        channels, height, image_width = image_shape
        conv: Callable[..., nn.Conv2d]
        linear: Callable[..., nn.Linear]
        if lipschitz is None:
            conv, linear = nn.Conv2d, nn.Linear
        elif lipschitz_layers == "aol":
            conv, linear = _aol_conv, AOLLinear
        else:
            conv = partial(LipschitzConv2d, n_power_iterations=power_iterations)
            linear = partial(LipschitzLinear, n_power_iterations=power_iterations)
        act = ACTIVATIONS[activation]
        flat_dim = 2 * width * (height // 4) * (image_width // 4)
        self.trunk = nn.Sequential(
            conv(channels, width, kernel_size=3, padding=1, padding_mode="circular"),
            act(),
            InvertibleDownsample(),
            conv(4 * width, 2 * width, kernel_size=3, padding=1, padding_mode="circular"),
            act(),
            InvertibleDownsample(),
            conv(8 * width, 2 * width, kernel_size=3, padding=1, padding_mode="circular"),
            act(),
            nn.Flatten(),
            linear(flat_dim, hidden_dim),
            act(),
        )
        self.mean_head = linear(hidden_dim, mean_dim)
        self.scale_head = nn.Linear(hidden_dim, scale_dim)
        self.lipschitz = lipschitz

    @property
    def mean_path(self) -> nn.Sequential:
        """The layers whose composition (times L) is the certified mean map."""
        return nn.Sequential(self.trunk, self.mean_head)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        mean = self.mean_head(features)
        if self.lipschitz is not None:
            mean = mean * self.lipschitz
        return mean, self.scale_head(features)


class Decoder(nn.Module):
    """z -> pixel logits; mirrors the encoder with depth-to-space upsampling."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        width: int,
        hidden_dim: int,
        latent_dim: int,
        activation: str,
    ) -> None:
        super().__init__()
        check_image_shape(image_shape)
        channels, height, image_width = image_shape
        act = ACTIVATIONS[activation]
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            act(),
            nn.Linear(hidden_dim, 8 * width * (height // 4) * (image_width // 4)),
            act(),
            nn.Unflatten(1, (8 * width, height // 4, image_width // 4)),
            nn.PixelShuffle(2),
            nn.Conv2d(2 * width, 4 * width, kernel_size=3, padding=1),
            act(),
            nn.PixelShuffle(2),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            act(),
            nn.Conv2d(width, channels, kernel_size=3, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        batch_shape = z.shape[:-1]
        logits = self.net(z.reshape(-1, z.shape[-1]))
        return logits.reshape(*batch_shape, *logits.shape[1:])
