"""Plug-in registries. A defense or attack is one file in `defenses/` or `attacks/` with one decorator;
`discover()` imports every module in those packages so nothing else has to name it."""
from __future__ import annotations

import importlib
import pkgutil

from .errors import BenchError, did_you_mean

_REGISTRIES: dict[str, dict[str, type]] = {"defense": {}, "attack": {}}
_PLUGIN_PACKAGES = {"defense": "defenses", "attack": "attacks"}
_discovered = False


def _register(kind: str, name: str):
    def decorator(cls):
        registry = _REGISTRIES[kind]
        if name in registry and registry[name] is not cls:
            raise BenchError(f"{kind} '{name}' is registered twice ({registry[name].__module__} and {cls.__module__}).")
        cls.name = name
        registry[name] = cls
        return cls

    return decorator


def register_defense(name: str):
    """Class decorator: make a `bench.Defense` subclass available as `name`."""
    return _register("defense", name)


def register_attack(name: str):
    """Class decorator: make a `bench.Attack` subclass available as `name`."""
    return _register("attack", name)


def discover() -> None:
    global _discovered
    if _discovered:
        return
    for kind, package_name in _PLUGIN_PACKAGES.items():
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package_name}.{info.name}")
    _discovered = True


def plugins(kind: str) -> dict[str, type]:
    discover()
    return dict(sorted(_REGISTRIES[kind].items()))


def get_plugin(kind: str, name: str) -> type:
    registry = plugins(kind)
    if name not in registry:
        raise BenchError(f"Unknown {kind} plug-in '{name}'. {did_you_mean(name, registry)}")
    return registry[name]
