"""Which cells a command means: --matrix / --defense / --attack / --suite / --dataset / --profile / --seed resolved
against bench.toml once, for `bench run` and `bench status` alike, so that status shows the cells run runs.

The rule: names given on the command line win; the rest come from the matrix (--matrix NAME, else
settings.matrix). The matrix's scope (its datasets, profile and suites) applies when --matrix is given or when
the command names no cells at all; a command that names its cells (`bench run -d natural -a fgsm`) runs them on
[settings]' dataset and profile, as a single `bench run` always did."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BenchError


@dataclass(frozen=True)
class Selection:
    defenses: list[str]
    attacks: list[str]
    suites: list[str]
    datasets: list[str]
    profile: str
    seed: int
    matrix: str | None  # the [matrices] entry whose scope applies (None: the command named its cells)
    whole_matrix: bool  # every defense and attack is the matrix's (a title may name it)


def check_names(cfg, defenses=None, attacks=None, suites=None, matrix=None, dataset=None, profile=None) -> None:
    """The names a command was given, checked against bench.toml (exit 2 naming what is allowed) before anything
    is made or read."""
    for name in defenses or []:
        cfg.check_name("defense", name)
    for name in attacks or []:
        cfg.check_name("attack", name)
    for name in suites or []:
        cfg.check_choice("suite", name, cfg.suites)
    if matrix:
        cfg.check_choice("matrix", matrix, cfg.matrices)
    if dataset:
        cfg.check_choice("dataset", dataset, cfg.datasets)
    if profile:
        cfg.check_choice("profile", profile, cfg.profiles)


def select_cells(cfg, matrix=None, defense=None, attack=None, suite=None, dataset=None, profile=None,
                 seed=None) -> Selection:
    s = cfg.settings
    check_names(cfg, defense, attack, suite, None, dataset, profile)
    name = matrix or s.matrix  # an empty --matrix "" means settings.matrix
    if matrix is not None:
        cfg.check_choice("matrix", name, cfg.matrices)
    chosen = cfg.matrices.get(name)
    if (not defense or not (attack or suite)) and chosen is None:
        raise BenchError(f"Give --defense and --attack or --suite (settings.matrix '{name}' is no [matrices] "
                         f"entry to take them from).")
    named = bool(defense or attack or suite)
    scoped = chosen is not None and (matrix is not None or not named)
    defenses = list(defense or []) or chosen.defenses
    attacks = list(attack or []) or ([] if suite else chosen.attacks)
    suites = list(suite or []) or (chosen.suites if scoped and not attack else [])
    datasets = [dataset] if dataset else (chosen.datasets if scoped else [s.dataset])
    profile = profile or (chosen.profile if scoped else None) or s.profile
    return Selection(defenses, attacks, suites, datasets, profile, s.seed if seed is None else seed,
                     name if scoped else None, scoped and not named)


def check_backwards(cfg, sel: Selection) -> None:
    """Every selected attack's (and suite stage's) `backward` against every selected defense, before anything is
    made: a surrogate the defense does not have is a config error (bench.runner.check_backward), not a cell that
    fails once its defense is trained."""
    from ..runner import check_backward

    attacks = list(dict.fromkeys([*sel.attacks, *(a for name in sel.suites for a in cfg.suites[name].attacks)]))
    for ds in sel.datasets:
        for d in sel.defenses:
            dres = cfg.defense(d, ds, sel.profile)
            for a in attacks:
                check_backward(dres, cfg.attack(a, ds, sel.profile))
