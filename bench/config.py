"""bench.toml: loading, layering and full validation.

An entry under [defenses.X] or [attacks.X] names its plug-in (`plugin`, default X) and gives
parameters. Overrides are layered: [profiles.P.defense_defaults] (defenses only, and only the keys a plug-in
declares) < entry < [X.dataset.D] < [X.profile.P] < [X.dataset.D.profile.P].
Every entry is resolved and validated for every dataset and profile at load time, so a bad value
fails before any work starts, with the key path, the value and what is allowed. A registered plug-in
without an entry runs under its own name with its Params defaults (validated when first resolved)."""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from . import registry
from .errors import ConfigError, did_you_mean
from .params import Number, StrictModel
from .report.table_spec import TableSpec, check_table

RESERVED = {"plugin", "description", "dataset", "profile", "extends", "abstract"}
DATASET_NAMES = ("cifar10", "mnist", "fashion_mnist")


class Settings(StrictModel):
    data_root: str = "data"
    weights_root: str = "weights"  # external zoo entries' files (bench.external); BENCH_WEIGHTS / --weights-root win
    corruptions_root: str = "corruptions"  # CIFAR-10-C (bench.corruptions); BENCH_CORRUPTIONS / --corruptions-root win
    results_dir: str = "results"
    cache_dir: str = "results/cache"
    zoo_dir: str = "results/zoo"  # committed checkpoints (bench.zoo), looked up after the cache, before training
    zoo_max_mb: float = Field(100.0, gt=0)  # the repository carries the zoo: keep it small
    seed: int = Field(0, ge=0, le=2**32 - 1)
    profile: str = "smoke"
    dataset: str = "cifar10"
    device: str = "auto"
    matrix: str = "default"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        # checked at load like every other value, not only when a run starts (`bench list` reads it too)
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
            raise ValueError(f"{value!r} is not a device. Allowed: auto, cpu, cuda, cuda:N (a GPU index)")
        return value

    def choose(self, dataset: str | None = None, profile: str | None = None,
               seed: int | None = None) -> tuple[str, str, int]:
        """(dataset, profile, seed): each the one given, else these settings' default (seed 0 is a choice)."""
        return dataset or self.dataset, profile or self.profile, self.seed if seed is None else seed


class Profile(StrictModel):
    description: str
    n_test: int = Field(gt=0)
    eval_batch_size: int = Field(256, gt=0)
    # the lowest override layer of every defense in this profile, for the keys its Params declares: it shrinks a
    # plug-in that has no bench.toml entry (or no table for this profile) to the profile's training size. Attacks
    # get none: a shared key means different things to them (FGSM's steps = 1 is what makes it FGSM).
    defense_defaults: dict[str, Any] = Field(default_factory=dict)
    # a matrix run under this profile also runs `bench audit` on each of its defenses, once per threat model of
    # its white-box bounded attacks, after the cells (an audit costs ~10 cells: off unless asked for)
    audit: bool = False


class DatasetEntry(StrictModel):
    arch: str
    description: str = ""


class Matrix(StrictModel):
    description: str = ""
    datasets: list[str] = Field(min_length=1)
    defenses: list[str] = Field(min_length=1)
    attacks: list[str] = Field(default_factory=list)
    suites: list[str] = Field(default_factory=list)  # [suites.*] run on every defense (bench.suite)
    profile: str | None = None


class SuiteSpec(StrictModel):
    """[suites.NAME]: one threat model and the attacks that try it in turn, each on the points the previous ones
    left robust (bench.suite)."""
    description: str = ""
    norm: Literal["linf", "l2", "l1"]
    # the budget; unset: the bounded stages' own eps on each dataset (which must agree), e.g. 8/255 on cifar10
    # and 0.3 on mnist for a suite of the default Linf attacks
    eps: Number | None = Field(None, gt=0)
    attacks: list[str] = Field(min_length=1)
    datasets: list[str] = Field(default_factory=list)  # the datasets the suite is for ([] = every dataset)
    # "cost": cheapest first by the attacks' measured model passes per point in finished rows (bench.suite
    # says how); "listed": the order written here
    order: Literal["cost", "listed"] = "cost"


class Tolerance(StrictModel):
    """[regress.matrices.M] of bench.toml: one matrix's thresholds; an unset key takes [regress]'s."""

    alpha: float | None = Field(None, gt=0, le=1)
    min_change: float | None = Field(None, ge=0, le=1)
    norm_rtol: float | None = Field(None, ge=0)
    optimality_drop: float | None = Field(None, ge=0, le=1)


class RegressSettings(StrictModel):
    """[regress] of bench.toml: the thresholds `bench regress` uses (each commented there with its reason)."""

    alpha: float = Field(0.05, gt=0, le=1, description="significance level of the two-proportion / Welch tests")
    min_change: float = Field(0.02, ge=0, le=1, description="smallest accuracy change (fraction) that can regress")
    norm_rtol: float = Field(0.10, ge=0, description="smallest relative change of a mean norm that can regress")
    optimality_drop: float = Field(0.05, ge=0, le=1, description="smallest drop of a minimum-norm attack's "
                                                                  "optimality that regresses")
    matrices: dict[str, Tolerance] = Field(default_factory=dict)

    def check(self, cfg) -> None:
        """A [regress.matrices.M] for a matrix that does not exist would be ignored in silence: refuse it."""
        for name in self.matrices:
            cfg.check_choice("matrix in [regress.matrices]", name, cfg.matrices)

    def thresholds(self, matrix: str, **given) -> "Thresholds":
        """The thresholds for `matrix`: a command-line value, else [regress.matrices.M], else [regress]."""
        own = self.matrices.get(matrix, Tolerance())
        values, sources = {}, []
        for key in ("alpha", "min_change", "norm_rtol", "optimality_drop"):
            if given.get(key) is not None:
                values[key], where = given[key], "command line"
            elif getattr(own, key) is not None:
                values[key], where = getattr(own, key), f"[regress.matrices.{matrix}]"
            else:
                values[key], where = getattr(self, key), "[regress]"
            sources.append(f"{key} {values[key]:g} ({where})")
        return Thresholds(**values, source=", ".join(sources))


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.05
    min_change: float = 0.02
    norm_rtol: float = 0.10
    optimality_drop: float = 0.05
    source: str = "defaults"


@dataclass(frozen=True)
class Resolved:
    """A validated entry for one dataset and profile."""

    kind: Literal["defense", "attack"]
    name: str
    plugin: str
    params: Any
    source: str = ""
    root: Path | None = field(default=None, compare=False)  # the folder of bench.toml: relative file paths start here

    @property
    def cls(self):
        return registry.get_plugin(self.kind, self.plugin)

    def files(self) -> dict:
        """sha256 of the files a plug-in reads its model from (a `file_digests` classmethod; bench.user_model):
        computed when asked, not at load time, so an entry whose file is made later still loads."""
        digests = getattr(self.cls, "file_digests", None)
        return digests(self.params, self.root) if digests is not None else {}

    def as_dict(self) -> dict:
        out = {"name": self.name, "plugin": self.plugin, "params": self.params.model_dump(mode="json")}
        files = self.files()
        if files:  # absent for every trained plug-in, so their keys stay what they were
            out["files"] = files
        return out


@dataclass
class Config:
    path: Path
    settings: Settings
    profiles: dict[str, Profile]
    datasets: dict[str, DatasetEntry]
    entries: dict[str, dict[str, dict]]
    matrices: dict[str, Matrix]
    # [defenses.X] / [attacks.X] tables with `abstract = true`: settings several entries share (e.g. the per-dataset
    # Linf budgets of every Linf attack), reached only through `extends`; not runnable, not listed
    bases: dict[str, dict[str, dict]] = field(default_factory=lambda: {"defense": {}, "attack": {}})
    tables: dict[str, TableSpec] = field(default_factory=dict)  # [tables.*]: paper layouts (bench.report.table_spec)
    verdicts: Any = None  # [verdicts]: thresholds of the attack-failure checks (bench.verdicts.VerdictSettings)
    regress: Any = None  # [regress]: thresholds of `bench regress`, per matrix (RegressSettings)
    suites: dict[str, SuiteSpec] = field(default_factory=dict)  # [suites.*]: attack cascades (bench.suite)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve_path(self, value: str | os.PathLike) -> Path:
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else (self.root / p)

    def entry(self, kind: str, name: str) -> dict | None:
        """The [defenses.X] / [attacks.X] table; a registered plug-in without one gets an empty table (its Params
        defaults), so adding a plug-in takes one file and one decorator, and an entry only tunes it."""
        if name in self.entries[kind]:
            return _inherit(self, kind, name, ())
        return {} if name in registry.plugins(kind) else None

    def has(self, kind: str, name: str) -> bool:
        return self.entry(kind, name) is not None

    def names(self, kind: str) -> list[str]:
        return sorted(set(self.entries[kind]) | set(registry.plugins(kind)))

    def check_name(self, kind: str, name: str) -> None:
        table = {"defense": "defenses", "attack": "attacks"}[kind]
        if name in self.bases[kind] and name not in self.entries[kind]:
            users = _takers(self, kind, name)
            built = f"Entries built on it: {', '.join(users)}." if users else "No entry extends it yet."
            raise ConfigError(f"'{name}' is not a runnable {kind}: [{table}.{name}] in {self.path} is an abstract "
                              f"base (abstract = true) that entries take settings from with `extends`. {built}")
        if not self.has(kind, name):
            raise ConfigError(f"Unknown {kind} '{name}': no [{table}.{name}] entry in {self.path} and no "
                              f"registered plug-in of that name. {did_you_mean(name, self.names(kind))}")

    def check_choice(self, what: str, value: str, allowed) -> None:
        if value not in allowed:
            raise ConfigError(f"Unknown {what} '{value}' (from {self.path}). {did_you_mean(value, allowed)}")

    def resolve(self, kind: str, name: str, dataset: str, profile: str) -> Resolved:
        self.check_name(kind, name)
        self.check_choice("dataset", dataset, self.datasets)
        self.check_choice("profile", profile, self.profiles)
        key = (kind, name, dataset, profile)
        if key not in self._cache:
            self._cache[key] = _resolve_entry(self, kind, name, dataset, profile)
        return self._cache[key]

    def suite_eps(self, name: str, dataset: str, profile: str) -> float:
        """The budget of suite `name` on `dataset`: its own eps, else its bounded stages' common eps; every stage's
        norm and eps are checked against it (a stage that attacks another threat model would fool points it
        may not, and the suite's worst case would be wrong with no error)."""
        spec = self.suites[name]
        if spec.datasets and dataset not in spec.datasets:
            raise ConfigError(f"suite '{name}' is not for {dataset}: its datasets are {', '.join(spec.datasets)} "
                              f"(the `datasets` of [suites.{name}]).")
        budgets = {}
        for a in spec.attacks:
            atk = self.attack_instance(a, dataset, profile)
            if atk.norm != spec.norm:
                raise ConfigError(f"Invalid config: [suites.{name}] is a {spec.norm} suite, but its attack '{a}' "
                                  f"attacks in {atk.norm or 'no norm'} on {dataset} ({profile}). Allowed: attacks "
                                  f"of the suite's norm ({spec.norm}).")
            if atk.kind == "bounded":
                budgets[a] = float(atk.eps)
        eps = float(spec.eps) if spec.eps is not None else next(iter(budgets.values()), None)
        if eps is None:
            raise ConfigError(f"Invalid config: [suites.{name}] has no eps and no bounded attack to take it from; "
                              f"set eps = ... in [suites.{name}].")
        wrong = {a: e for a, e in budgets.items() if abs(e - eps) > 1e-9 * max(1.0, eps)}
        if wrong:
            listed = ", ".join(f"{a} (eps {e:.6g})" for a, e in wrong.items())
            raise ConfigError(f"Invalid config: [suites.{name}] attacks {spec.norm} eps {eps:.6g} on {dataset} "
                              f"({profile}), but {listed} attack another budget there. Allowed: attack entries "
                              f"whose resolved eps equals the suite's (give the suite `datasets` it is for, or "
                              f"an attack entry with that eps).")
        return eps

    def defense(self, name: str, dataset: str, profile: str) -> Resolved:
        return self.resolve("defense", name, dataset, profile)

    def attack(self, name: str, dataset: str, profile: str) -> Resolved:
        return self.resolve("attack", name, dataset, profile)

    def attack_instance(self, name: str, dataset: str, profile: str, uses: dict | None = None):
        """Attack entry `name` as its plug-in's instance, bound to the entries it takes settings from
        (Attack.bind: e.g. a transfer attack's norm and eps are its surrogate-side entry's); each entry it looked
        up goes into `uses` (name -> resolved entry) when given."""
        res = self.attack(name, dataset, profile)

        def entry(other: str) -> Resolved:
            found = self.attack(other, dataset, profile)
            if uses is not None:
                uses[other] = found
            return found

        return res.cls(res.params).bind(entry)


LAYER_TABLES = ("dataset", "profile")  # sub-tables an `extends` merges key by key (and their own profile tables)


def _parents(raw) -> list:
    parents = raw.get("extends") if isinstance(raw, dict) else None
    return [] if parents is None else parents if isinstance(parents, list) else [parents]


def _takers(cfg: Config, kind: str, base: str) -> list[str]:
    """The runnable entries that take `base`'s settings through `extends`, directly or through other bases."""
    tables = {**cfg.bases[kind], **cfg.entries[kind]}

    def reaches(name: str, seen: frozenset) -> bool:
        parents = [p for p in _parents(tables.get(name)) if isinstance(p, str) and p not in seen]
        return base in parents or any(reaches(p, seen | {p}) for p in parents)

    return [n for n in cfg.entries[kind] if reaches(n, frozenset({n}))]


def _inherit(cfg: Config, kind: str, name: str, chain: tuple[str, ...], tag: bool = False) -> dict:
    """The entry's table with `extends` resolved, before the layers. `extends = "PARENT"` starts from the parent's
    table (itself resolved) with this entry's keys on top; `extends = ["A", "B"]` starts from A, then B on top (a
    later parent wins), then the entry. The dataset.D / profile.P / dataset.D.profile.P sub-tables merge key by key,
    so a variant states only what differs (a variant of pgd_linf keeps its MNIST eps). A runnable parent passes on
    its plug-in; an abstract base (abstract = true) passes on only its settings, so `extends = "linf_budget"` keeps
    the entry's own plug-in. With `tag`, every setting's value is the name of the entry that states it (where an
    error must point)."""
    table = {"defense": "defenses", "attack": "attacks"}[kind]
    raw = cfg.entries[kind].get(name, cfg.bases[kind].get(name))
    parents = raw.get("extends") if isinstance(raw, dict) else None
    own = _tagged(raw, name) if tag and isinstance(raw, dict) else raw
    if parents is None:
        return own
    listed = parents if isinstance(parents, list) and parents else [parents]
    known = sorted({*cfg.entries[kind], *cfg.bases[kind]})
    out: dict = {}
    for parent in listed:
        path = " -> ".join(f"{table}.{n}" for n in (*chain, name, parent))
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"Invalid config: '{table}.{name}.extends' = {parents!r}: give the name of another "
                              f"[{table}.*] entry, or a list of names.")
        if parent in (*chain, name):
            raise ConfigError(f"Invalid config: `extends` makes a cycle: {path}.")
        if parent not in known:
            other = "attack" if kind == "defense" else "defense"
            other_table = {"defense": "defenses", "attack": "attacks"}[other]
            if parent in cfg.entries[other] or parent in cfg.bases[other]:  # the right name in the wrong section
                article = {"defense": "a defense", "attack": "an attack"}
                raise ConfigError(f"Invalid config: '{table}.{name}.extends' = {parent!r} ({path}): {parent!r} is "
                                  f"{article[other]} ([{other_table}.{parent}]); {article[kind]} entry extends "
                                  f"another [{table}.*] entry. {did_you_mean(parent, known)}")
            raise ConfigError(f"Invalid config: '{table}.{name}.extends' = {parent!r} ({path}): no [{table}.{parent}] "
                              f"entry in {cfg.path}. {did_you_mean(parent, known)}")
        base = {k: v for k, v in _inherit(cfg, kind, parent, (*chain, name), tag).items() if k != "abstract"}
        if parent in cfg.bases[kind]:
            base.pop("plugin", None)  # settings only: not even a plug-in the base took from its own parent
        else:
            base = {"plugin": parent, **base}  # an entry without `plugin` is the plug-in of its own name
        out = _merge_layers(out, base)
    return _merge_layers(out, {k: v for k, v in own.items() if k != "extends"})


def _tagged(table: dict, name: str) -> dict:
    return {k: ({sub: _tagged(t, name) if isinstance(t, dict) else name for sub, t in v.items()}
                if k in LAYER_TABLES and isinstance(v, dict) else name) for k, v in table.items()}


def _inherited_from(origin: str, prefix: str) -> str:
    """' ([attacks.pgd_linf] takes it through `extends`)' where a setting lives in a parent of the entry."""
    if origin == prefix or origin.startswith(prefix + ".") or not origin.startswith(("attacks.", "defenses.")):
        return ""
    return f" ([{prefix}] takes it through `extends`)"


def _merge_layers(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if key in LAYER_TABLES and isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {sub: (_merge_layers(base[key][sub], tbl) if isinstance(tbl, dict)
                              and isinstance(base[key].get(sub), dict) else tbl) for sub, tbl in value.items()}
            out[key] = {**{k: v for k, v in base[key].items() if k not in value}, **out[key]}
        else:
            out[key] = value
    return out


def _format_validation(err: ValidationError, prefix: str, layers: list[tuple[str, dict]], model) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = loc[0] if loc else ""
        origin = prefix
        for path, layer in layers:  # the last layer that set the key is where the user must look
            if key in layer:
                origin = path
        where = ".".join([origin, *loc]) if loc else origin
        via = _inherited_from(origin, prefix)
        if e["type"] == "extra_forbidden":
            allowed = sorted(model.model_fields) if model is not None else []
            lines.append(f"unknown key '{where}' (value {e['input']!r}){via}. {did_you_mean(key, allowed)}")
        elif e["type"] == "missing":
            lines.append(f"missing required key '{where}'.")
        else:
            lines.append(f"'{where}' = {e.get('input')!r}{via}: {e['msg'].removeprefix('Value error, ')}.")
    return " ".join(lines)


class _Problems(list):
    """Problems found before pydantic runs (bench.params.lax_values), in its error format."""

    def errors(self):
        return list(self)


def _validate(model, data: dict, prefix: str, layers=None):
    from .params import lax_values

    # pydantic's lax mode would turn `steps = true` into 1 and accept inf: refused here, like pydantic's own errors
    problems = _Problems({"loc": loc, "input": value, "msg": msg, "type": "value_error"}
                         for loc, value, msg in lax_values(model, data))
    if problems:
        raise ConfigError(f"Invalid config: {_format_validation(problems, prefix, layers or [(prefix, data)], model)}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"Invalid config: {_format_validation(err, prefix, layers or [(prefix, data)], model)}") from None


def _split(table: dict) -> tuple[dict, dict, dict]:
    params = {k: v for k, v in table.items() if k not in RESERVED}
    return params, table.get("dataset", {}) or {}, table.get("profile", {}) or {}


def _resolve_entry(cfg: Config, kind: str, name: str, dataset: str, profile: str) -> Resolved:
    table_name = {"defense": "defenses", "attack": "attacks"}[kind]
    raw = cfg.entry(kind, name)
    prefix = f"{table_name}.{name}"
    plugin_name = raw.get("plugin", name)
    plugins = registry.plugins(kind)
    if plugin_name not in plugins:
        raise ConfigError(f"Invalid config: '{prefix}.plugin' = {plugin_name!r} is not a registered {kind}. "
                          f"{did_you_mean(plugin_name, plugins)}")
    cls = plugins[plugin_name]
    base, by_dataset, by_profile = _split(raw)
    defaults = cfg.profiles[profile].defense_defaults if kind == "defense" else {}
    origins = _inherit(cfg, kind, name, (), tag=True) if name in cfg.entries[kind] else {}
    o_dataset = origins.get("dataset", {}).get(dataset, {})

    def by_origin(suffix: str, params: dict, tags: dict) -> list[tuple[str, dict]]:
        # one layer per entry the settings come from (disjoint keys: the merge is unchanged), so an error names
        # the [attacks.BASE] table the user must edit, not the entry that extends it
        groups: dict[str, dict] = {}
        for k, v in params.items():
            groups.setdefault(tags.get(k, name), {})[k] = v
        return [(f"{table_name}.{o}{suffix}", g) for o, g in groups.items()] or [(f"{prefix}{suffix}", {})]

    layers = [(f"profiles.{profile}.defense_defaults", {k: v for k, v in defaults.items() if k in cls.Params.model_fields}),
              *by_origin("", base, origins)]
    ds_table = by_dataset.get(dataset, {})
    ds_params, _, ds_profiles = _split(ds_table)
    layers += by_origin(f".dataset.{dataset}", ds_params, o_dataset)
    layers += by_origin(f".profile.{profile}", _split(by_profile.get(profile, {}))[0],
                        origins.get("profile", {}).get(profile, {}))
    layers += by_origin(f".dataset.{dataset}.profile.{profile}", _split(ds_profiles.get(profile, {}))[0],
                        o_dataset.get("profile", {}).get(profile, {}) if isinstance(o_dataset, dict) else {})
    merged: dict = {}
    for _, layer in layers:
        merged.update(layer)
    params = _validate(cls.Params, merged, prefix, layers)
    _check_budget(params, dataset, prefix, layers, default_norm="linf" if kind == "defense" else None,
                  attack=kind == "attack")
    return Resolved(kind=kind, name=name, plugin=plugin_name, params=params, source=prefix, root=cfg.root)


def _check_budget(params, dataset: str, prefix: str, layers, default_norm=None, attack: bool = False) -> None:
    """An eps beyond the largest distance two images in [0, 1] can have is a typo (every point would be fooled).
    Defenses without a `norm` train against Linf budgets (adversarial training)."""
    from .data import INFO
    from .params import budget_problem

    problem = budget_problem(params, INFO[dataset].shape, dataset, default_norm)
    eps = getattr(params, "eps", None)
    if attack and not problem and not isinstance(eps, bool) and isinstance(eps, (int, float)) and eps == 0:
        # refused rather than run: its row would report robust = clean under an attack's name
        problem = ("an attack with eps = 0 perturbs nothing, so its robust accuracy would be the clean accuracy "
                   "(every leaderboard shows that in its clean column). Allowed: a budget above 0")
    if problem:
        origin = prefix
        for path, layer in layers:
            if "eps" in layer:
                origin = path
        raise ConfigError(f"Invalid config: '{origin}.eps' = {params.eps!r}{_inherited_from(origin, prefix)}: "
                          f"{problem}.")


def _check_table_keys(raw: dict, allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"Invalid config: unknown key '{where}{key}' in bench.toml. {did_you_mean(key, allowed)}")


def _check_base(cfg: Config, kind: str, name: str) -> None:
    """An abstract base: its dataset / profile names, no `plugin` (a base lends settings, the entry keeps its
    plug-in), and every key one that some registered plug-in of its kind declares (a typo in a base no entry
    extends yet would otherwise wait there unseen)."""
    table_name = {"defense": "defenses", "attack": "attacks"}[kind]
    resolved = _inherit(cfg, kind, name, ())
    _check_override_names(cfg, kind, name, resolved)
    if name in registry.plugins(kind):
        raise ConfigError(f"Invalid config: [{table_name}.{name}] is an abstract base named like the registered {kind} "
                          f"plug-in '{name}', which it would hide; give the base another name.")
    if "plugin" in cfg.bases[kind][name]:
        raise ConfigError(f"Invalid config: '{table_name}.{name}.plugin': [{table_name}.{name}] is an abstract base, "
                          f"which lends settings and no plug-in; set `plugin` in the entries that extend it.")
    declared = {k for cls in registry.plugins(kind).values() for k in cls.Params.model_fields}
    takers = _takers(cfg, kind, name)
    shown = ", ".join(f"[{table_name}.{t}]" for t in takers[:3]) + (f" and {len(takers) - 3} more" if len(takers) > 3 else "")
    taken = f" ({shown} {'takes' if len(takers) == 1 else 'take'} it through `extends`)" if takers else ""

    def check(table: dict, where: str) -> None:
        for key, value in table.items():
            if key in ("dataset", "profile") and isinstance(value, dict):
                for sub, inner in value.items():
                    if isinstance(inner, dict):
                        check(inner, f"{where}.{key}.{sub}")
            elif key not in RESERVED and key not in declared:
                raise ConfigError(f"Invalid config: unknown key '{where}.{key}' (value {value!r}){taken}: no "
                                  f"registered {kind} declares it. {did_you_mean(key, declared)}")

    check(cfg.bases[kind][name], f"{table_name}.{name}")


def _check_override_names(cfg: Config, kind: str, name: str, raw: dict) -> None:
    prefix = f"{'defenses' if kind == 'defense' else 'attacks'}.{name}"
    for sub, allowed in (("dataset", cfg.datasets), ("profile", cfg.profiles)):
        table = raw.get(sub, {})
        if not isinstance(table, dict):
            raise ConfigError(f"Invalid config: '{prefix}.{sub}' must be a table of per-{sub} overrides.")
        for key, value in table.items():
            if key not in allowed:
                raise ConfigError(f"Invalid config: '{prefix}.{sub}.{key}' names an unknown {sub}. "
                                  f"{did_you_mean(key, allowed)}")
            if sub == "dataset":
                for p in (value.get("profile", {}) or {}):
                    if p not in cfg.profiles:
                        raise ConfigError(f"Invalid config: '{prefix}.dataset.{key}.profile.{p}' names an unknown "
                                          f"profile. {did_you_mean(p, cfg.profiles)}")


def find_config(path: str | os.PathLike | None = None) -> Path:
    """Explicit path → BENCH_CONFIG env → ./bench.toml; never a bench.toml elsewhere (e.g. the installed checkout's,
    which would also put the results next to it)."""
    for value, source in ((path, "--config"), (os.environ.get("BENCH_CONFIG"), "BENCH_CONFIG")):
        if value is None or str(value) == "":
            continue
        p = Path(value).expanduser()
        if p.is_file():
            return p.resolve()
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise ConfigError(f"Config file {p} (from {source}) {what}. Pass --config PATH or set BENCH_CONFIG to a "
                          f"bench.toml.")
    here = Path.cwd() / "bench.toml"
    if here.is_file():
        return here.resolve()
    repo = Path(__file__).resolve().parent.parent / "bench.toml"
    hint = f" (this checkout's own is {repo})" if repo.is_file() and repo.parent != Path.cwd().resolve() else ""
    raise ConfigError(f"No bench.toml in the current folder {Path.cwd()}. Pass --config PATH or set "
                      f"BENCH_CONFIG=PATH{hint}; bench does not fall back to another folder's bench.toml, whose "
                      f"results_dir would put the results there.")


def load_config(path: str | os.PathLike | None = None) -> Config:
    p = find_config(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"Cannot read the config file {p}: {e.strerror or e}.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(f"{p} is not UTF-8 text (byte {data[e.start]:#04x} on line {line}); TOML files must be "
                          f"UTF-8: re-save it with that encoding.") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}.") from None
    _check_table_keys(raw, {"settings", "profiles", "datasets", "defenses", "attacks", "matrices", "tables", "verdicts",
                           "regress", "suites"},
                      "")
    settings = _validate(Settings, raw.get("settings", {}), "settings")
    profiles = {k: _validate(Profile, v, f"profiles.{k}") for k, v in raw.get("profiles", {}).items()}
    datasets = {k: _validate(DatasetEntry, v, f"datasets.{k}") for k, v in raw.get("datasets", {}).items()}
    for d in datasets:
        if d not in DATASET_NAMES:
            raise ConfigError(f"Invalid config: [datasets.{d}] is not a supported dataset. "
                              f"{did_you_mean(d, DATASET_NAMES)}")
    if not profiles:
        raise ConfigError(f"{p} defines no [profiles.*]; at least one (e.g. smoke) is required.")
    matrices = {k: _validate(Matrix, v, f"matrices.{k}") for k, v in raw.get("matrices", {}).items()}
    suites = {k: _validate(SuiteSpec, v, f"suites.{k}") for k, v in raw.get("suites", {}).items()}
    entries, bases = {"defense": {}, "attack": {}}, {"defense": {}, "attack": {}}
    for kind, table_name in (("defense", "defenses"), ("attack", "attacks")):
        for name, entry in raw.get(table_name, {}).items():
            flag = entry.get("abstract", False) if isinstance(entry, dict) else False
            if not isinstance(flag, bool):
                raise ConfigError(f"Invalid config: '{table_name}.{name}.abstract' = {flag!r}: give true (a base that "
                                  f"entries extend) or false.")
            (bases if flag else entries)[kind][name] = entry
    tables = {k: _validate(TableSpec, v, f"tables.{k}") for k, v in raw.get("tables", {}).items()}
    from .verdicts import VerdictSettings

    verdicts = _validate(VerdictSettings, raw.get("verdicts", {}), "verdicts")
    regress = _validate(RegressSettings, raw.get("regress", {}), "regress")
    cfg = Config(path=p, settings=settings, profiles=profiles, datasets=datasets, entries=entries, matrices=matrices,
                 tables=tables, verdicts=verdicts, regress=regress, suites=suites, bases=bases)

    cfg.check_choice("settings.profile", settings.profile, profiles)
    cfg.check_choice("settings.dataset", settings.dataset, datasets)
    declared = {k for cls in registry.plugins("defense").values() for k in cls.Params.model_fields}
    for pname, prof in profiles.items():
        for key in prof.defense_defaults:
            if key not in declared:  # a typo here would otherwise be skipped by every defense in silence
                raise ConfigError(f"Invalid config: unknown key 'profiles.{pname}.defense_defaults.{key}': no "
                                  f"registered defense declares it. {did_you_mean(key, declared)}")
    for kind, table in bases.items():
        for name in table:  # values are validated in each entry that extends it; names here, used or not
            _check_base(cfg, kind, name)
    for kind, table in entries.items():
        for name, entry in table.items():
            if not isinstance(entry, dict):
                raise ConfigError(f"Invalid config: [{kind}s.{name}] must be a table.")
            entry = cfg.entry(kind, name)  # `extends` resolved: a cycle or an unknown parent fails at load time
            _check_override_names(cfg, kind, name, entry)
            for d in datasets:
                for prof in profiles:
                    cfg.resolve(kind, name, d, prof)
    for mname, m in matrices.items():
        for d in m.datasets:
            cfg.check_choice(f"dataset in matrices.{mname}", d, datasets)
        for d in m.defenses:
            cfg.check_name("defense", d)
        for a in m.attacks:
            cfg.check_name("attack", a)
        for sname in m.suites:
            cfg.check_choice(f"suite in matrices.{mname}", sname, suites)
            other = [d for d in m.datasets if suites[sname].datasets and d not in suites[sname].datasets]
            if other:
                raise ConfigError(f"Invalid config: [matrices.{mname}] runs suite '{sname}' on {', '.join(other)}, but "
                                  f"the suite is for {', '.join(suites[sname].datasets)} only (its `datasets`).")
        if not m.attacks and not m.suites:
            raise ConfigError(f"Invalid config: [matrices.{mname}] has no attacks and no suites; give at least one.")
        if m.profile:
            cfg.check_choice(f"profile in matrices.{mname}", m.profile, profiles)
    for sname, spec in suites.items():
        for a in spec.attacks:
            cfg.check_name("attack", a)
        for d in spec.datasets:
            cfg.check_choice(f"dataset in suites.{sname}", d, datasets)
        if len(set(spec.attacks)) != len(spec.attacks):
            raise ConfigError(f"Invalid config: [suites.{sname}] names an attack twice: {spec.attacks}.")
        for d in spec.datasets or datasets:
            for prof in profiles:
                cfg.suite_eps(sname, d, prof)  # every stage of the suite's threat model, checked before any work
    for tname, spec in tables.items():
        check_table(cfg, tname, spec)
    regress.check(cfg)
    return cfg
