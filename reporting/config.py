"""The ``plots`` config block of the dashboard (OmegaConf-compatible types, no matplotlib import)."""

from __future__ import annotations

from dataclasses import dataclass

from common.checks import check_at_least


@dataclass
class PlotConfig:
    enabled: bool = True
    # Draw at validation end every n epochs (when the OOD evaluation ran); 0 = at test end only.
    every_n_epochs: int = 1
    # Scatter plots keep at most max_points // (number of datasets) seeded points per dataset.
    max_points: int = 2000
    # Images per dataset in reconstruction grids, and per group in the ranked-samples table.
    n_images: int = 8
    # Cells per side of the grid on which the hole score shades the latent plane.
    grid_resolution: int = 80
    n_prior_samples: int = 16

    def __post_init__(self) -> None:
        check_at_least("plots.every_n_epochs", self.every_n_epochs, 0)
        for key in ("max_points", "n_images", "grid_resolution", "n_prior_samples"):
            check_at_least(f"plots.{key}", getattr(self, key), 1)
