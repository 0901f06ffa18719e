"""The four VAE variants: each is the shared BaseVAE with one compactness choice.

| variant                 | latent space      | encoder mean map |
|-------------------------|-------------------|------------------|
| gaussian                | R^d               | free (baseline)  |
| alexandroff             | S^d (sphere)      | free             |
| lipschitz               | R^d               | L-Lipschitz      |
| alexandroff_lipschitz   | S^d (sphere)      | L-Lipschitz      |
"""

from __future__ import annotations

from lightning_modules.base import BaseVAE


class GaussianVAE(BaseVAE):
    """The classical VAE: Gaussian posterior and prior on R^d, no compactness."""

    variant = "gaussian"
    latent_kind = "euclidean"
    lipschitz_encoder = False


class AlexandroffVAE(BaseVAE):
    """Latents on the sphere S^d, the one-point compactification of R^d."""

    variant = "alexandroff"
    latent_kind = "sphere"
    lipschitz_encoder = False


class LipschitzVAE(BaseVAE):
    """Gaussian latents whose mean map has a fixed Lipschitz constant: a bounded latent image."""

    variant = "lipschitz"
    latent_kind = "euclidean"
    lipschitz_encoder = True


class AlexandroffLipschitzVAE(BaseVAE):
    """Both mechanisms: sphere latents and an L-Lipschitz pre-projection map."""

    variant = "alexandroff_lipschitz"
    latent_kind = "sphere"
    lipschitz_encoder = True


VARIANTS: dict[str, type[BaseVAE]] = {
    cls.variant: cls for cls in (GaussianVAE, AlexandroffVAE, LipschitzVAE, AlexandroffLipschitzVAE)
}
