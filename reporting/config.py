"""The ``plots`` config block of the dashboard (OmegaConf-compatible types, no matplotlib import)."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.checks import check_at_least, check_choice

# File formats the dashboard can write under OUT_DIR/plots/<stage>/ (W&B always receives PNG).
PLOT_FORMATS = ("png", "pdf", "svg")


@dataclass
class PlotConfig:
    # Draw the dashboard (figures under OUT_DIR/plots/ and in W&B).
    enabled: bool = True
    # Draw at validation end every n epochs (when the OOD evaluation ran); 0 = at test end only.
    # Every second epoch by default: the figures cost more than the validation metrics, and the
    # two together must stay within 15% of an epoch (benchmarks/validation_curves.py).
    every_n_epochs: int = 2
    # Scatter plots keep at most max_points // (number of datasets) seeded points per dataset.
    max_points: int = 2000
    # Images per dataset in reconstruction grids, and per group in the ranked-samples table.
    n_images: int = 8
    # Cells per side of the grid on which the hole score shades the latent plane.
    grid_resolution: int = 80
    # Prior draws decoded in the prior-samples figure.
    n_prior_samples: int = 16
    # Hole views (when hole_knn's reference exists): latent points drawn uniformly (seeded by the
    # run seed, so every epoch scores the same points) and scored by hole_knn; the hole_marked most
    # vacant are ringed in the hole map, and the hole_gallery most vacant distinct holes decoded.
    hole_samples: int = 4096
    # The most vacant of those points ringed in the hole map.
    hole_marked: int = 100
    # The most vacant distinct holes decoded in the hole gallery.
    hole_gallery: int = 8
    # Resolution of raster output (PNG, and images embedded in PDF/SVG), in dots per inch.
    dpi: int = 110
    # Files written per figure; W&B is always sent PNG, whatever is listed here.
    formats: list[str] = field(default_factory=lambda: ["png"])

    def __post_init__(self) -> None:
        check_at_least("plots.every_n_epochs", self.every_n_epochs, 0)
        for key in ("max_points", "n_images", "grid_resolution", "n_prior_samples", "hole_samples"):
            check_at_least(f"plots.{key}", getattr(self, key), 1)
        for key in ("hole_marked", "hole_gallery"):
            check_at_least(f"plots.{key}", getattr(self, key), 1)
            if getattr(self, key) > self.hole_samples:
                raise ValueError(
                    f"Invalid value {getattr(self, key)!r} for 'plots.{key}': it must be at most "
                    f"plots.hole_samples={self.hole_samples}, the points it is chosen from."
                )
        check_at_least("plots.dpi", self.dpi, 10)
        self._check_formats()

    def _check_formats(self) -> None:
        """At least one known format, each once: an empty list would silently write nothing."""
        if not self.formats:
            raise ValueError(
                "Invalid value [] for 'plots.formats': list at least one of "
                f"{', '.join(PLOT_FORMATS)}; plots.enabled=false turns the figures off."
            )
        for position, name in enumerate(self.formats):
            check_choice(f"plots.formats[{position}]", name, PLOT_FORMATS)
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(
                f"Invalid value {list(self.formats)!r} for 'plots.formats': a format is repeated."
            )
