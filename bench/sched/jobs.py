"""What a worker does with a job (train a checkpoint, attack a cell or one shard of it), the same on every
backend. Errors come back as data, never as exceptions, so a failing job cannot take its worker down."""
from __future__ import annotations

import importlib
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import BenchError
from ..store import ArtifactCache, ResultsStore, file_lock


@dataclass
class Event:
    """A job's outcome as a backend reports it: ok with a result, an error (retryable = out of memory or a
    crashed worker) and the seconds spent."""

    job: str
    ok: bool
    result: dict = field(default_factory=dict)
    error: str = ""
    traceback: str = ""
    retryable: bool = False
    seconds: float = 0.0


def env_spec(env) -> dict:
    """What a worker needs to rebuild the parent's Env (paths only, so it pickles cheaply)."""
    return {"config": str(env.cfg.path), "data_root": str(env.data_root), "cache": str(env.cache.root),
            "results": str(env.store.root), "plugins": extra_plugin_modules(),
            "weights_root": str(env.weights_root) if env.weights_root else "",
            "corruptions_root": str(env.corruptions_root) if env.corruptions_root else "", "retrain": env.retrain}


def extra_plugin_modules() -> list[list[str]]:
    """Modules outside defenses/ and attacks/ that registered plug-ins in this process (e.g. a test's planted
    defense): a fresh worker imports them too, so it knows every plug-in the parent knows."""
    from .. import registry

    found = {}
    for kind in ("defense", "attack"):
        for cls in registry.plugins(kind).values():
            mod = sys.modules.get(cls.__module__)
            if cls.__module__.split(".")[0] in ("defenses", "attacks", "__main__", "__mp_main__") or mod is None:
                continue
            # the folder to import it from: above its package for a dotted name (tests/ for planted.masking)
            depth = cls.__module__.count(".")
            found[cls.__module__] = str(Path(mod.__file__).parents[depth]) if getattr(mod, "__file__", None) else ""
    return [[name, folder] for name, folder in sorted(found.items())]


def make_env(spec: dict, device: str):
    from ..config import load_config
    from ..runner import Env

    for name, folder in spec["plugins"]:
        if folder and folder not in sys.path:
            sys.path.append(folder)
        importlib.import_module(name)
    return Env(load_config(spec["config"]), Path(spec["data_root"]), ArtifactCache(Path(spec["cache"])),
               ResultsStore(Path(spec["results"])), torch.device(device),
               weights_root=Path(spec["weights_root"]) if spec.get("weights_root") else None,
               corruptions_root=Path(spec["corruptions_root"]) if spec.get("corruptions_root") else None,
               retrain=bool(spec.get("retrain")))


def execute(env, spec: dict) -> dict:
    from ..runner import attack_part, train

    kind = spec["kind"]
    if kind == "train":
        # one trainer per checkpoint even across concurrent runs; the second finds it cached
        with file_lock(env.cache.root / "locks" / f"checkpoints-{spec['key']}"):
            trained = train(spec["defense"], spec["dataset"], spec["profile"], spec["seed"], env=env)
        if trained.key != spec["key"]:
            raise BenchError(f"checkpoint key {trained.key} differs from the planned {spec['key']}: bench.toml "
                             f"changed during the run; run the command again.")
        return {"checkpoint": trained.key}
    if kind in ("cell", "shard"):
        part = attack_part(env, spec["defense"], spec["attack"], spec["dataset"], spec["profile"], spec["seed"],
                           spec["n_test"], shard=tuple(spec["shard"]), batch_size=spec.get("batch_size"))
        if part["cell"] != spec["cell"]:
            raise BenchError(f"cell key {part['cell']} differs from the planned {spec['cell']}: bench.toml changed "
                             f"during the run; run the command again.")
        return {"part": part}
    if kind == "suite":
        from ..suite import compute, plan_suite

        sp = plan_suite(env, spec["defense"], spec["suite"], spec["dataset"], spec["profile"], spec["seed"],
                        spec["n_test"])
        if sp.cell != spec["cell"]:
            raise BenchError(f"suite cell key {sp.cell} differs from the planned {spec['cell']}: bench.toml changed "
                             f"during the run; run the command again.")
        row, manifest = compute(env, sp, force=spec.get("force", False))
        return {"row": row, "manifest": manifest}
    if kind == "noop":  # the scheduler-overhead benchmark
        time.sleep(spec.get("seconds", 0.0))
        return {}
    raise BenchError(f"unknown job kind {kind!r}")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def run_job(env, spec: dict) -> dict:
    """{'ok', 'result' | 'error', 'traceback', 'retryable', 'seconds'}: retryable = ran out of memory."""
    t0 = time.time()
    try:
        return {"ok": True, "result": execute(env, spec), "seconds": time.time() - t0}
    except Exception as e:  # reported to the scheduler, which decides between retry, failed and blocked
        message = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"ok": False, "error": message, "traceback": traceback.format_exc(), "retryable": is_out_of_memory(e),
                "seconds": time.time() - t0}
