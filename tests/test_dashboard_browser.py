"""End to end: the real dashboard server, driven by Debian's Chromium through Playwright.

Needs ``playwright`` (pip, no browser download) and /usr/bin/chromium (.ci/run installs it);
skipped without them except in CI. The screenshot is left in pytest's tmp dir as an artifact.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import require, require_program

from revbench import dashboard

CHROMIUM = os.environ.get("REVBENCH_CHROMIUM", "/usr/bin/chromium")
FIXTURES = Path(__file__).parent / "fixtures" / "results"
EXPECT = {  # tab -> what must be visible in it
    "Trade-off": ".js-plotly-plot",
    "Max batch": ".js-plotly-plot",
    "Memory vs depth": ".js-plotly-plot",
    "Accuracy": "text=No accuracy or perplexity",
    "Numerical drift": ".js-plotly-plot",
    "Runs": "text=Download CSV",
    "Compare": ".js-plotly-plot",
}


@pytest.mark.slow
def test_dashboard_in_a_real_browser(tmp_path: Path) -> None:
    require("playwright")
    require_program(CHROMIUM, hint="apt-get install chromium, or set REVBENCH_CHROMIUM")
    from playwright.sync_api import sync_playwright

    port = dashboard.free_port()
    proc = dashboard.start(FIXTURES, port=port, log=tmp_path / "streamlit.log")
    try:
        url = dashboard.wait_ready(port, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=list(dashboard.CHROMIUM_ARGS)
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                page.wait_for_selector(".js-plotly-plot", timeout=90_000)
                assert page.locator("text=revbench results").count() == 1
                for tab, selector in EXPECT.items():
                    page.get_by_role("tab", name=tab).click()
                    panel = page.locator("[role=tabpanel]:visible")
                    panel.locator(selector).first.wait_for(state="visible", timeout=30_000)
                page.get_by_role("tab", name="Trade-off").click()
                page.locator(
                    "[role=tabpanel]:visible .js-plotly-plot .scatterlayer"
                ).first.wait_for()
                page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
            finally:
                browser.close()
    finally:
        dashboard.stop(proc)
    shot = tmp_path / "dashboard.png"
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
