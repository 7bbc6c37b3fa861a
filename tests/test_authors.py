"""The papers' authors' checkpoints: their architectures ship with bench (defenses/_authors_models.py), their files
are external zoo entries (bench/external.py) read from a weights root, and the shapes real-world checkpoints come
in (CUDA-saved, legacy or zip format, nested under model_state_dict, `module.`-prefixed) load. The real files are
tested where a copy is at hand (BENCH_WEIGHTS, else ../shared/authors): their clean accuracies must be the ones
their provenance states."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.serialization

from bench import external
from bench.errors import BenchError
from bench.user_model import load_factory, load_weights

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(sys.executable).with_name("bench")
FACTORIES = REPO / "defenses" / "_authors_models.py"
AUTHORS = Path(os.environ.get("BENCH_WEIGHTS") or REPO.parent / "shared" / "authors").resolve()
EXAMPLE = REPO / "examples" / "my_model.py"


def factory(name: str):
    return load_factory(f"{FACTORIES}:{name}")()


def save_cuda(obj, path: Path, legacy: bool) -> Path:
    """Save as if from CUDA tensors (every storage tagged cuda:0), in the legacy or the zip format: such a file only
    loads on a CPU machine with map_location."""
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------------------------------------ architectures

def test_resnet32_has_the_authors_keys_and_quirk():
    sd = factory("resnet32_cifar10").state_dict()
    assert len(sd) == 188  # as the published files: no normalization entries
    assert {k.split(".")[0] for k in sd} == {"conv1", "block1", "block2", "block3", "bn1", "linear"}
    assert {k.split(".")[1] for k in sd if k.startswith("block")} == {"0", "1", "2", "3", "4"}
    model = factory("resnet32_cifar10")
    seen = {}
    first = model.block1[0]
    first.conv1.register_forward_hook(lambda m, i, o: seen.setdefault("conv1_in", i[0]))
    first.register_forward_hook(lambda m, i, o: seen.setdefault("unit_in", i[0]))
    model.eval()(torch.rand(2, 3, 32, 32))
    # the quirk of the checkpoints: the first unit's conv1 takes its raw input, not LeakyReLU(BN1(x))
    assert torch.equal(seen["conv1_in"], seen["unit_in"])
    second_in = {}
    model.block1[1].conv1.register_forward_hook(lambda m, i, o: second_in.setdefault("x", i[0]))
    model.block1[1].register_forward_hook(lambda m, i, o: second_in.setdefault("unit", i[0]))
    model(torch.rand(2, 3, 32, 32))
    assert not torch.equal(second_in["x"], second_in["unit"])


def test_polarizing_has_the_authors_keys():
    sd = factory("polarizing").state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "frontend.weight": (25, 1, 5, 5), "frontend.jump": (), "frontend.bpda_steepness": (),
        "classifier.conv1.weight": (32, 25, 5, 5), "classifier.conv1.bias": (32,),
        "classifier.conv2.weight": (64, 32, 5, 5), "classifier.conv2.bias": (64,),
        "classifier.fc1.weight": (100, 1024), "classifier.fc1.bias": (100,),
        "classifier.fc2.weight": (10, 100), "classifier.fc2.bias": (10,)}
    model = factory("polarizing")
    with torch.no_grad():
        model.frontend.weight.normal_()
        model.frontend.jump.fill_(0.2)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    model(x).sum().backward()
    assert x.grad.abs().sum() == 0  # the ternary activation: a zero gradient, hence its declared identity backward


# ------------------------------------------------------------------------------------------------ file shapes

@pytest.mark.parametrize("name, shape", [("resnet32_cifar10", (2, 3, 32, 32)), ("polarizing", (2, 1, 28, 28))])
@pytest.mark.parametrize("form", ["cuda_legacy", "cuda_zip", "nested_cuda", "module_prefixed"])
def test_real_world_checkpoint_shapes_load_into_the_factories(tmp_path, name, shape, form):
    torch.manual_seed(0)
    src = factory(name)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = src.state_dict()
    path = tmp_path / "ckpt.pt"
    if form == "cuda_legacy":
        save_cuda(sd, path, legacy=True)
    elif form == "cuda_zip":
        save_cuda(sd, path, legacy=False)
    elif form == "nested_cuda":  # the polarizing files: weights under model_state_dict beside acc, epoch, rng_state
        save_cuda({"model_state_dict": sd, "acc": 0.9, "epoch": 59, "rng_state": torch.ByteTensor(8)}, path, True)
    else:  # saved from nn.DataParallel
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    if form != "module_prefixed" and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # the file really is CUDA-tagged
            torch.load(path, weights_only=True)
    dst = factory(name)
    load_weights(dst, path, name)
    x = torch.rand(*shape)
    assert torch.equal(outputs(src, x), outputs(dst, x))


def test_weights_of_another_architecture_are_refused_with_the_keys(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(factory("polarizing").state_dict(), path)
    with pytest.raises(BenchError, match="missing.*unexpected"):
        load_weights(factory("resnet32_cifar10"), path, "resnet32_cifar10")


# ------------------------------------------------------------------------------------------------ external cards

def test_committed_cards_are_valid_and_name_their_entries_and_factories():
    from bench.config import load_config

    cfg = load_config(REPO / "bench.toml")
    cards = external.cards(REPO / "results" / "zoo")
    assert {n for n, _ in cards} >= {"resnet32_pgd_at_authors", "resnet32_trades_authors",
                                     "polarizing_mnist_authors", "polarizing_fashion_mnist_authors"}
    for name, card in cards:
        assert card.url.startswith("https://") and card.license and card.published and card.entries
        if card.model:  # a model's weights
            assert callable(load_factory(card.model, REPO)), card.model
        for entry in card.entries:
            params = cfg.defense(entry, card.dataset, "smoke").params
            if card.model:
                assert params.weights == f"results/zoo/external/{name}.json" and params.model == card.model
            else:  # a file a defense reads (the sparse front end's dictionary)
                assert params.dictionary == f"results/zoo/external/{name}.json"


def _card(tmp_path: Path, weights: Path, sha: str | None = None) -> str:
    from bench.store import sha256_file

    folder = tmp_path / "zoo" / "external"
    folder.mkdir(parents=True, exist_ok=True)
    card = {"file": weights.name, "sha256": sha or sha256_file(weights), "url": "https://example.org/w.pt",
            "source": "someone/repo @ 0123 : w.pt", "license": "MIT", "description": "a test model",
            "dataset": "cifar10", "model": f"{EXAMPLE}:small_cnn", "published": {"clean": 50.0}}
    (folder / "mine.json").write_text(json.dumps(card))
    return "zoo/external/mine.json"


def _bench(tmp_path: Path, card: str, weights_root: Path, data_root) -> subprocess.CompletedProcess:
    cfg = tmp_path / "bench.toml"
    cfg.write_text((REPO / "bench.toml").read_text() + textwrap.dedent(f"""
        [defenses.mine]
        plugin = "pretrained"
        model = "{EXAMPLE}:small_cnn"
        weights = "{card}"
        """))
    env = {**os.environ, "BENCH_PROGRESS": "0", "BENCH_DATA": str(data_root)}
    env.pop("BENCH_WEIGHTS", None)
    return subprocess.run([str(BENCH), "run", "-d", "mine", "-a", "fgsm", "--n-test", "8", "--config", str(cfg),
                           "--results-dir", str(tmp_path / "results"), "--weights-root", str(weights_root)],
                          capture_output=True, text=True, timeout=300, env=env)


def _written(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "results").rglob("*") if p.is_file()] if (tmp_path / "results").exists() else []


@pytest.fixture
def example_weights(tmp_path):
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import my_model
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    root = tmp_path / "weights"
    root.mkdir()
    torch.manual_seed(0)
    torch.save(my_model.small_cnn().state_dict(), root / "w.pt")
    return root / "w.pt"


def test_external_entry_missing_file_names_url_and_sha256_and_writes_nothing(tmp_path, example_weights, data_root):
    card = _card(tmp_path, example_weights)
    r = _bench(tmp_path, card, tmp_path / "elsewhere", data_root)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "https://example.org/w.pt" in r.stderr and external.read_card(tmp_path / card).sha256 in r.stderr
    assert "--weights-root" in r.stderr and "BENCH_WEIGHTS" in r.stderr
    assert not [p for p in _written(tmp_path) if p.suffix in (".csv", ".json", ".md")]


def test_external_entry_with_another_sha256_is_refused(tmp_path, example_weights, data_root):
    card = _card(tmp_path, example_weights, sha="0" * 64)
    r = _bench(tmp_path, card, example_weights.parent, data_root)
    assert r.returncode == 2 and "Refusing" in r.stderr and "0" * 64 in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not [p for p in _written(tmp_path) if p.suffix in (".csv", ".json", ".md")]


def test_external_entry_found_in_the_weights_root_runs_and_keys_on_the_card(tmp_path, example_weights, data_root):
    card = _card(tmp_path, example_weights)
    r = _bench(tmp_path, card, example_weights.parent, data_root)
    assert r.returncode == 0, r.stderr
    manifest = json.loads(next((tmp_path / "results" / "runs").glob("*.json")).read_text())
    assert manifest["defense_entry"]["files"]["weights"] == external.read_card(tmp_path / card).sha256
    again = _bench(tmp_path, card, example_weights.parent, data_root)  # a finished cell is skipped
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "results" / "results.csv").read_text().count(",mine,") == 1


def test_weights_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "env"))
    assert external.resolve_weights_root(tmp_path / "flag", tmp_path / "cfg") == (tmp_path / "flag").resolve()
    assert external.resolve_weights_root(None, tmp_path / "cfg") == (tmp_path / "env").resolve()
    monkeypatch.delenv("BENCH_WEIGHTS")
    assert external.resolve_weights_root(None, tmp_path / "cfg") == (tmp_path / "cfg").resolve()


def test_scheduler_workers_get_the_weights_root(tmp_path):
    from bench.runner import Env
    from bench.sched.jobs import env_spec, make_env

    env = Env.create(config=REPO / "bench.toml", results_dir=tmp_path, device="cpu", weights_root=tmp_path / "w")
    assert make_env(env_spec(env), "cpu").weights_root == (tmp_path / "w").resolve()


# ------------------------------------------------------------------------------------------------ the real files

def _real(card_name: str):
    card = external.read_card(REPO / "results" / "zoo" / "external" / f"{card_name}.json")
    if not (AUTHORS / card.file).is_file():
        pytest.skip(f"{card.file} is not in {AUTHORS} (set BENCH_WEIGHTS)")
    _, path = external.locate(REPO / "results" / "zoo" / "external" / f"{card_name}.json", AUTHORS)
    model = factory(card.model.partition(":")[2])
    load_weights(model, path, card.model)
    return card, model.eval()


@pytest.mark.parametrize("card_name, dataset, n, expected", [
    ("resnet32_pgd_at_authors", "cifar10", 1000, 0.811),   # the first 1000 CIFAR-10 test images
    ("resnet32_trades_authors", "cifar10", 1000, 0.770),
    ("polarizing_mnist_authors", "mnist", 10000, 0.9930),  # the checkpoints' own acc fields
    ("polarizing_fashion_mnist_authors", "fashion_mnist", 10000, 0.8826),
])
def test_real_checkpoints_give_their_published_clean_accuracy(card_name, dataset, n, expected, data_root):
    from bench.data import load_split, to_float

    card, model = _real(card_name)
    x, y = load_split(dataset, "test", str(data_root))
    x, y = to_float(x[:n]), y[:n]
    with torch.no_grad():
        acc = sum((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum().item() for i in range(0, n, 500)) / n
    # one image either way: argmax ties at the decision boundary may round differently on another CPU
    assert abs(acc - expected) <= 1 / n + 1e-9, (card_name, acc)
    assert float(card.expected_clean.split(" %")[0]) == pytest.approx(100 * expected)  # what the card promises


# ------------------------------------------------------------------------------------------------ the published dictionary

def _sparse(tmp_path: Path, entry: str):
    from bench.config import load_config

    cfg_path = tmp_path / "bench.toml"
    cfg_path.write_text((REPO / "bench.toml").read_text() + textwrap.dedent(entry))
    cfg = load_config(cfg_path)
    return cfg


def test_a_dictionary_file_replaces_the_learner_and_keys_the_checkpoint(tmp_path):
    import numpy as np

    from bench.data import dataset_info
    from bench.defense import DefenseContext
    from bench.runner import checkpoint_key
    from defenses import _dictionary

    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(40, 48))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    np.save(tmp_path / "atoms.npy", atoms)
    cfg = _sparse(tmp_path, """
        [defenses.sparse_file]
        extends = "sparse"
        n_atoms = 40
        dictionary = "atoms.npy"
        [defenses.sparse_learned]
        extends = "sparse"
        n_atoms = 40
        """)
    resolved = cfg.defense("sparse_file", "cifar10", "smoke")
    d = resolved.cls(resolved.params, dataset_info("cifar10"), "resnet32")
    d.context = DefenseContext(config_root=tmp_path)
    model = d.build_model()  # no data root, no cache: a learner would need the training split
    assert torch.equal(model.encoder.filters, _dictionary.atoms_to_filters(atoms, 3, 4))
    assert d.dictionary_meta["stats"] == _dictionary.atom_statistics(atoms)
    key = checkpoint_key(resolved, "cifar10", 0)
    np.save(tmp_path / "atoms.npy", atoms[::-1].copy())  # another file under the same name: another checkpoint
    assert checkpoint_key(resolved, "cifar10", 0) != key
    learned = cfg.defense("sparse_learned", "cifar10", "smoke")
    assert "dictionary" not in learned.params.model_dump() and learned.files() == {}
    np.save(tmp_path / "atoms.npy", atoms[:, :40].copy())
    d2 = resolved.cls(resolved.params, dataset_info("cifar10"), "resnet32")
    d2.context = DefenseContext(config_root=tmp_path)
    with pytest.raises(BenchError, match="shape"):
        d2.build_model()


def test_learned_dictionaries_keep_the_zoo_keys():
    """The option left every learned-dictionary checkpoint key as it was: the zoo's quick sparse entries are found."""
    from bench.config import load_config
    from bench.runner import checkpoint_key

    cfg = load_config(REPO / "bench.toml")
    zoo = {json.loads(p.read_text()).get("entry"): p.stem for p in (REPO / "results" / "zoo").glob("*.json")}
    for entry in ("sparse", "sparse_dropout"):
        if entry in zoo:
            assert checkpoint_key(cfg.defense(entry, "cifar10", "quick"), "cifar10", 0) == zoo[entry]


def test_the_published_dictionary_loads_with_its_statistics(tmp_path):
    import numpy as np

    from bench.data import dataset_info
    from bench.defense import DefenseContext
    from bench.config import load_config
    from defenses import _dictionary

    card = external.read_card(REPO / "results" / "zoo" / "external" / "sparse_dictionary_authors.json")
    if not (AUTHORS / card.file).is_file():
        pytest.skip(f"{card.file} is not in {AUTHORS} (set BENCH_WEIGHTS)")
    cfg = load_config(REPO / "bench.toml")
    resolved = cfg.defense("sparse_authors_dict", "cifar10", "smoke")
    assert resolved.files() == {"dictionary": card.sha256}
    d = resolved.cls(resolved.params, dataset_info("cifar10"), "resnet32")
    d.context = DefenseContext(config_root=REPO, weights_root=AUTHORS)
    d.build_model()
    stats = d.dictionary_meta["stats"]
    # the numbers the card and bench.toml state: 51 % single-signed, 38 near-twins, mean L1 6.399
    assert stats["single_signed"] == pytest.approx(0.51) and stats["near_twins"] == 38
    assert stats["mean_l1"] == pytest.approx(6.399, abs=1e-3)
    assert cfg.defense("sparse", "cifar10", "paper").params.dictionary == "results/zoo/external/sparse_dictionary_authors.json"


# ------------------------------------------------------------------------------------------------ tables

def test_attack_settings_say_what_a_profile_cut():
    from bench.report.tables import attack_settings

    assert attack_settings({"steps": 40, "restarts": 1, "step_size": "eps/8", "loss": "ce", "backward": "autograd",
                            "eot_samples": 1, "norm": "linf"}) == "40 steps × 1 restart, step eps/8"
    assert attack_settings({"steps": 100, "restarts": 2, "step_size": 0.075, "loss": "cw", "kappa": 50,
                            "backward": "bpda", "norm": "l1", "l1_step": "dense"}) == \
        "100 steps × 2 restarts, step 0.075, CW loss (kappa 50), dense L1 step, backward bpda"
    assert attack_settings({"square_queries": 5000}) == ""  # not an iterative gradient attack


def test_paper_tables_render_for_their_profiles_only(tmp_path):
    from bench.config import load_config
    from bench.errors import ConfigError

    cfg = load_config(REPO / "bench.toml")
    authors = [n for n, t in cfg.tables.items() if t.renders_for("paper_cpu")]
    assert sorted(authors) == ["authors000_table1", "authors001_table4_1", "authors001_table4_3"]
    assert not any(t.renders_for("quick") for n, t in cfg.tables.items() if n.startswith("authors"))
    bad = tmp_path / "bench.toml"
    bad.write_text((REPO / "bench.toml").read_text().replace('profiles = ["paper_cpu", "paper"]',
                                                             'profiles = ["paper_cpux", "paper"]', 1))
    with pytest.raises(ConfigError, match="paper_cpux"):
        load_config(bad)
