"""bench.toml's [defenses.*] / [attacks.*] entries state each setting once (`extends` instead of copied blocks), and
the rewrite that made them so moved no resolved config.

tests/data/resolved_entries.json is every entry resolved for every dataset and profile (params, plug-in, name and the
entry's description; the error where an entry cannot resolve, e.g. my_model without its weights file), dumped from
bench.toml before the entries were rewritten with `extends`. Regenerate it only for a deliberate change of a
resolved setting: `python -c "import sys; sys.path.insert(0, 'tests'); import test_config_dedupe as t; t.dump()"`.

The target is < 5 % repeated leaf keys. Abstract bases (`abstract = true`: the per-dataset Linf / L2 budgets,
the PGD step and restart cuts, 001's EOT settings, the adversarial-training, HaH-recipe and sparse-front-end blocks)
and list-valued `extends` took it from 13.0 % to 2.0 % with `bench list` and every resolved entry unchanged; what
is left repeats across plug-ins whose other settings differ (e.g. pgd_l1_bpda restates pgd_l1's L1 budget)."""
import json
from pathlib import Path

from bench.config import load_config

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "data" / "resolved_entries.json"
NOT_SETTINGS = {"plugin", "description", "extends", "abstract"}  # name where an entry starts from, not what it sets


def _subtables(entry: dict, prefix: tuple = ()):
    """(path, leaf keys) of an entry's own keys and of each of its profile.P / dataset.D / dataset.D.profile.P
    tables, each without plugin / description / extends and without its nested tables."""
    own = {k: v for k, v in entry.items() if k not in NOT_SETTINGS and k not in ("profile", "dataset")}
    yield prefix, own
    for layer in ("dataset", "profile"):
        for sub, table in entry.get(layer, {}).items():
            yield from _subtables(table, (*prefix, layer, sub))


def repeated_settings(entries: dict[str, dict]) -> tuple[int, int, int, int]:
    """(repeated leaf keys, leaf keys, repeated sub-tables, sub-tables) of one kind's entries, in file order: a
    sub-table that equals the same sub-table (same path) of an earlier entry is repeated, all its keys with it."""
    seen: dict[tuple, list[dict]] = {}
    rep_keys = keys = rep_tables = tables = 0
    for entry in entries.values():
        for path, table in _subtables(entry):
            if not table:
                continue
            tables += 1
            keys += len(table)
            if table in seen.setdefault(path, []):
                rep_tables += 1
                rep_keys += len(table)
            seen[path].append(table)
    return rep_keys, keys, rep_tables, tables


def dedupe_metric(cfg) -> dict:
    # the abstract bases' settings count like any entry's (they are settings the file states)
    out = {kind: repeated_settings({**cfg.bases[kind], **cfg.entries[kind]}) for kind in ("defense", "attack")}
    out["total"] = tuple(sum(v[i] for v in out.values()) for i in range(4))
    return out


def resolve_all(cfg) -> dict:
    out = {}
    for kind in ("defense", "attack"):
        out[kind] = {}
        for name in cfg.entries[kind]:
            e = {"description": cfg.entry(kind, name).get("description"), "resolved": {}}
            for d in cfg.datasets:
                for p in cfg.profiles:
                    try:
                        r = cfg.resolve(kind, name, d, p).as_dict()
                    except Exception as exc:  # recorded as it reads, with the checkout's path made neutral
                        r = {"error": f"{type(exc).__name__}: {exc}".replace(str(cfg.root.resolve()), "<repo>")}
                    e["resolved"][f"{d}/{p}"] = r
            out[kind][name] = e
    return out


def dump(path=SNAPSHOT):
    Path(path).write_text(json.dumps(resolve_all(load_config(REPO / "bench.toml")), indent=1, sort_keys=True))


def _repeated_fraction() -> tuple[float, dict]:
    m = dedupe_metric(load_config(REPO / "bench.toml"))
    rep_keys, keys, _, _ = m["total"]
    return rep_keys / keys, m


def test_entries_repeat_under_5_percent_of_their_settings():
    # before `extends`: 219 of 707 leaf keys (31.0 %); with it: 68 of 522 (13.0 %); with the bases: 8 of 404 (2.0 %)
    fraction, m = _repeated_fraction()
    assert fraction < 0.05, m


def test_every_entry_resolves_as_before_the_rewrite():
    cfg = load_config(REPO / "bench.toml")
    now = json.loads(json.dumps(resolve_all(cfg)))
    before = json.loads(SNAPSHOT.read_text())
    assert set(now) == set(before)
    for kind in before:
        assert set(now[kind]) == set(before[kind]), kind
        for name in before[kind]:  # compared as text, so an int that became a float (50 -> 50.0) shows too
            assert json.dumps(now[kind][name], sort_keys=True) == json.dumps(before[kind][name], sort_keys=True), \
                (kind, name)


def test_the_metric_counts_a_copied_block_and_not_an_inherited_one():
    copied = {"a": {"x": 1, "profile": {"smoke": {"y": 2, "z": 3}}}, "b": {"x": 2, "profile": {"smoke": {"y": 2, "z": 3}}}}
    assert repeated_settings(copied) == (2, 6, 1, 4)
    inherited = {"a": copied["a"], "b": {"extends": "a", "plugin": "p", "x": 2}}
    assert repeated_settings(inherited) == (0, 4, 0, 3)
