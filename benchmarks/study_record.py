"""Carrying the compact-latent study's record (``compact_study.json``) over to a fresh machine.

Run folders do not outlive a session on this workplace's machines, yet a candidate's suite AUROCs,
collapse check and test tables are functions of its runs' checkpoints: the record is their
measurement. So a later round of the rule (docs/compact_study.md, round 8) measures what is on
disk and takes every candidate whose runs are gone from the record, instead of training all of
them again. The record supplies only what it measured. A corruption added to the suite since
(round 9) leaves a carried entry partial: an upper bound on the candidate's worst case, enough to
rule it out when the measured winner is clearly better, and otherwise a reason for the rule to
refuse until the candidate is trained again. A hole score added since (round 10) has no row for a
carried candidate. A recorded entry the runs cannot replace makes the report refuse rather than
drop it (``compact_study.lost_selection_entries``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any


def carried_selection(
    record: dict[str, Any],
    candidate: str,
    benchmark: str,
    hole_scores: Iterable[str],
    corruptions: Iterable[str],
) -> dict[str, Any] | None:
    """The recorded seed-0 suite entry of (candidate, benchmark), marked ``carried``, with the hole
    scores it holds (round 10's are not scored on carried trainings); None without any. Corruptions
    added to the suite since the record was written are listed in its ``missing``: the entry then
    bounds the candidate's worst case from above (a worst case over more pairs can only be lower)
    and gives no full mean, which ``compact_study.select_winner`` takes into account."""
    entry = record.get("selection", {}).get(candidate, {}).get(benchmark)
    if entry is None:
        return None
    aurocs = entry.get("auroc", {})
    scored = [score for score in hole_scores if score in aurocs]
    wanted = list(corruptions)
    recorded = [name for name in wanted if scored and all(name in aurocs[score] for score in scored)]
    if not recorded:
        return None
    kept = {score: {name: aurocs[score][name] for name in recorded} for score in scored}
    missing = [name for name in wanted if name not in recorded]
    return {**entry, "auroc": kept, "carried": True, "missing": missing}


def carried_collapse(record: dict[str, Any], candidate: str) -> bool:
    """Whether the record found a collapsed checkpoint among the candidate's trained seeds."""
    return any(row["collapsed"] for row in record.get("selection_rows", []) if row["candidate"] == candidate)


Table = dict[str, Any]  # {benchmark: {outlier: {score form: {candidate: {mean, std, seeds}}}}}


def table_cells(table: Table) -> Iterable[tuple[tuple[str, str, str, str], dict[str, Any]]]:
    for benchmark, by_outlier in table.items():
        for outlier, by_form in by_outlier.items():
            for form, by_candidate in by_form.items():
                for candidate, cell in by_candidate.items():
                    yield (benchmark, outlier, form, candidate), cell


def merge_tables(measured: Table, recorded: Table, on_disk: set[str]) -> Table:
    """The measured cells of the candidates in ``on_disk`` plus every recorded cell of the others. A
    candidate is measured or recorded, never mixed: two trainings of one seed need not be
    bit-identical across machines, so one column would otherwise hold two replications."""
    merged: Table = {}
    for (benchmark, outlier, form, candidate), cell in table_cells(measured):
        if candidate in on_disk:
            merged.setdefault(benchmark, {}).setdefault(outlier, {}).setdefault(form, {})[candidate] = cell
    for (benchmark, outlier, form, candidate), cell in table_cells(recorded):
        if candidate not in on_disk:
            merged.setdefault(benchmark, {}).setdefault(outlier, {}).setdefault(form, {})[candidate] = cell
    return copy.deepcopy(merged)


def tested_by_record(measured: Table, recorded: Table, on_disk: set[str]) -> set[str]:
    """The candidates with runs on disk whose test cells stay the record's, whole: the runs would
    drop a recorded cell or replace it with fewer seeds. Round 9 trained seed 0 of earlier
    candidates again for the suite: their suite entries are measured, their test tables (more
    seeds, and score forms of their day) kept."""
    kept = set()
    for (benchmark, outlier, form, candidate), cell in table_cells(recorded):
        if candidate not in on_disk:
            continue
        found = measured.get(benchmark, {}).get(outlier, {}).get(form, {}).get(candidate)
        if found is None or found["seeds"] < cell["seeds"]:
            kept.add(candidate)
    return kept
