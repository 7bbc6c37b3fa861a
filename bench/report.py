"""Leaderboards rendered from the results store only (pandas + tabulate)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .store import atomic_write_bytes


def latest_rows(rows: list[dict], dataset: str, profile: str) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df[(df["dataset"] == dataset) & (df["profile"] == profile) & (df["status"] == "ok")]
    return df.sort_values("timestamp").groupby(["defense", "attack"], as_index=False).last()


def _cell_text(r) -> str:
    acc = float(r["robust_acc"]) * 100
    half = (float(r["ci_high"]) - float(r["ci_low"])) * 50
    text = f"{acc:.1f} ± {half:.1f}"
    flags = json.loads(r["flags"] or "{}")
    if flags.get("collapsed"):
        text += " (collapsed)"
    if r.get("warnings"):
        text += " ⚠"
    return text


def leaderboard(rows: list[dict], dataset: str, profile: str) -> tuple[pd.DataFrame, str]:
    """(table, caption). Rows = defenses, columns = clean + attacks, cells = accuracy % ± 95 % CI half-width."""
    df = latest_rows(rows, dataset, profile)
    if df.empty:
        return pd.DataFrame(), f"No results for dataset {dataset}, profile {profile}."
    table = df.pivot(index="defense", columns="attack", values="cell").copy()
    cells = {(r["defense"], r["attack"]): _cell_text(r) for _, r in df.iterrows()}
    for (d, a), text in cells.items():
        table.loc[d, a] = text
    clean = df.groupby("defense")["clean_acc"].last().astype(float) * 100
    table.insert(0, "clean", clean.map(lambda v: f"{v:.1f}"))
    table = table.fillna("not run")
    n = sorted(set(df["n"].astype(str)))
    seeds = sorted(set(df["seed"].astype(str)))
    shas = sorted(set(df["git_sha"]))
    caption = (f"Accuracy (%) ± 95 % Wilson CI half-width. dataset {dataset}, profile {profile}, n {', '.join(n)}, "
               f"seed {', '.join(seeds)}, git {', '.join(shas)}, rendered "
               f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. ⚠ = see warnings in results.csv.")
    return table, caption


def render(rows: list[dict], dataset: str, profile: str, out_dir: Path) -> Path | None:
    table, caption = leaderboard(rows, dataset, profile)
    if table.empty:
        return None
    out_dir = Path(out_dir)
    md = f"# Leaderboard — {dataset} / {profile}\n\n{table.to_markdown()}\n\n{caption}\n"
    atomic_write_bytes(out_dir / "leaderboard.md", md.encode())
    atomic_write_bytes(out_dir / "leaderboard.csv", table.to_csv().encode())
    return out_dir / "leaderboard.md"
