"""Regenerate the dashboard screenshots in docs/ (linked from the README).

Serves the fixture results (tests/fixtures/results) with ``revbench dashboard`` and photographs
each view with Debian's Chromium through Playwright:

    python dashboard/screenshots.py [RESULTS_DIR] [--out docs]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from playwright.sync_api import sync_playwright

from revbench import dashboard

ROOT = Path(__file__).resolve().parent.parent
TABS = (
    "Trade-off",
    "Max batch",
    "Memory vs depth",
    "Accuracy",
    "Numerical drift",
    "Runs",
    "Compare",
)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", default=str(ROOT / "tests" / "fixtures" / "results"))
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = dashboard.free_port()
    proc = dashboard.start(args.results, port=port)
    try:
        url = dashboard.wait_ready(port, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=args.chromium, args=list(dashboard.CHROMIUM_ARGS)
            )
            # tall enough that every chart of a view is laid out (plotly skips hidden ones)
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            page.goto(url)
            page.wait_for_selector(".js-plotly-plot", timeout=90_000)
            page.wait_for_timeout(1500)  # let plotly finish its first layout pass
            page.screenshot(
                path=out / "dashboard-overview.png",
                clip={"x": 0, "y": 0, "width": 1400, "height": 1000},
            )
            for tab in TABS:
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(2000)
                panel = page.locator("[role=tabpanel]:visible").first
                path = out / f"dashboard-{slug(tab)}.png"
                panel.screenshot(path=path)
                print(path)
            browser.close()
    finally:
        dashboard.stop(proc)


if __name__ == "__main__":
    main()
