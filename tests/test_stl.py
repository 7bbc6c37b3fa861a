"""003's Sparse Transformation Layer (defenses/stl.py, defenses/_stl.py): the Tikhonov split equals sporco's, the
batched torch ADMM reaches sporco ConvBPDN's objective within 1 % on the same images, the layer passes no gradient
under autograd and the identity's under its BPDA surrogate, and plain PGD on it fails bench's per-cell gradient
check while BPDA PGD passes it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench import BenchError
from bench.data import dataset_info
from defenses._stl import ConvBPDN, SparseTransformationLayer, STLNet, load_dictionary, symmetric_pad, tikhonov_split
from defenses.stl import STL

sporco = pytest.importorskip("sporco")

REPO = Path(__file__).resolve().parent.parent
AUTHORS = Path(os.environ.get("BENCH_WEIGHTS", REPO.parent / "shared" / "authors"))
AUTHORS_DICT = AUTHORS / "stl-cifar_basis_64_p8_lm0.2.npy"


def _random_atoms(m=16, c=3, k=8, seed=0) -> torch.Tensor:
    """Unit-norm, zero-mean-per-channel atoms (the authors' dictionaries have both properties)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(m, c, k, k, generator=g, dtype=torch.float64)
    d = d - d.mean(dim=(2, 3), keepdim=True)
    return d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _smooth_images(n=3, side=32, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, side // 4, side // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(n, 3, side, side, generator=g)).clamp(0, 1)


def _sporco_code(atoms: torch.Tensor, high: torch.Tensor, lmbda: float) -> torch.Tensor:
    """sporco's ConvBPDN with the authors' settings (200 iterations at most, RelStopTol 5e-3), as (1, M, H, W)."""
    from sporco.admm import cbpdn

    d = atoms.permute(2, 3, 1, 0).numpy()  # (S, S, C, M), the authors' layout
    s = high.permute(1, 2, 0).double().numpy()
    opt = cbpdn.ConvBPDN.Options({"Verbose": False, "MaxMainIter": 200, "RelStopTol": 5e-3, "AuxVarObj": False})
    x = cbpdn.ConvBPDN(d, s, lmbda, opt, dimK=0).solve()
    return torch.from_numpy(x.squeeze((2, 3))).permute(2, 0, 1)[None]


def test_symmetric_pad_is_numpys():
    x = torch.rand(2, 3, 7, 9)
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)), mode="symmetric")
    assert np.array_equal(symmetric_pad(x, 4).numpy(), ref)


def test_tikhonov_split_is_sporcos():
    from sporco.signal import tikhonov_filter

    x = _smooth_images(2)
    low, high = tikhonov_split(x, 5.0, 16)
    for i in range(2):
        sl, sh = tikhonov_filter(x[i].permute(1, 2, 0).double().numpy(), 5.0, 16)
        assert np.abs(low[i].permute(1, 2, 0).numpy() - sl).max() < 1e-6
        assert np.abs(high[i].permute(1, 2, 0).numpy() - sh).max() < 1e-6


def _objectives_agree(atoms, images, lmbda):
    solver = ConvBPDN(atoms, images.shape[-2], images.shape[-1], lmbda)
    _, high = tikhonov_split(images, 5.0, 16)
    z = solver(high)  # the whole batch at once
    for i in range(len(images)):
        ours = solver.objective(z[i:i + 1], high[i:i + 1]).item()
        ref = solver.objective(_sporco_code(atoms, high[i], lmbda).float(), high[i:i + 1]).item()
        assert abs(ours - ref) <= 0.01 * ref, (i, ours, ref)
        assert (z[i] != 0).float().mean() < 0.5  # a sparse code, not a least-squares fit


def test_objective_within_one_percent_of_sporco_random_dictionary():
    _objectives_agree(_random_atoms(), _smooth_images(3), 0.2)


@pytest.mark.slow
@pytest.mark.skipif(not AUTHORS_DICT.is_file(), reason="the authors' STL dictionary is not in the weights root")
def test_objective_within_one_percent_of_sporco_authors_dictionary_cifar10():
    from bench.data import load_split, resolve_data_root

    x, _ = load_split("cifar10", "test", str(resolve_data_root()))
    _objectives_agree(load_dictionary(AUTHORS_DICT), x[:3].float() / 255, 0.2)


def _layer(iterations=10) -> SparseTransformationLayer:
    return SparseTransformationLayer(ConvBPDN(_random_atoms(), 32, 32, 0.2, iterations), 5.0, 16)


def test_layer_gradient_none_under_autograd_identity_under_bpda():
    layer = _layer()
    x = _smooth_images(2).requires_grad_(True)
    out = layer(x)
    assert not out.requires_grad  # the solve is not differentiable: autograd has nothing to follow
    layer.backward = "identity"
    out_bpda = layer(x)
    assert torch.equal(out_bpda.detach(), out)  # the surrogate changes the backward only
    g = torch.randn_like(out_bpda)
    (gx,) = torch.autograd.grad((out_bpda * g).sum(), x)
    assert torch.equal(gx, g)


def test_surrogate_names():
    d = STL(STL.Params(), dataset_info("cifar10"))
    model = STLNet(_layer(), nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)))
    with d.surrogate(model, "identity") as m:
        assert m.stl.backward == "identity"
    assert model.stl.backward == "autograd"
    with pytest.raises(BenchError, match="identity"):
        with d.surrogate(model, "smooth:4"):
            pass


@pytest.mark.slow
@pytest.mark.ci
def test_plain_pgd_on_stl_fails_the_gradient_check_and_bpda_passes_it():
    import bench
    from bench.data import load_split, resolve_data_root, subset_indices

    n = 40
    _, labels = load_split("cifar10", "test", str(resolve_data_root()))
    # a classifier right on the evaluated points of the majority label (the checks look at correct points only)
    majority = int(labels[subset_indices(len(labels), n, 0, "cifar10/test")].mode().values)
    head = nn.Linear(3 * 32 * 32, 10)
    with torch.no_grad():
        head.weight.mul_(0.01)
        head.bias.zero_()
        head.bias[majority] = 10.0
    model = STLNet(_layer(iterations=5), nn.Sequential(nn.Flatten(), head)).eval()
    res = bench.evaluate(model, attacks=["pgd_stl"], dataset="cifar10", n=n, profile="smoke", seed=0,
                         bpda={"stl": "identity"})
    check = res["pgd_stl"].checks["gradient_health"]
    assert res["pgd_stl"].clean_acc > 0 and check["n"] > 0
    assert check["verdict"] == "fail", check
    # the same model through its declared identity backward (a ready-made model's BPDA is backward = "bpda")
    res = bench.evaluate(model, attacks=["pgd_linf_identity"], dataset="cifar10", n=n, profile="smoke", seed=0,
                         bpda={"stl": "identity"})
    assert res["pgd_linf_identity"].checks["gradient_health"]["verdict"] == "pass"
