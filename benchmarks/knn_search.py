"""Exact k-NN search of ``hole_knn`` (callbacks.knn.knn_distances) against faiss and scikit-learn.

    python -m benchmarks.knn_search [--quick] [--repeats N] [--threads 1 2] [--cases NAME ...] [--merge]

On the same seeded Gaussian latents (float32) every method finds the k=10 exact nearest reference
points of every query:

* ``hole_knn``: ``knn_distances`` (torch; chunked matrix-product search with grouped top-k);
* ``faiss``: ``faiss.IndexFlatL2`` (exact, BLAS-backed), index built from the reference;
* ``sklearn``: ``NearestNeighbors(algorithm="brute")``.

Sizes: 60k reference x 20k queries at d=17 and d=65, and 1M x 10k at d=17 (``--quick``: 6k x 2k
and 100k x 1k). Reported per size and method:

* time: index build + search (none of the methods needs a build worth mentioning: faiss copies the
  reference, scikit-learn stores it), median over rounds in which the methods take turns (every
  library is warmed up once on a small problem first); ``--repeats`` rounds, but no new round
  after ``--case-budget-s`` seconds, so the 1M case may have fewer (``rounds`` says how many);
* ``ratio_to_faiss``: median over rounds of (method time / faiss time) in the same round;
* ``peak_extra_bytes``: resident-set high-water mark during one call, above the resident set just
  before it (data loaded, libraries warmed up), measured in a fresh process per (size, method);
* agreement with ``hole_knn``'s neighbours: the share of queries whose k neighbour sets are equal,
  and the share whose sorted k neighbour distances (recomputed in float64 from the returned
  indices) agree, i.e. equal up to ties and float32 near-ties at the k-th place.

Threads: every thread count in ``--threads`` is measured separately, with torch
(``torch.set_num_threads``), faiss (``faiss.omp_set_num_threads``) and every BLAS / OpenMP pool
that scikit-learn uses (``threadpoolctl``) all set to it. On a shared machine whose cores are busy
with other jobs, multi-threaded timings measure the contention as much as the code (a thread
waiting at an OpenMP barrier for a descheduled sibling), so 1 thread is the cleaner comparison
there; each measurement records the load average before and after it. Most of that contention
cost is libgomp's active spin-waiting: with ``OMP_WAIT_POLICY=PASSIVE`` in the environment the
measurements are keyed ``"<threads> OMP_WAIT_POLICY=PASSIVE"``. ``--merge`` adds the
measurements to an existing results file of the same mode (so a long run can be done in parts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    interleaved_times,
    load_average,
    median_ratio,
    peak_rss,
    reset_peak_rss,
    result_path,
    summary,
    write_result,
)
from scoring.knn import knn_distances

K = 10
SEED = 0


@dataclass(frozen=True)
class Case:
    name: str
    reference: int
    queries: int
    dim: int


FULL_CASES = (
    Case("60k_x_20k_d17", 60_000, 20_000, 17),
    Case("60k_x_20k_d65", 60_000, 20_000, 65),
    Case("1M_x_10k_d17", 1_000_000, 10_000, 17),
)
QUICK_CASES = (
    Case("6k_x_2k_d17", 6_000, 2_000, 17),
    Case("6k_x_2k_d65", 6_000, 2_000, 65),
    Case("100k_x_1k_d17", 100_000, 1_000, 17),
)

Search = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def points(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Seeded float32 Gaussian reference and query latents of one case."""
    generator = np.random.default_rng(SEED)
    reference = generator.standard_normal((case.reference, case.dim), dtype=np.float32)
    queries = generator.standard_normal((case.queries, case.dim), dtype=np.float32)
    return reference, queries


def search_hole_knn(reference: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances, indices = knn_distances(torch.from_numpy(queries), torch.from_numpy(reference), k)
    return distances.numpy(), indices.numpy()


def search_faiss(reference: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    squared, indices = index.search(queries, k)
    return np.sqrt(np.maximum(squared, 0)), indices


def search_sklearn(reference: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(reference).kneighbors(queries)


METHODS: dict[str, Search] = {"hole_knn": search_hole_knn, "faiss": search_faiss, "sklearn": search_sklearn}


def agreement(
    reference: np.ndarray, queries: np.ndarray, ours: np.ndarray, theirs: np.ndarray
) -> dict[str, float]:
    """How far two neighbour index arrays ``[Q, k]`` agree: as sets, and up to ties."""
    same_sets = (np.sort(ours, axis=1) == np.sort(theirs, axis=1)).all(axis=1)

    def sorted_distances(indices: np.ndarray) -> np.ndarray:
        difference = queries[:, None, :].astype(np.float64) - reference[indices].astype(np.float64)
        return np.sort(np.linalg.norm(difference, axis=2), axis=1)

    close = np.isclose(sorted_distances(ours), sorted_distances(theirs), rtol=1e-5, atol=1e-6).all(axis=1)
    return {"same_sets": float(same_sets.mean()), "same_up_to_ties": float(close.mean())}


def set_threads(count: int) -> None:
    """Use ``count`` threads in torch, faiss and every BLAS / OpenMP pool loaded so far."""
    import faiss
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    threadpool_limits(limits=count)


def warm_up(dim: int) -> None:
    """One small search per method, so one-time library set-up is not timed or counted as memory."""
    small = Case("warm-up", 2_000, 100, dim)
    reference, queries = points(small)
    for search in METHODS.values():
        search(reference, queries, K)


def time_case(case: Case, repeats: int, budget_s: float) -> dict[str, object]:
    """Interleaved timings and neighbour agreement of every method on one case (this process)."""
    reference, queries = points(case)
    warm_up(case.dim)
    found: dict[str, np.ndarray] = {}

    def contender(name: str) -> Callable[[], None]:
        def run() -> None:
            found[name] = METHODS[name](reference, queries, K)[1]

        return run

    times = interleaved_times({name: contender(name) for name in METHODS}, repeats, budget_s)
    return {
        "rounds": len(times["faiss"]),
        "times": {name: summary(values) for name, values in times.items()},
        "ratio_to_faiss": {name: median_ratio(times[name], times["faiss"]) for name in METHODS},
        "agreement_with_hole_knn": {
            name: agreement(reference, queries, found["hole_knn"], found[name])
            for name in METHODS
            if name != "hole_knn"
        },
    }


def probe_memory(method: str, case: Case, threads: int) -> int:
    """Peak extra resident memory of one call, measured in this (fresh) process."""
    set_threads(threads)
    reference, queries = points(case)
    warm_up(case.dim)
    before = reset_peak_rss()
    METHODS[method](reference, queries, K)
    return peak_rss() - before


def memory_in_fresh_process(method: str, case: Case, threads: int) -> int:
    probe = json.dumps({"method": method, "threads": threads, "case": asdict(case)})
    command = [sys.executable, "-m", "benchmarks.knn_search", "--probe", probe]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return int(json.loads(output.strip().splitlines()[-1])["peak_extra_bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds instead of minutes)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per case and thread count")
    parser.add_argument("--case-budget-s", type=float, default=150.0, help="no new round after this long")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--cases", nargs="+", help="only these case names (default: all of the mode)")
    parser.add_argument("--merge", action="store_true", help="add to the existing results file of this mode")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe = json.loads(args.probe)
        peak = probe_memory(probe["method"], Case(**probe["case"]), probe["threads"])
        print(json.dumps({"peak_extra_bytes": peak}))
        return
    mode = "quick" if args.quick else "full"
    cases = [
        case
        for case in (QUICK_CASES if args.quick else FULL_CASES)
        if not args.cases or case.name in args.cases
    ]
    results = previous_cases(mode) if args.merge else {}
    default_threads = torch.get_num_threads()
    for case in cases:
        by_threads = results.setdefault(case.name, {"case": asdict(case), "by_threads": {}})["by_threads"]
        for threads in dict.fromkeys(args.threads):
            set_threads(threads)
            load_before = load_average()
            measured = time_case(case, args.repeats, args.case_budget_s)
            measured["peak_extra_bytes"] = {
                name: memory_in_fresh_process(name, case, threads) for name in METHODS
            }
            measured["load_average_before_after"] = [load_before, load_average()]
            by_threads[threads_key(threads)] = measured
            brief = {key: measured[key] for key in ("ratio_to_faiss", "peak_extra_bytes")}
            print(json.dumps({case.name: {threads_key(threads): brief}}), flush=True)
    set_threads(default_threads)
    payload = {
        "mode": mode,
        "k": K,
        "repeats": args.repeats,
        "case_budget_s": args.case_budget_s,
        "cases": results,
    }
    print(f"wrote {write_result('knn_search', payload)}")


def threads_key(threads: int) -> str:
    """``"2"``, or ``"2 OMP_WAIT_POLICY=PASSIVE"`` when the OpenMP wait policy was set."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    return f"{threads}" if policy is None else f"{threads} OMP_WAIT_POLICY={policy}"


def previous_cases(mode: str) -> dict[str, Any]:
    """The cases of the existing results file, when it was measured in the same mode."""
    path = result_path("knn_search")
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    return previous["cases"] if previous.get("mode") == mode else {}


if __name__ == "__main__":
    main()
