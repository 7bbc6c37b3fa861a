"""bench: an adversarial-robustness benchmark harness.

Library API (the CLI is a thin layer over it):
    import bench
    rows = bench.run(defense="natural", attack="pgd_linf", profile="smoke")   # typed rows, written to results/
    res = bench.evaluate(my_module, attacks=["pgd_linf"], dataset="cifar10", n=1000)  # a model you have; writes nothing

Plug-ins subclass `Defense` / `Attack` and register with `@register_defense` / `@register_attack`."""
from .attack import Attack, AttackContext, AttackOutput, AttackParams, PassCounter, perturbation_norm
from .defense import Defense, DefenseParams, TrainParams
from .errors import BenchError, ConfigError, DataError
# imported here, not lazily: importing the submodule bench.evaluate later would rebind `bench.evaluate` to it
from .evaluate import AttackResult, Evaluation, evaluate
from .params import Number, StepSize, StrictModel
from .registry import register_attack, register_defense
from pydantic import Field

__version__ = "0.1.0"


def run(*args, **kwargs):
    from .runner import run as _run

    return _run(*args, **kwargs)


def train(*args, **kwargs):
    from .runner import train as _train

    return _train(*args, **kwargs)


__all__ = ["Attack", "AttackContext", "AttackOutput", "AttackParams", "PassCounter", "perturbation_norm",
           "Defense", "DefenseParams", "TrainParams", "BenchError", "ConfigError", "DataError", "Number",
           "StepSize", "StrictModel", "register_attack", "register_defense", "Field", "run", "train", "evaluate",
           "Evaluation", "AttackResult"]
