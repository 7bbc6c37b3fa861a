"""Leaderboards per threat model, the way RobustBench reads: one table per dataset × profile × (norm, eps), rows =
defenses sorted by their worst-case robust accuracy, the worst case taken per test point over that threat model's
attacks only (a PGD-L1 number says nothing about Linf 8/255), and numeric exports beside each table.

A threat model is derived from each row's resolved attack (its `norm` and `eps` columns); minimum-norm attacks
(Boundary, HopSkipJump, ZOO) count in the threat model of the eps they were run with, as fooled within it.
Cells of different n are combined on their common test points: each cell's points are the seeded subset
bench.data.subset_indices draws, so a cell's test indices are known from (dataset, n, seed) and the worst case is
taken on the indices every cell saw; the table says on how many."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import TEST_SET_SIZE, subset_indices
from .stats import wilson_interval
from .store import atomic_write_bytes
from .tables import (NORM_NAMES, Notes, Results, Slice, Table, _count, caption, check_note, flagged_checks,
                     format_eps, to_float)

FOLDER = "leaderboards"


def threat_model(row: dict) -> tuple[str, float] | None:
    """(norm, eps) of a row's attack; None for rows without a budget (noise, a minimum-norm attack with no eps)."""
    norm, eps = row.get("norm") or "", row.get("eps")
    if not norm or eps in ("", None):
        return None
    return norm, float(f"{to_float(eps):.6g}")  # '30' and '30.0' are one threat model


def label(tm: tuple[str, float]) -> str:
    return f"{NORM_NAMES.get(tm[0], tm[0])} {format_eps(tm[0], str(tm[1]))}"


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
    marks: list[str] = field(default_factory=list)


def _indices(row: dict, dataset: str) -> list[int] | None:
    size = TEST_SET_SIZE.get(dataset)
    n = int(to_float(row.get("n")))
    if not size or not n:
        return None
    return subset_indices(size, n, int(to_float(row.get("seed"))), f"{dataset}/test").tolist()


def _verdict(row: dict) -> str:
    failed = flagged_checks(row, ("fail",))
    return "fail" if failed else ("warn" if flagged_checks(row, ("warn",)) else ("pass" if row.get("checks") else ""))


def entry(sl: Slice, defense: str, rows: list[dict], notes: Notes) -> Entry | None:
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
        idx = _indices(r, sl.dataset)
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
    unreliable = any(_verdict(r) == "fail" for r in ok)
    marks = []
    for r in ok:
        where = f"{defense} × {r['attack']}"
        if r.get("warnings"):
            marks.append(notes.mark(f"{where}: {r['warnings']}"))
        marks += [notes.mark(f"{where}: {check_note(name, c)}") for name, c in flagged_checks(r)]
    return Entry(defense, clean, worst, per_sample, len(common), strongest["attack"], unreliable, results,
                 sum(to_float(r["wall_s"]) for r in ok), sum(to_float(r["forward_passes"]) for r in ok),
                 ", ".join(sorted({r.get("device", "") for r in ok})), sorted(set(marks)))


def boards(results: Results, dataset: str, profile: str, seed=None) -> dict:
    """Per threat model of the slice, its defenses' entries sorted by worst-case robust accuracy (best first)."""
    seed = seed if seed is not None else results.default_seed(dataset, profile)
    if seed is None:
        return {}
    sl = results.slice(dataset, profile, seed)
    grouped: dict[tuple[str, float], dict[str, list[dict]]] = {}
    for (defense, _), row in sl.cells.items():
        tm = threat_model(row)
        if tm is not None:
            grouped.setdefault(tm, {}).setdefault(defense, []).append(row)
    out = {}
    for tm in sorted(grouped, key=lambda t: (t[0], t[1])):
        notes = Notes()
        entries = [e for d, rows in sorted(grouped[tm].items()) if (e := entry(sl, d, rows, notes)) is not None]
        entries.sort(key=lambda e: (-e.worst.acc, e.defense))
        out[tm] = (entries, notes, sl)
    return out


def table(tm, entries: list[Entry], notes: Notes, sl: Slice) -> Table:
    header = ["#", "defense", "clean", "worst case", "strongest attack", "attacks", "points", "checks", "attack s",
              "fwd passes", "device"]
    body = []
    for i, e in enumerate(entries, 1):
        worst = ("" if e.per_sample else "≤ ") + e.worst.text() + (" (unreliable)" if e.unreliable else "")
        verdicts = sorted({a.verdict for a in e.attacks if a.verdict in ("warn", "fail")})
        body.append([str(i), e.defense, e.clean.text(), worst, e.strongest,
                     str(sum(a.score is not None for a in e.attacks)),
                     str(e.common if e.per_sample else e.worst.n),
                     " ".join(filter(None, ["⚠", "/".join(verdicts), "".join(e.marks)])) if verdicts or e.marks
                     else "ok",
                     f"{e.attack_s:.1f}", _count(e.forward_passes), e.devices])
    what = (f"Threat model {label(tm)}. Accuracy % ± 95 % Wilson half-width. Worst case: per test point over this "
            f"threat model's attacks only (a point is robust only if no attack fooled it), on the test points all "
            f"of the defense's cells saw ('points'); '≤' = some cell has no per-sample verdicts, so the strongest "
            f"single attack bounds it. Unreliable: an attack failed a per-cell check. Per-attack numbers: "
            f"{slug(tm)}-attacks.csv.")
    return Table(f"{label(tm)} — {sl.dataset} / {sl.profile}", header, body, caption([sl], what), notes.items)


def numeric_csv(tm, entries: list[Entry]) -> tuple[str, str]:
    """(the leaderboard, one row per defense × attack), every number in a column of its own."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["rank", "defense", "norm", "eps", "clean_acc", "clean_ci_low", "clean_ci_high", "clean_k", "clean_n",
                "robust_acc", "ci_low", "ci_high", "robust_k", "robust_n", "per_sample", "unreliable",
                "strongest_attack", "attacks", "attack_s", "forward_passes"])
    for i, e in enumerate(entries, 1):
        w.writerow([i, e.defense, tm[0], tm[1], e.clean.acc, *e.clean.ci(), e.clean.k, e.clean.n, e.worst.acc,
                    *e.worst.ci(), e.worst.k, e.worst.n, int(e.per_sample), int(e.unreliable), e.strongest,
                    sum(a.score is not None for a in e.attacks), round(e.attack_s, 3), int(e.forward_passes)])
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


def _json(tm, entries: list[Entry], sl: Slice) -> dict:
    def score(s: Score | None):
        return None if s is None else {"acc": s.acc, "ci": list(s.ci()), "k": s.k, "n": s.n}

    return {"dataset": sl.dataset, "profile": sl.profile, "seed": sl.seed, "norm": tm[0], "eps": tm[1],
            "threat_model": label(tm),
            "defenses": [{**{k: v for k, v in asdict(e).items() if k not in ("clean", "worst", "attacks", "marks")},
                          "rank": i, "clean": score(e.clean), "worst": score(e.worst),
                          "attacks": [{"attack": a.attack, "status": a.status, "verdict": a.verdict,
                                       **(score(a.score) or {})} for a in e.attacks]}
                         for i, e in enumerate(entries, 1)]}


def write(results: Results, dataset: str, profile: str, out_dir: Path, seed=None) -> Path | None:
    """out_dir/leaderboards/<dataset>-<profile>/: per threat model <slug>.md, .csv (numbers), -attacks.csv, .json,
    and index.md linking them; None when the slice has no bounded attack."""
    found = boards(results, dataset, profile, seed)
    if not found:
        return None
    folder = Path(out_dir) / FOLDER / f"{dataset}-{profile}"
    lines = [f"# Leaderboards — {dataset} / {profile}", "",
             "One table per threat model; rows sorted by worst-case robust accuracy.", ""]
    for tm, (entries, notes, sl) in found.items():
        s = slug(tm)
        atomic_write_bytes(folder / f"{s}.md", table(tm, entries, notes, sl).markdown().encode())
        board, per_attack = numeric_csv(tm, entries)
        atomic_write_bytes(folder / f"{s}.csv", board.encode())
        atomic_write_bytes(folder / f"{s}-attacks.csv", per_attack.encode())
        atomic_write_bytes(folder / f"{s}.json", (json.dumps(_json(tm, entries, sl), indent=1) + "\n").encode())
        best = entries[0] if entries else None
        lines.append(f"- [{label(tm)}]({s}.md): {len(entries)} defenses" +
                     (f", most robust {best.defense} ({best.worst.text()})" if best else ""))
    atomic_write_bytes(folder / "index.md", ("\n".join(lines) + "\n").encode())
    return folder / "index.md"
