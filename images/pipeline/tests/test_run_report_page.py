"""The run report in a real browser: Debian's headless Chromium, driven by selenium through chromium-driver.

The report is the one register wrote for the serving tier's trained run
(serving_runs.py: synth through register, in this process). A person opens
it: it renders, every image has loaded (naturalWidth > 0), and each figure it
shows is the one in the metrics, validation and registry JSON, rounded as
shown. A screenshot is kept for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="selenium comes with the serving environment (.venv/serving)")

from headless_chromium import ARTIFACTS, headless_chromium
from selenium import webdriver
from selenium.webdriver.common.by import By
from serving_runs import TrainedRegistry

from privacy_pipeline import registry, storage
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.run_report import report_uri


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium("1100,900") as driver:
        yield driver


def shown(browser: webdriver.Chrome, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def test_the_report_renders_every_image_and_shows_the_numbers_of_the_json(
    trained: TrainedRegistry, browser: webdriver.Chrome
) -> None:
    champion = registry.champion(trained.registry_uri)
    assert champion is not None
    run_uri = str(champion["run_uri"])
    layout = RunLayout(run_uri)
    metrics = storage.read_json(layout.metrics)
    validation = storage.read_json(layout.validation_report)
    record = storage.read_json(RegistryLayout(trained.registry_uri).run_record(trained.version))

    browser.get(Path(report_uri(run_uri)).resolve().as_uri())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "run-report.png"
    browser.save_screenshot(str(screenshot))
    print(f"\nrun report screenshot: {screenshot}")

    assert browser.title == f"Training run {Path(run_uri).name}"
    images = browser.find_elements(By.TAG_NAME, "img")
    # evaluate's three plots and the monitoring chart.
    assert {image.get_attribute("id") for image in images} == {
        "plot-confusion_matrix",
        "plot-roc",
        "plot-pr",
        "plot-history",
    }
    for image in images:
        loaded = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
        assert loaded > 0, f"{image.get_attribute('id')} did not load"

    assert shown(browser, "candidate-f1-macro") == f"{metrics['f1_macro']:.3f}"
    assert shown(browser, "candidate-accuracy") == f"{metrics['accuracy']:.3f}"
    assert shown(browser, "baseline-f1-macro") == f"{metrics['baseline']['f1_macro']:.3f}"
    assert shown(browser, "candidate-f1-macro-unseen") == f"{metrics['phrasing']['unseen']['f1_macro']:.3f}"
    assert shown(browser, "rows-valid") == str(validation["rows_valid"])
    assert shown(browser, "rows-quarantined") == str(validation["rows_quarantined"])
    low, high = record["gate"]["interval"]
    assert shown(browser, "gate-difference") == f"{record['gate']['difference']:+.3f}"
    assert (shown(browser, "gate-interval-low"), shown(browser, "gate-interval-high")) == (
        f"{low:+.3f}",
        f"{high:+.3f}",
    )
    assert shown(browser, "model-version") == trained.version
    assert record["decision_reason"] in shown(browser, "decision")
    # Exact values behind the rounded ones, for anyone scraping the page.
    exact = browser.find_element(By.ID, "candidate-f1-macro").get_attribute("data-value")
    assert float(exact) == metrics["f1_macro"]
