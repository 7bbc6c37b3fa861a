import pytest

from bench.config import load_config
from bench.errors import ConfigError
from bench.params import parse_number, parse_step, step_value


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_repo_config_loads_and_layers():
    cfg = load_config()
    assert cfg.attack("pgd_linf", "cifar10", "paper").params.restarts == 100
    assert cfg.attack("pgd_linf", "cifar10", "smoke").params.steps == 10
    mnist = cfg.attack("pgd_linf", "mnist", "quick").params
    assert mnist.eps == pytest.approx(0.3) and mnist.steps == 40 and step_value(mnist.step_size, mnist.eps) == pytest.approx(0.03)
    assert cfg.defense("natural", "mnist", "paper").params.optimizer == "adam"


def test_fractions_and_steps_parse():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert step_value(parse_step("eps/8"), 0.8) == pytest.approx(0.1)
    assert step_value(parse_step("2.5*eps"), 0.1) == pytest.approx(0.25)
    assert step_value(parse_step("1/255"), 0.5) == pytest.approx(1 / 255)
    with pytest.raises(ValueError):
        parse_number("eight")


def test_misspelled_key_names_key_and_suggestion(config_copy):
    text = config_copy.read_text()
    _edit(config_copy, "step_size = \"eps/8\"\nloss = \"ce\"", "step_size = \"eps/8\"\nrestart = 1\nloss = \"ce\"")
    with pytest.raises(ConfigError) as e:
        load_config(config_copy)
    msg = str(e.value)
    assert "attacks.pgd_linf.restart" in msg and "restarts" in msg and "extends" not in msg
    # in an abstract base, the error names the base's table (where to edit) and the entry that takes it
    config_copy.write_text(text)
    _edit(config_copy, "abstract = true\nsteps = 40\nrestarts = 100", "abstract = true\nsteps = 40\nrestart = 100")
    with pytest.raises(ConfigError) as e:
        load_config(config_copy)
    msg = str(e.value)
    assert "'attacks.pgd_cuts.restart'" in msg and "restarts" in msg
    assert "[attacks.pgd_linf]" in msg and "more take it through `extends`" in msg


def test_negative_eps_is_rejected_with_key_and_value(config_copy):
    _edit(config_copy, 'abstract = true\neps = "8/255"', 'abstract = true\neps = -0.1')
    with pytest.raises(ConfigError) as e:
        load_config(config_copy)
    assert "attacks.linf_budget.eps" in str(e.value) and "-0.1" in str(e.value)


def test_wrong_type_in_profile_override_points_at_override(config_copy):
    _edit(config_copy, "[defenses.natural.profile.quick]\nepochs = 10", "[defenses.natural.profile.quick]\nepochs = \"ten\"")
    with pytest.raises(ConfigError) as e:
        load_config(config_copy)
    assert "defenses.natural.profile.quick.epochs" in str(e.value)


def test_unknown_plugin_profile_and_top_level_key(config_copy):
    text = config_copy.read_text()
    config_copy.write_text(text + '\n[defenses.mystery]\nplugin = "naturall"\n')
    with pytest.raises(ConfigError, match="naturall.*Did you mean 'natural'"):
        load_config(config_copy)
    config_copy.write_text(text.replace("[defenses.natural.profile.smoke]", "[defenses.natural.profile.smok]"))
    with pytest.raises(ConfigError, match="profile.smok"):
        load_config(config_copy)
    config_copy.write_text(text + "\n[setings]\nseed = 1\n")
    with pytest.raises(ConfigError, match="setings"):
        load_config(config_copy)


def test_unknown_defense_name():
    cfg = load_config()
    with pytest.raises(ConfigError, match="Did you mean 'natural'"):
        cfg.defense("naturl", "cifar10", "smoke")


def test_a_registered_plugin_needs_no_bench_toml_entry():
    """One file, one decorator: a plug-in without a [defenses.X] entry resolves with its Params defaults."""
    from bench import Defense, DefenseParams, Field, register_defense
    from bench.registry import _REGISTRIES

    @register_defense("entryless_demo")
    class EntrylessDemo(Defense):
        """Test only: a defense with no bench.toml entry."""

        class Params(DefenseParams):
            strength: float = Field(0.5, ge=0)

    try:
        cfg = load_config()
        assert "entryless_demo" not in cfg.entries["defense"] and "entryless_demo" in cfg.names("defense")
        resolved = cfg.defense("entryless_demo", "cifar10", "smoke")
        assert resolved.cls is EntrylessDemo and resolved.params.strength == 0.5
        # the profile's defense_defaults shrink its training: not the paper-sized 70 epochs on 50k images
        smoke = cfg.profiles["smoke"].defense_defaults
        assert resolved.params.epochs == smoke["epochs"] < 70 and resolved.params.n_train == smoke["n_train"] > 0
        assert cfg.defense("entryless_demo", "cifar10", "paper").params.epochs == 70
        with pytest.raises(ConfigError, match="Did you mean 'entryless_demo'"):
            cfg.defense("entryless_dem", "cifar10", "smoke")
    finally:
        _REGISTRIES["defense"].pop("entryless_demo")


def test_profile_defense_defaults_sit_beneath_entries_and_reject_unknown_keys(config_copy):
    cfg = load_config()
    assert cfg.profiles["smoke"].defense_defaults["epochs"] == 1
    assert cfg.defense("natural", "cifar10", "smoke").params.epochs == 3  # the entry's smoke table wins
    assert cfg.defense("natural", "cifar10", "paper").params.epochs == 70
    _edit(config_copy, "[profiles.smoke.defense_defaults]\nepochs = 1", "[profiles.smoke.defense_defaults]\nepoch = 1")
    with pytest.raises(ConfigError, match=r"profiles\.smoke\.defense_defaults\.epoch'.*Did you mean 'epochs'"):
        load_config(config_copy)
