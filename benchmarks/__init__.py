"""Benchmark scripts (not tests): each writes one JSON file to benchmarks/results/."""
