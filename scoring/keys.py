"""The one place that builds and parses logged metric keys: ``<stage>/<outlier>/<score>/<metric>``.

W&B charts, ``sweep_summary.csv`` columns and the quality benchmark all use these keys, so they
must agree on the format.
"""

from __future__ import annotations

from typing import NamedTuple


class MetricKey(NamedTuple):
    stage: str
    outlier: str
    score: str
    metric: str


def metric_key(stage: str, outlier: str, score: str, metric: str) -> str:
    return "/".join((stage, outlier, score, metric))


def parse_metric_key(key: str) -> MetricKey | None:
    """The parts of a metric key, or None for any other logged key (e.g. ``val/elbo``)."""
    parts = key.split("/")
    return MetricKey(*parts) if len(parts) == 4 else None


def flat_metrics(stage: str, metrics: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``metrics[outlier][score][metric]`` (as in results.json) as ``{metric key: value}``."""
    return {
        metric_key(stage, outlier, score, metric): value
        for outlier, by_score in metrics.items()
        for score, by_metric in by_score.items()
        for metric, value in by_metric.items()
    }
