"""002's sparsifying front end (defenses/wavelet.py) and locally linear attacks (attacks/locally_linear.py): the
basis is PyWavelets' orthonormal DWT, top-K keeps exactly K coefficients and K = N reconstructs exactly, the three
gradient modes are what the paper defines, and the locally linear attack equals FGSM on a binary model and beats it
on a multiclass one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench import BenchError
from bench.attack import AttackContext
from bench.data import dataset_info
from bench.registry import plugins
from defenses._wavelet import (WaveletSparsifier, analysis_matrix, parse_backward, sparsity_levels, topk_mask)
from defenses.wavelet import Wavelet


def _front(wavelet="coif1", side=28, rho=(0.035,), channels=1, ycbcr=False, eps=0.2) -> WaveletSparsifier:
    a = analysis_matrix(wavelet, side, side, 1)
    return WaveletSparsifier(a, sparsity_levels(list(rho), channels, side * side), ycbcr, eps)


def _images(n=4, c=1, side=28, seed=0):
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("wavelet,side", [("db5", 28), ("coif1", 28), ("sym9", 32)])
def test_basis_is_pywavelets_orthonormal_dwt(wavelet, side):
    import pywt

    a = analysis_matrix(wavelet, side, side, 1)
    assert torch.allclose(a @ a.T, torch.eye(side * side, dtype=a.dtype), atol=1e-10)
    img = np.random.default_rng(0).random((side, side))
    ref, _ = pywt.coeffs_to_array(pywt.wavedec2(img, wavelet, mode="periodization", level=1))
    assert np.allclose((a @ torch.from_numpy(img).flatten()).numpy(), ref.flatten(), atol=1e-12)


def test_basis_atoms_match_the_paper_code():
    # SPEC §8.1: level-1 periodized coif1 rows have 36 nonzeros and L1 norm 3.015; db5 100 and ~4.00
    coif = analysis_matrix("coif1", 28, 28, 1)
    assert (coif.abs() > 1e-12).sum(1).max().item() == 36
    assert abs(coif.abs().sum(1).max().item() - 3.015) < 1e-3
    db5 = analysis_matrix("db5", 28, 28, 1)
    assert (db5.abs() > 1e-12).sum(1).max().item() == 100


def test_k_from_rho():
    assert sparsity_levels([0.035], 1, 784) == [27]
    assert sparsity_levels([0.02], 1, 784) == [15]
    assert sparsity_levels([0.035, 0.01, 0.01], 3, 1024) == [35, 10, 10]
    assert sparsity_levels([0.5, 0.25, 0.25], 3, 1024) == [512, 256, 256]


def test_topk_keeps_exactly_k_coefficients_and_the_largest():
    front = _front()
    x = _images()
    coef = x.flatten(2).double() @ front.a.double().T
    mask = topk_mask(coef, [27])
    assert (mask.sum(-1) == 27).all()
    kept_min = (coef.abs() * mask + (1 - mask) * 1e9).amin(-1)
    dropped_max = (coef.abs() * (1 - mask)).amax(-1)
    assert (kept_min >= dropped_max).all()
    # the front end's output, transformed back, has exactly K nonzero coefficients (before the [0, 1] clip)
    out = front.project(x.flatten(2))
    back = out @ front.a.T
    assert ((back.abs() > 1e-5).sum(-1) == 27).all()


@pytest.mark.parametrize("ycbcr", [False, True])
def test_k_equal_n_reconstructs_exactly(ycbcr):
    c = 3 if ycbcr else 1
    front = _front("sym9" if ycbcr else "coif1", 32 if ycbcr else 28, rho=(1.0,), channels=c, ycbcr=ycbcr)
    x = _images(c=c, side=32 if ycbcr else 28)
    assert (front(x) - x).abs().max().item() < 1e-5


def test_projection_is_idempotent_and_changes_a_sparsified_image_not_at_all():
    front = _front()
    x = _images()
    once = front.project(x.flatten(2))
    assert torch.allclose(front.project(once), once, atol=1e-5)


def test_gradient_modes():
    """autograd = the projection onto the input's top-K support P_K(g, x); identity passes g; iterated re-estimates
    the support at x + eps·sgn(P_K(g)) and so differs from the projection; every mode keeps the forward values."""
    front = _front()
    x = _images()
    g = torch.randn_like(x)
    a = front.a

    def grad(spec):
        front.backward = parse_backward(spec)
        xi = x.clone().requires_grad_(True)
        out = front(xi)
        (gi,) = torch.autograd.grad((out * g).sum(), xi)
        return out.detach(), gi

    out_p, g_p = grad("projection")
    mask = topk_mask(x.flatten(2) @ a.T, [27])
    inside = ((out_p > 0) & (out_p < 1)).float()  # the [0, 1] clip of the output passes these pixels' gradient
    expected = (((g * inside).flatten(2) @ a.T) * mask) @ a
    assert torch.allclose(g_p.flatten(2), expected, atol=1e-5)
    out_a, g_a = grad("autograd")
    assert torch.equal(g_a, g_p)
    out_i, g_i = grad("identity")
    assert torch.equal(g_i, g)
    out_t, g_t = grad("iterated:3")
    for out in (out_a, out_i, out_t):
        assert torch.equal(out, out_p)
    # the iterated gradient is a projection onto some K-support: K coefficients at most
    assert ((g_t.flatten(2) @ a.T).abs() > 1e-5).sum(-1).max().item() <= 27
    assert not torch.allclose(g_t, g_p)


def test_bad_surrogate_and_rho_are_refused():
    with pytest.raises(BenchError, match="iterated:M"):
        parse_backward("iterated:0")
    with pytest.raises(BenchError, match="Allowed"):
        parse_backward("smooth:4")
    with pytest.raises(ValueError, match="rho"):
        Wavelet.Params(rho=[0.0])
    with pytest.raises(ValueError, match="orthogonal"):
        Wavelet.Params(wavelet="bior4.4")


def test_defense_builds_and_surrogate_switches_every_front_end():
    d = Wavelet(Wavelet.Params(arch="nielsen_cnn"), dataset_info("mnist"))
    model = d.build_model().eval()
    assert model.front.ks == [27]
    x = _images(2)
    with d.surrogate(model, "identity") as m:
        assert m.front.backward.mode == "identity"
    assert model.front.backward.mode == "projection"
    assert model(x).shape == (2, 10)


# ---------------------------------------------------------------- locally linear attack

def _ctx():
    return AttackContext(defense=None, device=torch.device("cpu"), seed=0, batch_size=64)


def _run(name, model, x, y, **params):
    cls = plugins("attack")[name]
    return cls(cls.Params(**params)).run(model, x, y, _ctx())


def test_locally_linear_equals_fgsm_on_a_binary_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 2)).eval()
    x = torch.rand(200, 1, 8, 8) * 0.8 + 0.1
    y = model(x).argmax(1)  # every point correct at the start
    ll = _run("locally_linear", model, x, y, eps=0.05, steps=1)
    fg = _run("fgsm", model, x, y, eps=0.05)
    assert torch.equal(ll.x_adv, fg.x_adv)
    assert torch.equal(ll.fooled, fg.fooled)
    assert 0 < fg.fooled.sum() < len(x)  # the comparison is not vacuous


def test_locally_linear_beats_fgsm_on_a_multiclass_model():
    """A linear 10-class model: with no box clipping, ε·sgn(w_i − w_t) is the optimal Linf step for margin i, so the
    best of the L − 1 margins fools every point FGSM fools, and more where the softmax mix of FGSM hides a margin."""
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(64, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 64, generator=g))
        lin.bias.zero_()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(400, 1, 8, 8, generator=g) * 0.5 + 0.25
    y = model(x).argmax(1)
    eps = 0.02  # never reaches the box [0, 1]
    ll = _run("locally_linear", model, x, y, eps=eps, steps=1)
    fg = _run("fgsm", model, x, y, eps=eps)
    assert (ll.x_adv - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        ll_fooled = model(ll.x_adv).argmax(1) != y
        fg_fooled = model(fg.x_adv).argmax(1) != y
    assert torch.equal(ll_fooled, ll.fooled)
    assert bool((ll_fooled | ~fg_fooled).all())  # every point FGSM fools, the locally linear attack fools
    assert ll_fooled.sum() > fg_fooled.sum()


def test_iterative_locally_linear_stays_in_budget_and_is_at_least_the_single_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    x = torch.rand(200, 1, 8, 8)
    y = model(x).argmax(1)
    one = _run("locally_linear", model, x, y, eps=0.05, steps=1)
    it = _run("locally_linear", model, x, y, eps=0.05, steps=20, step_size="eps/4")
    assert (it.x_adv - x).abs().max() <= 0.05 + 1e-6 and it.x_adv.min() >= 0 and it.x_adv.max() <= 1
    assert it.fooled.sum() >= one.fooled.sum()


# ---------------------------------------------------------------- through the real `bench` entry point

REPO = Path(__file__).resolve().parents[1]


def _bench(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "BENCH_PROGRESS": "0"}, timeout=300)


@pytest.mark.parametrize("extra, words", [
    ('[defenses.wavelet_bad]\nextends = "wavelet"\nwavelet = "bior4.4"\n', ["wavelet_bad", "bior4.4", "orthogonal"]),
])
def test_bad_wavelet_settings_are_one_paragraph_exit_2(tmp_path, extra, words):
    path = tmp_path / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + "\n" + extra)
    p = _bench("list", "--config", str(path))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert all(w in p.stderr for w in words), p.stderr


@pytest.mark.parametrize("cells", [["-a", "bad_backward"], ["-a", "fgsm_002", "-a", "bad_backward"]])
def test_a_misspelled_surrogate_is_refused_when_the_cells_are_resolved(tmp_path, cells):
    # before any training or writing: one paragraph naming the entry, the bad value and the allowed ones, exit 2
    path = tmp_path / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + '\n[attacks.bad_backward]\nextends = "ll_002"\n'
                    'backward = "identiy"\n')
    results = tmp_path / "r"
    p = _bench("run", "-d", "wavelet", *cells, "--dataset", "mnist", "--profile", "smoke", "--config", str(path),
               "--results-dir", str(results))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert all(w in p.stderr for w in ("attacks.bad_backward", "'identiy'", "'identity'", "'iterated:M'",
                                       "'projection'")), p.stderr
    assert not results.exists()


def test_surrogate_problem_accepts_every_mode_and_names_a_bad_one():
    params = Wavelet.Params()
    for spec in ("autograd", "projection", "identity", "iterated", "iterated:20", ""):
        assert Wavelet.surrogate_problem(params, spec) == ""
    assert "'smooth:4'" in Wavelet.surrogate_problem(params, "smooth:4")
    assert "iterated:M" in Wavelet.surrogate_problem(params, "iterated:0")


@pytest.mark.slow
def test_wavelet_trains_and_is_attacked_end_to_end(tmp_path):
    p = _bench("run", "-d", "wavelet", "-a", "ll_002_identity", "--dataset", "mnist", "--profile", "smoke",
               "--n-test", "50", "--results-dir", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    rows = (tmp_path / "r" / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and "wavelet" in rows[1] and "ll_002_identity" in rows[1]


def test_momentum_fgsm_without_momentum_in_one_step_is_fgsm_and_iterating_does_not_hurt():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    x = torch.rand(200, 1, 8, 8)
    y = model(x).argmax(1)
    one = _run("mi_fgsm", model, x, y, eps=0.05, steps=1, step_size="eps", decay=0.0)
    fg = _run("fgsm", model, x, y, eps=0.05)
    assert torch.equal(one.x_adv, fg.x_adv) and torch.equal(one.fooled, fg.fooled)
    it = _run("mi_fgsm", model, x, y, eps=0.05, steps=20, step_size="eps/10", decay=1.0)
    assert (it.x_adv - x).abs().max() <= 0.05 + 1e-6
    with torch.no_grad():
        assert torch.equal(model(it.x_adv).argmax(1) != y, it.fooled)
    assert it.fooled.sum() >= fg.fooled.sum() > 0
