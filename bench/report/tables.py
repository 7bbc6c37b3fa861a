"""Tables from the results store: the leaderboard and the paper layouts of [tables.*] (bench.report.table_spec).

A cell shows the latest row of its (dataset, defense, attack, profile, seed). The worst-case cell combines the
per-sample verdicts stored in the cells' manifests: a point counts as robust only if no attack fooled it, so it
can be lower than the minimum of the column means. Cells that have no number say why (not run, failed, blocked,
pending) and every caveat (collapsed training, warnings, incomplete worst case) becomes a numbered footnote.

The per-cell checks of bench.verdicts (the row's `checks` column) mark a cell whose attack warned or failed a check
with ⚠ and a footnote per distinct reason; a worst case that combines a row with a failed check reads
"(unreliable)" (RobustBench's word), in every table and in the CSV export. Rows without checks show no marks."""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from ..stats import wilson_interval
from ..store import CellRows, ResultsStore, atomic_write_bytes
from ..verdicts.cross_cell import failed_by_threat_model
from .rows import NORM_NAMES, format_eps, to_float
from ..corruptions.spec import attack_name, parse_attack
from .table_spec import CORRUPTION, PENDING, SUCCESS, TableSpec, corruption_ref

KEY = ("dataset", "defense", "attack", "profile", "seed")


def row_key(row: dict) -> tuple:
    """The cell a row is an attempt of, as the tables show cells (any n, any bench.toml)."""
    return tuple(str(row.get(k, "")) for k in KEY)


def is_min_norm(row: dict) -> bool:
    """Minimum-norm attacks (Boundary, HopSkipJump) fill success_rate; bounded attacks leave it empty."""
    return str(row.get("success_rate") or "") != ""


def flags_of(row: dict) -> dict:
    try:
        return json.loads(row.get("flags") or "{}")
    except json.JSONDecodeError:
        return {}


VERDICT_WORDS = {"fail": "attack failed", "warn": "attack may be weak"}


def checks_of(row: dict) -> dict[str, dict]:
    """The row's per-cell checks ({name: {"verdict", "short", "reason", ...}}); {} for rows written before the
    checks existed (an empty `checks`) or an unreadable column. Parsed here, not via bench.verdicts (torch)."""
    try:
        checks = json.loads(row.get("checks") or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    if not isinstance(checks, dict):
        return {}
    return {name: c for name, c in checks.items() if isinstance(c, dict)}


def flagged_checks(row: dict, verdicts=("fail", "warn")) -> list[tuple[str, dict]]:
    """(name, check) of the row's checks with one of `verdicts`, failures first, then in the column's order."""
    found = [(name, c) for name, c in checks_of(row).items() if c.get("verdict") in verdicts]
    return sorted(found, key=lambda nc: verdicts.index(nc[1]["verdict"]))


def check_note(name: str, check: dict) -> str:
    """A footnote for one warn/fail check: 'attack failed: zero gradients (gradient_health): <reason>'. It names
    no cell, so cells that fail for the same reason share one footnote."""
    short = str(check.get("short") or name)
    reason = str(check.get("reason") or "no reason recorded")
    return f"{VERDICT_WORDS[check['verdict']]}: {short} ({name}): {reason}"


# a part of a row's warning that only says which code made it (a tree hash, the copied .git's name) is provenance:
# it goes to the table's provenance block, not into a footnote
PROVENANCE_PART = re.compile(r"\.git\b|\bgit\b|\bcode = |\btree [0-9a-f]{7,}|-dirty\b")


def split_warning(text: str) -> tuple[list[str], list[str]]:
    """(parts a reader needs, provenance parts) of a row's `warnings` (warnings joined by ' | ', parts by '; ')."""
    reader, provenance = [], []
    for w in filter(None, (w.strip() for w in (text or "").split(" | "))):
        parts = [p.strip() for p in w.split("; ") if p.strip()]
        keep = [p for p in parts if not PROVENANCE_PART.search(p)]
        provenance += [p for p in parts if PROVENANCE_PART.search(p)]
        if keep:
            reader.append("; ".join(keep))
    return reader, provenance


def provenance_lines(rows: list[dict]) -> list[str]:
    """One block per table: which code, library versions, devices, checkpoints and dates made its rows (what traces
    a number back to its runs; nothing a reader needs to read the table)."""

    def counted(values) -> str:
        seen: dict[str, int] = {}
        for v in values:
            seen[v] = seen.get(v, 0) + 1
        return ", ".join(f"{v} ({k} cell{'s' if k > 1 else ''})" for v, k in sorted(seen.items())) or "-"

    def versions(r) -> str:
        try:
            v = json.loads(r.get("versions") or "{}")
        except json.JSONDecodeError:
            return str(r.get("versions"))
        return " ".join(f"{k} {v[k]}" for k in sorted(v)) if isinstance(v, dict) and v else "not recorded"

    stamps = sorted(r.get("timestamp", "") for r in rows)
    code = [r.get("git_sha") or "not recorded" for r in rows]
    notes = sorted({p for r in rows for p in split_warning(r.get("warnings", ""))[1]})
    ckpts = sorted({f"{r['defense']} {r.get('defense_ckpt') or '-'}" for r in rows})
    trained = sorted({f"{r['defense']} {json.dumps(f, sort_keys=True)}" for r in rows
                      if (f := {k: v for k, v in flags_of(r).items() if v and k != "collapsed"})})
    return [f"code (git): {counted(code)}" + (f"; {'; '.join(notes)}" if notes else ""),
            f"versions: {counted(versions(r) for r in rows)}",
            f"devices: {counted(r.get('device') or 'not recorded' for r in rows)}",
            f"checkpoints: {', '.join(ckpts)}" + (f"; training flags: {', '.join(trained)}" if trained else ""),
            f"results: {stamps[0][:10]} to {stamps[-1][:10]}" if stamps else "results: -"]


class Results:
    """Rows of results.csv reduced to the latest row per cell key, plus their manifests (read on demand)."""

    def __init__(self, rows: list[dict], runs_dir: Path | None = None, audits: list[dict] | None = None):
        self.rows = rows
        self.runs_dir = Path(runs_dir) if runs_dir else None
        self.audits = audits or []  # bench audit reports (results/audit/*.json)
        self._manifests: dict[str, dict | None] = {}
        # the row each cell key shows (bench.store.CellRows: the latest finished one; a failed or blocked attempt
        # only where none finished), and the failures newer than a shown finished row
        self._cells = CellRows(rows, row_key)
        self.latest: dict[tuple, dict] = self._cells.shown

    def failure_note(self, row: dict) -> str:
        """'a newer attempt of this cell failed …' when one did after `row` (a finished row shown), else ""."""
        return self._cells.failure_note(row_key(row)) if row.get("status") == "ok" else ""

    @classmethod
    def load(cls, root: Path) -> "Results":
        from ..verdicts import load_reports

        store = ResultsStore(root)
        return cls(store.rows(), store.manifest_dir, load_reports(root))

    def latest_rows(self, **where) -> list[dict]:
        return [r for r in self.latest.values() if all(str(r.get(k, "")) == str(v) for k, v in where.items())]

    def default_seed(self, dataset: str, profile: str) -> str | None:
        """The seed of the most recent row (tables show one seed; the caption names the others)."""
        rows = self.latest_rows(dataset=dataset, profile=profile)
        return max(rows, key=lambda r: r.get("timestamp", ""))["seed"] if rows else None

    def slice(self, dataset: str, profile: str, seed) -> "Slice":
        cells = {(r["defense"], r["attack"]): r for r in self.latest_rows(dataset=dataset, profile=profile, seed=seed)}
        return Slice(self, dataset, profile, str(seed), cells)

    def manifest(self, row: dict) -> dict | None:
        """The run manifest of a row, or None when it is missing or belongs to another run of the same cell."""
        cell = row.get("cell", "")
        if cell not in self._manifests:
            path = self.runs_dir / f"{cell}.json" if self.runs_dir else None
            try:
                self._manifests[cell] = json.loads(path.read_text()) if path and path.exists() else None
            except (OSError, json.JSONDecodeError):
                self._manifests[cell] = None
        m = self._manifests[cell]
        if m is None or m.get("row", {}).get("timestamp") != row.get("timestamp"):
            return None
        return m

    def robust_vector(self, row: dict) -> tuple[list[bool] | None, str]:
        """Per-sample 'still correct after the attack', recomputed from the manifest as the runner does (for a
        minimum-norm attack: not fooled within its eps) and checked against the row's robust count."""
        m = self.manifest(row)
        if m is None and (self.runs_dir is None or not self.runs_dir.is_dir()):
            return None, "per-sample data not committed: no run manifests beside these rows"
        if m is None:  # lost, or a snapshot that keeps the per-sample data of some rows only
            return None, "no manifest of this run"
        ps = m.get("per_sample") or {}
        correct, fooled, norms = ps.get("correct"), ps.get("fooled"), ps.get("norm")
        n = int(to_float(row.get("n")))
        if not correct or not fooled or len(correct) != n or len(fooled) != n:
            return None, "manifest lacks per-sample verdicts"
        if is_min_norm(row):
            if not norms or len(norms) != n:
                return None, "manifest lacks per-sample norms"
            eps = to_float(row.get("eps"))
            fooled = [f and v <= eps for f, v in zip(fooled, norms)]
        robust = [bool(c) and not bool(f) for c, f in zip(correct, fooled)]
        if sum(robust) != round(to_float(row.get("robust_acc")) * n):
            return None, "manifest disagrees with its row"
        return robust, ""


@dataclass
class Slice:
    """The latest cells of one dataset / profile / seed, keyed by (defense, attack)."""

    results: Results
    dataset: str
    profile: str
    seed: str
    cells: dict[tuple[str, str], dict]

    def defenses(self) -> list[str]:
        return sorted({d for d, _ in self.cells})

    def attacks(self) -> list[str]:
        """Bounded attacks first, then minimum-norm ones, each sorted by name."""
        names = {a: is_min_norm(r) for (_, a), r in self.cells.items()}
        return sorted(names, key=lambda a: (names[a], a))

    def rows_of(self, defense: str, ok_only: bool = True) -> list[dict]:
        return [r for (d, _), r in self.cells.items() if d == defense and (r["status"] == "ok" or not ok_only)]


class Notes:
    """Numbered footnotes, deduplicated."""

    def __init__(self):
        self.items: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"


@dataclass
class Cell:
    text: str
    value: float | None = None  # percent for accuracies, the norm for minimum-norm attacks
    low: float | None = None
    high: float | None = None
    unreliable: bool = False  # a worst case over a row whose attack failed a check


def accuracy_cell(k: int, n: int) -> Cell:
    lo, hi = wilson_interval(k, n)
    acc = 100 * k / n
    return Cell(f"{acc:.1f} ± {50 * (hi - lo):.1f}", acc, 100 * lo, 100 * hi)


def attack_cell(sl: Slice, defense: str, attack: str, notes: Notes) -> Cell:
    row = sl.cells.get((defense, attack))
    if row is None:
        return Cell("not run")
    where = f"{defense} × {attack}"
    if row["status"] != "ok":
        status, reason = row["status"], row.get("warnings") or "no reason recorded"
        return Cell(f"{status} " + notes.mark(f"{where} {status}: {reason}"))
    if is_min_norm(row):
        success = to_float(row["success_rate"])
        if str(row.get("mean_norm") or "") == "":
            cell = Cell("none fooled")
        else:
            mean = to_float(row["mean_norm"])
            cell = Cell(f"{mean:.2f}" + (f" ({100 * success:.0f} % fooled)" if success < 1 else ""), mean)
    else:
        n = int(to_float(row["n"]))
        cell = Cell("", 100 * to_float(row["robust_acc"]), 100 * to_float(row["ci_low"]), 100 * to_float(row["ci_high"]))
        cell.text = f"{cell.value:.1f} ± {(cell.high - cell.low) / 2:.1f}" if n else "n = 0"
    return _annotate(cell, row, where, notes, sl.results.failure_note(row))


def success_cell(sl: Slice, defense: str, attack: str, notes: Notes) -> Cell:
    """The attack's success rate % over the points it attacked (those the defense classified correctly)."""
    row = sl.cells.get((defense, attack))
    if row is None or row["status"] != "ok":
        return attack_cell(sl, defense, attack, notes)  # "not run", or the failure with its reason
    if str(row.get("success_rate") or "") == "":
        return Cell("no success rate recorded")
    attacked = round(to_float(row["clean_acc"]) * int(to_float(row["n"])))
    if not attacked:
        return Cell("none attacked")
    cell = accuracy_cell(round(to_float(row["success_rate"]) * attacked), attacked)
    cell.text += f" (of {attacked})"
    return _annotate(cell, row, f"{defense} × {attack}", notes, sl.results.failure_note(row))


def _annotate(cell: Cell, row: dict, where: str, notes: Notes, failure: str = "") -> Cell:
    flags = flags_of(row)
    if flags.get("collapsed"):
        cell.text += " (collapsed)"
    if failure:  # the number shown stands; the reader learns that a later try of the cell did not finish
        cell.text += " " + notes.mark(f"{where}: {failure}")
    # other training flags (a dictionary's key and its mean L1) and the code a warning names are provenance: the
    # table's provenance block lists them; a footnote keeps what a reader needs
    marks = [notes.mark(f"{where}: {w}") for w in split_warning(row.get("warnings", ""))[0]]
    marks += [notes.mark(check_note(name, c)) for name, c in flagged_checks(row)]
    if marks:  # one ⚠, then a footnote per warning and per warn/fail check
        cell.text += " ⚠" + "".join(marks)
    return cell


def clean_cell(sl: Slice, defense: str, notes: Notes) -> Cell:
    rows = sl.rows_of(defense)
    if not rows:
        return Cell("not run" if not sl.rows_of(defense, ok_only=False) else "no finished cell")
    n_max = max(int(to_float(r["n"])) for r in rows)  # attacks with their own smaller n_test see fewer points
    values = {(round(to_float(r["clean_acc"]) * n_max), n_max) for r in rows if int(to_float(r["n"])) == n_max}
    if len(values) == 1:
        k, n = values.pop()
        return accuracy_cell(k, n) if n else Cell("n = 0")
    accs = sorted(100 * k / n for k, n in values if n)
    return Cell(f"{accs[0]:.1f}–{accs[-1]:.1f} " + notes.mark(
        f"{defense}: clean accuracy differs between its cells on the same test points (stochastic defense?)"))


def worst_cell(sl: Slice, defense: str, attacks: list[str], notes: Notes) -> Cell:
    """Per-sample worst case: a point is robust only if it is correct and no listed attack fooled it (minimum-norm
    attacks count at their eps; without one they measure norms, not accuracy, and are left out)."""
    usable, missing, unaligned = [], [], []
    for attack in attacks:
        if attack.startswith(PENDING):
            missing.append(f"{attack[len(PENDING):]} (pending)")
            continue
        row = sl.cells.get((defense, attack))
        if row is None or row["status"] != "ok":
            missing.append(f"{attack} ({'not run' if row is None else row['status']})")
            continue
        if is_min_norm(row) and str(row.get("eps") or "") == "":
            continue
        vec, why = sl.results.robust_vector(row)
        if vec is None:
            missing.append(f"{attack} ({why})")
            if not is_min_norm(row):
                unaligned.append(row)
        else:
            usable.append((attack, vec, row))
    if not usable:
        if all(m.endswith("(not run)") for m in missing):
            return Cell("not run")
        if unaligned:  # rows without per-sample verdicts (e.g. a committed snapshot): the strongest one bounds it
            cell = accuracy_cell(*_strongest(unaligned))
            cell.text = "≤ " + cell.text + " " + notes.mark(
                f"{defense} worst case: the lowest single-attack accuracy; no per-sample verdicts to combine "
                f"({_grouped(missing)})")
            return _mark_unreliable(cell, defense, _on_largest(unaligned), notes, sl, unaligned)
        text = "not run" if all(m.endswith(("(not run)", "(pending)")) for m in missing) else "n/a"
        return Cell(f"{text} " + notes.mark(f"{defense} worst case: {_grouped(missing)}"))
    n = max(len(v) for _, v, _ in usable)  # samples align only between cells on the same test subset (same n)
    missing += [f"{a} (n = {len(v)}, not {n})" for a, v, _ in usable if len(v) != n]
    vectors = [v for _, v, _ in usable if len(v) == n]
    combined = [r for _, v, r in usable if len(v) == n] + _on_largest(unaligned)  # the rows that went into it
    judged = [r for _, _, r in usable] + unaligned  # every finished cell: the checks across cells compare them all
    robust = [all(v[i] for v in vectors) for i in range(n)]
    k, why = sum(robust), f"{defense} worst case without"
    if unaligned:
        k_row, n_row = _strongest(unaligned)
        if k_row / n_row < k / n:  # a row without verdicts bounds it more tightly than the per-sample worst case
            k, n = k_row, n_row
            why = (f"{defense} worst case: the lowest single-attack accuracy of a row without per-sample verdicts, "
                   f"below the per-sample worst case of the rest; left out of that:")
    cell = accuracy_cell(k, n)
    if missing:  # over fewer attacks the worst case can only be higher: say it is an upper bound
        cell.text = "≤ " + cell.text + " " + notes.mark(f"{why} {_grouped(missing)}")
    return _mark_unreliable(cell, defense, combined, notes, sl, judged)


def _grouped(missing: list[str]) -> str:
    """'a (why); b (why)' as 'a, b (why)': attacks left out for the same reason share it."""
    by: dict[str, list[str]] = {}
    for m in missing:
        attack, _, why = m.partition(" (")
        by.setdefault(why, []).append(attack)
    return "; ".join(f"{', '.join(attacks)} ({why}" for why, attacks in by.items())


def _mark_unreliable(cell: Cell, defense: str, rows: list[dict], notes: Notes, sl: Slice, judged: list[dict]) -> Cell:
    """'(unreliable)' and a footnote naming the failed checks when a row that went into the worst case has a check
    with verdict fail (zero gradients, a random model attacked without EOT, probabilities for logits), or when a
    black-box or single-step cell fooled points every iterative gradient cell of its threat model left robust
    (bench.verdicts.cross_cell, over `judged`: every finished cell, whatever its n): that points at an evaluation
    the other attacks may be fooled by too, so the minimum is no robustness number to trust. The word is part of
    the text, so the CSV export carries it too."""
    failed = failed_by_threat_model(sl.results, sl.dataset, judged)
    for r in rows:
        checks = flagged_checks(r, ("fail",))
        if checks:
            labels = ", ".join(f"{name}: {c.get('short') or name}" for name, c in checks)
            failed.append(f"{r['attack']} ({labels})")
    if failed:
        cell.unreliable = True
        cell.text += " (unreliable) " + notes.mark(
            f"{defense} worst case unreliable: attack failed a check on {'; '.join(sorted(failed))}")
    return cell


def _on_largest(rows: list[dict]) -> list[dict]:
    """The rows on the largest test subset (those `_strongest` bounds the worst case with)."""
    n = max((int(to_float(r["n"])) for r in rows), default=0)
    return [r for r in rows if int(to_float(r["n"])) == n]


def _strongest(rows: list[dict]) -> tuple[int, int]:
    """(robust points, n) of the lowest accuracy among rows on the largest test subset."""
    n = max(int(to_float(r["n"])) for r in rows)
    return min(round(to_float(r["robust_acc"]) * n) for r in rows if int(to_float(r["n"])) == n), n


# ------------------------------------------------ common corruptions (bench.report.corruption_board renders their table)
def is_corruption(attack: str) -> bool:
    return parse_attack(attack) is not None


def without_corruptions(sl: Slice) -> Slice:
    """The slice minus its corruption cells (the main leaderboard: corruptions are no threat model)."""
    return Slice(sl.results, sl.dataset, sl.profile, sl.seed,
                 {k: r for k, r in sl.cells.items() if not is_corruption(k[1])})


def only_corruptions(sl: Slice) -> Slice:
    return Slice(sl.results, sl.dataset, sl.profile, sl.seed, {k: r for k, r in sl.cells.items() if is_corruption(k[1])})


def pooled_cell(sl: Slice, defense: str, attacks: list[str], notes: Notes, what: str) -> Cell:
    """Accuracy pooled over the finished cells of `attacks`; a footnote when some of them did not run or finish."""
    rows = [sl.cells.get((defense, a)) for a in attacks]
    done = [r for r in rows if r is not None and r["status"] == "ok" and int(to_float(r["n"]))]
    if not done:
        failed = [a for a, r in zip(attacks, rows) if r is not None]
        if failed:
            return Cell("failed " + notes.mark(f"{defense} {what}: no finished cell ({', '.join(failed)})"))
        return Cell("not run")
    k = sum(round(to_float(r["robust_acc"]) * int(to_float(r["n"]))) for r in done)
    n = sum(int(to_float(r["n"])) for r in done)
    cell = accuracy_cell(k, n)
    if len(done) < len(attacks):
        cell.text += " " + notes.mark(f"{defense} {what}: over {len(done)} of {len(attacks)} cells (the others did "
                                      f"not run or finish)")
    return cell



def _count(v: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.3g}{unit}"
    return f"{v:.0f}"


def audited_cell(sl: Slice, defense: str, notes: Notes) -> Cell:
    """The audits of a defense (bench audit): per threat model the adapted number, the per-point worst case over
    the base attack and every attack the audit added, beside the base attack's own. An audit of another
    checkpoint than the rows' is left out, with a footnote."""
    ckpts = {r.get("defense_ckpt") for r in sl.rows_of(defense)} - {"", None}
    parts = []
    for a in sorted((a for a in sl.results.audits if a["defense"] == defense and a["dataset"] == sl.dataset
                     and a["profile"] == sl.profile and str(a.get("seed")) == sl.seed),
                    key=lambda a: (a["norm"], a["eps"])):
        tm = f"{NORM_NAMES.get(a['norm'], a['norm'])} {format_eps(a['norm'], str(a['eps']))}"
        if ckpts and a.get("checkpoint") not in ckpts:
            notes.mark(f"{defense}: the audit at {tm} is of checkpoint {a.get('checkpoint')}, not the one these "
                       f"rows attacked; re-run bench audit")
            continue
        adapted, original = 100 * a["adapted"]["robust_acc"], 100 * a["original"]["robust_acc"]
        text = f"{tm}: {adapted:.1f}"
        if adapted < original:
            text += f" (was {original:.1f})"
        failed = [k for k, c in a.get("checks", {}).items() if c.get("verdict") == "fail"]
        if failed:
            text += " ⚠ " + notes.mark(f"{defense} audit at {tm} (n = {a['n']}): failed {', '.join(failed)}; the "
                                       f"adapted number is the per-point worst case over "
                                       f"{', '.join(a['adapted'].get('attacks', []))}")
        parts.append(text)
    return Cell("; ".join(parts))


def cost_cells(sl: Slice, defense: str) -> list[str]:
    """Attack wall seconds, forward / backward image passes (summed over the row's cells), training seconds, device."""
    rows = sl.rows_of(defense)
    if not rows:
        return ["", "", "", "", ""]
    train = ""
    for r in rows:
        m = sl.results.manifest(r)
        if m and m.get("training", {}).get("train_seconds") is not None:
            train = f"{to_float(m['training']['train_seconds']):.0f}"
            break
    return [f"{sum(to_float(r['wall_s']) for r in rows):.1f}",
            _count(sum(to_float(r["forward_passes"]) for r in rows)),
            _count(sum(to_float(r["backward_passes"]) for r in rows)), train,
            ", ".join(sorted({r.get("device", "") for r in rows}))]


def attack_label(sl: Slice, attack: str) -> str:
    row = next(r for (_, a), r in sl.cells.items() if a == attack)
    norm = NORM_NAMES.get(row.get("norm") or "", row.get("norm") or "")
    if is_min_norm(row):
        return f"{attack} (mean {norm or 'norm'})"
    budget = " ".join(p for p in (norm, format_eps(row.get("norm", ""), row.get("eps", ""))) if p)
    return f"{attack} ({budget})" if budget else attack


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    caption: str
    notes: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)  # one block: code, versions, devices, dates of the rows

    def markdown(self) -> str:
        parts = [f"## {self.title}", tabulate(self.rows, self.header, tablefmt="github", disable_numparse=True),
                 self.caption]
        if self.notes:  # two trailing spaces: a Markdown line break between footnotes
            parts.append("\n".join(f"[{i}] {t}  " for i, t in enumerate(self.notes, 1)))
        if self.provenance:
            parts.append("Provenance:\n\n" + "\n".join(f"- {line}" for line in self.provenance))
        parts += self.links
        return "\n\n".join(parts) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return out.getvalue()

    def latex(self) -> str:
        body = tabulate(self.rows, self.header, tablefmt="latex_booktabs", disable_numparse=True)
        notes = " ".join(f"[{i}] {t}" for i, t in enumerate(self.notes, 1))
        prov = f" Provenance: {'; '.join(self.provenance)}." if self.provenance else ""
        text = _latex_escape(f"{self.title}. {self.caption} {notes}{prov}".strip())
        return f"\\begin{{table}}\n\\centering\n\\caption{{{text}}}\n{body}\n\\end{{table}}\n"

    def write(self, out_dir: Path, stem: str, latex: bool = False) -> Path:
        out_dir = Path(out_dir)
        atomic_write_bytes(out_dir / f"{stem}.md", self.markdown().encode())
        atomic_write_bytes(out_dir / f"{stem}.csv", self.csv().encode())
        if latex:
            atomic_write_bytes(out_dir / f"{stem}.tex", self.latex().encode())
        return out_dir / f"{stem}.md"


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text


def caption(slices: list[Slice], what: str, code: bool = True) -> str:
    """Profile, n, seed, git SHA and dates of the rows shown, so a table can be traced to its runs (code=False:
    without the SHAs and dates, for a table whose provenance block lists them)."""
    rows = [r for sl in slices for r in sl.cells.values()]
    sl0 = slices[0]
    def joined(key):
        return ", ".join(sorted({str(r.get(key, "")) for r in rows})) or "-"
    stamps = sorted(r.get("timestamp", "") for r in rows)
    others = sorted({r["seed"] for sl in slices for r in sl.results.latest_rows(dataset=sl.dataset, profile=sl.profile)}
                    - {sl0.seed})
    # no render time: the same rows re-render to the same bytes (a committed snapshot re-renders as committed)
    text = (f"{what} Dataset {', '.join(sorted({sl.dataset for sl in slices}))}, profile {sl0.profile}, "
            f"seed {sl0.seed}, n {joined('n')}" + (f", git {joined('git_sha')}, results "
            f"{stamps[0][:10] + ' to ' + stamps[-1][:10] if stamps else '-'}." if code else "."))
    if others:
        text += f" Other seeds in the store: {', '.join(others)} (--seed)."
    return text


def leaderboard(results: Results, dataset: str, profile: str, seed=None) -> Table | None:
    """Rows = defenses, columns = clean, each attack, the per-sample worst case and the cost columns."""
    seed = seed if seed is not None else results.default_seed(dataset, profile)
    if seed is None:
        return None
    # common corruptions are no threat model: their own table (bench.report.corruption_board), not columns here
    sl = without_corruptions(results.slice(dataset, profile, seed))
    if not sl.cells:
        return None
    notes = Notes()
    attacks = sl.attacks()
    # the column only when some defense of this table was audited
    audit_col = any(a["defense"] in sl.defenses() and a["dataset"] == dataset and a["profile"] == profile
                    and str(a.get("seed")) == sl.seed for a in results.audits)
    header = ["defense", "clean", *(attack_label(sl, a) for a in attacks), "worst case",
              *(["audited (adapted)"] if audit_col else []), "attack s", "fwd passes", "bwd passes", "train s", "device"]
    body = []
    for d in sl.defenses():
        ran = [a for a in attacks if (d, a) in sl.cells]
        body.append([d, clean_cell(sl, d, notes).text, *(attack_cell(sl, d, a, notes).text for a in attacks),
                     worst_cell(sl, d, ran, notes).text,
                     *([audited_cell(sl, d, notes).text] if audit_col else []), *cost_cells(sl, d)])
    what = ("Accuracy % ± 95 % Wilson half-width; minimum-norm attacks: mean perturbation norm of fooled points. "
            "Worst case: per sample over every attack run on that defense (all norms; minimum-norm attacks at "
            "their eps, if they have one). Costs summed over the defense's cells.")
    if audit_col:
        what += (" Audited: bench audit's adapted number per threat model, the per-point worst case over the base "
                 "attack and the attacks it added (more effort, the other loss, FGSM, black-box, EOT, BPDA); the "
                 "lower number is the defense's for that threat model.")
    return Table(f"Leaderboard — {dataset} / {profile}", header, body, caption([sl], what, code=False), notes.items,
                 provenance=provenance_lines(list(sl.cells.values())))


def spec_table(results: Results, cfg, name: str, profile: str, seed=None) -> Table:
    """A [tables.NAME] layout: each column measured here, then the paper's published number beside it."""
    spec: TableSpec = cfg.tables[name]
    if seed is None:
        seed = results.default_seed(spec.dataset, profile)
    seed = seed if seed is not None else cfg.settings.seed
    slices = {ds: results.slice(ds, profile, seed) for ds in {spec.column_dataset(i) for i in range(len(spec.columns))}}
    notes = Notes()
    header = [""] + [h for c in spec.columns for h in (c.label, f"{c.label} (paper)")]
    body = []
    for row in spec.rows:
        label = row.label + (" " + notes.mark(f"{row.label}: {row.note}") if row.note else "")
        if row.not_run:
            label += " " + notes.mark(f"{row.label}: not run: {row.not_run}")
        elif row.defense is None:
            label += " " + notes.mark(_pending_note(cfg, name, "defense", row.pending))
        out = [label]
        for i, ref in enumerate(spec.row_cells(row)):
            cell = _spec_cell(cfg, name, spec, row, ref, slices[spec.column_dataset(i)], notes)
            paper = row.paper[i] if row.paper else "-"
            # published numbers carry two decimals: half a unit of the last one is within rounding (a paper 0
            # against a measured 0 / n, whose Wilson low end is a float a hair above zero, is no gap)
            if (isinstance(paper, float) and cell.low is not None and cell.high is not None
                    and not cell.low - 0.005 <= paper <= cell.high + 0.005):
                cell.text += " †"
            out += [cell.text, "–" if paper == "-" else f"{paper:g}"]
        body.append(out)
    success = any(c.cell.startswith(SUCCESS) for c in spec.columns)
    what = (f"{spec.source}. Measured: accuracy % ± 95 % Wilson half-width (mean norm for minimum-norm attacks"
            f"{'; success columns: success rate % over the points attacked' if success else ''}); "
            f"(paper) = published number; † = the published number lies outside our 95 % interval.")
    if spec.note:
        what += f" {spec.note}"
    shown = {ref.removeprefix(SUCCESS) for row in spec.rows for ref in [*spec.row_cells(row), *spec.worst_attacks(row)]}
    ran = attacks_as_run(results, [r for sl in slices.values() for (d, a), r in sorted(sl.cells.items())
                                   if d in {row.defense for row in spec.rows} and a in shown])
    if ran:  # the settings each number was measured with, where a profile cut the paper's (restarts, points)
        what += f" Attacks as run: {ran}."
    return Table(f"{name}: {spec.title}", header, body, caption(list(slices.values()), what, code=False), notes.items,
                 provenance=provenance_lines([r for sl in slices.values() for r in sl.cells.values()]))


def attack_settings(params: dict) -> str:
    """'40 steps × 1 restart, step eps/8, CW loss, backward bpda' from an attack's resolved params (the manifest's):
    the part of an iterative attack's settings a reader compares with a paper's."""
    if "steps" not in params:
        return ""
    restarts = params.get("restarts", 1)
    parts = [f"{params['steps']} step{'s' if params['steps'] != 1 else ''} × {restarts} restart"
             f"{'s' if restarts != 1 else ''}"]
    if "step_size" in params:
        step = params["step_size"]
        parts.append(f"step {step if isinstance(step, str) else f'{step:g}'}")
    if params.get("loss") == "cw":
        parts.append(f"CW loss (kappa {params.get('kappa', 0):g})")
    if params.get("norm") == "l1" and params.get("l1_step"):
        parts.append(f"{params['l1_step']} L1 step")
    if params.get("backward", "autograd") not in ("", "autograd"):
        parts.append(f"backward {params['backward']}")
    if params.get("eot_samples", 1) > 1:
        parts.append(f"EOT {params['eot_samples']}")
    return ", ".join(parts)


def attacks_as_run(results: Results, rows: list[dict]) -> str:
    """'pgd_linf 40 steps × 1 restart, step eps/8 (n = 2000); ...' for the rows' attacks, read from their manifests
    (one entry per distinct setting and n; rows without a manifest are left out)."""
    seen: dict[str, list[str]] = {}
    for row in rows:
        m = results.manifest(row)
        if m is None or row.get("status") != "ok":
            continue
        text = attack_settings((m.get("attack_entry") or {}).get("params") or {})
        entry = f"{text + ', ' if text else ''}n = {row.get('n')}"
        if entry not in seen.setdefault(row["attack"], []):
            seen[row["attack"]].append(entry)
    return "; ".join(f"{a} {' / '.join(v)}" for a, v in sorted(seen.items()))


def _spec_cell(cfg, name: str, spec: TableSpec, row, ref: str, sl: Slice, notes: Notes) -> Cell:
    if row.not_run:
        return Cell("not run")
    if row.defense is None:
        return Cell("pending")
    if ref.startswith(PENDING):
        return Cell("pending " + notes.mark(_pending_note(cfg, name, "attack", ref[len(PENDING):])))
    if ref == "clean":
        return clean_cell(sl, row.defense, notes)
    if ref == "worst":
        return worst_cell(sl, row.defense, spec.worst_attacks(row), notes)
    if ref.startswith(SUCCESS):
        return success_cell(sl, row.defense, ref[len(SUCCESS):], notes)
    if ref.startswith(CORRUPTION):
        name, severities = corruption_ref(ref)
        pooled = [corruption_ref(r) for r in spec.row_cells(row) if r.startswith(CORRUPTION)] if name == "mean" \
            else [(name, severities)]
        attacks = [attack_name(c, s) for c, sevs in pooled if c != "mean" for s in sevs]
        return pooled_cell(sl, row.defense, attacks, notes, ref)
    return attack_cell(sl, row.defense, ref, notes)


def _pending_note(cfg, table: str, kind: str, entry: str) -> str:
    section = f"[{'defenses' if kind == 'defense' else 'attacks'}.{entry}]"
    if cfg.has(kind, entry):
        return f"{section} exists now: map it in [tables.{table}] to show measured numbers."
    return f"no {section} entry in bench.toml yet."
