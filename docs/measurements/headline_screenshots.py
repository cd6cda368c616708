"""The README's two headline screenshots: a speedup whose dense reference was timed under load, then re-timed.

    python docs/measurements/headline_screenshots.py OUT_DIR

Makes a dense pocket-wan run while every core spins in other processes, then XAttention + TMR on a quiet machine
(same prompt and seed), serves the app on that store, and with Debian's Chromium (playwright) screenshots the
headline before and after pressing "Re-time both, interleaved". Writes ``headline_flagged.png`` and
``headline_retimed.png`` to OUT_DIR.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from accel.config import RunConfig
from accel.forms import DEFAULT_PROMPT
from accel.runner import generate
from accel.runs import RunStore


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    store = RunStore(tempfile.mkdtemp(prefix="headline-shots-"))
    cfg = {"prompt": DEFAULT_PROMPT, "model": "pocket-wan", "seed": 0}
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        generate(RunConfig(method="dense", **cfg), store)
    finally:
        for b in burners:
            b.kill()
    method = generate(RunConfig(method="xattention", settings={"tmr": True}, **cfg), store)
    os.environ["ACCEL_RUNS_DIR"] = str(store.root)
    from playwright.sync_api import sync_playwright

    import app

    demo = app.build_app().queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"], headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(demo.local_url, wait_until="networkidle")
            page.get_by_label("Run shown in the views").click()
            page.get_by_role("option").filter(has_text=method.run_id[-6:]).first.click()
            page.get_by_text("why not to trust it").wait_for(timeout=60_000)
            page.locator("#headline").screenshot(path=str(out / "headline_flagged.png"))
            page.get_by_role("button", name="Re-time both, interleaved").click()
            page.get_by_text("speedup vs dense (re-timed in one process)").wait_for(timeout=600_000)
            page.locator("#headline").screenshot(path=str(out / "headline_retimed.png"))
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main()
