"""``netorch compare``: two real runs (process backend) compared, and compare.html opened in a real
headless Chromium whose rendered DOM is read back (not the file's text)."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import netorch_env
from test_metrics_servers import binary
from test_process_backend import netorch, run_dir

pytestmark = pytest.mark.slow


class Dom(HTMLParser):
    """The parts of a DOM dump the test reads: text per table id, the inline SVG's text and
    every attribute that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.table: str | None = None
        self.tables: dict[str, list[list[str]]] = {}
        self.svg_depth = 0
        self.svg_count = 0
        self.svg_text: list[str] = []
        self.loads: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id") or "?"
            self.tables[self.table] = []
        elif tag == "tr" and self.table:
            self.tables[self.table].append([])
        elif tag in ("td", "th") and self.table:
            self.tables[self.table][-1].append("")
        elif tag == "svg":
            self.svg_depth += 1
            self.svg_count += 1
        self.loads += [f"{tag} {k}={v}" for k, v in attrs
                       if k in ("src", "href", "xlink:href") and v and not v.startswith("#")]
        if tag == "link" or tag == "script":
            self.loads.append(tag)
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.table = None
        elif tag == "svg":
            self.svg_depth -= 1
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self.table and self.stack and self.stack[-1] in ("td", "th"):
            self.tables[self.table][-1][-1] += data.strip()
        if self.svg_depth and self.stack and self.stack[-1] == "text":
            self.svg_text.append(data.strip())


def two_runs(tmp_path: Path) -> list[Path]:
    runs = []
    for i, top in enumerate(("256K", "1M")):
        out = tmp_path / f"runs{i}"
        proc = netorch("bench", "--nodes", "2", "-B", "128K", "-E", top, "-f", "2", "-w", "1",
                       "-i", "3", "--quiet", out=out)
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output
        runs.append(run_dir(out))
    return runs


def test_compare_html_renders_table_and_plot_offline(tmp_path: Path) -> None:
    chromium = binary("chromium")
    first, second = two_runs(tmp_path)
    ids = [first.name, second.name]
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "compare", str(first),
         str(second / "report.json"), "-o", str(out)],
        env=netorch_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "compare.json").read_text())
    assert data["runs"] == ids
    assert any(d["key"] == "settings.max_bytes" for d in data["differences"])
    # A real browser renders the page with every network request refused.
    dump = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", (out / "compare.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = Dom()
    dom.feed(dump.stdout)
    assert dom.loads == []  # nothing to fetch: the page is self-contained
    header, *rows = dom.tables["deltas"]
    assert header[2:4] == [f"{ids[0]} busbw GB/s", f"{ids[1]} busbw GB/s"]
    assert header[4] == f"{ids[1]} vs {ids[0]}"
    sizes = {row[1] for row in rows}
    assert sizes == {"128 KiB", "256 KiB", "512 KiB", "1 MiB"}
    big = next(row for row in rows if row[1] == "1 MiB")
    assert big[2] == "-" and float(big[3]) > 0  # the first run stopped at 256 KiB
    diff = {row[0]: row[1:] for row in dom.tables["diff"][1:]}
    assert diff["settings.max_bytes"] == [str(256 << 10), str(1 << 20)]
    assert dom.svg_count >= 1
    legend = " ".join(dom.svg_text)
    assert all(run_id in legend for run_id in ids), legend


def test_compare_needs_two_known_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "compare", "nope-1",
                           "nope-2", "-o", str(tmp_path / "cmp")],
                          env=netorch_env(), capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert "'nope-1' is no report.json, run folder or run id" in proc.stderr
    assert not (tmp_path / "cmp").exists()
