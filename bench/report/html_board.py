"""`bench table --html`: one self-contained HTML leaderboard (inline CSS and JS, no server, no network): a tab per
dataset / profile / threat model (bench.report.threat_board), sortable columns, the verdict marks with their reasons on
hover, and per defense an inline SVG of its worst-case accuracy against eps for each norm. Where a minimum-norm
attack ran, the table gains the median minimal norm and each such defense its robustness curve (accuracy at every
eps from the per-sample norms, bench.report.curves) as a step line; pages without one render as before."""
from __future__ import annotations

import html
import json
from pathlib import Path

from . import threat_board
from .curves import Curve, norm_text
from ..store import atomic_write_bytes
from .tables import NORM_NAMES, Results

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
.tabs button{border:1px solid #bbb;background:#f4f4f4;padding:.4em .8em;margin:0 .2em .2em 0;cursor:pointer}
.tabs button.on{background:#fff;border-bottom-color:#fff;font-weight:600}
section{display:none}section.on{display:block}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td.name,th.name{text-align:left}th{background:#eee;cursor:pointer;user-select:none}
.warn{color:#b36b00}.fail{color:#c00;font-weight:600}.caption,.notes,.provenance{color:#555;max-width:70em}
svg{background:#fafafa;border:1px solid #ddd;margin:.3em}
"""
SCRIPT = """
function show(i){document.querySelectorAll('section').forEach((s,j)=>s.classList.toggle('on',i===j));
 document.querySelectorAll('.tabs button').forEach((b,j)=>b.classList.toggle('on',i===j));}
function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),b=t.tBodies[0];
 const up=th.dataset.dir!=='asc';th.dataset.dir=up?'asc':'desc';
 const key=r=>{const c=r.children[i];const v=parseFloat(c.dataset.v??c.textContent);return isNaN(v)?c.textContent:v;};
 [...b.rows].sort((x,y)=>{const a=key(x),c=key(y);return (a>c?1:a<c?-1:0)*(up?1:-1);}).forEach(r=>b.appendChild(r));}
document.addEventListener('DOMContentLoaded',()=>show(0));
"""


def _svg(points: list[tuple[float, float]], title: str) -> str:
    """A small accuracy-vs-eps line chart (accuracy in [0, 1] on y, eps on x), inline SVG."""
    w, h, pad = 220, 120, 24
    xs = [p[0] for p in points]
    lo, hi = min(xs), max(xs)
    span = (hi - lo) or 1.0
    pts = [(pad + (x - lo) / span * (w - 2 * pad), h - pad - y * (h - 2 * pad)) for x, y in points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#1f5fa8"><title>eps {e:g}: {100 * a:.1f} %'
                   f'</title></circle>' for (x, y), (e, a) in zip(pts, points))
    return (f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}"><text x="{pad}" y="14" '
            f'font-size="11">{html.escape(title)}</text><line x1="{pad}" y1="{h - pad}" x2="{w - pad}" '
            f'y2="{h - pad}" stroke="#999"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>'
            f'<polyline fill="none" stroke="#1f5fa8" stroke-width="2" points="{line}"/>{dots}</svg>')


def _curve_svg(curve: Curve, title: str) -> str:
    """The robustness curve as a step line: accuracy (y, [0, 1]) from eps 0 to the largest norm any attack found."""
    w, h, pad = 260, 140, 26
    xs, acc = curve.steps()
    hi = float(xs[-1]) or 1.0
    px = [pad + x / hi * (w - 2 * pad) for x in xs] + [w - pad]
    py = [h - pad - a * (h - 2 * pad) for a in acc]
    line = " ".join(f"{px[i]:.1f},{py[i]:.1f} {px[i + 1]:.1f},{py[i]:.1f}" for i in range(len(py)))
    ends = (f'<text x="{pad}" y="{h - 8}" font-size="10">0</text><text x="{w - pad}" y="{h - 8}" font-size="10" '
            f'text-anchor="end">{html.escape(norm_text(curve.norm, hi))}</text>')
    return (f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}"><text x="{pad}" y="14" '
            f'font-size="11">{html.escape(title)}</text><line x1="{pad}" y1="{h - pad}" x2="{w - pad}" '
            f'y2="{h - pad}" stroke="#999"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>'
            f'<polyline fill="none" stroke="#b3401f" stroke-width="2" points="{line}"/>{ends}</svg>')


def _row(rank: int, e, notes: list[str], tm=None) -> str:
    verdicts = {a.verdict for a in e.attacks} | {c["verdict"] for c in e.cross.values()}
    reasons = "; ".join(notes[int(m[1:-1]) - 1] for m in e.marks) or "; ".join(
        f"{a.attack}: {a.verdict}" for a in e.attacks if a.verdict in ("warn", "fail"))
    text = threat_board.checks_text(e)  # as in the Markdown table
    mark = (f'<span class="{"fail" if "fail" in verdicts else "warn"}" title="{html.escape(reasons)}">'
            f'{html.escape(text)}</span>' if text != "ok" else text)
    worst = html.escape(threat_board.worst_text(e))
    cells = [(str(rank), rank, ""), (html.escape(e.defense), None, "name"),
             (e.clean.text(), e.clean.acc, ""), (worst, e.worst.acc, ""), (html.escape(e.strongest), None, "name"),
             (str(sum(a.score is not None for a in e.attacks)), None, ""), (mark, None, "name"),
             (f"{e.attack_s:.1f}", e.attack_s, "")]
    if tm is not None:  # the table shows the median minimal norm
        cells.insert(4, (html.escape(threat_board.median_text(tm, e)), e.median_norm if e.curve else None, ""))
    return "<tr>" + "".join(f'<td class="{c}"' + (f' data-v="{v}"' if v is not None else "") + f">{t}</td>"
                            for t, v, c in cells) + "</tr>"


HEADER = ["#", "defense", "clean %", "worst case %", "strongest attack", "attacks", "checks", "attack s"]


def _plain_section(name: str, t) -> str:
    """A tab of a plain bench.report.tables.Table (the common-corruptions table): sortable, its caption and notes."""
    head = "".join(f'<th class="{"name" if i == 0 else ""}" onclick="sortBy(this)">{html.escape(h)}</th>'
                   for i, h in enumerate(t.header))
    rows = "".join("<tr>" + "".join(f'<td class="{"name" if i == 0 else ""}">{html.escape(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in t.rows)
    footnotes = "".join(f"<li>{html.escape(x)}</li>" for x in t.notes)
    prov = "".join(f"<li>{html.escape(x)}</li>" for x in t.provenance)
    return (f'<section data-tab="{html.escape(name)}"><h2>{html.escape(name)}</h2>'
            f'<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            f'<p class="caption">{html.escape(t.caption)}</p>' + (f'<ol class="notes">{footnotes}</ol>' if footnotes else "")
            + f'<details class="provenance"><summary>Provenance</summary><ul>{prov}</ul></details></section>')


def page(boards: dict[tuple[str, str], dict], extra: list | None = None) -> str:
    """The page from threat_board.boards of each (dataset, profile), then `extra` tabs: (name, Table)."""
    tabs, sections, data = [], [], []
    for (dataset, profile), found in boards.items():
        curves: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for tm, (entries, _, _) in found.items():
            for e in entries:
                curves.setdefault((e.defense, tm[0]), []).append((tm[1], e.worst.acc))
        for tm, (entries, notes, sl) in found.items():
            name = f"{dataset} / {profile} / {threat_board.label(tm)}"
            tabs.append(f'<button onclick="show({len(tabs)})">{html.escape(name)}</button>')
            curved = threat_board.has_curves(entries)
            header = HEADER[:4] + ["median min norm"] + HEADER[4:] if curved else HEADER
            head = "".join(f'<th class="{"name" if h in ("defense", "strongest attack", "checks") else ""}" '
                           f'onclick="sortBy(this)">{h}</th>' for h in header)
            rows = "".join(_row(i, e, notes.items, tm if curved else None) for i, e in enumerate(entries, 1))
            robustness = "".join(_curve_svg(e.curve, f"{e.defense}: accuracy vs {NORM_NAMES.get(tm[0], tm[0])} "
                                                     f"eps (n {e.curve.n})")
                                 for e in entries if e.curve is not None)
            plots = "".join(_svg(sorted(curves[(e.defense, tm[0])]), f"{e.defense}: {NORM_NAMES.get(tm[0], tm[0])}")
                            for e in entries if len(curves[(e.defense, tm[0])]) > 1)
            caption = (f"Worst case per test point over this threat model's attacks only; rows sorted by it. "
                       f"Seed {sl.seed}. Hover a ⚠ or [n] for its reason.")
            footnotes = "".join(f"<li>{html.escape(t)}</li>" for t in notes.items)
            prov = "".join(f"<li>{html.escape(t)}</li>" for t in threat_board.provenance(entries, sl))
            sections.append(f'<section data-tab="{html.escape(name)}"><h2>{html.escape(name)}</h2>'
                            f'<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
                            f'<p class="caption">{html.escape(caption)}</p>'
                            + (f'<ol class="notes">{footnotes}</ol>' if footnotes else "")
                            + f'<details class="provenance"><summary>Provenance</summary><ul>{prov}</ul></details>'
                            + (f"<h3>Worst case vs eps</h3>{plots}" if plots else "")
                            + (f"<h3>Robustness curve</h3><p class=\"caption\">Accuracy at every eps: per test "
                               f"point the smallest perturbation any attack at this norm found (minimum-norm "
                               f"attacks and fixed-eps cells); median min norm: where it crosses 50 %.</p>"
                               f"{robustness}" if robustness else "") + "</section>")
            data.append({"tab": name, "defenses": [e.defense for e in entries],
                         "worst": [e.worst.acc for e in entries]})
    for name, t in extra or []:
        tabs.append(f'<button onclick="show({len(tabs)})">{html.escape(name)}</button>')
        sections.append(_plain_section(name, t))
    body = (f'<div class="tabs">{"".join(tabs)}</div>{"".join(sections)}'
            f'<script type="application/json" id="data">{html.escape(json.dumps(data))}</script>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>bench leaderboards</title>'
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>bench leaderboards</h1>{body}"
            f"</body></html>\n")


def write(results: Results, out: Path, dataset: str | None = None, profile: str | None = None) -> Path | None:
    """Every dataset / profile of the results (or the one asked for) on one page; None when nothing is bounded."""
    slices = sorted({(r["dataset"], r["profile"]) for r in results.latest.values()
                     if (dataset is None or r["dataset"] == dataset) and (profile is None or r["profile"] == profile)})
    boards = {s: found for s in slices if (found := threat_board.boards(results, *s))}  # each slice computed once
    from . import corruption_board

    extra = [(f"{d} / {p} / common corruptions", t) for d, p in slices
             if (t := corruption_board.table(results.slice(d, p, results.default_seed(d, p)))) is not None]
    if not boards and not extra:
        return None
    atomic_write_bytes(Path(out), page(boards, extra).encode())
    return Path(out)
