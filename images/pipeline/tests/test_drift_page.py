"""The drift report in a real browser: Debian's headless Chromium, driven by selenium through chromium-driver.

The page is the one conversations-drift writes, for a comparison of an ordinary synthetic day with a half-shifted
one (synth-conversations --shift 0.5; bag-of-words vectors stand in for the sentence embeddings). A person opens
it: it renders, every plot has loaded (naturalWidth > 0), and the verdict, the score and the features named are
the report JSON's. Runs in the serving environment, where selenium is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="selenium comes with the serving environment (.venv/serving)")

import numpy as np
import pandas as pd
from headless_chromium import ARTIFACTS, headless_chromium
from selenium import webdriver
from selenium.webdriver.common.by import By

from privacy_pipeline.config import load_config
from privacy_pipeline.stages import drift, synth_conversations


def _side(tmp_path: Path, name: str, day: str, shift: float) -> drift.Side:
    """A synthetic day's user turns, joined per conversation, with bag-of-words vectors and the written intents."""
    from sklearn.feature_extraction.text import HashingVectorizer

    out = tmp_path / f"{name}.jsonl"
    synth_conversations.run(config=load_config(), out=str(out), day=day, conversations=200, seed=7, shift=shift)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    texts = ["\n".join(m["text"] for m in r["messages"] if m["role"] == "user") for r in records]
    vectors = HashingVectorizer(n_features=384, alternate_sign=False, norm="l2").transform(texts).toarray()
    return drift.Side(name, texts, vectors.astype(np.float32), pd.Series([r["synthetic_intent"] for r in records]))


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium("1100,900") as driver:
        yield driver


def test_the_drift_page_renders_every_plot_and_shows_the_reports_verdict(tmp_path, browser) -> None:
    settings = load_config(None, ["drift.sample_size=200"]).drift
    comparison = drift._compare(
        _side(tmp_path, "recent", "2026-11-19", 0.0), _side(tmp_path, "day", "2026-11-20", 0.5), settings
    )
    report = {
        "day": "2026-11-20",
        "conversations": 200,
        "champion_version": "20261117T020000Z-aaaaaaaa",
        "auc_threshold": settings.auc_threshold,
        "drift_score": comparison["domain_auc"],
        "drifted": comparison["domain_auc"] > settings.auc_threshold,
        "top_features": [f["feature"] for f in comparison["top_features"]],
        "notes": [],
        "comparisons": {"recent_days": comparison},
        "config": settings.model_dump(mode="json"),
    }
    page = tmp_path / "report.html"
    page.write_text(drift._html_page(report), encoding="utf-8")

    browser.get(page.resolve().as_uri())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "drift-report.png"
    browser.save_screenshot(str(screenshot))
    print(f"\ndrift report screenshot: {screenshot}")

    assert browser.title == "Drift report 2026-11-20"
    images = browser.find_elements(By.TAG_NAME, "img")
    # PSI bars, the embedding projection and the intent mix.
    assert len(images) == 3
    for image in images:
        width = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
        assert width and width > 0, image.get_attribute("alt")
    assert report["drifted"] is True
    assert browser.find_element(By.ID, "verdict").text == "DRIFTED"
    assert browser.find_element(By.ID, "drift-score").text == f"{report['drift_score']:.3f}"
    body = browser.find_element(By.TAG_NAME, "body").text
    for feature in report["top_features"]:
        assert feature in body
