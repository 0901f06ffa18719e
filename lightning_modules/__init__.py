"""VAE variants as LightningModules: BaseVAE, the four variants, Lipschitz layers, distributions.

The names below are imported lazily, so that ``lightning_modules.config`` (validated by every
entry point before any work) does not import torch or Lightning.
"""

from __future__ import annotations

from common.lazy import lazy_exports

_PUBLIC = {
    "BaseVAE": "lightning_modules.base",
    "VARIANTS": "lightning_modules.variants",
    "build_model": "lightning_modules.factory",
    "load_model": "lightning_modules.factory",
    "variant_class": "lightning_modules.factory",
    "ModelConfig": "lightning_modules.config",
    "OptimConfig": "lightning_modules.config",
}
__all__ = sorted(_PUBLIC)

__getattr__ = lazy_exports(__name__, _PUBLIC)
