"""Debian's headless Chromium driven by selenium through chromium-driver: the one browser every page test uses.

Only the serving tier imports this (selenium comes with .venv/serving); `make chromium` installs both binaries.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Screenshots kept after the run for a person to look at (pytest's own temp directories are rotated away).
ARTIFACTS = Path(__file__).resolve().parents[3] / ".local" / "test-artifacts"


@contextmanager
def headless_chromium(window_size: str) -> Iterator[webdriver.Chrome]:
    """A fresh headless browser of ``window_size`` ("width,height"), quit on exit; a clear failure without one."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are missing: run `make chromium` (Debian's chromium, chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={window_size}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
