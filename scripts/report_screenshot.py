"""Look at an evaluation report as its reader does: open it in headless Chromium in a
desktop-sized window, measure the layout the reader meets, and save a screenshot.

    python scripts/report_screenshot.py outputs/eval/report.html [--out report.png] [--width 1280]

Prints the layout as JSON: the window's width and the page's (wider means a sideways
scroll), and for every image its section, its own size and the size it is shown at, and
whether it decoded. tests/test_evaluate.py checks a report with it; the report itself
holds no scripts: the measuring script goes into a temporary copy only.

Needs Chromium (Debian: `apt-get install chromium`; .ci/run installs it where it can).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Runs after every image has loaded; writes the measures into the page, which
# `--dump-dom` then prints.
MEASURE = """<script>window.addEventListener('load', () => {
  const section = el => { let n = el; while (n) { let s = n.previousElementSibling;
    while (s) { if (/^H[123]$/.test(s.tagName)) return s.textContent; s = s.previousElementSibling; }
    n = n.parentElement; } return ''; };
  const box = el => el.getBoundingClientRect();
  const out = {window_width: innerWidth, page_width: document.documentElement.scrollWidth,
    page_height: document.documentElement.scrollHeight,
    images: [...document.images].map(i => ({section: section(i), kind: i.parentElement.className,
      decoded: i.complete && i.naturalWidth > 0, natural: [i.naturalWidth, i.naturalHeight],
      shown: [Math.round(box(i).width), Math.round(box(i).height)]})),
    tables: [...document.querySelectorAll('table')].map(t => Math.round(box(t).right))};
  const pre = document.createElement('pre'); pre.id = 'hsa-layout'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre); });</script>"""


def browser() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def _chromium(args: list[str], workdir: Path) -> str:
    exe = browser()
    if exe is None:
        raise SystemExit("report_screenshot: no Chromium found (looked for " + ", ".join(BROWSERS)
                         + "); on Debian: apt-get install chromium")
    # --no-sandbox: Chromium's sandbox refuses to start as root (containers, CI)
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={workdir / 'profile'}", "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout


def layout(report: Path, width: int = 1280, height: int = 900) -> dict:
    """The report's layout in a `width` x `height` window (see the module's docstring)."""
    page = Path(report).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "report.html"
        copy.write_text(page.replace("</body>", MEASURE + "</body>", 1))
        dom = _chromium([f"--window-size={width},{height}", "--dump-dom", copy.resolve().as_uri()], Path(tmp))
    found = re.search(r'<pre id="hsa-layout">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError(f"report_screenshot: Chromium rendered {report} but the layout script did not run")
    return json.loads(html.unescape(found.group(1)))


def screenshot(report: Path, out: Path, width: int = 1280) -> dict:
    """Save the whole page as a PNG `width` pixels wide; -> its layout."""
    measured = layout(report, width)
    with tempfile.TemporaryDirectory() as tmp:
        _chromium([f"--window-size={width},{measured['page_height']}", f"--screenshot={Path(out).resolve()}",
                   Path(report).resolve().as_uri()], Path(tmp))
    return measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--out", type=Path, help="where the screenshot goes (none: the layout only)")
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args()
    if not args.report.is_file():
        sys.exit(f"report_screenshot: {args.report}: no such file (outputs/eval/report.html after `dvc repro`)")
    measured = screenshot(args.report, args.out, args.width) if args.out else layout(args.report, args.width)
    print(json.dumps(measured, indent=1))


if __name__ == "__main__":
    main()
