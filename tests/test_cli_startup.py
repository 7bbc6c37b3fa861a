"""The command line starts without torch: `bench --help`, every command's --help and the usage errors that click
finds (an unknown option or command, a bad or missing value) answer before bench loads torch or numpy, which cost
seconds per process. And the lazily loaded public API (bench/__init__.py) still gives plug-ins every name."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# runs bench's entry point (bench.cli:main, what the `bench` script calls) on each argument list in one fresh
# process, and records each exit status and which heavy modules were loaded by then
PROBE = r"""
import json, sys
import typer
from bench.cli import app, main

def call(args):
    sys.argv = ["bench", *args]
    try:
        main()
    except SystemExit as e:
        return e.code or 0
    return 0

group = typer.main.get_command(app)
helps = [[name, "--help"] for name in group.commands]
helps += [[name, sub, "--help"] for name, cmd in group.commands.items() for sub in getattr(cmd, "commands", {})]
errors = [["run", "--bogus"], ["runn"], ["run", "--seed", "-1"], ["run", "--n-test", "0"], ["table", "--profile"],
          ["zoo", "nope"]]
out = {"help": call(["--help"]), "helps": {" ".join(a): call(a) for a in helps},
       "errors": {" ".join(a): call(a) for a in errors},
       "loaded": sorted(m for m in ("torch", "numpy", "bench.runner", "bench.attack") if m in sys.modules)}
print("PROBE" + json.dumps(out), file=sys.stderr)
"""


def test_help_and_usage_errors_do_not_load_torch():
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=300)
    line = [s for s in p.stderr.splitlines() if s.startswith("PROBE")]
    assert p.returncode == 0 and line, p.stderr[-3000:]
    out = json.loads(line[-1][len("PROBE"):])
    assert out["help"] == 0
    assert len(out["helps"]) >= 15 and set(out["helps"].values()) == {0}, out["helps"]
    assert set(out["errors"].values()) == {2}, out["errors"]
    for message in ("bench run has no option --bogus", "No such command 'runn'", "--seed: -1 is not allowed",
                    "--n-test: 0 is not allowed", "--profile"):
        assert message in p.stderr, message
    assert out["loaded"] == [], f"loaded at start-up: {out['loaded']} (import them inside the command's function)"


def test_the_public_api_loads_on_first_use():
    """Every name of bench.__all__ imports as a plug-in imports it, and `bench.evaluate` stays the function even
    after the submodule of the same name is imported (which binds a package attribute of that name)."""
    code = r"""
import sys, types
import bench
assert "torch" not in sys.modules, "import bench loaded torch"
import bench.evaluate
assert isinstance(bench.evaluate, types.FunctionType) and bench.evaluate.__module__ == "bench.evaluate"
assert isinstance(sys.modules["bench.evaluate"], types.ModuleType)
from bench import evaluate, Attack, register_attack, Field, progress, corruptions
from bench.attack import Attack as defined
assert Attack is defined and evaluate is bench.evaluate and progress is sys.modules["bench.progress"]
ns = {}
exec("from bench import *", ns)
missing = [n for n in bench.__all__ if n not in ns]
assert not missing, missing
assert set(bench.__all__) <= set(dir(bench))
try:
    bench.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("bench.no_such_name did not raise AttributeError")
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
