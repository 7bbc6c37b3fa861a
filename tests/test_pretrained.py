"""Evaluating a model you already have: `bench run --model`, a `plugin = "pretrained"` entry,
RobustBench models and `bench.evaluate`. No training, no training split, keys that follow the files' contents."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "my_model.py"
BENCH = Path(sys.executable).with_name("bench")  # the installed console script: what a user runs


def bench_cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "BENCH_PROGRESS": "0"}
    return subprocess.run([str(BENCH), *args], capture_output=True, text=True, cwd=cwd or REPO, env=env,
                          timeout=timeout)


def _example():
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import my_model
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    return my_model


def _weights(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(_example().small_cnn().state_dict(), path)
    return path


def _config(tmp_path: Path, entries: str = "") -> Path:
    cfg = tmp_path / "bench.toml"
    cfg.write_text((REPO / "bench.toml").read_text() + "\n" + textwrap.dedent(entries))
    return cfg


def _env(cfg: Path, data_root, tmp_path: Path):
    from bench.runner import Env

    return Env.create(config=cfg, data_root=data_root, device="cpu", results_dir=tmp_path / "results")


def _entry(name: str, weights: Path | None, extra: str = "") -> str:
    w = f'weights = "{weights}"\n' if weights else ""
    return f'[defenses.{name}]\nplugin = "pretrained"\nmodel = "{EXAMPLE}:small_cnn"\n{w}{extra}\n'


# ------------------------------------------------------------------------------------------------ fast


def test_spec_forms_and_their_errors(tmp_path):
    from bench.errors import BenchError
    from bench.user_model import load_factory, parse_spec

    assert parse_spec("examples/my_model.py:small_cnn") == ("file", "examples/my_model.py", "small_cnn")
    assert parse_spec("torchvision.models:resnet18") == ("module", "torchvision.models", "resnet18")
    assert parse_spec("robustbench:Standard") == ("robustbench", "", "Standard")
    assert callable(load_factory(f"{EXAMPLE}:small_cnn"))
    assert callable(load_factory("torch.nn:Identity"))
    with pytest.raises(BenchError, match="not a model spec"):
        parse_spec("my_model.py")
    with pytest.raises(BenchError, match="Did you mean 'small_cnn'"):
        load_factory(f"{EXAMPLE}:small_cn")
    with pytest.raises(BenchError, match="No importable module 'no_such_module_xyz'"):
        load_factory("no_such_module_xyz:make")


def test_profile_defaults_never_reach_a_ready_made_model(tmp_path):
    """[profiles.smoke.defense_defaults] sets epochs = 1, n_train = 2048: a pretrained entry has no such keys."""
    from bench.config import load_config

    cfg = load_config(_config(tmp_path, _entry("mine", None)))
    for profile in cfg.profiles:
        params = cfg.defense("mine", "cifar10", profile).params.model_dump()
        assert "epochs" not in params and "n_train" not in params, params
    assert cfg.defense("my_model", "cifar10", "smoke").plugin == "pretrained"  # the example entry loads


def test_changed_weights_or_factory_file_gets_a_new_key(tmp_path):
    from bench.config import load_config
    from bench.runner import checkpoint_key, resolve_cell

    factory = tmp_path / "net.py"
    factory.write_text(EXAMPLE.read_text())
    weights = _weights(tmp_path / "w.pt", seed=0)
    entry = f'[defenses.mine]\nplugin = "pretrained"\nmodel = "net.py:small_cnn"\nweights = "w.pt"\n'
    cfg_path = _config(tmp_path, entry)  # relative paths: from the folder of this bench.toml

    def keys():
        cfg = load_config(cfg_path)
        from bench.runner import Env

        env = Env(cfg, tmp_path, None, None, torch.device("cpu"))
        res = cfg.defense("mine", "cifar10", "smoke")
        return checkpoint_key(res, "cifar10", 0), resolve_cell(env, "mine", "pgd_linf", "cifar10", "smoke", 0)[3]

    first = keys()
    assert keys() == first  # stable while nothing changes
    _weights(weights, seed=1)  # same path, other contents
    second = keys()
    assert second[0] != first[0] and second[1] != first[1]
    factory.write_text(factory.read_text() + "\n# an edit\n")
    third = keys()
    assert third[0] != second[0] and third[1] != second[1]


def test_a_module_the_factory_imports_is_part_of_its_key(tmp_path):
    """A factory file that imports its own helpers (a sibling module, a package with a relative import): editing
    a helper is a new model, as editing the file is; the file runs with its folder importable."""
    from bench.config import load_config
    from bench.runner import checkpoint_key
    from bench.user_model import build_from_factory, local_imports

    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "__init__.py").write_text("")
    (tmp_path / "nets" / "blocks.py").write_text("from . import widths\n")
    (tmp_path / "nets" / "widths.py").write_text("HIDDEN = 16\n")
    (tmp_path / "helpers.py").write_text("from nets import blocks\n")
    (tmp_path / "unrelated.py").write_text("x = 1\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\nimport helpers\nfrom nets.widths import HIDDEN\n\n\n"
                                     "def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3072, HIDDEN), "
                                     "nn.Linear(HIDDEN, 10))\n")
    assert [r for r, _ in local_imports(tmp_path / "net.py")] == \
        ["helpers.py", "nets/__init__.py", "nets/blocks.py", "nets/widths.py"]
    assert build_from_factory(f"{tmp_path / 'net.py'}:make")[1].out_features == 16
    cfg_path = _config(tmp_path, '[defenses.mine]\nplugin = "pretrained"\nmodel = "net.py:make"\n')

    def key():
        return checkpoint_key(load_config(cfg_path).defense("mine", "cifar10", "smoke"), "cifar10", 0)

    first = key()
    (tmp_path / "unrelated.py").write_text("x = 2\n")
    assert key() == first  # a file the factory does not import is not part of the model
    time.sleep(0.01)
    (tmp_path / "nets" / "widths.py").write_text("HIDDEN = 32\n")
    assert key() != first
    assert build_from_factory(f"{tmp_path / 'net.py'}:make")[1].out_features == 32  # read afresh, not the cached 16
    assert local_imports(EXAMPLE) == []  # the example imports only torch: its committed keys stay what they were
    # MODULE:FACTORY of the same file: bench's own modules (versioned by the git SHA) are not the model's
    assert local_imports(EXAMPLE, "examples.my_model") == []


def test_a_factory_file_imports_lazily_and_through_symlinks(tmp_path):
    from bench.user_model import build_from_factory, local_imports

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "shared.py").write_text("SCALE = 2.0\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "shared.py").symlink_to(tmp_path / "elsewhere" / "shared.py")
    (tmp_path / "models" / "late.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "models" / "net.py").write_text(
        "import torch.nn as nn\nimport shared\n\n\nclass Net(nn.Module):\n    def forward(self, x):\n"
        "        from late import double  # imported when called, after the file has run\n"
        "        return double(x.flatten(1)[:, :10]) * shared.SCALE\n\n\ndef make():\n    return Net()\n")
    assert [r for r, _ in local_imports(tmp_path / "models" / "net.py")] == ["late.py", "shared.py"]
    model = build_from_factory(f"{tmp_path / 'models' / 'net.py'}:make")
    assert model(torch.ones(2, 3, 32, 32)).tolist() == [[4.0] * 10] * 2


def test_evaluation_only_train_loads_no_training_split_and_caches_nothing(tmp_path, data_root, monkeypatch):
    import bench.runner as runner
    from bench import progress

    weights = _weights(tmp_path / "w.pt")
    env = _env(_config(tmp_path, _entry("mine", weights)), data_root, tmp_path)

    def no_training_split(*args, **kwargs):
        raise AssertionError(f"the training split was loaded: {args}")

    monkeypatch.setattr(runner, "load_split", no_training_split)
    logged = []
    monkeypatch.setattr(progress, "log", lambda msg, *a, **k: logged.append(msg))
    for profile in ("smoke", "quick", "paper"):
        t = runner.train("mine", "cifar10", profile, 0, env=env)
        assert t.meta["evaluation_only"] and t.meta["history"] == [] and set(t.meta["files"]) == {"factory", "weights"}
    own = _example().small_cnn()
    own.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(t.model(x), own(x))  # the weights as saved, untouched by any training
    assert not any("training on" in m for m in logged), logged
    assert not (env.cache.root / "checkpoints").exists()


def test_typed_rows():
    from bench.runner import typed_row

    row = typed_row({"clean_acc": "0.6", "robust_acc": "0", "n": "200", "eps": "", "seed": "0", "wall_s": "1.50",
                     "defense": "natural", "mean_norm": "0.25"})
    assert row == {"clean_acc": 0.6, "robust_acc": 0.0, "n": 200, "eps": None, "seed": 0, "wall_s": 1.5,
                   "defense": "natural", "mean_norm": 0.25}
    assert type(row["n"]) is int and type(row["clean_acc"]) is float


class _Rounding(nn.Module):
    def forward(self, x):
        return torch.round(x * 15) / 15  # zero gradient almost everywhere


def rounded_cnn():
    return nn.Sequential(_Rounding(), *_example().small_cnn())


def test_bpda_and_stochastic_declarations_without_a_class(tmp_path):
    from bench.data import dataset_info
    from bench.errors import BenchError
    from bench.user_model import ModelDefense, ModelParams

    factory = tmp_path / "rounded.py"
    factory.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                       "from test_pretrained import rounded_cnn\n")
    params = ModelParams(model=f"{factory}:rounded_cnn", bpda={"0": "identity"}, stochastic=True)
    d = ModelDefense(params, dataset_info("cifar10"))
    assert d.stochastic and d.non_differentiable == ("0",) and d.surrogates == ("bpda",)
    model = d.build_model()
    from bench.attack import PassCounter

    wrapped = PassCounter(model)  # the surrogate finds the module behind the attack's wrapper too
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    plain = wrapped(x).sum()
    (g_plain,) = torch.autograd.grad(plain, x)
    with d.surrogate(wrapped, "bpda") as m:
        out = m(x)
        (g_bpda,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(out.detach(), wrapped(x).detach())  # forward values unchanged
    assert g_plain.abs().sum() == 0 and g_bpda.abs().sum() > 0
    with pytest.raises(BenchError, match="Allowed: bpda"):
        with d.surrogate(model, "smooth:4"):
            pass
    bad = ModelDefense(ModelParams(model=params.model, bpda={"quant": "identity"}), dataset_info("cifar10"))
    with pytest.raises(BenchError, match="bpda names module 'quant'"):
        bad.build_model()
    # what the attacks read: the warning that sends them to the surrogate and to EOT
    from attacks._whitebox import gradient_warnings

    class Ctx:
        defense, warnings = d, []

    d.name = "mine"
    gradient_warnings(Ctx, "autograd", 1)
    assert any("non-differentiable" in w and "bpda" in w for w in Ctx.warnings)
    assert any("stochastic" in w for w in Ctx.warnings)


def test_robustbench_missing_file_names_the_expected_path(tmp_path):
    from bench.data import dataset_info
    from bench.errors import BenchError
    from bench.user_model import ModelParams, build

    params = ModelParams(model="robustbench:Ding2020MMA", weights=str(tmp_path / "models"))
    with pytest.raises(BenchError) as e:
        build(params, dataset_info("cifar10"))
    assert str(tmp_path / "models" / "cifar10" / "Linf" / "Ding2020MMA.pt") in str(e.value)
    with pytest.raises(BenchError, match="Did you mean"):
        build(ModelParams(model="robustbench:Ding2020MM", weights=str(tmp_path)), dataset_info("cifar10"))
    with pytest.raises(BenchError, match="RobustBench has no mnist models"):
        build(params, dataset_info("mnist"))


# ------------------------------------------------------------------------------------------------ slow


def _assert_refused(p, results: Path, *needles):
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert "Traceback" not in out, out
    for n in needles:
        assert n in out, out
    written = [f for f in results.rglob("*") if f.is_file()] if results.exists() else []
    assert not written, written


@pytest.mark.slow
@pytest.mark.ci
def test_bad_model_input_is_one_paragraph_and_writes_nothing(tmp_path):
    import pickle

    results = tmp_path / "results"
    run = ["run", "--attack", "pgd_linf", "--n-test", "20", "--results-dir", str(results)]
    good_weights = _weights(tmp_path / "good.pt")

    p = bench_cli(*run, "--model", str(tmp_path / "nowhere.py") + ":small_cnn")
    _assert_refused(p, results, "nowhere.py", "does not exist", "FILE.py:FACTORY")

    p = bench_cli(*run, "--model", f"{EXAMPLE}:small_cn")
    _assert_refused(p, results, "'small_cn'", "Did you mean 'small_cnn'")

    factory = tmp_path / "factories.py"
    factory.write_text("import torch\n"
                       "def not_a_module():\n    return {'conv': 1}\n"
                       "def hundred_classes():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                       "torch.nn.Linear(3 * 32 * 32, 100))\n")
    p = bench_cli(*run, "--model", f"{factory}:not_a_module")
    _assert_refused(p, results, "returned dict, not a torch.nn.Module")

    other = tmp_path / "other.pt"
    sd = torch.load(good_weights, weights_only=True)
    sd["extra.weight"] = sd.pop("1.weight")
    torch.save(sd, other)
    p = bench_cli(*run, "--model", f"{EXAMPLE}:small_cnn", "--weights", str(other))
    _assert_refused(p, results, "do not match", "1 missing: 1.weight", "1 unexpected: extra.weight")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"1.weight": Payload()}, f)
    torch.save({"state_dict": sd, "hook": Payload()}, tmp_path / "evil_zip.pt")
    for path in (evil, tmp_path / "evil_zip.pt"):
        p = bench_cli(*run, "--model", f"{EXAMPLE}:small_cnn", "--weights", str(path))
        _assert_refused(p, results, f"Refused to load {path}", "weights_only=True")
    assert not (tmp_path / "pwned").exists()

    p = bench_cli(*run, "--model", f"{factory}:hundred_classes")
    _assert_refused(p, results, "returns (2, 100)", "(batch, 10)")
    p = bench_cli(*run, "--dataset", "mnist", "--model", f"{EXAMPLE}:small_cnn", "--weights", str(good_weights))
    _assert_refused(p, results, "fails on a batch of mnist images", "2×1×28×28")


@pytest.mark.slow
@pytest.mark.ci
def test_own_model_cli_equals_the_plugin_entry_and_evaluate(tmp_path, data_root):
    """The reference run: factory file + weights, n = 500, pgd_linf, no training (how long it takes is a benchmark's
    business, not a test's: the workers share the CPU); the same
    per-sample verdicts through `bench run --model`, a `plugin = "pretrained"` entry and bench.evaluate."""
    import json

    import bench

    weights = tmp_path / "w.pt"
    _example().train_briefly(str(weights), str(data_root), n=2048, epochs=1)
    cfg = _config(tmp_path, _entry("mine", weights))
    results = tmp_path / "results"
    p = bench_cli("run", "--config", str(cfg), "--data-root", str(data_root), "--results-dir", str(results),
                  "--model", f"{EXAMPLE}:small_cnn", "--weights", str(weights), "--attack", "pgd_linf",
                  "--attack", "fgsm", "--n-test", "500", "--device", "cpu")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "training on" not in out and out.count("no training") == 1, out  # built once for its two cells
    env = _env(cfg, data_root, tmp_path)
    (cli_row,) = [typed for typed in map(bench.runner.typed_row, env.store.rows()) if typed["attack"] == "pgd_linf"]
    (entry_row,) = bench.run(defense="mine", attack="pgd_linf", dataset="cifar10", profile="smoke", n_test=500,
                             env=env)
    assert cli_row["cell"] != entry_row["cell"]  # two cells (other names), computed independently
    assert isinstance(entry_row["clean_acc"], float) and isinstance(entry_row["n"], int) and entry_row["n"] == 500
    for key in ("clean_acc", "robust_acc", "n_fooled", "forward_passes", "backward_passes"):
        assert cli_row[key] == entry_row[key], key
    per = [json.loads((results / "runs" / f"{r['cell']}.json").read_text())["per_sample"] for r in (cli_row, entry_row)]
    assert per[0]["correct"] == per[1]["correct"] and per[0]["fooled"] == per[1]["fooled"]

    own = _example().small_cnn()
    own.load_state_dict(torch.load(weights, weights_only=True))
    res = bench.evaluate(own, attacks=["pgd_linf"], dataset="cifar10", n=500, config=cfg, data_root=data_root,
                         device="cpu")
    r = res["pgd_linf"]
    assert r.clean_acc == entry_row["clean_acc"] and r.robust_acc == entry_row["robust_acc"]
    assert r.correct.tolist() == per[1]["correct"] and r.fooled.tolist() == per[1]["fooled"]
    assert isinstance(r.n, int) and r.robust.dtype == bool and len(r.index) == 500

    # new weights at the same path: a new cell, never the old model's row or a cached model
    torch.manual_seed(5)
    torch.save(_example().small_cnn().state_dict(), weights)
    (again,) = bench.run(defense="mine", attack="pgd_linf", dataset="cifar10", profile="smoke", n_test=500, env=env)
    assert again["cell"] != entry_row["cell"] and again["defense_ckpt"] != entry_row["defense_ckpt"]
    assert again["clean_acc"] != entry_row["clean_acc"]
    assert len(env.store.rows()) == 4  # the two --model cells, the entry cell and the new weights


@pytest.mark.slow
@pytest.mark.ci
def test_readme_notebook_example_runs(tmp_path, data_root, monkeypatch):
    """The README's "Evaluate your own model" Python block, run as written (weights made first)."""
    import re

    block = re.search(r"## Evaluate your own model.*?```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README has no Python example under 'Evaluate your own model'"
    # a folder without bench.toml, as a notebook's may be: evaluate() then reads the checkout's attack entries
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_DATA", str(data_root))
    monkeypatch.delenv("BENCH_CONFIG", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the block's sys.path.insert stays in this test
    (tmp_path / "examples").symlink_to(REPO / "examples")
    _weights(tmp_path / "my_model.pt")
    scope: dict = {}
    exec(compile(block.group(1).replace("n=1000", "n=100"), "README.md", "exec"), scope)
    res = scope["res"]
    assert 0 <= res["pgd_linf"].robust_acc <= res["pgd_linf"].clean_acc <= 1 and res["pgd_linf"].n == 100


@pytest.mark.slow
@pytest.mark.ci
def test_robustbench_architecture_loads_through_robustbench_and_is_attacked(tmp_path, data_root):
    """A RobustBench model (WRN-28-4 of Ding2020MMA) saved in RobustBench's layout and loaded by robustbench's own
    load_model (no mock; only the download is impossible here)."""
    import json

    from bench import robustbench_shim

    _, zoo, enums = robustbench_shim.robustbench()
    entry = zoo.model_dicts[enums.BenchmarkDataset("cifar10")][enums.ThreatModel("Linf")]["Ding2020MMA"]
    torch.manual_seed(0)
    arch = entry["model"]()
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(arch.state_dict(), folder / "Ding2020MMA.pt")
    loaded = robustbench_shim.load("Ding2020MMA", tmp_path / "models", "cifar10", "Linf")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), arch.eval()(x))
    results = tmp_path / "results"
    p = bench_cli("run", "--data-root", str(data_root), "--results-dir", str(results), "--model",
                  "robustbench:Ding2020MMA", "--weights", str(tmp_path / "models"), "--attack", "pgd_linf",
                  "--n-test", "20", "--device", "cpu", timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = list((results / "runs").glob("*.json"))
    assert len(rows) == 1
    manifest = json.loads(rows[0].read_text())
    assert manifest["defense_entry"]["params"]["threat_model"] == "Linf"
    assert set(manifest["defense_entry"]["files"]) == {"robustbench", "weights:Ding2020MMA.pt"}
    assert len(manifest["per_sample"]["correct"]) == 20
