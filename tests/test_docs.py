"""The documentation: the docs site builds with `mkdocs build --strict` (a broken link or anchor, or a page left out
of the nav, fails), its generated reference page matches the registry and bench.toml, the README keeps CI's test
command and its size, and no tracked text file carries an absolute path of the machine that wrote it."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the test command as .ci/run runs it (there the two environment variables are exported first): the fast tests; CI
# runs the slow ones marked `ci` right after it
TEST_COMMAND = ('python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e ".[test]" && '
                'BENCH_DATA=../shared/data BENCH_WEIGHTS=../shared/authors pytest')
SLOW_CI = 'pytest -m "slow and ci"'


def test_docs_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "index.html").is_file() and (site / "reference" / "index.html").is_file()


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """The check above can fail: the same build with one dead link in a copy of the docs is refused."""
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    with open(tmp_path / "docs" / "index.md", "a") as f:
        f.write("\n[gone](no-such-page.md)\n")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "s")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no-such-page.md" in proc.stdout + proc.stderr


def test_bench_list_markdown_prints_the_page():
    """The page is current: the command it names as its source, through the real entry point, prints exactly it.
    (A fresh process: test files of the same worker register planted plug-ins of their own into the registry.)"""
    import os

    env = {**os.environ, "BENCH_PROGRESS": "0"}
    env.pop("BENCH_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "list", "--markdown"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ROOT / "docs" / "reference.md").read_text()


def test_reference_page_lists_every_plugin_and_entry():
    from bench.registry import plugins

    page = (ROOT / "docs" / "reference.md").read_text()
    cfg = load_config(ROOT / "bench.toml")
    for kind in ("defense", "attack"):
        shipped = [name for name, cls in plugins(kind).items()  # not the planted ones other test files register
                   if cls.__module__.split(".")[0] in ("defenses", "attacks")]
        for name in [*shipped, *cfg.entries[kind]]:
            assert f"`{name}`" in page, (kind, name)


def test_readme_is_short_and_runs_what_ci_runs():
    text = README.read_text()
    assert len(text.splitlines()) <= 160, "README.md grew past a five-minute read: move the detail into docs/"
    assert TEST_COMMAND in text.splitlines(), "README.md's test command is no longer the one CI runs"
    ci = (ROOT / ".ci" / "run").read_text()
    lines = ci.splitlines()
    assert 'pip install -c constraints.txt -e ".[test]" && pytest' in lines, ".ci/run no longer runs the README's"
    assert SLOW_CI in lines and SLOW_CI in text, "the slow tests CI runs are no longer run, or no longer named"
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


# --------------------------------------------------------------------------- absolute paths of a machine
# A path from the filesystem root into a home, scratch or work folder, not inside a URL (in a URL such a folder
# name follows a host name or another slash, and does not match).
MACHINE_PATH = re.compile(rb"(?<![\w.:/~])/(?:home|root|work|tmp|Users|mnt|private/var|var/folders)(?=/|\b)")
# the only place that may name one: code that picks a scratch folder on purpose (a snippet of that line)
ROOT_DIR = b"/"  # the snippets and examples here are built from it, so this file itself names no machine path
ALLOWED = {".ci/run": [b'"${TMPDIR:-' + ROOT_DIR + b'tmp}/bench-ci.XXXXXX"']}


def _tracked_text_files():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, names):
        path = ROOT / name.decode()
        if path.is_file():
            data = path.read_bytes()
            if b"\0" not in data[:8192]:  # binary files (checkpoints, PNGs) hold no text to read
                yield name.decode(), data


def machine_paths(name: str, data: bytes) -> list[str]:
    hits = []
    for lineno, line in enumerate(data.splitlines(), 1):
        allowed = [range(m.start(), m.end()) for a in ALLOWED.get(name, []) for m in re.finditer(re.escape(a), line)]
        for m in MACHINE_PATH.finditer(line):
            if not any(m.start() in span for span in allowed):
                hits.append(f"{name}:{lineno}: {line.strip()[:160].decode(errors='replace')}")
    return hits


def test_no_tracked_file_names_a_machine_path():
    hits = [h for name, data in _tracked_text_files() for h in machine_paths(name, data)]
    assert hits == [], "absolute paths of a machine in tracked files (make them relative or drop them):\n" + \
        "\n".join(hits[:40])


def test_no_writer_lock_is_tracked():
    """Writers' lock files are empty runtime files beside a results file or cache entry: committing them only adds
    noise (and a stale one in a clone means nothing)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert [n for n in names if n.endswith(".lock")] == []


@pytest.mark.parametrize("line, found", [
    (b'"config_file": "' + ROOT_DIR + b'work/main/bench.toml"', True),
    (b"bench run --results-dir " + ROOT_DIR + b"tmp/ci", True),
    (b"see " + ROOT_DIR + b"home/someone/data and " + ROOT_DIR + b"Users/x", True),
    (b"cd " + ROOT_DIR + b"root && ls", True),
    (b"https://example.org/" + b"tmp/file and file://" + ROOT_DIR + b"tmp/x", False),
    (b'"config_file": "bench.toml", "data_root": "../shared/data"', False),
    (b"out > /dev/null; python -c 'import tempfile'", False),
])
def test_machine_path_pattern(line, found):
    assert bool(machine_paths("x.md", line)) is found


def test_results_index_names_every_committed_evidence_entry():
    """results/README.md is the index of the committed evidence: every entry of results/measured/ is named there,
    by its name or by a glob in backticks (`measured/perf_*.json`), so a new folder cannot land unexplained."""
    import fnmatch
    text = (ROOT / "results" / "README.md").read_text()
    globs = [g.rsplit("/", 1)[-1] for g in re.findall(r"`([^`\s]*\*[^`\s]*)`", text)]
    missing = [p.name for p in sorted((ROOT / "results" / "measured").iterdir())
               if p.name not in text and not any(fnmatch.fnmatch(p.name, g) for g in globs)]
    assert missing == [], f"results/measured entries missing from results/README.md's index: {missing}"
