import subprocess
import sys
from pathlib import Path

from bench import provenance

ROOT = Path(__file__).resolve().parent.parent


def test_a_copy_without_git_history_takes_the_shipped_sha(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_GIT_SHA", "0123456789ab")
    assert provenance._git_sha(tmp_path) == "0123456789ab"
    monkeypatch.delenv("BENCH_GIT_SHA")
    assert provenance._git_sha(tmp_path) == "unknown"


def test_the_checkout_reports_its_own_commit_unless_the_shipper_names_one(monkeypatch):
    monkeypatch.delenv("BENCH_GIT_SHA", raising=False)
    sha = provenance._git_sha(ROOT)
    assert sha != "unknown" and len(sha.split("-")[0]) == 12
    monkeypatch.setenv("BENCH_GIT_SHA", "fedcba987654")
    assert provenance._git_sha(ROOT) == "fedcba987654"


def test_plugin_discovery_does_not_import_heavy_attack_libraries():
    # pyautoattack is only needed when an AutoAttack cell runs (it is 40 MB, and absent on some GPU images)
    code = "import sys; from bench import registry; registry.discover(); print('pyautoattack' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_manifest_paths_never_name_the_machine_folders(tmp_path):
    """A manifest records the config and data root relative to the config's folder (inside it or one level beside
    it), else only the last two parts: committed evidence must not carry the folders of the machine that ran it."""
    from bench.provenance import portable_path
    root = tmp_path / "repo"
    assert portable_path(root / "bench.toml", root) == "bench.toml"
    assert portable_path(tmp_path / "shared" / "data", root) == "../shared/data"
    far = tmp_path.parent / "elsewhere" / "cifar" / "data"
    assert portable_path(far, root) == "…/cifar/data"
    assert str(tmp_path) not in portable_path(far, root)
