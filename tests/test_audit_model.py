"""`bench audit --model SPEC [--weights W]` and the verdicts of `bench.evaluate`, through the real entry points
(subprocesses): a ready-made model is audited without a bench.toml entry, and a shattered-gradient model (a
quantised input plus a high-frequency term, tests/planted/masking.py's planted_wiggle as a factory) is failed by
the per-cell shattered_gradients check in both, while the same network without the trick is not."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "my_model.py"
BENCH = Path(sys.executable).with_name("bench")

FACTORIES = f'''
import sys
import torch
import torch.nn as nn
sys.path.insert(0, {str(EXAMPLE.parent)!r})
from my_model import small_cnn


class Wiggle(nn.Module):
    """Decisions of a 16-level quantised input; gradients of a tiny sin(1e4 x) term only."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn()

    def forward(self, x):
        return self.net(torch.round(x * 15) / 15 + 1e-3 * torch.sin(1e4 * x))


def honest():
    return small_cnn()


def wiggle():
    model = Wiggle()
    return model
'''


def _run(*args, timeout=600):
    env = {**os.environ, "BENCH_PROGRESS": "0"}
    return subprocess.run([str(BENCH), *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("args,message", [
    ([], "exactly one of --defense ENTRY"),
    (["--defense", "natural", "--model", "x.py:f"], "exactly one of --defense ENTRY"),
    (["--defense", "natural", "--weights", "w.pt"], "--weights goes with --model"),
    (["--model", "nowhere.py:make"], "nowhere.py"),
    (["--model", "nowhere.py:make", "--threat-model", "linf"], "--threat-model 'linf'"),
])
def test_bad_audit_target_is_one_clear_error_and_writes_nothing(tmp_path, data_root, args, message):
    results = tmp_path / "results"
    p = _run("audit", *args, "--results-dir", results, "--data-root", data_root, "--device", "cpu", timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert message in out and "Traceback" not in out, out
    assert not (results / "audit").exists()


@pytest.fixture(scope="module")
def ready_made(tmp_path_factory, data_root):
    """The factories file and small_cnn weights trained for a few seconds (the honest net's and, under `net.`,
    the wiggle model's)."""
    import torch

    root = tmp_path_factory.mktemp("ready_made")
    (root / "factories.py").write_text(textwrap.dedent(FACTORIES))
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import my_model
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    my_model.train_briefly(str(root / "honest.pt"), str(data_root), n=2048, epochs=1)
    state = torch.load(root / "honest.pt", weights_only=True)
    torch.save({f"net.{k}": v for k, v in state.items()}, root / "wiggle.pt")
    return root


@pytest.mark.slow
@pytest.mark.ci
def test_audit_of_a_ready_made_model_fails_shattered_gradients_and_passes_the_honest_one(ready_made, data_root,
                                                                                         tmp_path):
    verdict = {}
    for name in ("honest", "wiggle"):
        p = _run("audit", "--model", f"{ready_made / 'factories.py'}:{name}", "--weights", ready_made / f"{name}.pt",
                 "--only", "budget", "--n-test", "60", "--profile", "smoke", "--results-dir", tmp_path,
                 "--data-root", data_root, "--device", "cpu")
        out = p.stdout + p.stderr
        (path,) = (tmp_path / "audit").glob(f"factories.py:{name}-cifar10-smoke-linf-*.json")
        report = json.loads(path.read_text())
        checks = report["variants"]["base"]["checks"]
        verdict[name] = (p.returncode, report["verdict"], checks["shattered_gradients"]["verdict"])
        assert "training on" not in out, out  # a ready-made model: nothing trained
        assert report["defense"] == f"factories.py:{name}" and report["n"] == 60, report
    assert verdict["honest"] == (0, "pass", "pass"), verdict
    assert verdict["wiggle"] == (1, "fail", "fail"), verdict


EVALUATE = '''
import json, sys
import bench
res = bench.evaluate(sys.argv[1], attacks=["pgd_linf", "fgsm"], dataset="cifar10", n=60, weights=sys.argv[2],
                     profile="smoke", data_root=sys.argv[3], device="cpu")
print(json.dumps({"reliable": res.reliable, "reasons": res.unreliable_reasons,
                  "verdicts": {a: r.verdict for a, r in res.results.items()},
                  "checks": {a: {k: [c["verdict"], c["reason"]] for k, c in r.checks.items()}
                             for a, r in res.results.items()}}))
'''


@pytest.mark.slow
def test_evaluate_returns_verdicts_and_a_reliable_flag(ready_made, data_root):
    out = {}
    for name in ("honest", "wiggle"):
        p = subprocess.run([sys.executable, "-c", EVALUATE, f"{ready_made / 'factories.py'}:{name}",
                            str(ready_made / f"{name}.pt"), str(data_root)], capture_output=True, text=True,
                           cwd=REPO, env={**os.environ, "BENCH_PROGRESS": "0"}, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        out[name] = json.loads(p.stdout.strip().splitlines()[-1])
    honest, wiggle = out["honest"], out["wiggle"]
    assert honest["reliable"] and honest["reasons"] == [], honest
    assert all(c[0] in ("pass", "skip") for c in honest["checks"]["pgd_linf"].values()), honest
    assert not wiggle["reliable"] and wiggle["verdicts"]["pgd_linf"] == "fail", wiggle
    shattered = wiggle["checks"]["pgd_linf"]["shattered_gradients"]
    assert shattered[0] == "fail" and "raised the loss no more than a random step" in shattered[1], wiggle
    assert any(r.startswith("pgd_linf: shattered_gradients:") for r in wiggle["reasons"]), wiggle
