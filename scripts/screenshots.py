"""Take the dashboard's screenshots for the docs: docs/images/dashboard-*.png.

Runs the browser test (tests/integration/test_dashboard_browser.py), which saves each page it
visits when DURAFLOWS_SCREENSHOTS names a folder. Needs /usr/bin/chromium and playwright.

    python scripts/screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    env = {
        **os.environ,
        "DURAFLOWS_SCREENSHOTS": str(REPO / "docs" / "images"),
        "DURAFLOWS_REQUIRE_BROWSER": "1",
        "PYTHONPATH": str(REPO),
    }
    test = "tests/integration/test_dashboard_browser.py::test_click_through_every_page_and_action"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-n", "0", test]
    return subprocess.run(argv, cwd=REPO, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
