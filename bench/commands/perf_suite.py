"""`bench perf-suite`: a suite against the independent cells of its attacks, in one run on the same model and
points: attack time and model passes of each, and whether the per-sample worst cases agree (bench.suite)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def compare(env, defense: str, suite: str, dataset: str, profile: str, seed: int, n_test: int | None,
            cells_dir: Path | None = None) -> dict:
    """Run every attack of the suite as an independent cell, then the suite, each in a fresh results folder and
    artifact cache (nothing reused from earlier runs; the checkpoints linked in); the suite's folder starts with the
    cells' rows, so order = "cost" orders it by their measured passes per point. `cells_dir` (new or empty) keeps
    the cells' folder, an ordinary results folder whose rows the leaderboards read (the timing costs compute
    worth keeping). Returns the measured numbers."""
    import contextlib
    import json
    import tempfile

    from bench import provenance, verdicts
    from bench.verdicts.cross_cell import cross_checks
    from bench.report.tables import Results
    from bench.runner import Env, run_cell, train
    from bench.store import ArtifactCache, ResultsStore
    from bench.suite import plan_suite, run_suite

    train(defense, dataset, profile, seed, env=env)  # trained (or loaded) once, outside both timings
    plan = plan_suite(env, defense, suite, dataset, profile, seed, n_test)

    if cells_dir is not None:
        check_empty(cells_dir)

    def fresh(folder: str) -> Env:
        # its own artifact cache (transfer examples and start pools are not shared between the two timings), the
        # trained checkpoints linked in
        cache = Path(folder) / "cache"
        cache.mkdir(parents=True)
        (cache / "checkpoints").symlink_to(env.cache.root / "checkpoints", target_is_directory=True)
        return Env(env.cfg, env.data_root, ArtifactCache(cache), ResultsStore(Path(folder)), env.device,
                   weights_root=env.weights_root)

    def robust(e: Env, row: dict) -> list[bool]:
        ps = json.loads((e.store.root / "runs" / f"{row['cell']}.json").read_text())["per_sample"]
        fooled = ps["fooled"]
        if str(row.get("success_rate") or "") != "":  # a minimum-norm cell: fooled only within the suite's eps
            fooled = [f and v <= plan.eps for f, v in zip(fooled, ps["norm"])]
        return [c and not f for c, f in zip(ps["correct"], fooled)]

    kept = contextlib.nullcontext(str(cells_dir)) if cells_dir is not None else tempfile.TemporaryDirectory()
    with kept as a, tempfile.TemporaryDirectory() as b:
        cells_env, suite_env = fresh(a), fresh(b)
        cells = [run_cell(cells_env, defense, st.attack, dataset, profile, seed, plan.n_test) for st in plan.stages]
        # the leaderboards' checks across the independent cells (a black-box cell beating the gradient cells); the
        # suite's own black_box check asks a like question of its stages (there FGSM counts as a gradient stage)
        cross = cross_checks(Results.load(cells_env.store.root), dataset, cells)
        # the cells' rows are the measured costs a suite with order = "cost" sorts its stages by
        (Path(b) / "results.csv").write_bytes((Path(a) / "results.csv").read_bytes())
        row = run_suite(suite_env, defense, suite, dataset, profile, seed, plan.n_test)
        worst_cells = [all(v) for v in zip(*(robust(cells_env, c) for c in cells))]
        worst_suite = robust(suite_env, row)
        stages = json.loads((suite_env.store.root / "runs" / f"{row['cell']}.json").read_text())["suite"]["stages"]

    def passes(r) -> int:
        return int(r["forward_passes"]) + int(r["backward_passes"])

    def flags(r) -> list[str]:
        # the row's warn/fail checks with their reasons: a benchmark's numbers say whether the attacks they time worked
        return verdicts.warnings_of(verdicts.from_column(r["checks"]))

    cells_s = sum(float(c["wall_s"]) for c in cells)
    return {"defense": defense, "suite": suite, "dataset": dataset, "profile": profile, "seed": seed,
            "n": plan.n_test, "norm": plan.norm, "eps": plan.eps, "order": [s["attack"] for s in stages],
            "cells": {c["attack"]: {"robust_acc": float(c["robust_acc"]), "wall_s": float(c["wall_s"]),
                                    "passes": passes(c), "flags": flags(c)} for c in cells},
            "suite_flags": flags(row), "cells_cross_flags": verdicts.warnings_of(cross),
            "cells_cross_checks": {k: c["verdict"] for k, c in cross.items()},
            "stages": [{k: s[k] for k in ("attack", "given", "fooled", "robust_after", "wall_s", "forward_passes",
                                          "backward_passes")} for s in stages],
            "cells_wall_s": cells_s, "suite_wall_s": float(row["wall_s"]),
            "time_ratio": float(row["wall_s"]) / cells_s if cells_s else None,
            "cells_passes": sum(passes(c) for c in cells), "suite_passes": passes(row),
            "passes_ratio": passes(row) / max(1, sum(passes(c) for c in cells)),
            "worst_case_cells": sum(worst_cells) / len(worst_cells), "worst_case_suite": sum(worst_suite) / len(worst_suite),
            "per_sample_equal": worst_cells == worst_suite,
            "points_differing": sum(x != y for x, y in zip(worst_cells, worst_suite)),
            "device": provenance.device_name(env.device), "git_sha": provenance.git_sha(),
            "versions": provenance.versions()}


def check_empty(folder: Path) -> None:
    """The cells' folder must start empty: rows already there would be reused, not timed."""
    from bench.errors import BenchError

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BenchError(f"--cells-dir {folder}: must be a new or empty folder (its rows would be reused, not timed).")


def register(app) -> None:
    import typer

    from ..cli_options import ConfigOpt, DataOpt, DatasetOpt, DeviceOpt, ProfileOpt, ResultsOpt, SeedOpt
    from ..cli_options import make_env as _env

    @app.command("perf-suite")
    def perf_suite(
        defense: str = typer.Option(..., "--defense", "-d", help="Defense entry of bench.toml."),
        suite: str = typer.Option(..., "--suite", help="A [suites.NAME] of bench.toml."),
        n_test: Optional[int] = typer.Option(None, "--n-test", min=1, help="Test images (default: the profile's n_test)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers to this JSON file."),
        cells_dir: Optional[Path] = typer.Option(
            None, "--cells-dir", help="Keep the independent cells' results folder here (new or empty; default: a "
            "temporary folder): `bench table --results-dir` and the cross checks read its rows like any run's."),
        profile: Optional[str] = ProfileOpt,
        dataset: Optional[str] = DatasetOpt,
        seed: Optional[int] = SeedOpt,
        device: Optional[str] = DeviceOpt,
        config: Optional[Path] = ConfigOpt,
        data_root: Optional[Path] = DataOpt,
        results_dir: Optional[Path] = ResultsOpt,
    ):
        """Measure a suite against the independent cells of its attacks on the same model and points.

        Both run here, one after the other, each in a fresh temporary results folder (nothing reused; the
        checkpoint comes from the cache or the zoo): prints attack seconds and model passes of both, their
        ratio (the suite's aim: well below 1 on robust models), and whether the per-sample worst cases agree
        (exactly, for attacks on the PGD engine), with each cell's, the cells' together (a black-box cell that
        beats the gradient cells, as on the leaderboards) and the suite's warn/fail verdict checks. A
        benchmark, not a test: one run, numbers as measured."""
        import json

        from bench.store import atomic_write_json

        if cells_dir is not None:
            check_empty(cells_dir)  # before anything is created, trained or attacked
        env = _env(config, data_root, device, results_dir)
        s = env.cfg.settings
        env.cfg.check_choice("suite", suite, env.cfg.suites)
        out = compare(env, defense, suite, *s.choose(dataset, profile, seed), n_test, cells_dir)
        typer.echo(f"{defense} × suite:{suite} ({out['dataset']}/{out['profile']}, n = {out['n']}, "
                   f"{out['norm']} eps {out['eps']:.6g}, {out['device']})")
        for st in out["stages"]:
            cell = out["cells"][st["attack"]]
            typer.echo(f"  {st['attack']:<16} cell: {cell['wall_s']:8.1f} s {cell['passes']:>9} passes | stage: "
                       f"{st['wall_s']:8.1f} s {st['forward_passes'] + st['backward_passes']:>9} passes, "
                       f"{st['fooled']} of {st['given']} fooled")
        typer.echo(f"  attack time: suite {out['suite_wall_s']:.1f} s vs cells {out['cells_wall_s']:.1f} s "
                   f"(ratio {out['time_ratio']:.3f}); passes ratio {out['passes_ratio']:.3f}")
        typer.echo(f"  worst case: suite {out['worst_case_suite']:.2%}, cells {out['worst_case_cells']:.2%}; "
                   f"per-sample equal: {out['per_sample_equal']} ({out['points_differing']} points differ)")
        for what, found in [*((f"cell {a}", c["flags"]) for a, c in out["cells"].items()),
                            ("the cells together", out["cells_cross_flags"]), (f"suite:{suite}", out["suite_flags"])]:
            for text in found:
                typer.echo(f"  ⚠ {what}: {text}")
        if json_out:
            atomic_write_json(json_out, out)
            typer.echo(f"wrote {json_out}")
        typer.echo(json.dumps({k: out[k] for k in ("time_ratio", "passes_ratio", "per_sample_equal")}))
