"""The MLflow UI in a real browser: Debian's headless Chromium, driven by selenium through chromium-driver.

Two registrations mirrored to a real MLflow server (test_tracking's fixtures) must appear in the
experiment page as two runs, and the registered model's page must show the ``champion`` alias. The
screenshots are kept as test artifacts under ``.local/test-artifacts/`` for a person to look at.
Runs in the serving environment, where selenium is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("selenium", reason="selenium comes with the serving environment (.venv/serving)")

from headless_chromium import ARTIFACTS, headless_chromium
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_tracking import mirrored, runs, server  # noqa: F401  (module fixtures: two mirrored registrations)

from privacy_pipeline import tracking


@pytest.fixture()
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium("1400,900") as driver:
        yield driver


def _page_text(browser: webdriver.Chrome) -> str:
    return str(browser.find_element(By.TAG_NAME, "body").text)


def test_both_runs_show_in_the_experiment_and_the_model_shows_its_champion_alias(
    mirrored: dict[str, Any],  # noqa: F811
    browser: webdriver.Chrome,
) -> None:
    from mlflow import MlflowClient

    url = mirrored["server"]
    versions = [xcom["model_version"] for xcom in mirrored["xcoms"].values()]
    experiment = MlflowClient(tracking_uri=url).get_experiment_by_name(tracking.EXPERIMENT)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    # MLflow 3 opens an experiment on its GenAI overview; the training runs have their own tab.
    browser.get(f"{url}/#/experiments/{experiment.experiment_id}/runs")
    # The UI is a single-page app that fetches the runs after loading: wait until both are drawn.
    WebDriverWait(browser, 90).until(lambda _: all(version in _page_text(browser) for version in versions))
    runs_shot = ARTIFACTS / "mlflow-experiment.png"
    browser.save_screenshot(str(runs_shot))
    print(f"screenshot: {runs_shot}")

    browser.get(f"{url}/#/models/{tracking.REGISTERED_MODEL}")
    WebDriverWait(browser, 90).until(lambda _: "champion" in _page_text(browser))
    model_shot = ARTIFACTS / "mlflow-model.png"
    browser.save_screenshot(str(model_shot))
    print(f"screenshot: {model_shot}")
    assert "champion" in _page_text(browser)
    assert runs_shot.stat().st_size > 10_000 and model_shot.stat().st_size > 10_000
