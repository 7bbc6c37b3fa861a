"""What is committed re-renders as committed: each committed quick snapshot under results/measured/
(results.csv, the run manifests it keeps under runs/) rendered by `bench table` into a scratch folder gives every
committed table byte for byte (leaderboard.md|csv|html, the per-threat-model leaderboards with their exports and
model cards, the paper tables), and no committed rendering is missing from or stale beside a fresh one.

Fast (a few seconds, no model), so CI runs it with the other fast tests; marked `ci` as well to say it is a check
CI must run. To refresh the committed files after a change to the rendering, run the same commands in place:
`bench table --profile quick --dataset D --html --results-dir results/measured/quick_D` (and `--paper` for the
folders with tables/; the authors' folder: the calls of AUTHORS below), then `git status results/` shows what changed."""
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "results" / "measured"
# (folder, the `bench table` calls that render it, in order); the inputs of each: results.csv, runs/, audit/ and
# plots.md (bench plot's page, which the leaderboard links; its plots need per-sample norms this snapshot does not
# keep). Each call rewrites leaderboard.md|csv, so the last one of a folder's calls is the committed one.


def _quick(dataset: str, paper: bool) -> list[list[str]]:
    runs = [["table", "--profile", "quick", "--dataset", dataset, "--html"]]
    return runs + ([["table", "--profile", "quick", "--paper", "--dataset", dataset]] if paper else [])


# the authors' checkpoints: the papers' settings (paper_cpu) on three datasets, bench's suites and audits (quick)
AUTHORS = [["table", "--profile", p, "--dataset", d] for p in ("quick", "paper_cpu")
           for d in ("mnist", "fashion_mnist", "cifar10")]
AUTHORS[-1].append("--html")
AUTHORS.append(["table", "--profile", "paper_cpu", "--paper"])
# common corruptions (docs/corruptions.md): the corruptions table and 001 Table 5.2's two layouts
CORRUPTIONS = [["table", "--profile", "quick", "--dataset", "cifar10", "--html"],
               ["table", "--profile", "quick", "--spec", "paper001_table5_2", "--spec", "paper001_table5_2_s5"]]
# the minimum-norm folders: their leaderboards (median minimal norm, HTML curves) and attack-optimality boards
MINNORM = {d: [["table", "--profile", "quick", "--dataset", d, "--html"],
               ["table", "--attacks", "--profile", "quick", "--dataset", d]] for d in ("cifar10", "mnist")}
# 002's MNIST front end (docs/frontends.md): Table II; Tables V, VI and III
FRONTENDS = {folder: [["table", "--profile", "quick", "--dataset", "mnist"],
                      ["table", "--profile", "quick", "--dataset", "mnist",
                       *(arg for t in tables for arg in ("--spec", t))]]
             for folder, tables in (("frontends_mnist_quick_table2", ["paper002_table2"]),
                                    ("frontends_mnist_quick_table5",
                                     ["paper002_table5", "paper002_table6", "paper002_table3"]))}
SNAPSHOTS = [("quick_cifar10", _quick("cifar10", True)), ("quick_fashion_mnist", _quick("fashion_mnist", True)),
             ("quick_mnist", _quick("mnist", False)), ("authors", AUTHORS), ("corruptions", CORRUPTIONS),
             ("minnorm_quick_cifar10", MINNORM["cifar10"]), ("minnorm_quick_mnist", MINNORM["mnist"]),
             ("minnorm_quick_sparse", MINNORM["cifar10"]), *FRONTENDS.items(),
             ("frontends_stl_smoke", [["table", "--profile", "smoke", "--dataset", "cifar10"],
                                      ["table", "--profile", "smoke", "--dataset", "cifar10", "--spec", "paper003_table4"]])]
RENDERED = ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "leaderboards", "tables", "corruptions")


def _rendered_files(folder: Path) -> dict[str, bytes]:
    out = {}
    for name in RENDERED:
        p = folder / name
        for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []):
            if f.is_file():
                out[str(f.relative_to(folder))] = f.read_bytes()
    return out


@pytest.mark.ci
@pytest.mark.parametrize("folder, runs", SNAPSHOTS, ids=[s[0] for s in SNAPSHOTS])
def test_committed_snapshot_rerenders_byte_for_byte(tmp_path, monkeypatch, folder, runs):
    src = MEASURED / folder
    assert (src / "results.csv").is_file(), f"{src} has no results.csv: nothing to re-render from"
    work = tmp_path / folder
    work.mkdir()
    shutil.copy(src / "results.csv", work / "results.csv")
    for extra in ("runs", "audit", "suites", "suite_stages.csv", "plots.md"):
        if (src / extra).is_dir():
            shutil.copytree(src / extra, work / extra)
        elif (src / extra).is_file():
            shutil.copy(src / extra, work / extra)
    monkeypatch.setenv("BENCH_PROGRESS", "0")
    monkeypatch.chdir(ROOT)  # bench.toml of the repository
    for args in runs:
        args = [*args, "--results-dir", str(work)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    fresh, committed = _rendered_files(work), _rendered_files(src)
    assert "leaderboard.md" in fresh and any(k.startswith("leaderboards/") for k in fresh)
    assert sorted(set(committed) - set(fresh)) == [], "committed renderings the snapshot no longer produces (stale)"
    assert sorted(set(fresh) - set(committed)) == [], "renderings of the snapshot that are not committed"
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert changed == [], f"re-rendering {folder} changed {changed}: refresh them (see this module's docstring)"
    # nothing of this machine in them: no absolute path, no scratch folder
    for name, data in fresh.items():
        assert str(tmp_path).encode() not in data and str(ROOT).encode() not in data, name


def test_rows_without_per_sample_data_say_so(tmp_path):
    """Rows kept without their run manifests (quick_cifar10's older cells) bound each worst case by the strongest
    single attack and say why; a defense whose cells all kept theirs (TRADES there) gets a per-point worst case."""
    text = (MEASURED / "quick_cifar10" / "leaderboards" / "cifar10-quick" / "linf-8_255.md").read_text()
    assert "no manifest of this run" in text and "≤ " in text
    trades = next(line for line in text.splitlines() if "| trades" in line)
    assert "≤" not in trades
    mnist = (MEASURED / "quick_mnist" / "leaderboards" / "mnist-quick" / "linf-0.3.md").read_text()
    natural = next(line for line in mnist.splitlines() if "| natural" in line)
    assert "≤" not in natural  # its manifests are committed: a per-sample worst case
