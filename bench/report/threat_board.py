"""Leaderboards per threat model, the way RobustBench reads: one table per dataset × profile × (norm, eps), rows =
defenses sorted by their worst-case robust accuracy, the worst case taken per test point over that threat model's
attacks only (a PGD-L1 number says nothing about Linf 8/255), and numeric exports beside each table.

A threat model is derived from each row's resolved attack (its `norm` and `eps` columns); minimum-norm attacks
(Boundary, HopSkipJump, ZOO) count in the threat model of the eps they were run with, as fooled within it.
Cells of different n are combined on their common test points: each cell's points are the seeded subset
bench.data.subset_indices draws, so a cell's test indices are known from (dataset, n, seed) and the worst case is
taken on the indices every cell saw; the table says on how many.

Footnotes say only what a reader needs (a warning, a weak or failed check, why a worst case is only a bound), once
per reason with the cells it is about; which code, versions, devices, checkpoints and dates made the rows is one
provenance block per table.

Where a minimum-norm attack left per-sample norms for a defense at the table's norm, its row also shows the
median minimal norm over every attack's evidence at that norm (bench.report.curves: the robustness curve's median);
tables without such evidence render exactly as before. Beside each table: numeric CSV / JSON exports and a RobustBench model card per defense
(model_info/<threat model>/<defense>.json). Nothing rendered carries a render time or a path of this machine, so
re-rendering a committed snapshot gives the committed bytes (tests/test_snapshot_render.py)."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..stats import wilson_interval
from ..store import atomic_write_bytes
from ..verdicts.cross_cell import cross_checks, sample_indices
from .curves import Curve, norm_text, slice_curves
from .rows import format_eps, threat_label, threat_model, to_float
from .tables import (Notes, Results, Slice, Table, _count, check_note, flagged_checks, flags_of, provenance_lines,
                     split_warning)

FOLDER = "leaderboards"


label = threat_label  # 'Linf 8/255'


def slug(tm: tuple[str, float]) -> str:
    return f"{tm[0]}-{format_eps(tm[0], str(tm[1])).replace('/', '_')}"


@dataclass
class Score:
    k: int
    n: int

    @property
    def acc(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n) if self.n else (float("nan"), float("nan"))

    def text(self) -> str:
        lo, hi = self.ci()
        return f"{100 * self.acc:.1f} ± {50 * (hi - lo):.1f}"


@dataclass
class AttackResult:
    attack: str
    score: Score | None  # None: not finished (status says why)
    status: str
    verdict: str  # worst per-cell check verdict: pass | warn | fail | "" (no checks recorded)


@dataclass
class Entry:
    defense: str
    clean: Score
    worst: Score
    per_sample: bool  # False: no per-sample verdicts for some cell, the worst case is the strongest single attack
    common: int  # test points the per-sample worst case was taken on
    strongest: str
    unreliable: bool
    attacks: list[AttackResult] = field(default_factory=list)
    attack_s: float = 0.0
    forward_passes: float = 0.0
    devices: str = ""
    marks: list[str] = field(default_factory=list)  # the checks column's footnote numbers (boards(), table order)
    worst_marks: list[str] = field(default_factory=list)  # the worst-case column's
    reasons: list[tuple[str, str, str, str]] = field(default_factory=list)  # (defense, attack, reason, column)
    # one short line per warn/fail check, the cells' and those across cells alike: "<attack>: <verdict>: <short>
    # (<check>)", "across cells: ..." (the model cards' flags)
    flags: list[str] = field(default_factory=list)
    architecture: str = ""
    forward_passes_per_prediction: int = 1  # a stochastic defense's ensemble of E passes: E
    cross: dict = field(default_factory=dict)  # checks across its cells (bench.verdicts.cross_cell)
    curve: Curve | None = None  # its robustness curve at the table's norm, where a minimum-norm attack gave one

    @property
    def median_norm(self) -> float | None:
        return self.curve.median() if self.curve is not None else None


def _verdict(row: dict) -> str:
    failed = flagged_checks(row, ("fail",))
    return "fail" if failed else ("warn" if flagged_checks(row, ("warn",)) else ("pass" if row.get("checks") else ""))


def entry(sl: Slice, defense: str, rows: list[dict]) -> Entry | None:
    ok = [r for r in rows if r["status"] == "ok" and int(to_float(r.get("n"))) > 0]
    results = [AttackResult(r["attack"], Score(round(to_float(r["robust_acc"]) * int(to_float(r["n"]))),
                                               int(to_float(r["n"]))) if r in ok else None,
                            r["status"], _verdict(r)) for r in sorted(rows, key=lambda r: r["attack"])]
    if not ok:
        return None
    by_point: list[dict[int, bool]] = []
    loose: list[dict] = []  # rows whose per-sample verdicts are missing: they can only bound the worst case
    for r in ok:
        vec, _ = sl.results.robust_vector(r)
        idx = sample_indices(r, sl.dataset)
        if vec is None or idx is None:
            loose.append(r)
        else:
            by_point.append(dict(zip(idx, vec)))
    strongest = min(ok, key=lambda r: to_float(r["robust_acc"]))
    n_big = max(int(to_float(r["n"])) for r in ok)
    big = next(r for r in ok if int(to_float(r["n"])) == n_big)
    clean = Score(round(to_float(big["clean_acc"]) * n_big), n_big)
    if by_point:
        common = sorted(set.intersection(*(set(p) for p in by_point)))
        worst = Score(sum(all(p[i] for p in by_point) for i in common), len(common))
    else:
        common, worst = [], Score(0, 0)
    per_sample = not loose
    if loose:  # the strongest row without verdicts bounds it when it is lower
        k_row = Score(round(to_float(strongest["robust_acc"]) * int(to_float(strongest["n"]))),
                      int(to_float(strongest["n"])))
        if not by_point or k_row.acc < worst.acc:
            worst = k_row
    cross = cross_checks(sl.results, sl.dataset, ok)
    unreliable = any(_verdict(r) == "fail" for r in ok) or any(c["verdict"] == "fail" for c in cross.values())
    reasons = []  # (defense, attack or "", the reason, the column its mark goes in)
    for r in sorted(ok, key=lambda r: r["attack"]):
        reasons += [(defense, r["attack"], w, "checks") for w in split_warning(r.get("warnings", ""))[0]]
        reasons += [(defense, r["attack"], check_note(name, c), "checks") for name, c in flagged_checks(r)]
        if flags_of(r).get("collapsed"):
            reasons.append((defense, r["attack"], "training collapsed (its flags say so)", "checks"))
        if failure := sl.results.failure_note(r):  # the number stands; a later try of the cell did not finish
            reasons.append((defense, r["attack"], failure, "checks"))
    reasons += [(defense, "", check_note(name, c), "checks") for name, c in cross.items() if c["verdict"] == "fail"]
    flags = [f"{r['attack']}: {c['verdict']}: {c.get('short') or name} ({name})"
             for r in sorted(ok, key=lambda r: r["attack"]) for name, c in flagged_checks(r)]
    flags += [f"across cells: fail: {c['short']} ({name})" for name, c in cross.items() if c["verdict"] == "fail"]
    if loose:
        why = "; ".join(sorted({sl.results.robust_vector(r)[1] for r in loose}))
        reasons.append((defense, "", f"worst case ≤ the strongest single attack: {why}", "worst"))
    arch, passes = _model_facts(sl, ok)
    return Entry(defense, clean, worst, per_sample, len(common), strongest["attack"], unreliable, results,
                 sum(to_float(r["wall_s"]) for r in ok), sum(to_float(r["forward_passes"]) for r in ok),
                 ", ".join(sorted({r.get("device", "") for r in ok})), reasons=reasons, architecture=arch,
                 forward_passes_per_prediction=passes, cross=cross, flags=flags)


def _default_arch(dataset: str) -> str:
    """[datasets.D] arch of the bench.toml beside the package: what arch = "auto" meant for a manifest written
    before manifests recorded the run's resolved `architecture` (the committed snapshots)."""
    import tomllib

    try:
        raw = tomllib.loads((Path(__file__).resolve().parents[2] / "bench.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    return str(raw.get("datasets", {}).get(dataset, {}).get("arch", ""))


def _model_facts(sl: Slice, rows: list[dict]) -> tuple[str, int]:
    """(architecture, forward passes per prediction) from the rows' manifests: the defense entry's arch (its
    dataset's default for "auto", as the run resolved it) and its `ensemble` of E stochastic passes (1 without
    one); ("", 1) unknown."""
    for r in rows:
        m = sl.results.manifest(r)
        params = ((m or {}).get("defense_entry") or {}).get("params") or {}
        if params:
            arch = str(params.get("arch") or "auto")
            if "architecture" in m:  # the run's own config resolved it (a ready-made model's is "")
                arch = m["architecture"]
            elif arch == "auto":
                arch = _default_arch(sl.dataset)
            return arch, max(1, int(params.get("ensemble", 1)))
    return "", 1


def boards(results: Results, dataset: str, profile: str, seed=None) -> dict:
    """Per threat model of the slice, its defenses' entries sorted by worst-case robust accuracy (best first)."""
    seed = seed if seed is not None else results.default_seed(dataset, profile)
    if seed is None:
        return {}
    sl = results.slice(dataset, profile, seed)
    curves = {(c.defense, norm): c for norm, cs in slice_curves(sl).items() for c in cs
              if any(e.min_norm for e in c.attacks)}
    grouped: dict[tuple[str, float], dict[str, list[dict]]] = {}
    for (defense, _), row in sl.cells.items():
        tm = threat_model(row)
        if tm is not None:
            grouped.setdefault(tm, {}).setdefault(defense, []).append(row)
    out = {}
    for tm in sorted(grouped, key=lambda t: (t[0], t[1])):
        notes = Notes()
        entries = [e for d, rows in sorted(grouped[tm].items()) if (e := entry(sl, d, rows)) is not None]
        for e in entries:
            e.curve = curves.get((e.defense, tm[0]))
        entries.sort(key=lambda e: (-e.worst.acc, e.defense))
        _number_notes(entries, notes)
        out[tm] = (entries, notes, sl)
    return out


def _number_notes(entries: list[Entry], notes: Notes) -> None:
    """One footnote per distinct reason, numbered in table order, naming the cells it is about."""
    cells: dict[str, dict[str, list[str]]] = {}  # reason -> defense -> its attacks
    for e in entries:
        for defense, attack, text, _ in e.reasons:
            attacks = cells.setdefault(text, {}).setdefault(defense, [])
            if attack and attack not in attacks:
                attacks.append(attack)

    def where(by: dict[str, list[str]]) -> str:
        return "; ".join(d + (" × " + ", ".join(a) if a else "") for d, a in by.items())

    numbers = {text: notes.mark(f"{text} ({where(by)})") for text, by in cells.items()}

    def marks(e: Entry, column: str) -> list[str]:
        return sorted({numbers[t] for _, _, t, c in e.reasons if c == column}, key=lambda m: int(m[1:-1]))

    for e in entries:
        e.marks, e.worst_marks = marks(e, "checks"), marks(e, "worst")


def provenance(entries: list[Entry], sl: Slice) -> list[str]:
    """The table's provenance block, from the rows of its cells."""
    return provenance_lines([sl.cells[(e.defense, a.attack)] for e in entries for a in e.attacks])


def checks_text(e: Entry) -> str:
    """'ok', or ⚠ with the verdicts that fired and the footnotes of its warnings (a warning is ⚠ without a check)."""
    verdicts = sorted({a.verdict for a in e.attacks if a.verdict in ("warn", "fail")}
                      | {c["verdict"] for c in e.cross.values() if c["verdict"] == "fail"})
    return " ".join(filter(None, ["⚠", "/".join(verdicts), "".join(e.marks)])) if verdicts or e.marks else "ok"


def worst_text(e: Entry) -> str:
    return (("" if e.per_sample else "≤ ") + e.worst.text() + (" (unreliable)" if e.unreliable else "")
            + (" " + "".join(e.worst_marks) if e.worst_marks else ""))


def has_curves(entries: list[Entry]) -> bool:
    return any(e.curve is not None for e in entries)


def median_text(tm, e: Entry) -> str:
    return "—" if e.curve is None else norm_text(tm[0], e.median_norm)


MEDIAN_NOTE = (" Median min norm: half the defense's points are fooled within it, per point the smallest "
               "perturbation any attack at this norm found (minimum-norm attacks and fixed-eps cells alike; "
               "—: no minimum-norm attack ran on it).")


def table(tm, entries: list[Entry], notes: Notes, sl: Slice) -> Table:
    header = ["#", "defense", "clean", "worst case", "strongest attack", "attacks", "points", "checks", "attack s",
              "fwd passes"]
    curves = has_curves(entries)
    if curves:
        header.insert(4, "median min norm")
    body = []
    for i, e in enumerate(entries, 1):
        body.append([str(i), e.defense, e.clean.text(), worst_text(e), e.strongest,
                     str(sum(a.score is not None for a in e.attacks)), str(e.common if e.per_sample else e.worst.n),
                     checks_text(e), f"{e.attack_s:.1f}", _count(e.forward_passes)])
        if curves:
            body[-1].insert(4, median_text(tm, e))
    what = (f"Threat model {label(tm)}. Accuracy % ± 95 % Wilson half-width. Worst case: per test point over this "
            f"threat model's attacks only (a point is robust only if no attack fooled it), on the test points all "
            f"of the defense's cells saw ('points'); '≤' = some cell has no per-sample verdicts, so the strongest "
            f"single attack bounds it. Unreliable: an attack failed a per-cell check, or a black-box or single-step "
            f"attack fooled points every iterative gradient attack left robust. Per-attack numbers: "
            f"{slug(tm)}-attacks.csv." + (MEDIAN_NOTE if curves else ""))
    return Table(f"{label(tm)} — {sl.dataset} / {sl.profile}", header, body, board_caption(sl, entries, what),
                 notes.items, provenance=provenance(entries, sl))


def board_caption(sl: Slice, entries: list[Entry], what: str) -> str:
    """What the table shows and on which points: dataset, profile, seed, n (the rest is provenance)."""
    ns = sorted({a.score.n for e in entries for a in e.attacks if a.score is not None})
    others = sorted({r["seed"] for r in sl.results.latest_rows(dataset=sl.dataset, profile=sl.profile)} - {sl.seed})
    text = (f"{what} Dataset {sl.dataset}, profile {sl.profile}, seed {sl.seed}, n "
            f"{', '.join(map(str, ns)) or '-'}.")
    return text + (f" Other seeds in the store: {', '.join(others)} (--seed)." if others else "")


def numeric_csv(tm, entries: list[Entry]) -> tuple[str, str]:
    """(the leaderboard, one row per defense × attack), every number in a column of its own."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["rank", "defense", "norm", "eps", "clean_acc", "clean_ci_low", "clean_ci_high", "clean_k", "clean_n",
                "robust_acc", "ci_low", "ci_high", "robust_k", "robust_n", "per_sample", "unreliable",
                "strongest_attack", "attacks", "attack_s", "forward_passes"]
               + (["median_min_norm", "curve_n"] if has_curves(entries) else []))
    for i, e in enumerate(entries, 1):
        w.writerow([i, e.defense, tm[0], tm[1], e.clean.acc, *e.clean.ci(), e.clean.k, e.clean.n, e.worst.acc,
                    *e.worst.ci(), e.worst.k, e.worst.n, int(e.per_sample), int(e.unreliable), e.strongest,
                    sum(a.score is not None for a in e.attacks), round(e.attack_s, 3), int(e.forward_passes)]
                   + (([e.median_norm, e.curve.n] if e.curve else ["", ""]) if has_curves(entries) else []))
    long = io.StringIO()
    w = csv.writer(long, lineterminator="\n")
    w.writerow(["defense", "attack", "norm", "eps", "status", "robust_acc", "ci_low", "ci_high", "robust_k",
                "robust_n", "verdict"])
    for e in entries:
        for a in e.attacks:
            s = a.score
            w.writerow([e.defense, a.attack, tm[0], tm[1], a.status, *((s.acc, *s.ci(), s.k, s.n) if s else
                                                                       ("", "", "", "", "")), a.verdict])
    return out.getvalue(), long.getvalue()


SCORED = ("clean", "worst", "attacks", "marks", "worst_marks", "cross", "curve")  # written by _json as scores, or table-only


def _finite(norm):
    """A median minimal norm for JSON: infinite (fewer than half the points were ever fooled) is written as null,
    since JSON has no infinity ('Infinity' is not JSON)."""
    return None if norm is None or norm == float("inf") else norm


def _json(tm, entries: list[Entry], sl: Slice) -> dict:
    def score(s: Score | None):
        return None if s is None else {"acc": s.acc, "ci": list(s.ci()), "k": s.k, "n": s.n}

    return {"dataset": sl.dataset, "profile": sl.profile, "seed": sl.seed, "norm": tm[0], "eps": tm[1],
            "threat_model": label(tm),
            "defenses": [{**{k: v for k, v in asdict(e).items() if k not in SCORED},
                          "rank": i, "clean": score(e.clean), "worst": score(e.worst),
                          **({"cross_checks": e.cross} if e.cross else {}),
                          **({"median_min_norm": _finite(e.median_norm), "curve_n": e.curve.n} if e.curve else {}),
                          "attacks": [{"attack": a.attack, "status": a.status, "verdict": a.verdict,
                                       **(score(a.score) or {})} for a in e.attacks]}
                         for i, e in enumerate(entries, 1)]}


MODEL_INFO = "model_info"
# RobustBench's folder name of a threat model (robustbench.model_zoo.enums.ThreatModel); other norms keep bench's
ROBUSTBENCH_THREAT = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def model_card(tm, e: Entry, rank: int, sl: Slice) -> dict:
    """One defense at one threat model in RobustBench's model_info/<dataset>/<threat model>/<Name>.json format: the
    fields its leaderboard code reads (robustbench/leaderboard/template.py and leaderboard.html.j2: link, name,
    footnote, clean_acc, autoattack_acc, external, flags, additional_data, architecture, venue) and the rest of its
    cards' fields (authors, number_forward_passes, dataset, eps, reported, unreliable), accuracies as percent
    strings with two decimals as RobustBench writes them. bench's own numbers are under "bench"."""
    ran = [a.attack for a in e.attacks if a.score is not None]
    how = ("per test point over" if e.per_sample else "at most (no per-sample verdicts to combine) the lowest of")
    flags = e.flags
    footnote = (f"Robust accuracy: bench's worst case {how} {', '.join(ran)} at {label(tm)} on {e.worst.n} test "
                f"points (profile {sl.profile}, seed {sl.seed}), not AutoAttack unless listed; lowest single "
                f"attack: {e.strongest}.")
    if e.unreliable:
        footnote += " Unreliable: an attack failed a check (" + "; ".join(flags) + ")."

    def score(s: Score) -> dict:
        return {"acc": s.acc, "ci_low": s.ci()[0], "ci_high": s.ci()[1], "k": s.k, "n": s.n}

    return {"link": "", "name": e.defense, "authors": "", "additional_data": False,
            "number_forward_passes": e.forward_passes_per_prediction, "dataset": sl.dataset, "venue": "N/A",
            "architecture": e.architecture or "unknown", "eps": format_eps(tm[0], str(tm[1])),
            "clean_acc": f"{100 * e.clean.acc:.2f}", "reported": "N/A", "autoattack_acc": f"{100 * e.worst.acc:.2f}",
            "unreliable": e.unreliable, "flags": flags, "footnote": footnote,
            "threat_model": ROBUSTBENCH_THREAT.get(tm[0], tm[0]),
            "bench": {"profile": sl.profile, "seed": sl.seed, "rank": rank, "norm": tm[0], "eps": tm[1],
                      "clean": score(e.clean), "worst_case": score(e.worst), "per_sample": e.per_sample,
                      "common_points": e.common, "strongest_attack": e.strongest, "attacks": ran,
                      **({"median_min_norm": _finite(e.median_norm)} if e.curve else {}),
                      "leaderboard": f"../../{slug(tm)}.csv"}}


def write(results: Results, dataset: str, profile: str, out_dir: Path, seed=None) -> Path | None:
    """out_dir/leaderboards/<dataset>-<profile>/: per threat model <slug>.md, .csv (numbers), -attacks.csv, .json,
    model_info/<slug>/<defense>.json (RobustBench's model cards), and index.md linking them; None when the slice
    has no bounded attack."""
    found = boards(results, dataset, profile, seed)
    if not found:
        return None
    folder = Path(out_dir) / FOLDER / f"{dataset}-{profile}"
    files: dict[Path, str] = {}  # everything the folder holds, written in one go below
    lines = [f"# Leaderboards — {dataset} / {profile}", "",
             "One table per threat model; rows sorted by worst-case robust accuracy.", ""]
    for tm, (entries, notes, sl) in found.items():
        s = slug(tm)
        files[folder / f"{s}.md"] = table(tm, entries, notes, sl).markdown()
        files[folder / f"{s}.csv"], files[folder / f"{s}-attacks.csv"] = numeric_csv(tm, entries)
        files[folder / f"{s}.json"] = json.dumps(_json(tm, entries, sl), indent=1) + "\n"
        for rank, e in enumerate(entries, 1):
            card = model_card(tm, e, rank, sl)
            files[folder / MODEL_INFO / s / f"{e.defense}.json"] = json.dumps(card, indent=2) + "\n"
        best = entries[0] if entries else None
        lines.append(f"- [{label(tm)}]({s}.md): {len(entries)} defenses" +
                     (f", most robust {best.defense} ({best.worst.text()})" if best else ""))
    lines += ["", f"Model cards in RobustBench's format (one per defense × threat model): {MODEL_INFO}/<threat model>/"
              f"<defense>.json; numeric exports: <threat model>.csv, -attacks.csv, .json."]
    files[folder / "index.md"] = "\n".join(lines) + "\n"
    for path, text in files.items():
        atomic_write_bytes(path, text.encode())
    # the folder is this function's output only: a board or card of a threat model or defense gone from the rows
    # would be stale beside the fresh ones (and a re-rendered snapshot would not equal the committed one)
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and path not in files and path.suffix in (".md", ".csv", ".json"):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return folder / "index.md"
