"""The four VAE variants: each is the shared BaseVAE with one compactness choice.

| variant                 | latent space      | encoder mean map |
|-------------------------|-------------------|------------------|
| gaussian                | R^d               | free (baseline)  |
| alexandroff             | S^d (sphere)      | free             |
| lipschitz               | R^d               | L-Lipschitz      |
| alexandroff_lipschitz   | S^d (sphere)      | L-Lipschitz      |

The table itself lives in ``lightning_modules.config.VARIANTS_BY_NAME`` (validated without torch);
``BaseVAE.__init_subclass__`` reads each class's latent space and encoder from it.
"""

from __future__ import annotations

from lightning_modules.base import BaseVAE
from lightning_modules.config import VARIANTS_BY_NAME


class GaussianVAE(BaseVAE):
    """The classical VAE: Gaussian posterior and prior on R^d, no compactness."""

    variant = "gaussian"


class AlexandroffVAE(BaseVAE):
    """Latents on the sphere S^d, the one-point compactification of R^d."""

    variant = "alexandroff"


class LipschitzVAE(BaseVAE):
    """Gaussian latents whose mean map has a fixed Lipschitz constant: a bounded latent image."""

    variant = "lipschitz"


class AlexandroffLipschitzVAE(BaseVAE):
    """Both mechanisms: sphere latents and an L-Lipschitz pre-projection map."""

    variant = "alexandroff_lipschitz"


VARIANTS: dict[str, type[BaseVAE]] = {
    cls.variant: cls for cls in (GaussianVAE, AlexandroffVAE, LipschitzVAE, AlexandroffLipschitzVAE)
}
if set(VARIANTS) != set(VARIANTS_BY_NAME):
    raise ImportError("lightning_modules.config.VARIANTS_BY_NAME and the variant classes disagree.")
