"""bench: an adversarial-robustness benchmark harness.

Library API (the CLI is a thin layer over it):
    import bench
    rows = bench.run(defense="natural", attack="pgd_linf", profile="smoke")   # typed rows, written to results/
    res = bench.evaluate(my_module, attacks=["pgd_linf"], dataset="cifar10", n=1000)  # a model you have; writes nothing

Plug-in API: a plug-in (a module of attacks/, defenses/ or examples/) imports from `bench` only, and only the
names of `__all__` below; everything else in bench/ is the harness and may change under it (tests/
test_import_graph.py checks both directions: the harness imports no plug-in, plug-ins import only these).
    plug-in bases     Attack, AttackParams, AttackOutput, AttackContext (what an attack gets besides the model:
                      the defense, device, seed, generator(); the artifact cache, the test split, predict() and
                      other bench.toml entries through artifact_cache(), read_test_split(), trained_defense(),
                      attack_entry()), PassCounter, perturbation_norm;
                      Defense, DefenseParams, TrainParams, DefenseContext (`defense.context`: entry name, artifact
                      cache, data root, config root), ModelDefense / ModelParams (a ready-made model),
                      set_on_modules (backward surrogates); register_attack, register_defense
    parameters        StrictModel, Field, Number, StepSize, step_value
    PGD engine        PGDSettings, run_pgd, step, random_start, enforce_budget; Norm (a threat model's random
                      start, ascent step and projection, Foolbox's split) and norm_of("linf" | "l2" | "l1")
                      (bench.pgd)
    training          fit (the shared trainer, bench.training)
    data              load_split, subset_indices, to_float, resolve_data_root (bench.data); Normalize,
                      MadryUnit, build_classifier (bench.nets)
    artifacts         ArtifactCache, content_hash, atomic_write_bytes (bench.store); versions (bench.provenance);
                      locate_file, file_key (a file named in bench.toml, or an external zoo card's file in the
                      weights root, and the sha256 that keys it: bench.external)
    errors, logging   BenchError, ConfigError, DataError; progress (progress.log, progress.bar)
    corruptions       CIFAR-10-C: its corruptions and parameters (corruptions.spec), the images' sources
                      (corruptions.source_inputs, regenerate, read_released)"""
import importlib
import sys
import types

__version__ = "0.1.0"

# The public API, loaded on first use (PEP 562): `import bench` and the command line's start stay free of torch
# (`bench --help` and a usage error answer in a fraction of a second); `from bench import X` and `bench.X` load the
# module that defines X then. Name -> the bench submodule that defines it.
_LAZY = {
    **dict.fromkeys(["Attack", "AttackContext", "AttackOutput", "AttackParams", "PassCounter", "perturbation_norm"],
                    "attack"),
    **dict.fromkeys(["load_split", "resolve_data_root", "subset_indices", "to_float"], "data"),
    **dict.fromkeys(["Defense", "DefenseContext", "DefenseParams", "TrainParams", "set_on_modules"], "defense"),
    **dict.fromkeys(["BenchError", "ConfigError", "DataError"], "errors"),
    **dict.fromkeys(["AttackResult", "Evaluation", "evaluate"], "evaluate"),
    **dict.fromkeys(["file_key", "locate_file"], "external"),
    **dict.fromkeys(["MadryUnit", "Normalize", "build_classifier"], "nets"),
    **dict.fromkeys(["Number", "StepSize", "StrictModel", "step_value"], "params"),
    **dict.fromkeys(["Norm", "PGDSettings", "enforce_budget", "norm_of", "random_start", "run_pgd", "step"], "pgd"),
    "versions": "provenance",
    **dict.fromkeys(["register_attack", "register_defense"], "registry"),
    **dict.fromkeys(["ArtifactCache", "atomic_write_bytes", "content_hash"], "store"),
    "fit": "training",
    **dict.fromkeys(["ModelDefense", "ModelParams"], "user_model"),
}
_SUBMODULES = ("corruptions", "progress")  # public names that are bench's own submodules


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "Field":
        from pydantic import Field

        value = Field
    elif name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # found directly from now on
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def run(*args, **kwargs):
    from .runner import run as _run

    return _run(*args, **kwargs)


def train(*args, **kwargs):
    from .runner import train as _train

    return _train(*args, **kwargs)


class _Package(types.ModuleType):
    """Importing the submodule bench.evaluate binds it to the package's attribute `evaluate`, the public function
    of the same name: the attribute stays the function (the submodule is sys.modules["bench.evaluate"])."""

    def __setattr__(self, name, value):
        if name == "evaluate" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = ["Attack", "AttackContext", "AttackOutput", "AttackParams", "PassCounter", "perturbation_norm",
           "Defense", "DefenseContext", "DefenseParams", "TrainParams", "set_on_modules", "ModelDefense",
           "ModelParams", "register_attack", "register_defense",
           "StrictModel", "Field", "Number", "StepSize", "step_value",
           "PGDSettings", "run_pgd", "step", "random_start", "enforce_budget", "Norm", "norm_of", "fit",
           "load_split", "subset_indices", "to_float", "resolve_data_root", "Normalize", "MadryUnit",
           "build_classifier",
           "ArtifactCache", "content_hash", "atomic_write_bytes", "versions", "locate_file", "file_key",
           "BenchError", "ConfigError", "DataError", "progress", "corruptions",
           "run", "train", "evaluate", "Evaluation", "AttackResult"]
