"""The try-it page in a real browser: Debian's headless Chromium, driven by selenium through chromium-driver.

A person types a deletion request and presses Classify; the page must show
the intent the model gives, a bar per intent and the model version. The
screenshot is kept as a test artifact (its path is printed) for a person to
look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("kserve", reason="the serving tests run in the serving environment (.venv/serving)")
pytest.importorskip("selenium", reason="selenium comes with the serving environment (.venv/serving)")

from headless_chromium import ARTIFACTS, headless_chromium
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from serving_runs import TrainedRegistry

from privacy_pipeline.serving.process import ServerProcess

DELETION_REQUEST = "Hi, please delete my account and erase all the personal data you have on me. Thanks"
# Debian's packages (make chromium installs them).


@pytest.fixture()
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium("1000,800") as driver:
        yield driver


def test_a_person_types_a_deletion_request_and_sees_the_intent_bars_and_version(
    model_server: ServerProcess, trained: TrainedRegistry, browser: webdriver.Chrome
) -> None:
    browser.get(model_server.page_url)
    browser.find_element(By.ID, "message").send_keys(DELETION_REQUEST)
    browser.find_element(By.ID, "classify").click()
    WebDriverWait(browser, 120).until(expected_conditions.visibility_of_element_located((By.ID, "intent")))

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "try-it-page.png"
    browser.save_screenshot(str(screenshot))
    print(f"\ntry-it page screenshot: {screenshot}")

    assert browser.find_element(By.ID, "intent").text == "data_deletion"
    assert browser.find_element(By.ID, "version").text == trained.version
    rows = browser.find_elements(By.CSS_SELECTOR, "#bars .row")
    shown = {row.get_attribute("data-intent"): row.find_element(By.CSS_SELECTOR, ".p").text for row in rows}
    assert set(shown) == set(trained.config.labels)
    # The top bar is the shown intent's, and the percentages add up to 100.
    assert max(shown, key=lambda name: float(shown[name].rstrip("%"))) == "data_deletion"
    assert sum(float(p.rstrip("%")) for p in shown.values()) == pytest.approx(100.0, abs=0.5)
    assert browser.find_element(By.ID, "error").text == ""
    assert Path(screenshot).stat().st_size > 0


def test_the_page_shows_the_servers_error_for_an_empty_message(
    model_server: ServerProcess, browser: webdriver.Chrome
) -> None:
    browser.get(model_server.page_url)
    browser.find_element(By.ID, "classify").click()
    WebDriverWait(browser, 60).until(lambda driver: driver.find_element(By.ID, "error").text)
    assert "message 0 is empty" in browser.find_element(By.ID, "error").text
