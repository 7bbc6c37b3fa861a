"""`extends = "ENTRY"` in [defenses.*] / [attacks.*]: a variant starts from its parent entry (its plug-in, keys and
per-dataset / per-profile tables, merged key by key) instead of from the plug-in's defaults; cycles and unknown
parents are errors naming the chain."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_config
from bench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, extra: str) -> Path:
    path = tmp_path / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + "\n" + extra)
    return path


def test_a_variant_keeps_its_parents_dataset_and_profile_tables(tmp_path):
    cfg = load_config(_config(tmp_path, """
[attacks.pgd_linf_3steps]
extends = "pgd_linf"
steps = 3
[attacks.pgd_linf_3steps.profile.smoke]
restarts = 2

[attacks.pgd_linf_plugin_only]
plugin = "pgd_linf"
steps = 3
"""))
    for dataset in cfg.datasets:
        for profile in cfg.profiles:
            parent = cfg.attack("pgd_linf", dataset, profile).params.model_dump()
            child = cfg.attack("pgd_linf_3steps", dataset, profile).params.model_dump()
            expected = dict(parent)
            # the variant's own keys, where no more specific layer of the parent sets them
            raw = cfg.entry("attack", "pgd_linf")  # its bases resolved
            more_specific = {**raw.get("profile", {}).get(profile, {}),
                             **raw.get("dataset", {}).get(dataset, {}),
                             **raw.get("dataset", {}).get(dataset, {}).get("profile", {}).get(profile, {})}
            if "steps" not in more_specific:
                expected["steps"] = 3
            if profile == "smoke" and "restarts" not in {**raw.get("dataset", {}).get(dataset, {}),
                                                         **raw.get("dataset", {}).get(dataset, {}).get("profile", {}).get(profile, {})}:
                expected["restarts"] = 2
            assert child == expected, (dataset, profile)
    assert cfg.attack("pgd_linf_3steps", "mnist", "smoke").params.eps == cfg.attack("pgd_linf", "mnist", "smoke").params.eps
    # without extends the variant starts from the plug-in's defaults: MNIST at 8/255, the trap extends removes
    assert cfg.attack("pgd_linf_plugin_only", "mnist", "smoke").params.eps != cfg.attack("pgd_linf", "mnist", "smoke").params.eps


def test_a_chain_of_variants_resolves_in_order(tmp_path):
    cfg = load_config(_config(tmp_path, """
[attacks.v1]
extends = "pgd_linf"
steps = 7
[attacks.v2]
extends = "v1"
restarts = 3
"""))
    p = cfg.attack("v2", "cifar10", "paper").params
    assert (p.steps, p.restarts) == (7, 3) and cfg.entry("attack", "v2")["plugin"] == "pgd_linf"


@pytest.mark.parametrize("extra, words", [
    ('[attacks.a]\nextends = "b"\n[attacks.b]\nextends = "a"\n', ["cycle", "attacks.a -> attacks.b -> attacks.a"]),
    ('[attacks.a]\nextends = "a"\n', ["cycle", "attacks.a -> attacks.a"]),
    ('[attacks.a]\nextends = "pgd_linnf"\n', ["attacks.a.extends", "'pgd_linnf'", "pgd_linf"]),
    ('[defenses.d]\nextends = 3\n', ["defenses.d.extends", "3"]),
    ('[attacks.a]\nextends = ["linf_budget", "pgd_cutz"]\n', ["attacks.a.extends", "'pgd_cutz'", "pgd_cuts"]),
    ('[attacks.a]\nextends = ["linf_budget", "a"]\n', ["cycle", "attacks.a -> attacks.a"]),
    ('[attacks.b]\nabstract = "yes"\n', ["attacks.b.abstract", "'yes'"]),
    ('[attacks.b]\nabstract = true\n[attacks.b.dataset.mnits]\neps = 0.3\n', ["attacks.b.dataset.mnits", "mnist"]),
    ('[attacks.b]\nabstract = true\nstepz = 3\n[attacks.a]\nextends = "b"\nplugin = "pgd_linf"\n',
     ["attacks.b.stepz", "steps"]),
    # a base nothing extends yet is checked too: a typo does not wait there unseen
    ('[attacks.b]\nabstract = true\n[attacks.b.profile.smoke]\nrestartz = 3\n', ["attacks.b.profile.smoke.restartz", "restarts"]),
    ('[attacks.b]\nabstract = true\nplugin = "fgsm"\n', ["attacks.b.plugin", "no plug-in"]),
    ('[defenses.pretrained]\nabstract = true\n', ["defenses.pretrained", "registered defense plug-in 'pretrained'"]),
])
def test_cycles_and_unknown_parents_are_errors_naming_the_chain(tmp_path, extra, words):
    path = _config(tmp_path, extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert all(w in str(err.value) for w in words), str(err.value)
    p = subprocess.run([sys.executable, "-m", "bench.cli", "list", "--config", str(path)], capture_output=True,
                       text=True, env={**os.environ, "BENCH_PROGRESS": "0"}, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and words[0] in p.stderr, p.stderr


def test_an_abstract_base_lends_its_settings_and_not_its_name(tmp_path):
    cfg = load_config(_config(tmp_path, """
[attacks.tiny_budget]
abstract = true
eps = 0.01
[attacks.tiny_budget.dataset.mnist]
eps = 0.05
[attacks.fgsm_tiny]
extends = "tiny_budget"
plugin = "fgsm"
[attacks.pgd_tiny]
extends = ["pgd_linf", "tiny_budget"]
[attacks.tiny_then_pgd]
extends = ["tiny_budget", "pgd_linf"]
"""))
    assert cfg.attack("fgsm_tiny", "cifar10", "smoke").params.eps == 0.01
    assert cfg.attack("fgsm_tiny", "mnist", "smoke").params.eps == 0.05
    # a later parent wins, key by key: pgd_linf's steps stay, the base's budgets replace pgd_linf's
    tiny = cfg.attack("pgd_tiny", "mnist", "smoke").params
    pgd = cfg.attack("pgd_linf", "mnist", "smoke").params
    assert tiny.eps == 0.05 and tiny.steps == pgd.steps and cfg.entry("attack", "pgd_tiny")["plugin"] == "pgd_linf"
    assert cfg.attack("tiny_then_pgd", "mnist", "smoke").params == pgd
    assert "tiny_budget" not in cfg.names("attack")
    with pytest.raises(ConfigError, match="abstract base"):
        cfg.attack("tiny_budget", "cifar10", "smoke")


def test_a_base_passes_on_no_plugin_even_one_it_took_from_its_own_parent(tmp_path):
    cfg = load_config(_config(tmp_path, """
[attacks.fgsm_settings]
abstract = true
extends = "fgsm"
[attacks.x]
extends = ["pgd_linf", "fgsm_settings"]
"""))
    assert cfg.attack("x", "mnist", "smoke").plugin == "pgd_linf"


def test_a_base_keeps_the_entrys_own_plugin(tmp_path):
    # bench.toml's fgsm extends the Linf budget base and is still the fgsm plug-in (listed as plain "fgsm")
    cfg = load_config(REPO / "bench.toml")
    assert cfg.entries["attack"]["fgsm"]["extends"] == "linf_budget"
    assert "plugin" not in cfg.entry("attack", "fgsm") and cfg.attack("fgsm", "mnist", "smoke").plugin == "fgsm"
    assert cfg.attack("fgsm", "mnist", "smoke").params.eps == 0.3


def test_running_a_base_is_refused_with_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench.cli", "run", "-d", "natural", "-a", "linf_budget",
                        "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "BENCH_PROGRESS": "0"}, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "abstract base" in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()
