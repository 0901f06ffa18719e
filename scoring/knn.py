"""Exact, chunked k-nearest-neighbour search and the project's ``hole_knn`` score.

Reference sets of latents can hold 60k to 1M points (docs/method.md, section 4.5), so the search never
materialises the full query x reference distance matrix. Queries are processed in chunks and,
when one chunk against the whole reference would exceed the element budget, the reference is
processed in blocks whose partial results are merged into a running top-k.

Speed comes from three choices:

* squared distances are ranked through one matrix product per block: each query row is
  augmented to ``[q - c, 1]`` and each reference row to ``[-2 (r - c), |r - c|^2]`` so that their
  product is ``|r - c|^2 - 2 (q - c).(r - c)``, which orders the references exactly like
  ``|q - r|^2`` (the missing ``|q - c|^2`` is constant per query). Centering on the reference mean
  ``c`` keeps the cancellation error of this form small when the latents sit far from the origin;
* the top-k selection avoids a full ``torch.topk`` over every row: the block is viewed as groups
  of ``_GROUP_SIZE`` columns, and the k nearest points provably lie in the k groups with the
  smallest minima (each of those groups holds a distinct point no farther than any point outside
  them), so ``topk`` only runs over the cheap group minima and over ``k x _GROUP_SIZE`` gathered
  candidates;
* distances of the few selected candidates are recomputed exactly from coordinate differences and
  re-sorted, so the returned values do not inherit the matmul form's rounding error, and a small
  margin of extra candidates lets that exact pass repair near-ties at the k-th place.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from scoring.config import KNN_STATISTICS

KnnMetric = Literal["euclidean", "geodesic"]
_METRICS: tuple[str, ...] = ("euclidean", "geodesic")
# What hole_knn_score reports of a query's k nearest reference latents (docs/method.md, section 4.1);
# the choices live with the config (scoring.config.KNN_STATISTICS), which must not import torch.
KnnStatistic = Literal["relative", "mean_distance"]

# Element budget of one temporary distance block. On the CPU a block that stays in cache is
# several times faster than a large one; on accelerators larger blocks amortise kernel launches.
_CPU_BLOCK_ELEMENTS = 2**22  # 16 MiB of float32
_ACCELERATOR_BLOCK_ELEMENTS = 2**26  # 256 MiB of float32

# Fewest queries per chunk by default: thinner chunks turn the matrix product into a
# memory-bound sweep over the whole reference per chunk, so a large reference is split into
# blocks instead.
_MIN_DEFAULT_ROWS = 64

# Columns per group in the two-stage top-k selection (see the module docstring).
_GROUP_SIZE = 64
# Extra candidates kept for the exact re-ranking pass, to absorb matmul rounding near the k-th.
_REFINE_MARGIN = 8
# Geodesic inputs must have unit norm to within this absolute tolerance.
_UNIT_NORM_TOLERANCE = 1e-3

# Lower bound on the hole_knn denominator: reference points with at least k exact duplicates have a
# k-th-neighbour distance of 0, and a query landing among them would otherwise divide by zero.
HOLE_KNN_EPS = 1e-12


def knn_distances(
    queries: Tensor,
    reference: Tensor,
    k: int,
    metric: KnnMetric = "euclidean",
    chunk_size: int | None = None,
    exclude_self: bool = False,
) -> tuple[Tensor, Tensor]:
    """Find the exact k nearest reference points of every query.

    Args:
        queries: ``[Q, D]`` points to search for.
        reference: ``[R, D]`` points to search among, on the same device as ``queries``.
        k: neighbours per query, ``1 <= k < R``. The bound is strict so that the same ``k`` is
            always valid for the reference's own statistic, which excludes each point itself.
        metric: ``"euclidean"``, or ``"geodesic"`` for unit vectors (great-circle angle). The
            geodesic order equals the chord order, so both share the same search.
        chunk_size: queries per chunk; by default derived from a fixed element budget
            (``2**22`` on the CPU, ``2**26`` elsewhere). The reference is split into blocks
            whenever ``chunk_size x R`` exceeds that budget, so memory stays bounded either way.
        exclude_self: the queries ARE the reference; drop each point's own index from its
            neighbours (exact duplicates at other indices remain, at distance 0).

    Returns:
        ``(distances, indices)``, both ``[Q, k]``, sorted by ascending distance. Distances are
        computed in float32, or float64 when either input is float64. Exact up to ties, including
        floating-point near-ties at the k-th place.
    """
    dtype = _validate_search(queries, reference, k, metric, chunk_size, exclude_self)
    queries = queries.to(dtype)
    reference = reference.to(dtype)
    num_queries, num_reference = queries.shape[0], reference.shape[0]
    num_available = num_reference - 1 if exclude_self else num_reference
    num_candidates = min(k + _REFINE_MARGIN, num_available)
    use_groups = num_candidates * _GROUP_SIZE * 4 <= num_reference
    group_size = _GROUP_SIZE if use_groups else 1

    center = reference.mean(dim=0)
    augmented_reference = _augment_reference(reference, center, group_size)
    rows, block_columns = _block_shape(
        num_queries,
        augmented_reference.shape[0],
        num_candidates,
        group_size,
        chunk_size,
        queries.device,
    )
    scratch = torch.empty(rows * block_columns, dtype=dtype, device=queries.device)

    distances = torch.empty(num_queries, k, dtype=dtype, device=queries.device)
    indices = torch.empty(num_queries, k, dtype=torch.long, device=queries.device)
    for start in range(0, num_queries, rows):
        query_chunk = queries[start : start + rows]
        augmented_chunk = torch.ones(
            query_chunk.shape[0], queries.shape[1] + 1, dtype=dtype, device=queries.device
        )
        torch.sub(query_chunk, center, out=augmented_chunk[:, :-1])
        candidates = _chunk_candidates(
            augmented_chunk,
            augmented_reference,
            scratch,
            block_columns,
            group_size,
            num_candidates,
            start if exclude_self else None,
        )
        exact, order = _exact_distances(query_chunk, reference, candidates, metric).sort(dim=1)
        distances[start : start + rows] = exact[:, :k]
        indices[start : start + rows] = candidates.gather(1, order[:, :k])
    return distances, indices


def reference_kth_distances(
    reference: Tensor,
    k: int,
    metric: KnnMetric = "euclidean",
    chunk_size: int | None = None,
) -> Tensor:
    """Distance from each reference point to its k-th nearest *other* reference point, ``[R]``.

    This is the per-reference statistic of ``hole_knn_score``. It costs a full R x R search, so
    compute it once per reference set and pass it to ``hole_knn_score`` as ``reference_kth``.
    """
    distances, _ = knn_distances(reference, reference, k, metric, chunk_size, exclude_self=True)
    return distances[:, -1].contiguous()


def hole_knn_score(
    queries: Tensor,
    reference: Tensor,
    k: int,
    metric: KnnMetric = "euclidean",
    chunk_size: int | None = None,
    reference_kth: Tensor | None = None,
    statistic: KnnStatistic = "relative",
) -> Tensor:
    """The ``hole_knn`` score: how vacant the place is where each query lands, ``[Q]``.

    This is the project's own definition (the original paper's formula could not be recovered),
    a relative-density ratio in the spirit of the local outlier factor:

        d_k(q)   = distance from q to its k-th nearest reference point
        score(q) = d_k(q) / mean over the k nearest reference points r_j of d_k(r_j)

    where d_k(r_j) is r_j's own k-th-neighbour distance inside the reference set, excluding r_j
    itself. A query inside the inlier cloud is about as far from its neighbours as they are from
    theirs (score near 1); a query in a vacant hole is much farther (score well above 1). Dividing
    by the neighbours' spacing makes the score comparable across dense and sparse inlier regions.
    The denominator is clamped below at ``HOLE_KNN_EPS`` so duplicated reference points cannot
    cause a division by zero.

    ``statistic="mean_distance"`` reports the mean distance to the k nearest reference points
    instead, without the normalisation: a query in a sparse region then counts as more vacant than
    one in a dense region at the same relative distance (the kNN density estimate's view, which
    the compact-latent study measured against the relative one; README, "The compact-latent study").

    Args:
        queries, reference, k, metric, chunk_size: as in ``knn_distances``.
        reference_kth: ``reference_kth_distances(reference, k, metric)`` if already computed; it
            must have been computed with the same ``k`` and ``metric``. Unused by ``mean_distance``.
        statistic: ``"relative"`` (the ratio above) or ``"mean_distance"``.
    """
    if statistic not in KNN_STATISTICS:
        raise ValueError(f"statistic must be one of {KNN_STATISTICS}, got {statistic!r}.")
    if statistic == "mean_distance":
        return knn_distances(queries, reference, k, metric, chunk_size)[0].mean(dim=1)
    if reference_kth is None:
        reference_kth = reference_kth_distances(reference, k, metric, chunk_size)
    elif reference_kth.shape != (reference.shape[0],) or reference_kth.device != reference.device:
        raise ValueError(
            f"reference_kth must have shape ({reference.shape[0]},) on {reference.device} to match "
            f"the reference, got shape {tuple(reference_kth.shape)} on {reference_kth.device}; "
            "compute it with reference_kth_distances(reference, k, metric)."
        )
    distances, indices = knn_distances(queries, reference, k, metric, chunk_size)
    neighbour_spacing = reference_kth[indices].mean(dim=1)
    return distances[:, -1] / neighbour_spacing.clamp_min(HOLE_KNN_EPS)


def _validate_search(
    queries: Tensor,
    reference: Tensor,
    k: int,
    metric: str,
    chunk_size: int | None,
    exclude_self: bool,
) -> torch.dtype:
    """Check the search arguments and return the dtype to compute in."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}.")
    for name, points in (("queries", queries), ("reference", reference)):
        if points.ndim != 2:
            raise ValueError(
                f"{name} must be a 2-D [N, D] tensor, got shape {tuple(points.shape)}; "
                "flatten the latents to one row per point."
            )
        if not points.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {points.dtype}.")
    if queries.shape[1] != reference.shape[1]:
        raise ValueError(
            f"queries have dimension {queries.shape[1]} but reference has {reference.shape[1]}; "
            "both must be encodings from the same latent space."
        )
    if queries.device != reference.device:
        raise ValueError(
            f"queries are on {queries.device} but reference is on {reference.device}; "
            "move both to the same device."
        )
    num_reference = reference.shape[0]
    if not 1 <= k < num_reference:
        raise ValueError(
            f"k must satisfy 1 <= k < number of reference points ({num_reference}), got k={k}; "
            "use a smaller k or a larger reference set."
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}.")
    _check_points("queries", queries, metric)
    _check_points("reference", reference, metric)
    same_points = queries is reference or (
        queries.shape == reference.shape and torch.equal(queries, reference)
    )
    if exclude_self and not same_points:
        raise ValueError(
            "exclude_self=True requires the queries to be the reference set itself, got "
            f"queries of shape {tuple(queries.shape)} and reference of shape "
            f"{tuple(reference.shape)} that differ; pass exclude_self=False."
        )
    dtype = torch.promote_types(queries.dtype, reference.dtype)
    return torch.promote_types(dtype, torch.float32)


def _check_points(name: str, points: Tensor, metric: str) -> None:
    """Reject non-finite coordinates, and non-unit rows for the geodesic metric."""
    num_bad = int((~torch.isfinite(points)).sum())
    if num_bad:
        raise ValueError(
            f"{name} contain {num_bad} non-finite value(s) (NaN or inf); "
            "check the encoder for a diverged model before searching."
        )
    if metric == "geodesic" and points.shape[0] > 0:
        deviation = float((torch.linalg.vector_norm(points, dim=1) - 1).abs().max())
        if deviation > _UNIT_NORM_TOLERANCE:
            raise ValueError(
                f"metric='geodesic' needs unit vectors, but a row of {name} has norm off by "
                f"{deviation:.3g}; normalise with torch.nn.functional.normalize(x, dim=1)."
            )


def _block_shape(
    num_queries: int,
    padded_size: int,
    num_candidates: int,
    group_size: int,
    chunk_size: int | None,
    device: torch.device,
) -> tuple[int, int]:
    """Queries per chunk and reference columns per block of the temporary distance block."""
    budget = _CPU_BLOCK_ELEMENTS if device.type == "cpu" else _ACCELERATOR_BLOCK_ELEMENTS
    rows = chunk_size if chunk_size is not None else max(_MIN_DEFAULT_ROWS, budget // padded_size)
    rows = max(1, min(rows, num_queries))
    # Every block must hold enough groups to yield its own candidates (and for the group
    # selection to pay off), so a huge chunk_size may exceed the budget rather than break that.
    narrowest = min(padded_size, 4 * num_candidates * group_size)
    columns = budget // rows // group_size * group_size
    return rows, min(padded_size, max(narrowest, columns))


def _augment_reference(reference: Tensor, center: Tensor, group_size: int) -> Tensor:
    """Build ``[-2 (r - c), |r - c|^2]`` rows, padded to a multiple of ``group_size``.

    Padding rows are ``[0, ..., 0, inf]``: their product with any query row ``[q - c, 1]`` is
    ``+inf``, so they are never selected and every group has the same width.
    """
    num_reference, dim = reference.shape
    padded_size = -(-num_reference // group_size) * group_size
    augmented = torch.zeros(padded_size, dim + 1, dtype=reference.dtype, device=reference.device)
    centred = torch.sub(reference, center, out=augmented[:num_reference, :dim])
    augmented[:num_reference, dim] = centred.square().sum(dim=1)
    centred.mul_(-2)
    augmented[num_reference:, dim] = float("inf")
    return augmented


def _chunk_candidates(
    augmented_chunk: Tensor,
    augmented_reference: Tensor,
    scratch: Tensor,
    block_columns: int,
    group_size: int,
    num_candidates: int,
    self_offset: int | None,
) -> Tensor:
    """Indices ``[rows, num_candidates]`` of the nearest references of one query chunk.

    ``self_offset`` is the chunk's first query index when queries are the reference, so that each
    query's own column can be masked out.
    """
    rows = augmented_chunk.shape[0]
    best_values: Tensor | None = None
    best_indices: Tensor | None = None
    for block_start in range(0, augmented_reference.shape[0], block_columns):
        block_reference = augmented_reference[block_start : block_start + block_columns]
        columns = block_reference.shape[0]
        block = scratch[: rows * columns].view(rows, columns)
        torch.mm(augmented_chunk, block_reference.T, out=block)
        if self_offset is not None:
            _mask_self(block, self_offset - block_start)
        values, indices = _select(block, group_size, min(num_candidates, columns))
        indices += block_start
        if best_values is None or best_indices is None:
            best_values, best_indices = values, indices
        else:
            merged_values = torch.cat([best_values, values], dim=1)
            merged_indices = torch.cat([best_indices, indices], dim=1)
            best_values, position = merged_values.topk(num_candidates, dim=1, largest=False)
            best_indices = merged_indices.gather(1, position)
    assert best_indices is not None  # the reference is never empty (validated k < R)
    return best_indices


def _mask_self(block: Tensor, diagonal_offset: int) -> None:
    """Set ``block[i, i + diagonal_offset]`` to +inf wherever that column lies in the block."""
    rows, columns = block.shape
    row_index = torch.arange(rows, device=block.device)
    column_index = row_index + diagonal_offset
    inside = (column_index >= 0) & (column_index < columns)
    block[row_index[inside], column_index[inside]] = float("inf")


def _select(block: Tensor, group_size: int, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` smallest entries of each row of ``block`` (unsorted): values and columns."""
    if group_size == 1:
        return block.topk(count, dim=1, largest=False, sorted=False)
    rows, columns = block.shape
    groups = block.view(rows, columns // group_size, group_size)
    num_groups = min(count, groups.shape[1])
    group_minima = groups.amin(dim=2)
    nearest_groups = group_minima.topk(num_groups, dim=1, largest=False, sorted=False).indices
    gathered = groups.gather(1, nearest_groups.unsqueeze(2).expand(rows, num_groups, group_size))
    values, position = gathered.view(rows, num_groups * group_size).topk(
        count, dim=1, largest=False, sorted=False
    )
    group = nearest_groups.gather(1, position // group_size)
    return values, group * group_size + position % group_size


def _exact_distances(query_chunk: Tensor, reference: Tensor, candidates: Tensor, metric: str) -> Tensor:
    """Distances from each query to its candidate references, computed from differences."""
    chord = torch.linalg.vector_norm(query_chunk.unsqueeze(1) - reference[candidates], dim=2)
    if metric == "geodesic":
        # 2 asin(chord / 2) equals arccos(q . r) on the unit sphere but stays accurate for
        # nearly identical and nearly antipodal points, where arccos loses precision.
        return 2 * torch.asin((chord / 2).clamp_max(1))
    return chord
