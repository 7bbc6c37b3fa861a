"""Audit reports on disk (results/audit/*.json): where `bench audit` writes them, and how the leaderboards read
them (the report package reads them here, never through the audit runner)."""
from __future__ import annotations

import json
from pathlib import Path

from ..store import atomic_write_json


def report_path(root, defense: str, dataset: str, profile: str, norm: str, eps: float, only=()) -> Path:
    name = f"{defense}-{dataset}-{profile}-{norm}-{eps:.6g}" + (f"-only-{'+'.join(only)}" if only else "")
    return Path(root) / "audit" / f"{name.replace('/', '_')}.json"


def write(report: dict, root) -> Path:
    path = report_path(root, report["defense"], report["dataset"], report["profile"], report["norm"], report["eps"],
                       report.get("only") or ())
    atomic_write_json(path, report)
    return path


def load_reports(root) -> list[dict]:
    """Every readable full audit report under root/audit (a torn or foreign file is skipped, never fatal; so is a
    partial one, `--only`, whose checks do not cover the whole audit)."""
    out = []
    for path in sorted((Path(root) / "audit").glob("*.json")):
        try:
            r = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and {"defense", "dataset", "profile", "norm", "eps", "adapted"} <= r.keys() \
                and not r.get("only"):
            out.append(r)
    return out


def read_report(path: Path) -> dict | None:
    """One report file, or None when it is missing or torn."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
