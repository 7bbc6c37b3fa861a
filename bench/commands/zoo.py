"""`bench zoo add | list | verify | remove`: the committed model zoo (bench/zoo.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import ConfigOpt, DataOpt, DatasetOpt, ProfileOpt, ResultsOpt, SeedOpt, WeightsOpt

zoo_app = typer.Typer(help="The model zoo: checkpoints committed in the repository (settings.zoo_dir, default "
                           "results/zoo/), used by `bench run` after the local cache and before training; and its "
                           "external entries (results/zoo/external/*.json): published checkpoints the repository "
                           "references by URL and sha256 and reads from the weights root (--weights-root, BENCH_WEIGHTS).",
                      no_args_is_help=True)


@zoo_app.command("add")
def add(
    defense: str = typer.Option(..., "--defense", "-d", help="Defense entry of bench.toml whose cached checkpoint to add."),
    dataset: Optional[str] = DatasetOpt,
    profile: Optional[str] = ProfileOpt,
    seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Copy the cached checkpoint of a defense × dataset × profile × seed into the zoo with its card (resolved
    config, training log, provenance, sha256, and the clean accuracy on the profile's test points, measured now).
    The checkpoint must be in the cache: `bench train` (or `bench run`) it first."""
    from .. import provenance
    from ..data import load_subset
    from ..errors import BenchError
    from ..exact import exact_fp32
    from ..runner import Env, _now, checkpoint_key, predict, train
    from ..zoo import ModelZoo

    env = Env.create(config=config, data_root=data_root, device="cpu", results_dir=results_dir)
    s = env.cfg.settings
    dataset, profile, seed = s.choose(dataset, profile, seed)
    resolved = env.cfg.defense(defense, dataset, profile)
    if getattr(resolved.cls, "evaluation_only", False):
        raise BenchError(f"'{defense}' is a ready-made model (plugin '{resolved.plugin}'): its weights are already "
                         f"a file of yours; the zoo keeps trained checkpoints only.")
    key = checkpoint_key(resolved, dataset, seed)
    if not env.cache.has("checkpoints", key):
        raise BenchError(f"No cached checkpoint of {defense} ({dataset}, profile {profile}, seed {seed}): "
                         f"{env.cache.path('checkpoints', key)} is missing. Train it first: bench train -d {defense} "
                         f"--dataset {dataset} --profile {profile} --seed {seed}.")
    trained = train(defense, dataset, profile, seed, env=env)
    n = env.cfg.profiles[profile].n_test
    x, y = load_subset(dataset, "test", env.data_root, n, seed)
    with exact_fp32():
        acc = (predict(trained.defense.evaluation_model(trained.model), x, env.device, 256) == y).float().mean()
    card = {"entry": defense, "dataset": dataset, "profile": profile, "seed": seed,
            "clean_acc": round(float(acc), 6), "clean_n": n, "added": _now(), "added_git_sha": provenance.git_sha()}
    zoo = ModelZoo.of(env.cfg)
    path = zoo.add(env.cache, key, card)
    typer.echo(f"added {path} ({path.stat().st_size / 2**20:.1f} MB; clean {acc:.1%} on n = {n}); the zoo holds "
               f"{zoo.size_mb():.1f} of {zoo.max_mb:g} MB. Commit {path} and {path.with_suffix('.json')}.")


def _weights_root(cfg, flag):
    from ..external import resolve_weights_root

    return resolve_weights_root(flag, cfg.resolve_path(cfg.settings.weights_root))


@zoo_app.command("list")
def list_entries(config: Optional[Path] = ConfigOpt, weights_root: Optional[Path] = WeightsOpt):
    """One line per zoo entry: key, defense entry, dataset, profile, seed, clean accuracy, size, where it trained;
    then the external entries (published checkpoints read from the weights root): name, the defense entries that
    evaluate them, dataset, license, and whether the weights root holds the file."""
    from rich.console import Console
    from rich.table import Table

    from ..config import load_config
    from ..external import cards
    from ..zoo import ModelZoo

    cfg = load_config(config)
    zoo = ModelZoo.of(cfg)
    table = Table("key", "defense", "dataset", "profile", "seed", "clean", "MB", "trained on", "train s",
                  title=f"model zoo {zoo.root} ({zoo.size_mb():.1f} of {zoo.max_mb:g} MB)")
    for c in zoo.cards():
        clean = f"{c['clean_acc']:.1%} (n={c.get('clean_n', '?')})" if isinstance(c.get("clean_acc"), float) else "?"
        table.add_row(c["key"], str(c.get("entry", c.get("defense", "?"))), str(c.get("dataset", "?")),
                      str(c.get("profile", "?")), str(c.get("seed", "?")), clean, f"{c.get('zoo_mb', 0):.1f}",
                      str(c.get("device", "?")), f"{c.get('train_seconds', 0):.0f}")
    Console(width=160).print(table)
    external = cards(zoo.root)
    if external:
        root = _weights_root(cfg, weights_root)
        ext = Table("name", "defense entries", "dataset", "file", "license", "in weights root",
                    title=f"external entries {zoo.root / 'external'} (weights root {root})")
        for name, card in external:
            ext.add_row(name, ", ".join(card.entries) or "-", card.dataset, card.file, card.license,
                        "yes" if (root / card.file).is_file() else f"no: fetch {card.url}")
        Console(width=160).print(ext)


@zoo_app.command("verify")
def verify(config: Optional[Path] = ConfigOpt, weights_root: Optional[Path] = WeightsOpt):
    """Check every zoo entry: its bytes match its card's sha256 and it loads with weights_only=True; and every
    external entry whose file the weights root holds (one it lacks is listed as absent, with where to fetch it).
    Exit 1 when an entry or a present external file does not match (each named, with the remedy)."""
    from ..config import load_config
    from ..errors import BenchError
    from ..external import cards, locate
    from ..store import StoreError
    from ..zoo import ModelZoo

    cfg = load_config(config)
    zoo = ModelZoo.of(cfg)
    keys = sorted({p.stem for p in zoo.root.glob("*.pt")} | {p.stem for p in zoo.root.glob("*.json")})
    bad = 0
    for key in keys:
        try:
            zoo.verify(key)
            typer.echo(f"ok       {key}")
        except StoreError as e:
            bad += 1
            whole = all((zoo.root / f"{key}{suffix}").exists() for suffix in (".pt", ".json"))
            typer.echo(f"{'DAMAGED ' if whole else 'MISSING '} {key}: {e}")
    typer.echo(f"{len(keys) - bad} of {len(keys)} zoo entries verified in {zoo.root}")
    root, present = _weights_root(cfg, weights_root), 0
    external = cards(zoo.root)
    for name, card in external:
        if not (root / card.file).is_file():
            typer.echo(f"absent   {name}: {card.file} is not in the weights root {root}; fetch it from {card.url} "
                       f"(sha256 {card.sha256})")
            continue
        present += 1
        try:
            locate(zoo.root / "external" / f"{name}.json", root)
            typer.echo(f"ok       {name} ({root / card.file})")
        except BenchError as e:
            bad += 1
            typer.echo(f"DAMAGED  {name}: {e}")
    if external:
        typer.echo(f"{present} of {len(external)} external entries present in {root}")
    if bad:
        raise typer.Exit(1)


@zoo_app.command("remove")
def remove(key: str = typer.Argument(..., help="The entry's key (see bench zoo list)."),
           config: Optional[Path] = ConfigOpt):
    """Delete an entry (its checkpoint and card) from the zoo folder."""
    from ..config import load_config
    from ..errors import BenchError
    from ..zoo import ModelZoo

    zoo = ModelZoo.of(load_config(config))
    # a key is a file name stem: no folder, no glob (`../cache/checkpoints/K` would delete outside the zoo)
    if not key or not all(c.isalnum() or c in "_-" for c in key) or not any(zoo.root.glob(f"{key}.*")):
        have = ", ".join(c["key"] for c in zoo.cards()) or "none"
        raise BenchError(f"The model zoo {zoo.root} has no entry {key!r}. Entries: {have}.")
    zoo.remove(key)
    typer.echo(f"removed {key} from {zoo.root}")


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
