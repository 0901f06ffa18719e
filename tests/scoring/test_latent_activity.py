"""The posterior-collapse diagnostics tell a collapsed encoder from a healthy one, on any latent."""

from __future__ import annotations

import pytest
import torch

from scoring.latent_activity import collapse_warning, latent_activity


def test_a_collapsed_encoder_has_no_active_unit_and_almost_no_variance() -> None:
    generator = torch.Generator().manual_seed(0)
    point = torch.nn.functional.normalize(torch.randn(33, generator=generator), dim=0)
    collapsed = point + 1e-4 * torch.randn(500, 33, generator=generator)
    activity = latent_activity(collapsed)
    assert activity["active_units"] == 0
    assert activity["latent_variance"] == pytest.approx(33 * 1e-8, rel=0.1)
    message = collapse_warning(activity)
    assert message is not None and "Posterior collapse" in message and "kl_warmup_epochs" in message


def test_spread_unit_vectors_have_a_total_variance_near_one() -> None:
    generator = torch.Generator().manual_seed(0)
    spread = torch.nn.functional.normalize(torch.randn(4000, 33, generator=generator), dim=1)
    activity = latent_activity(spread)
    # mean |l|^2 - |centroid|^2 = 1 - |centroid|^2 on the sphere, times N / (N - 1).
    points = spread.double()
    expected = (points.square().sum(dim=1).mean() - points.mean(dim=0).square().sum()) * 4000 / 3999
    assert activity["latent_variance"] == pytest.approx(float(expected), rel=1e-9)
    assert activity["latent_variance"] == pytest.approx(1.0, abs=0.01)
    assert collapse_warning(activity) is None
    assert activity["active_units"] == 33  # 1/33 per coordinate, above the 0.01 convention


def test_active_units_count_the_coordinates_that_vary() -> None:
    generator = torch.Generator().manual_seed(0)
    locations = torch.zeros(1000, 8)
    locations[:, :3] = torch.randn(1000, 3, generator=generator)  # three active, five dead units
    assert latent_activity(locations)["active_units"] == 3


def test_one_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 inputs"):
        latent_activity(torch.zeros(1, 4))
