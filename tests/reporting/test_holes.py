"""The hole views: uniform latent samples, their vacancy, the hole map and the hole gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reporting.figures import LatentPlane, fit_plane_map, render_figure
from reporting.hole_figures import HoleGallery, HoleMap, hole_gallery_figure, hole_map_figure
from reporting.holes import HoleSamples, distinct_holes, nearest_points, sample_holes, uniform_latents
from scoring.config import ScoreConfig
from scoring.evaluation import build_reference
from tests.reporting.test_dashboard import SET_NAMES, assert_not_blank, synthetic_latents

# The relative statistic: its value inside the inlier cloud (near 1) is checked below.
SETTINGS = ScoreConfig(knn_k=10, knn_statistic="relative")
HOLE_CENTRE = np.array([0.4, 0.0])
HOLE_RADIUS = 0.3


def punctured_disk(count: int = 3000, seed: int = 0) -> np.ndarray:
    """Uniform points of the unit disk with one empty disk cut out of it: a planted hole."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, (4 * count, 2))
    inside = np.linalg.norm(points, axis=1) <= 1
    outside_hole = np.linalg.norm(points - HOLE_CENTRE, axis=1) > HOLE_RADIUS
    return points[inside & outside_hole][:count]


@pytest.mark.parametrize("dim", [2, 7])
def test_ball_samples_are_uniform_and_cover_every_reference_latent(dim: int) -> None:
    rng = np.random.default_rng(1)
    reference = torch.tensor(rng.normal(3.0, 1.0, (500, dim)))
    points, region = uniform_latents("euclidean", reference, 20_000, seed=4)
    centre = reference.double().mean(dim=0)
    radius = float((reference.double() - centre).norm(dim=1).max())
    distances = (points - centre).norm(dim=1).numpy()
    assert distances.max() <= radius
    # Uniform by volume: P(r < t R) = t^d.
    for share in (0.5, 0.8, 0.95):
        assert np.mean(distances < share * radius) == pytest.approx(share**dim, abs=0.015)
    assert f"ball of R^{dim}" in region and f"{radius:.3g}" in region
    again, _ = uniform_latents("euclidean", reference, 20_000, seed=4)
    assert torch.equal(points, again)
    assert not torch.equal(points, uniform_latents("euclidean", reference, 20_000, seed=5)[0])


def test_sphere_samples_are_uniform_on_the_sphere() -> None:
    reference = torch.nn.functional.normalize(torch.randn(200, 5, generator=torch.Generator().manual_seed(0)))
    points, region = uniform_latents("sphere", reference, 20_000, seed=0)
    np.testing.assert_allclose(points.norm(dim=1).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(points.mean(dim=0).numpy(), 0.0, atol=0.02)  # no direction preferred
    assert "S^4" in region


def test_the_most_vacant_samples_lie_in_the_planted_hole() -> None:
    reference = build_reference(torch.tensor(punctured_disk(), dtype=torch.float32), "euclidean", SETTINGS)
    samples = sample_holes("euclidean", reference, SETTINGS, 4000, seed=0)
    assert samples.metric == "euclidean" and samples.vacancy.shape == (4000,)
    top = samples.points[samples.most_vacant(10)]
    assert np.all(np.linalg.norm(top - HOLE_CENTRE, axis=1) < HOLE_RADIUS)
    # Inside the inlier cloud hole_knn is near 1, as it is for inputs.
    crowded = np.linalg.norm(samples.points - np.array([-0.5, 0.0]), axis=1) < 0.2
    assert np.median(samples.vacancy[crowded]) == pytest.approx(1.0, abs=0.3)


def test_distinct_holes_show_each_hole_once() -> None:
    reference = np.array([[x, y] for x in range(-3, 4) for y in range(-3, 4)], dtype=float)
    # Two holes: three samples deep inside the first (most vacant), one in the second.
    points = np.array([[0.5, 0.5], [0.45, 0.5], [0.5, 0.55], [2.5, 2.5], [-1.5, -2.5]])
    samples = HoleSamples(points, np.array([5.0, 4.9, 4.8, 3.0, 1.0]), "test", "euclidean")
    assert distinct_holes(samples, 2, reference).tolist() == [0, 3]
    assert distinct_holes(samples, 10, reference).tolist() == [0, 3, 4]  # fewer holes than asked
    rows, distances = nearest_points(points[[0, 3]], reference, "euclidean")
    assert reference[rows].tolist() == [[0.0, 0.0], [2.0, 2.0]]
    np.testing.assert_allclose(distances, np.sqrt(0.5))


def test_geodesic_nearest_point_distance() -> None:
    north, points = np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    rows, distances = nearest_points(north, points, "geodesic")
    assert rows.tolist() == [0] and distances[0] == pytest.approx(np.pi / 2)


@pytest.mark.parametrize(
    ("dim", "kind", "says"), [(8, "euclidean", "linear projection"), (3, "sphere", "equal-area")]
)
def test_hole_map_draws_samples_in_the_latent_figures_plane(
    tmp_path: Path, dim: int, kind: str, says: str
) -> None:
    latents, dataset, labels = synthetic_latents(dim, sphere=kind == "sphere")
    inliers = latents[dataset == 0]
    metric = "geodesic" if kind == "sphere" else "euclidean"
    reference = build_reference(torch.tensor(inliers, dtype=torch.float32), metric, ScoreConfig(knn_k=5))
    samples = sample_holes(kind, reference, ScoreConfig(knn_k=5), 1500, seed=0)
    plane_map = fit_plane_map(latents, dataset == 0, kind)
    plane = LatentPlane(
        plane_map.project(latents), dataset, labels, plane_map.axis_labels, plane_map.description
    )
    holes = HoleMap(
        plane_map.project(samples.points),
        samples.vacancy,
        samples.most_vacant(40),
        distinct_holes(samples, 6, inliers),
        np.ones(len(inliers)),
        f"{samples.region}. {plane_map.limits}",
    )
    fig = hole_map_figure(plane, holes, SET_NAMES[0], "synthetic")
    caption = fig.get_supxlabel()
    assert says in caption and samples.region in caption
    legend = fig.axes[0].get_legend()
    assert legend is not None and "40 most vacant samples" in [text.get_text() for text in legend.get_texts()]
    annotations = {text.get_text() for text in fig.axes[0].texts}
    assert {"1", "6"} <= annotations  # the gallery's columns, numbered on the map
    path = tmp_path / "holes.png"
    path.write_bytes(render_figure(fig))
    assert_not_blank(path)


def test_hole_gallery_shows_holes_beside_their_nearest_inliers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    count = 5
    gallery = HoleGallery(
        rng.random((count, 1, 28, 28)),
        rng.random((count, 1, 28, 28)),
        rng.random((count, 1, 28, 28)),
        np.linspace(9, 5, count),
        np.full(count, 0.25),
        ["Sandal", "Bag", "Coat", "Shirt", "Dress"],
        "caption of the gallery",
    )
    fig = hole_gallery_figure(gallery, "synthetic")
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == [
        "decoded at hole",
        "decoded at nearest\ntest inlier",
        "nearest test inlier\n(input)",
    ]
    columns = [label.get_text() for label in ax.get_xticklabels()]
    assert len(columns) == count and columns[0].startswith("#1  hole_knn 9") and columns[1].endswith("Bag")
    assert "hole gallery" in ax.get_title()
    path = tmp_path / "gallery.png"
    path.write_bytes(render_figure(fig))
    assert_not_blank(path)
