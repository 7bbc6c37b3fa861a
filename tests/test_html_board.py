"""`bench table --html` (bench/report/html_board.py) in a real browser: headless Chromium loads the self-contained page
(no server, no network), the rows it renders are read back and checked against the numeric export, and a
screenshot of it is not blank."""
import csv
import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from bench.report import html_board, threat_board
from bench.report.tables import Results
from synthetic_results import cell, check, fooling, write

N = 50
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                   reason="no chromium here (.ci/run installs it: apt-get install chromium)")


class _Sections(HTMLParser):
    """Rows of each <section>, cell texts, and which section is shown (class 'on', set by the page's script)."""

    def __init__(self):
        super().__init__()
        self.sections, self.shown, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append([])
            self.shown.append("on" in (a.get("class") or "").split())
        elif tag == "tr" and self.sections:
            self.sections[-1].append([])
        elif tag == "td" and self.sections:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.sections[-1][-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _results(tmp_path):
    ok = [True] * N
    store = write(tmp_path, [
        cell("robust", "pgd_linf", ok, fooling(N, range(10))),
        cell("robust", "cw_linf", ok, fooling(N, range(5, 18))),
        cell("robust", "pgd_linf_eps4", ok, fooling(N, range(4)), eps="0.0156863"),
        cell("masked", "pgd_linf", ok, fooling(N, range(1)),
             checks={"gradient_health": check("fail", "zero gradients", "all dead", 0.9, 0.2)}),
        cell("natural", "pgd_linf", ok, fooling(N, range(N))),
        cell("natural", "pgd_l2", ok, fooling(N, range(40)), norm="l2", eps="0.5"),
    ])
    return Results(store.rows(), store.manifest_dir)


@needs_browser
def test_page_renders_in_chromium_with_the_exported_numbers(tmp_path):
    assert CHROMIUM, "chromium is missing: .ci/run installs it (apt-get install chromium)"
    results = _results(tmp_path)
    page = html_board.write(results, tmp_path / "leaderboard.html")
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text  # self-contained
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<section" in dom.stdout, dom.stderr[-2000:]
    parsed = _Sections()
    parsed.feed(dom.stdout)
    assert parsed.shown[0] and not any(parsed.shown[1:])  # the script ran: the first tab is shown
    found = threat_board.boards(results, "cifar10", "quick")
    assert len(parsed.sections) == len(found) == 3  # Linf 4/255, Linf 8/255, L2 0.5
    for rows, (tm, (entries, _, _)) in zip(parsed.sections, found.items()):
        board, _ = threat_board.numeric_csv(tm, entries)
        exported = list(csv.DictReader(board.splitlines()))
        body = [r for r in rows if r]
        assert [r[1] for r in body] == [e["defense"] for e in exported]  # same defenses, same order
        for r, e in zip(body, exported):
            assert r[3].startswith(f"{100 * float(e['robust_acc']):.1f} ±"), (r, e)
            assert ("(unreliable)" in r[3]) == (e["unreliable"] == "1")
    shot = tmp_path / "shot.png"
    p = subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1100,700", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("L")
    extrema = image.getextrema()
    assert extrema[1] - extrema[0] > 100 and len(set(image.getdata())) > 20, extrema  # text and lines: not blank


def test_html_option_writes_the_page(tmp_path):
    import sys

    _results(tmp_path)
    p = subprocess.run([sys.executable, "-m", "bench.cli", "table", "--profile", "quick", "--dataset", "cifar10",
                        "--results-dir", str(tmp_path), "--html"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "BENCH_PROGRESS": "0"})
    assert p.returncode == 0, p.stderr
    page = (tmp_path / "leaderboard.html").read_text()
    assert "Linf 8/255" in page and "sortBy" in page and "<svg" in page  # robust: 4/255 and 8/255 → a curve
