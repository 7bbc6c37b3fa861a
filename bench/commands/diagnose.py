"""`bench diagnose`: figures and numbers that show whether a structural defense works as its paper describes
(polarizing: activation histograms per training stage and danger-zone fractions; HaH / VGG-16: block-wise
squared Hoyer sparsity and SNR under Gaussian noise). Defenses opt in with a `diagnose(...)` method, and draw
figures across models with `compare_diagnostics` (bench.defense.Defense)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional


def diagnostics_dir(env, dataset: str, profile: str, seed: int) -> Path:
    return env.store.root / "diagnostics" / f"{dataset}-{profile}-seed{seed}"


def run_diagnostics(env, defenses: list[str], dataset: str, profile: str, seed: int, n: int,
                    noise_sigma: float = 0.1) -> dict:
    """Train or load each defense, let it write its figures, plot block-wise statistics side by side and save
    everything (numbers in summary.json) under results/diagnostics/<dataset>-<profile>-seed<seed>/."""
    from bench.data import load_subset
    from bench.errors import BenchError
    from bench.runner import train
    from bench.store import atomic_write_json

    resolved = {name: env.cfg.defense(name, dataset, profile) for name in defenses}  # fail fast on bad names
    for name, r in resolved.items():
        if not hasattr(r.cls, "diagnose"):
            raise BenchError(f"Defense '{name}' (plug-in '{r.plugin}') has no diagnostics; defenses with a "
                             f"diagnose() method: polarizing, hah, vgg16 and entries using them.")
    out = diagnostics_dir(env, dataset, profile, seed)
    x, y = load_subset(dataset, "test", env.data_root, n, seed)
    summary: dict = {"dataset": dataset, "profile": profile, "seed": seed, "n": len(x), "defenses": {}}
    compare = {}  # each distinct Defense.compare_diagnostics of the defenses given, called once with every report
    for name in defenses:
        t = train(name, dataset, profile, seed, env=env)
        report = t.defense.diagnose(t, x, y, env.device, out / name, noise_sigma=noise_sigma)
        report["checkpoint"] = t.key
        summary["defenses"][name] = report
        method = type(t.defense).compare_diagnostics
        compare.setdefault(method.__qualname__, method)
    for method in compare.values():
        summary.update(method(summary["defenses"], out, noise_sigma))
    # the file names its figures relative to its own folder, so a copied or committed summary names no machine's path
    atomic_write_json(out / "summary.json", _relative_to(summary, out))
    summary["summary_path"] = str(out / "summary.json")
    return summary


def _relative_to(value, folder: Path):
    """`value` with every path string under `folder` made relative to it (the figures a report lists)."""
    if isinstance(value, dict):
        return {k: _relative_to(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_to(v, folder) for v in value]
    if isinstance(value, str) and value.startswith(str(folder) + "/"):
        return Path(value).relative_to(folder).as_posix()
    return value


def register(app) -> None:
    import typer

    from bench import progress
    from ..cli_options import ConfigOpt, DataOpt, DatasetOpt, DeviceOpt, ProfileOpt, ResultsOpt, SeedOpt
    from ..cli_options import make_env as _env

    @app.command()
    def diagnose(
        defense: List[str] = typer.Option(..., "--defense", "-d", help="Defense entry of bench.toml; repeat to compare (e.g. -d hah -d vgg16)."),
        profile: Optional[str] = ProfileOpt,
        dataset: Optional[str] = DatasetOpt,
        seed: Optional[int] = SeedOpt,
        n: int = typer.Option(500, "--n", min=1, help="Test images the statistics are computed on."),
        noise_sigma: float = typer.Option(0.1, "--noise-sigma", min=0.0, help="Gaussian noise std for the block-wise SNR."),
        device: Optional[str] = DeviceOpt,
        config: Optional[Path] = ConfigOpt,
        data_root: Optional[Path] = DataOpt,
        results_dir: Optional[Path] = ResultsOpt,
    ):
        """Write a defense's diagnostic figures and numbers (trains it first if no checkpoint is cached).

        polarizing: histogram of the normalised front-end outputs after each training stage + the fraction in the
        danger zones |y ± j| < eps. hah / vgg16: squared Hoyer sparsity and SNR under noise per block (one plot
        for all models given)."""
        env = _env(config, data_root, device, results_dir)
        s = env.cfg.settings
        summary = run_diagnostics(env, list(defense), *s.choose(dataset, profile, seed), n, noise_sigma)
        for name, report in summary["defenses"].items():
            numbers = {k: v for k, v in report.items() if k not in ("files", "checkpoint")}
            progress.log(f"[{name}] {numbers}")
            for f in report.get("files", []):
                progress.log(f"  figure: {f}")
        if "blockwise_plot" in summary:
            progress.log(f"block-wise plot: {summary['blockwise_plot']}")
        progress.log(f"summary: {summary['summary_path']}")
