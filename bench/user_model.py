"""Evaluate a model you already have, without training: what the `pretrained` plug-in, `bench run --model` and
`bench.evaluate` share.

A model is named by a spec: `FILE.py:FACTORY` (a file, relative paths from bench.toml's folder, or from the current
folder on the command line), `MODULE:FACTORY` (an importable module) or `robustbench:NAME` (RobustBench's
`load_model`, see bench.robustbench_shim). The factory is called without arguments and returns an `nn.Module` that
takes images in [0, 1] (N×C×H×W) and returns logits (N×classes): normalization belongs inside the model, so that
attacks, budgets and clipping all live in pixel space. Weights are a state_dict file, loaded with
`torch.load(weights_only=True)` only (a pickle can run code when loaded).

A model without a class can still declare what the attacks and verdicts must know: `stochastic = true` (its
forward pass is random: attacks without EOT warn, `bench audit` adapts with EOT) and `bpda = {"module.path" =
"identity"}` (modules whose gradient is useless; attacks may select the straight-through surrogate with
`backward = "bpda"`, or `"bpda:module.path"` for one of several)."""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from . import external
from .defense import Defense
from .errors import BenchError, did_you_mean
from .params import StrictModel
from .store import read_weights, sha256_file

ROBUSTBENCH = "robustbench:"
SPEC_FORMS = "FILE.py:FACTORY, MODULE:FACTORY or robustbench:NAME"


class ModelParams(StrictModel):
    """A ready-made model. No training keys: a profile's `defense_defaults` (epochs, n_train) never reach it."""

    model: str = Field(description=f"{SPEC_FORMS}; the factory returns an nn.Module taking images in [0, 1]")
    weights: str = Field("", description="state_dict file, loaded with weights_only=True, or an external zoo card <zoo_dir>/external/NAME.json whose file is read from the weights root (robustbench: its model_dir, default models/)")
    stochastic: bool = Field(False, description="the forward pass is random: attacks need EOT")
    bpda: dict[str, Literal["identity"]] = Field(default_factory=dict, description="named modules with a useless gradient -> backward surrogate")
    threat_model: Literal["Linf", "L2", "corruptions"] = Field("Linf", description="robustbench: the leaderboard the model is from")


def resolve_path(value: str, root: Path | None) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() or root is None else Path(root) / p


def parse_spec(spec: str) -> tuple[str, str, str]:
    """(kind, target, name): ("robustbench", "", NAME), ("file", PATH, FACTORY) or ("module", MODULE, FACTORY)."""
    if spec.startswith(ROBUSTBENCH):
        name = spec[len(ROBUSTBENCH):]
        if not name:
            raise BenchError(f"--model {spec!r} names no RobustBench model: give robustbench:NAME, e.g. "
                             f"robustbench:Standard.")
        return "robustbench", "", name
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise BenchError(f"--model {spec!r} is not a model spec. Allowed: {SPEC_FORMS} (e.g. "
                         f"examples/my_model.py:small_cnn).")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    return ("file" if is_file else "module"), target, name


def absolute_spec(spec: str, root: Path) -> str:
    """The spec with a FILE made absolute from `root` (the command line's current folder)."""
    kind, target, name = parse_spec(spec)
    return f"{resolve_path(target, root).resolve()}:{name}" if kind == "file" else spec


def _factory_file(kind: str, target: str, root: Path | None, spec: str) -> Path:
    if kind == "file":
        path = resolve_path(target, root)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise BenchError(f"The model file {path} (from model = {spec!r}) {what}. Give {SPEC_FORMS}; a relative "
                             f"FILE is read from {'the folder of bench.toml' if root else 'the current folder'}"
                             f"{f' ({root})' if root else ''}.")
        return path
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as e:
        found, why = None, f" ({e})"
    else:
        why = ""
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise BenchError(f"No importable module {target!r} (from model = {spec!r}){why}. MODULE:FACTORY takes a "
                         f"module on the Python path; for a file give its path ending in .py ({SPEC_FORMS}).")
    return Path(found.origin)


def weights_path(params: ModelParams, root: Path | None, weights_root: Path | None = None) -> Path | None:
    """The state_dict file to load: `weights` itself, or for an external zoo card (bench.external) the file it names
    in the weights root, sha256 verified."""
    if not params.weights:
        return None
    if external.is_card(params.weights):
        return external.locate_file(params.weights, root, weights_root)
    path = resolve_path(params.weights, root)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise BenchError(f"The weights file {path} (from weights = {params.weights!r}) {what}. Give a state_dict "
                         f"saved with torch.save(model.state_dict(), PATH).")
    return path


def file_digests(params: ModelParams, root: Path | None) -> dict[str, str]:
    """sha256 of every file the model is made from: part of its checkpoint and cell keys, so a changed factory or
    weights file is a new model (never a cached result of the old one)."""
    kind, target, name = parse_spec(params.model)
    if kind == "robustbench":
        from . import robustbench_shim

        # RobustBench has no MNIST models; a missing file is reported by `build`, which names the path expected
        files = robustbench_shim.checkpoint_files(name, robustbench_model_dir(params, root), "cifar10",
                                                  params.threat_model)
        return {"robustbench": robustbench_shim.version(),
                **{f"weights:{p.name}": sha256_file(p) if p.is_file() else "missing" for p in files}}
    factory = _factory_file(kind, target, root, params.model)
    out = {"factory": sha256_file(factory)}
    imported = local_imports(factory, target if kind == "module" else None)
    if imported:  # absent when the factory imports nothing of its own, so such models keep their keys
        listing = "".join(f"{rel}\0{sha256_file(path)}\n" for rel, path in imported)
        out["imports"] = hashlib.sha256(listing.encode()).hexdigest()
    if external.is_card(params.weights):  # the card's sha256: the key is known without the file (verified at load)
        out["weights"] = external.file_key(params.weights, root)
        return out
    w = weights_path(params, root)
    if w is not None:
        out["weights"] = sha256_file(w)
    return out


def local_imports(path: Path, module: str | None = None) -> list[tuple[str, Path]]:
    """The user's own source files the factory file imports, transitively: (path relative to the import root,
    path), sorted. Found statically (ast, nothing executed) and only under the import root: the file's folder, or
    for MODULE:FACTORY the sys.path folder its top package is in. Installed packages are versioned in every row's
    provenance and are left out (bench itself, whose git SHA every row records, is one), as is what cannot be
    resolved to a file there (the standard library, torch)."""
    import ast
    import importlib.metadata
    import site
    import sysconfig

    path = Path(os.path.abspath(path))  # not resolved: a symlinked helper is hashed where the import finds it
    distributed = set(importlib.metadata.packages_distributions()) | {"bench"}
    parts = module.split(".") if module else []
    package = parts[:-1] if parts and path.name != "__init__.py" else parts
    root = path.parent
    for _ in range(len(parts) - (0 if path.name == "__init__.py" else 1)):
        root = root.parent
    installed = {Path(p).resolve() for p in (*site.getsitepackages(), site.getusersitepackages(),
                                             sysconfig.get_paths()["stdlib"]) if p}
    if any(root == d or d in root.parents for d in installed):
        return []

    def find(dotted: list[str]) -> Path | None:
        if not dotted or dotted[0] in distributed:
            return None
        base = root.joinpath(*dotted)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    found: dict[Path, None] = {}
    todo = [(path, package)]
    while todo:
        file, pkg = todo.pop()
        try:
            tree = ast.parse(file.read_bytes(), filename=str(file))
        except (OSError, SyntaxError, ValueError):
            continue  # the import itself reports a broken file, with its line
        for node in ast.walk(tree):
            names: list[list[str]] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level and len(pkg) < node.level - 1:
                    continue
                base = (pkg[:len(pkg) - node.level + 1] if node.level else []) + (node.module.split(".")
                                                                                   if node.module else [])
                names = [base] + [base + [a.name] for a in node.names if a.name != "*"]
            for dotted in names:
                for k in range(1, len(dotted) + 1):  # a.b.c imports a, a.b and a.b.c
                    hit = find(dotted[:k])
                    if hit is not None and hit != path and hit not in found:
                        found[hit] = None
                        sub = dotted[:k] if hit.name == "__init__.py" else dotted[:k - 1]
                        todo.append((hit, sub))
    return sorted((str(f.relative_to(root)), f) for f in found)


def robustbench_model_dir(params: ModelParams, root: Path | None) -> Path:
    return resolve_path(params.weights or "models", root)


def load_factory(spec: str, root: Path | None = None):
    """The factory callable a FILE.py:FACTORY or MODULE:FACTORY spec names (the file is executed afresh)."""
    kind, target, name = parse_spec(spec)
    path = _factory_file(kind, target, root, spec)
    try:
        if kind == "file":
            # a fresh module per load (never a stale one from sys.modules): the file may have changed
            mod_name = f"bench_user_model_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            with _own_folder_importable(path):
                loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except Exception as e:  # the user's code: its error, one line, and where
        if kind == "file":
            sys.modules.pop(mod_name, None)  # not a half-executed module left behind
        raise BenchError(f"Importing {path} (from model = {spec!r}) failed: {type(e).__name__}: {e}") from None
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        names = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
        what = "is not callable" if factory is not None else "does not exist"
        raise BenchError(f"{name!r} in {path} {what} (from model = {spec!r}). Callables defined there: "
                         f"{did_you_mean(name, names)}")
    return factory


@contextlib.contextmanager
def _own_folder_importable(path: Path):
    """The file's folder first on sys.path, as `python FILE.py` has it, so it can import the modules beside it,
    also lazily from its forward (the folder stays on the path). The modules of its own that it imported while it
    ran (those local_imports hashes into its key) leave sys.modules afterwards, so the next load reads them afresh,
    as it does the file; nothing else (e.g. a virtualenv inside that folder) is touched."""
    folder = str(path.parent)
    before = set(sys.modules)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        own = {f.resolve() for _, f in local_imports(path)}
        for name in set(sys.modules) - before:
            file = getattr(sys.modules.get(name), "__file__", None)
            if file and Path(file).resolve() in own:
                sys.modules.pop(name, None)


def build_from_factory(spec: str, root: Path | None = None) -> nn.Module:
    factory = load_factory(spec, root)
    try:
        model = factory()
    except Exception as e:
        raise BenchError(f"The model factory {spec!r} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise BenchError(f"The model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module. It "
                         f"must return the model itself (an nn.Module taking images in [0, 1], returning logits).")
    return model


def _state_dict(obj, path: Path) -> dict:
    def tensors(d):
        return isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values())

    if tensors(obj):
        return obj
    # common checkpoint wrappers, bench's own cache files ({"model": ...}) among them
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and tensors(obj.get(key)):
            return obj[key]
    keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else ""
    raise BenchError(f"{path} holds a {type(obj).__name__}{keys}, not a state_dict (a dict of tensors, or one under "
                     f"'state_dict' / 'model'). Save it with torch.save(model.state_dict(), PATH).")


def _listing(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}{f' … ({len(keys) - limit} more)' if len(keys) > limit else ''}"


def load_weights(model: nn.Module, path: Path, spec: str = "") -> None:
    """Load a state_dict file into `model`, strictly: every key present, none extra, every shape equal."""
    sd = _state_dict(read_weights(path), path)
    own = model.state_dict()
    if all(k.startswith("module.") for k in sd) and not any(k.startswith("module.") for k in own):
        sd = {k[len("module."):]: v for k, v in sd.items()}  # saved from nn.DataParallel
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} (model: {tuple(own[k].shape)})" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing: {_listing(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {_listing(unexpected)}" if unexpected else "",
                 f"{len(shapes)} of another shape: {_listing(shapes, 5)}" if shapes else ""]
        raise BenchError(f"The weights {path} do not match the model of {spec!r}: "
                         f"{'; '.join(p for p in parts if p)}. Give the state_dict of this architecture.")
    model.load_state_dict(sd, strict=True)


def check_output(model: nn.Module, info, spec: str = "") -> None:
    """One forward pass of two mid-grey images of the dataset's shape: the model must return (2, classes) logits."""
    shape = (2, *info.shape)
    # on the model's device: bench.evaluate may be given a module the caller already moved to a GPU
    device = next(iter(model.parameters()), next(iter(model.buffers()), torch.empty(0))).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.full(shape, 0.5, device=device))
    except BenchError:
        raise
    except Exception as e:
        raise BenchError(f"The model {spec!r} fails on a batch of {info.name} images ({'×'.join(map(str, shape))}, "
                         f"values in [0, 1]): {type(e).__name__}: {str(e)[:200]}. Is it a model for {info.name}?") from None
    finally:
        model.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (2, info.num_classes):
        raise BenchError(f"The model {spec!r} returns {got} for a batch of 2 {info.name} images; a {info.name} model "
                         f"must return logits of shape (batch, {info.num_classes}).")


def build(params: ModelParams, info, root: Path | None = None, weights_root: Path | None = None) -> nn.Module:
    """The model a spec names, with its weights, checked against the dataset (CPU, eval mode)."""
    kind, _, name = parse_spec(params.model)
    if kind == "robustbench":
        from . import robustbench_shim

        model = robustbench_shim.load(name, robustbench_model_dir(params, root), info.name, params.threat_model)
    else:
        model = build_from_factory(params.model, root)
        w = weights_path(params, root, weights_root)
        if w is not None:
            load_weights(model, w, params.model)
    check_output(model, info, params.model)
    return model.eval()


def _straight_through(module, inputs, output):
    # forward: the module's own output, exactly (x - x.detach() is 0); backward: identity to its input (BPDA)
    x = inputs[0] if inputs else None
    if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor) or output.shape != x.shape:
        raise BenchError(f"bpda 'identity' for {type(module).__name__} needs an output of its input's shape; got "
                         f"{getattr(output, 'shape', type(output).__name__)} from {getattr(x, 'shape', None)}.")
    return output.detach() + (x - x.detach())


def _declared_modules(model: nn.Module, wanted: list[str]) -> list[nn.Module]:
    """The modules the bpda names declare, relative to the user's model. Behind wrappers (a PassCounter, an
    ensemble) a name gains a prefix: then the shallowest matches only, so that "0" means the model's first child,
    never also every block "layer1.0", "layer2.0" deeper inside it."""
    names = dict(model.named_modules())
    out = []
    for w in wanted:
        if w in names:
            out.append(names[w])
            continue
        hits = [n for n in names if n.endswith("." + w)]
        depth = min((n.count(".") for n in hits), default=0)
        out += [names[n] for n in hits if n.count(".") == depth]
    return out


class ModelDefense(Defense):
    """A model given ready-made: nothing to train, declarations (stochastic, BPDA) from its parameters."""

    Params = ModelParams
    evaluation_only = True  # bench.runner.train builds it and returns: no training split, no checkpoint

    def __init__(self, params: ModelParams, dataset_info, dataset_arch: str = ""):
        self.params, self.info, self.arch = params, dataset_info, ""
        # the class-level declarations of a Defense, per instance: a user's model declares them in its entry
        self.stochastic = bool(params.stochastic)
        self.non_differentiable = tuple(params.bpda)
        self.surrogates = self.declared_surrogates(params)
        self.module: nn.Module | None = None  # bench.evaluate passes its model here instead of a spec

    @classmethod
    def file_digests(cls, params: ModelParams, root: Path | None) -> dict[str, str]:
        return file_digests(params, root)

    @staticmethod
    def declared_surrogates(params: ModelParams) -> tuple[str, ...]:
        """'bpda' (every declared module straight-through), and 'bpda:NAME' per module when there are several."""
        return (("bpda", *(f"bpda:{n}" for n in params.bpda)) if len(params.bpda) > 1
                else ("bpda",) if params.bpda else ())

    @classmethod
    def surrogate_problem(cls, params: ModelParams, spec: str) -> str:
        allowed = cls.declared_surrogates(params)
        if spec in (None, "", "autograd") or spec in allowed:
            return ""
        named = ", ".join(allowed) or 'none (declare bpda = {"module.path" = "identity"})'
        return f"Model {params.model!r} has no backward surrogate {spec!r}. Allowed: {named}"

    def build_model(self) -> nn.Module:
        model = self.module if self.module is not None else build(self.params, self.info, self.context.config_root,
                                                                       self.context.weights_root)
        missing = [n for n in self.params.bpda if n not in dict(model.named_modules())]
        if missing:
            names = [n for n, _ in model.named_modules() if n]
            raise BenchError(f"bpda names module {missing[0]!r}, which the model of {self.params.model!r} does not "
                             f"have. {did_you_mean(missing[0], names)}")
        if self.params.bpda:  # a surrogate that cannot run must fail here, not in the middle of an attack
            with self.surrogate(model, "bpda"):
                check_output(model, self.info, self.params.model)
        return model

    def batch_loss(self, model, x, y):
        raise BenchError(f"'{self.name}' evaluates a model as given and never trains it.")

    @contextlib.contextmanager
    def surrogate(self, model: nn.Module, spec: str | None):
        if spec in (None, "", "autograd"):
            yield model
            return
        self.require_surrogate(spec)
        wanted = list(self.params.bpda) if spec == "bpda" else [spec[len("bpda:"):]]
        handles = [m.register_forward_hook(_straight_through) for m in _declared_modules(model, wanted)]
        try:
            yield model
        finally:
            for h in handles:
                h.remove()


def model_plugin() -> str:
    """The registered defense plug-in that evaluates a ready-made model (found by its class, not by its name)."""
    from .registry import plugins

    found = [name for name, cls in plugins("defense").items() if issubclass(cls, ModelDefense)]
    if not found:
        raise BenchError("No registered defense plug-in evaluates a ready-made model (a bench.user_model."
                         "ModelDefense subclass, e.g. defenses/pretrained.py); --model needs one.")
    return found[0]


THREAT_MODELS = {"linf": "Linf", "l2": "L2"}  # an attack's norm -> RobustBench's leaderboard


def threat_model_of(cfg, attacks: list[str], dataset: str, profile: str) -> str:
    """RobustBench's threat model for `robustbench:NAME` on the command line: the attacks' norm."""
    norms = sorted({cfg.attack_instance(a, dataset, profile).norm or "" for a in attacks})
    known = [THREAT_MODELS[n] for n in norms if n in THREAT_MODELS]
    if len(set(known)) > 1:
        raise BenchError(f"--model robustbench:NAME takes its threat model from the attacks' norm, and these attacks "
                         f"have several ({', '.join(norms)}): run the Linf and the L2 attacks separately, or use a "
                         f"bench.toml entry with threat_model.")
    return known[0] if known else "Linf"


def add_model_entry(cfg, spec: str, weights: str | None, attacks: list[str], dataset: str, profile: str,
                    cwd: Path | None = None) -> str:
    """Make `bench run --model SPEC [--weights FILE]` a defense entry of the loaded config (in memory, nothing is
    written) and return its name: the same plug-in, keys and checks as a `plugin = "pretrained"` entry. Paths are
    made absolute from the current folder, as a shell user expects."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    kind, target, name = parse_spec(spec)
    entry = {"plugin": model_plugin(), "model": absolute_spec(spec, cwd)}
    if weights:
        entry["weights"] = str(resolve_path(str(weights), cwd).resolve())
    elif kind == "robustbench":  # its default model_dir is ./models of the shell, not of bench.toml's folder
        entry["weights"] = str((cwd / "models").resolve())
    if kind == "robustbench":
        entry["threat_model"] = threat_model_of(cfg, attacks or [], dataset, profile)
        label = spec
    else:
        label = f"{Path(target).name if kind == 'file' else target}:{name}"
    if label in cfg.entries["defense"]:
        raise BenchError(f"--model {spec!r} would be named {label!r}, which {cfg.path} already has as a defense entry: "
                         f"run that entry with --defense {label!r} instead.")
    cfg.entries["defense"][label] = entry
    for key in [k for k in cfg._cache if k[:2] == ("defense", label)]:
        del cfg._cache[key]
    cfg.defense(label, dataset, profile)  # validated like any entry
    return label
