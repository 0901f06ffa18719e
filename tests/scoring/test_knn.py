"""Exactness, chunk invariance and validation of the chunked kNN search and the hole_knn score."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import scoring.knn as knn
from scoring.knn import hole_knn_score, knn_distances, reference_kth_distances


def _points(n: int, dim: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64).to(dtype)


def _sphere(n: int, dim: int, seed: int) -> Tensor:
    return torch.nn.functional.normalize(_points(n, dim, seed), dim=1)


def _brute_matrix(queries: Tensor, reference: Tensor, metric: str) -> Tensor:
    """All pairwise distances in float64, without the matmul shortcut."""
    q, r = queries.double(), reference.double()
    if metric == "geodesic":
        # Renormalise in float64: float32 unit vectors have norms off by ~1e-7, which arccos
        # amplifies by 1 / sin(angle) for close points and would make the reference inexact.
        q, r = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(r, dim=1)
        return torch.arccos((q @ r.T).clamp(-1, 1))
    return torch.cdist(q, r, compute_mode="donot_use_mm_for_euclid_dist")


def _assert_matches_brute_force(
    distances: Tensor, indices: Tensor, brute: Tensor, k: int, rtol: float = 1e-5
) -> None:
    """Distances equal the brute-force top-k; indices are a valid top-k up to ties."""
    expected, expected_indices = brute.topk(k, dim=1, largest=False)
    torch.testing.assert_close(distances.double(), expected, rtol=rtol, atol=1e-6)
    # The returned indices really are at the returned distances ...
    torch.testing.assert_close(brute.gather(1, indices), expected, rtol=rtol, atol=1e-6)
    # ... are distinct per row, and equal the brute-force set wherever the k-th place is no tie.
    assert (indices.sort(dim=1).values.diff(dim=1) > 0).all()
    if brute.shape[1] > k:
        following = brute.topk(k + 1, dim=1, largest=False).values[:, k]
        clear = following - expected[:, -1] > 1e-4 * following
        assert clear.float().mean() > 0.9
        same = indices.sort(dim=1).values == expected_indices.sort(dim=1).values
        assert same[clear].all()


@pytest.fixture(params=["default", "tiny_groups_and_blocks"])
def search_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test on the default path and on one forced through groups and reference blocks.

    Small groups and a small element budget make the group selection, the reference blocking and
    the running top-k merge all run on test-sized data.
    """
    if request.param == "tiny_groups_and_blocks":
        monkeypatch.setattr(knn, "_GROUP_SIZE", 4)
        monkeypatch.setattr(knn, "_CPU_BLOCK_ELEMENTS", 2**8)
    return request.param


# With the tiny path: (50, 3, 1) needs no blocks, (300, 4, 20) blocks the plain top-k, and 4136
# leaves a last reference block with fewer groups than candidates.
@pytest.mark.parametrize(
    ("num_reference", "dim", "k"), [(50, 3, 1), (300, 4, 20), (700, 17, 10), (4136, 8, 5)]
)
def test_euclidean_matches_brute_force(search_path: str, num_reference: int, dim: int, k: int) -> None:
    queries, reference = _points(300, dim, 1), _points(num_reference, dim, 2)
    distances, indices = knn_distances(queries, reference, k)
    assert distances.shape == indices.shape == (300, k)
    assert distances.dtype == torch.float32 and indices.dtype == torch.long
    brute = _brute_matrix(queries, reference, "euclidean")
    _assert_matches_brute_force(distances, indices, brute, k)


@pytest.mark.parametrize(("num_reference", "dim", "k"), [(60, 3, 2), (3000, 5, 7)])
def test_geodesic_matches_arccos(search_path: str, num_reference: int, dim: int, k: int) -> None:
    queries, reference = _sphere(200, dim, 3), _sphere(num_reference, dim, 4)
    distances, indices = knn_distances(queries, reference, k, metric="geodesic")
    brute = _brute_matrix(queries, reference, "geodesic")
    _assert_matches_brute_force(distances, indices, brute, k)


def test_geodesic_handles_identical_and_antipodal_points() -> None:
    reference = _sphere(40, 4, 5)
    queries = torch.cat([reference[:3], -reference[:3]])
    distances, indices = knn_distances(queries, reference, 1, metric="geodesic")
    assert torch.equal(indices[:3, 0], torch.arange(3))
    assert (distances[:3] == 0).all()
    assert torch.isfinite(distances).all() and (distances <= torch.pi).all()


def test_far_from_origin_stays_exact() -> None:
    """Latents offset far from the origin: the matmul form must not lose the neighbours."""
    reference = _points(3000, 6, 6) * 0.01 + 500.0
    queries = _points(100, 6, 7) * 0.01 + 500.0
    distances, indices = knn_distances(queries, reference, 5)
    brute = _brute_matrix(queries, reference, "euclidean")
    _assert_matches_brute_force(distances, indices, brute, 5)


@pytest.mark.parametrize("chunk_size", [1, 7, 100, None])
def test_chunk_size_does_not_change_result(chunk_size: int | None) -> None:
    queries, reference = _points(120, 9, 8), _points(3000, 9, 9)
    expected = knn_distances(queries, reference, 6, chunk_size=120)
    distances, indices = knn_distances(queries, reference, 6, chunk_size=chunk_size)
    torch.testing.assert_close(distances, expected[0], rtol=1e-6, atol=1e-7)
    assert torch.equal(indices, expected[1])


def test_exclude_self(search_path: str) -> None:
    reference = _points(500, 4, 10)
    reference[7] = reference[3]  # an exact duplicate must still be found, at distance 0
    distances, indices = knn_distances(reference, reference, 4, exclude_self=True)
    own = torch.arange(500).unsqueeze(1)
    assert not (indices == own).any()
    brute = _brute_matrix(reference, reference, "euclidean")
    brute.fill_diagonal_(float("inf"))
    _assert_matches_brute_force(distances, indices, brute, 4)
    assert indices[3, 0] == 7 and indices[7, 0] == 3 and distances[3, 0] == 0


def test_exclude_self_allows_k_up_to_r_minus_one() -> None:
    reference = _points(6, 2, 11)
    distances, indices = knn_distances(reference, reference, 5, exclude_self=True)
    expected = torch.arange(6).expand(6, 6)[~torch.eye(6, dtype=torch.bool)].view(6, 5)
    assert torch.equal(indices.sort(dim=1).values, expected)
    assert torch.isfinite(distances).all()


def test_float64_inputs_stay_float64() -> None:
    queries, reference = _points(80, 5, 12, torch.float64), _points(900, 5, 13, torch.float64)
    distances, indices = knn_distances(queries, reference, 3)
    assert distances.dtype == torch.float64
    brute = _brute_matrix(queries, reference, "euclidean")
    _assert_matches_brute_force(distances, indices, brute, 3, rtol=1e-12)
    mixed, _ = knn_distances(queries.float(), reference, 3)
    assert mixed.dtype == torch.float64


def _brute_hole_knn(queries: Tensor, reference: Tensor, k: int, metric: str) -> Tensor:
    """The hole_knn definition written out on full distance matrices."""
    to_reference = _brute_matrix(queries, reference, metric)
    within = _brute_matrix(reference, reference, metric)
    within.fill_diagonal_(float("inf"))
    reference_kth = within.sort(dim=1).values[:, k - 1]
    query_distances, neighbours = to_reference.sort(dim=1)
    spacing = reference_kth[neighbours[:, :k]].mean(dim=1)
    return query_distances[:, k - 1] / spacing.clamp_min(knn.HOLE_KNN_EPS)


@pytest.mark.parametrize("metric", ["euclidean", "geodesic"])
def test_hole_knn_score_matches_definition(metric: knn.KnnMetric) -> None:
    make = _sphere if metric == "geodesic" else _points
    reference, queries = make(800, 5, 14), make(150, 5, 15)
    expected = _brute_hole_knn(queries, reference, 6, metric)
    scores = hole_knn_score(queries, reference, 6, metric)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-6)
    cached = reference_kth_distances(reference, 6, metric, chunk_size=33)
    again = hole_knn_score(queries, reference, 6, metric, chunk_size=17, reference_kth=cached)
    torch.testing.assert_close(again, scores, rtol=1e-6, atol=1e-7)


def test_hole_knn_score_is_high_in_a_vacant_hole() -> None:
    reference = _points(2000, 3, 16)
    inside, hole = torch.zeros(1, 3), torch.full((1, 3), 6.0)
    scores = hole_knn_score(torch.cat([inside, hole]), reference, 10)
    assert scores[1] > 5 * scores[0]


def test_hole_knn_score_survives_duplicated_reference_points() -> None:
    reference = torch.cat([torch.zeros(5, 2), _points(50, 2, 17)])
    scores = hole_knn_score(torch.tensor([[0.0, 0.0], [1e-3, 0.0]]), reference, 3)
    assert scores[0] == 0 and torch.isfinite(scores[1]) and scores[1] > 0


def test_reference_kth_cache_must_match_reference() -> None:
    reference = _points(30, 2, 18)
    with pytest.raises(ValueError, match=r"reference_kth must have shape \(30,\)"):
        hole_knn_score(reference[:4], reference, 3, reference_kth=torch.ones(29))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"k": 20}, r"1 <= k < number of reference points \(20\), got k=20"),
        ({"k": 0}, r"got k=0"),
        ({"metric": "cosine"}, r"metric must be one of .* got 'cosine'"),
        ({"chunk_size": 0}, r"chunk_size must be a positive integer or None, got 0"),
        ({"queries": _points(5, 4, 0)}, r"queries have dimension 4 but reference has 3"),
        ({"queries": torch.zeros(5)}, r"queries must be a 2-D \[N, D\] tensor, got shape \(5,\)"),
        ({"queries": torch.zeros(5, 3, dtype=torch.long)}, r"must be a floating-point tensor"),
        ({"queries": torch.full((5, 3), float("nan"))}, r"queries contain 15 non-finite value"),
        ({"metric": "geodesic"}, r"needs unit vectors.*torch.nn.functional.normalize"),
        ({"exclude_self": True}, r"exclude_self=True requires the queries to be the reference"),
    ],
)
def test_validation_errors(arguments: dict[str, object], message: str) -> None:
    call: dict[str, object] = {"queries": _points(5, 3, 19), "reference": _points(20, 3, 20)}
    call["k"] = 2
    call.update(arguments)
    with pytest.raises(ValueError, match=message):
        knn_distances(**call)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_and_matches_cpu() -> None:
    queries, reference = _points(500, 17, 21), _points(5000, 17, 22)
    cpu = knn_distances(queries, reference, 10)
    gpu = knn_distances(queries.cuda(), reference.cuda(), 10)
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-5, atol=1e-6)
    brute = _brute_matrix(queries, reference, "euclidean")
    _assert_matches_brute_force(gpu[0].cpu(), gpu[1].cpu(), brute, 10)
