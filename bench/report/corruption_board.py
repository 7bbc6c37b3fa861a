"""Common-corruption tables (CIFAR-10-C), RobustBench's corruptions layout: per dataset x profile, rows = defenses,
columns = clean accuracy, the mean corruption accuracy, that mean relative to clean, then each corruption (its
severities pooled) and each severity (its corruptions pooled).

A corruption row is a cell of an attack entry `corrupt_<corruption>_<severity>` (bench.corruptions.spec): accuracy
on the corrupted images of every test point. Pooling sums correct points over the cells pooled (k / n over all of
them: the mean of the cells' accuracies when their n agree); its 95 % Wilson interval treats the pooled points as
independent, which they are not quite (the same test images under several corruptions), so it is a little narrow.
The images' source (regenerated or the released files) is read from each cell's manifest and named per defense."""
from __future__ import annotations

from pathlib import Path

from ..corruptions.spec import CORRUPTIONS, SEVERITIES, attack_name, parse_attack
from .rows import to_float
from .tables import (Slice, Table, Notes, _count, clean_cell, is_corruption, only_corruptions, pooled_cell,
                     provenance_lines)

FOLDER = "corruptions"  # <dataset>-<profile>.md / .csv beside the leaderboard


def corruption_attacks(corruption: str, severities=SEVERITIES) -> list[str]:
    return [attack_name(corruption, s) for s in severities]


def sources(sl: Slice, defense: str) -> list[str]:
    """The images' sources of a defense's corruption cells, from their manifests ('not recorded' without one)."""
    found = set()
    for (d, a), r in sl.cells.items():
        if d == defense and is_corruption(a) and r["status"] == "ok":
            m = sl.results.manifest(r)
            found.add(((m or {}).get("attack_info") or {}).get("source") or "source not recorded")
    return sorted(found)


def table(sl: Slice) -> Table | None:
    """The corruptions table of one slice; None when it has no corruption cell."""
    cc = only_corruptions(sl)
    if not cc.cells:
        return None
    ran = {parse_attack(a) for _, a in cc.cells}
    corruptions = [c for c in CORRUPTIONS if any((c, s) in ran for s in SEVERITIES)]
    severities = [s for s in SEVERITIES if any((c, s) in ran for c in CORRUPTIONS)]
    every = [attack_name(c, s) for c in corruptions for s in severities]
    notes = Notes()
    header = ["defense", "clean", "mean", "relative to clean", *corruptions, *(f"severity {s}" for s in severities),
              "cells", "source", "s", "fwd passes"]
    body = []
    for d in cc.defenses():
        clean = clean_cell(sl, d, notes)
        mean = pooled_cell(cc, d, every, notes, "mean")
        relative = f"{100 * mean.value / clean.value:.1f}" if mean.value is not None and clean.value else "-"
        rows = cc.rows_of(d)
        body.append([d, clean.text, mean.text, relative,
                     *(pooled_cell(cc, d, corruption_attacks(c, severities), notes, c).text for c in corruptions),
                     *(pooled_cell(cc, d, [attack_name(c, s) for c in corruptions], notes, f"severity {s}").text
                       for s in severities),
                     f"{len(rows)} of {len(every)}", "; ".join(sources(cc, d)),
                     f"{sum(to_float(r['wall_s']) for r in rows):.1f}",
                     _count(sum(to_float(r["forward_passes"]) for r in rows))])
    ns = sorted({str(r["n"]) for r in cc.cells.values()})
    what = (f"Common corruptions (CIFAR-10-C; Hendrycks & Dietterich 2019), dataset {sl.dataset}, profile "
            f"{sl.profile}, seed {sl.seed}, n {', '.join(ns)} per cell. Accuracy % on the corrupted images of every "
            f"test point ± 95 % Wilson half-width; a corruption column pools its severities ({', '.join(map(str, severities))}), "
            f"a severity column its corruptions, mean pools all; relative to clean = mean / clean accuracy. "
            f"Source: regenerated (bench's generator, a fixed seed per corruption, severity and image) or the "
            f"released files. s, fwd passes: the cells' evaluation cost.")
    return Table(f"Common corruptions — {sl.dataset} / {sl.profile}", header, body, what, notes.items,
                 provenance=provenance_lines(list(cc.cells.values())))


def write(sl: Slice, out_dir: Path) -> Path | None:
    """out_dir/corruptions/<dataset>-<profile>.md and .csv; None when the slice has no corruption cell."""
    t = table(sl)
    return None if t is None else t.write(Path(out_dir) / FOLDER, f"{sl.dataset}-{sl.profile}")
