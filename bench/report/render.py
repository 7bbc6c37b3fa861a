"""Leaderboards and paper tables written from the results store only (cells are computed in bench.report.tables)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, did_you_mean
from ..store import ResultsStore
from .tables import Results, leaderboard, spec_table

PLOTS_PAGE = "plots.md"


def render(rows: list[dict], dataset: str, profile: str, out_dir: Path, seed=None, runs_dir: Path | None = None,
           latex: bool = False) -> Path | None:
    """Write `leaderboard.md` / `.csv` (and `.tex`) for a dataset/profile into out_dir; None when nothing ran."""
    out_dir = Path(out_dir)
    from ..verdicts import load_reports

    results = Results(rows, runs_dir or ResultsStore(out_dir).manifest_dir, load_reports(out_dir))
    table = leaderboard(results, dataset, profile, seed)
    if table is None:
        return None
    if (out_dir / PLOTS_PAGE).exists():
        table.links.append(f"Plots: [{PLOTS_PAGE}]({PLOTS_PAGE})")
    from . import threat_board

    # the per-threat-model leaderboards (RobustBench's layout) and their numeric exports, from the same rows
    index = threat_board.write(results, dataset, profile, out_dir, seed)
    if index is not None:
        table.links.append(f"Per threat model: [{index.relative_to(out_dir)}]({index.relative_to(out_dir)})")
    return table.write(out_dir, "leaderboard", latex)


def render_specs(results: Results, cfg, names: list[str], profile: str, out_dir: Path, seed=None,
                 latex: bool = False) -> list[Path]:
    """Write each [tables.NAME] layout to out_dir/tables/NAME.md|csv(|tex), measured numbers beside the paper's."""
    for name in names:
        if name not in cfg.tables:
            raise ConfigError(f"Unknown table '{name}': no [tables.{name}] in {cfg.path}. "
                              f"{did_you_mean(name, cfg.tables)}")
    return [spec_table(results, cfg, name, profile, seed).write(Path(out_dir) / "tables", name, latex)
            for name in names]
