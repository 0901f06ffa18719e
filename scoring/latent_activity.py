"""Posterior-collapse diagnostics of a trained encoder (docs/method.md 5.1).

A collapsed VAE's decoder ignores the latent: the KL term is near zero, every input gets
the same reconstruction, and the posterior locations shrink into a tiny region whose layout the
reconstruction objective no longer shapes. The AUROC tables need not show it: the study's
collapsed trainings still separate MNIST from Fashion-MNIST by `hole_knn` at 0.99 and more
(docs/method.md 5.1). So every evaluation reports how much its inliers' posterior locations vary,
on W&B at every validation and in results.json.
"""

from __future__ import annotations

from torch import Tensor

# A latent coordinate is active when its posterior location varies across inputs by more than
# this variance (Burda, Grosse & Salakhutdinov 2016's "active units").
ACTIVE_UNIT_VARIANCE = 1e-2
# Below this total variance the latent has collapsed. Measured (docs/method.md 5.1): collapsed
# trainings give 1e-6 to 1e-5, healthy ones 0.98 and more on the sphere and 4.7 and more on R^d.
COLLAPSED_VARIANCE = 1e-3


def latent_activity(locations: Tensor) -> dict[str, float]:
    """``active_units``: the coordinates of the ``[N, d']`` posterior locations whose variance
    across the N inputs exceeds ACTIVE_UNIT_VARIANCE; ``latent_variance``: the sum of all their
    variances (the locations' mean squared distance from their centroid, times N / (N - 1)).

    On the sphere the coordinates are those of the unit vector in R^(d+1): there an even spread
    gives a total variance near 1 and each coordinate about 1 / (d + 1), so a sphere above
    d = 99 has no active unit by the convention even when its latents are healthy; the total
    variance is the measure that fits every latent space.
    """
    if locations.shape[0] < 2:
        raise ValueError(f"Latent activity needs at least 2 inputs, got {locations.shape[0]}.")
    variance = locations.double().var(dim=0)
    return {
        "active_units": float((variance > ACTIVE_UNIT_VARIANCE).sum()),
        "latent_variance": float(variance.sum()),
    }


def collapse_warning(activity: dict[str, float]) -> str | None:
    """The message a run whose inlier latents have collapsed ends with, or None for a healthy latent."""
    if activity["latent_variance"] >= COLLAPSED_VARIANCE:
        return None
    return (
        f"Posterior collapse: the inliers' latents vary by a total variance of "
        f"{activity['latent_variance']:.2g} (below {COLLAPSED_VARIANCE:g}; a healthy latent gives about 1 "
        "on the sphere), so the decoder ignores them and the hole scores measure an encoder the "
        "reconstruction no longer shapes (docs/method.md 5.1). Retrain with a KL warm-up "
        "(optim.kl_warmup_epochs=1) or another seed."
    )
