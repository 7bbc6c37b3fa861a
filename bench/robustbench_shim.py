"""The one place bench touches robustbench (1.1.x), behind its two import quirks:

- `import robustbench` runs `robustbench.eval`, which does `from autoattack import AutoAttack`: the AutoAttack
  authors' package, installable only from GitHub. PyPI ships the same code as `pyautoattack` (a dependency of
  bench), so when no `autoattack` is importable, the name is aliased to it before robustbench is imported.
- `robustbench.loaders` imports `pkg_resources` (setuptools < 81, pinned in pyproject.toml for this), which warns
  on import; the warning is silenced. Should a setuptools without it be installed, a stand-in with the one
  function robustbench calls (`resource_filename`) takes its place.

Models load through robustbench's own `load_model` with a local `model_dir` in its layout
(`model_dir/<dataset>/<threat model>/<name>.pt`). Nothing is downloaded: `load` names the file robustbench expects
and stops before robustbench would reach for the network."""
from __future__ import annotations

import importlib
import sys
import types
import warnings
from pathlib import Path

from .errors import BenchError

DATASETS = {"cifar10": "cifar10"}  # bench's dataset -> RobustBench's (it has no MNIST / Fashion-MNIST models)


def _alias_autoattack() -> None:
    try:
        importlib.import_module("autoattack")
        return
    except ImportError:
        pass
    import pyautoattack
    import pyautoattack.state

    sys.modules.setdefault("autoattack", pyautoattack)
    sys.modules.setdefault("autoattack.state", pyautoattack.state)


def _pkg_resources() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "pkg_resources is deprecated as an API"
        try:
            importlib.import_module("pkg_resources")
            return
        except ImportError:
            pass
    from importlib import resources

    stand_in = types.ModuleType("pkg_resources")
    stand_in.resource_filename = lambda package, name: str(resources.files(package) / name)
    sys.modules["pkg_resources"] = stand_in


def robustbench():
    """`robustbench.utils` and `robustbench.model_zoo`, imported through the quirks above."""
    try:
        _alias_autoattack()
        _pkg_resources()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            utils = importlib.import_module("robustbench.utils")
            zoo = importlib.import_module("robustbench.model_zoo")
            enums = importlib.import_module("robustbench.model_zoo.enums")
    except ImportError as e:  # a bench installed without its robustbench / pyautoattack dependencies
        raise BenchError(f"robustbench:NAME needs robustbench and pyautoattack, which do not import here ({e}). "
                         f"Install bench's dependencies (pip install -e .).") from None
    return utils, zoo, enums


def version() -> str:
    from importlib.metadata import version as v

    return v("robustbench")


def _rb_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise BenchError(f"RobustBench has no {dataset} models: its datasets are cifar10, cifar100 and imagenet, of "
                         f"which bench has {', '.join(DATASETS)}. Use --dataset cifar10.")
    return DATASETS[dataset]


def _entry(name: str, dataset: str, threat_model: str) -> dict:
    _, zoo, enums = robustbench()
    models = zoo.model_dicts[enums.BenchmarkDataset(_rb_dataset(dataset))][enums.ThreatModel(threat_model)]
    if name not in models:
        import difflib

        close = difflib.get_close_matches(name, list(models), n=3)
        raise BenchError(f"RobustBench has no {dataset} {threat_model} model {name!r} ({len(models)} known, e.g. "
                         f"{', '.join(list(models)[:3])}).{f' Did you mean {close}?' if close else ''} The threat "
                         f"model comes from the attack's norm (linf -> Linf, l2 -> L2), or threat_model in bench.toml.")
    return models[name]


def checkpoint_files(name: str, model_dir: Path, dataset: str, threat_model: str) -> list[Path]:
    """The files robustbench's load_model reads for this model (ensembles: one per member)."""
    folder = Path(model_dir) / _rb_dataset(dataset) / threat_model
    robustbench()  # not installed: that error, not a file name guessed from an unknown model's
    try:
        ids = _entry(name, dataset, threat_model)["gdrive_id"]
    except BenchError:
        return [folder / f"{name}.pt"]
    if isinstance(ids, list):
        return [folder / f"{name}.pt_m{i}.pt" for i in range(len(ids))]
    return [folder / f"{name}.pt"]


def load(name: str, model_dir: Path, dataset: str, threat_model: str = "Linf"):
    """A RobustBench model through robustbench's `load_model` (eval mode, inputs in [0, 1]), from local files only."""
    utils, _, _ = robustbench()
    entry = _entry(name, dataset, threat_model)
    rb_dataset = _rb_dataset(dataset)
    timm_name = f"{name.lower().replace('-', '_')}_{rb_dataset}_{threat_model.lower()}"
    if utils.timm.is_model(timm_name):  # load_model would have timm download it
        raise BenchError(f"RobustBench serves {name!r} through timm ({timm_name}), which downloads it; bench cannot "
                         f"download. Build it with timm yourself and use --model FILE.py:FACTORY --weights FILE.")
    if entry.get("gdrive_id") is None:
        raise BenchError(f"RobustBench has no checkpoint for {name!r} (no gdrive_id in its model zoo).")
    files = checkpoint_files(name, model_dir, dataset, threat_model)
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise BenchError(f"RobustBench model {name!r} is not in {model_dir}: robustbench expects "
                         f"{', '.join(map(str, missing))} (model_dir/<dataset>/<threat model>/<name>.pt). bench "
                         f"cannot download; copy the file there, or point --weights (weights in bench.toml) at the "
                         f"model_dir that holds it.")
    from .store import read_weights

    for path in files:  # robustbench's own torch.load has no weights_only (unpickles code on torch < 2.6): refuse first
        read_weights(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = utils.load_model(name, model_dir=str(model_dir), dataset=rb_dataset, threat_model=threat_model)
    except Exception as e:  # load_state_dict (RuntimeError), a checkpoint without the keys it reads (KeyError), ...
        raise BenchError(f"robustbench could not load {files[0]} into {name}: {type(e).__name__}: "
                         f"{str(e)[:400]}") from None
    return model.eval()
