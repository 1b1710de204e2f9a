"""The model server, for real: a champion the pipeline trained, served by ``privacy-pipeline serve`` on loopback.

Requests go over HTTP with Triton's client (it speaks the same Open Inference
Protocol) or plain urllib for the malformed ones. The answers must equal the
saved pipeline's own ``predict_proba`` on the same texts; every bad request
gets a 4xx a caller can act on and the next good request is answered; a
version that is missing, corrupt or untrusted never becomes ready. The try-it page is driven in a real
browser (Debian's headless Chromium through selenium and chromium-driver) against the same server: one server
start per test process serves every test here.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("kserve", reason="the serving tests run in the serving environment (.venv/serving)")
pytest.importorskip("selenium", reason="selenium comes with the serving environment (.venv/serving)")

import skops.io as sio
import tritonclient.http as triton
from headless_chromium import ARTIFACTS, headless_chromium
from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from serving_runs import TrainedRegistry
from sklearn.preprocessing import FunctionTransformer

from privacy_pipeline import cli, model_io, modeling, registry, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.serving import model as serving_model
from privacy_pipeline.serving.contract import MODEL_NAME
from privacy_pipeline.serving.model import MAX_TEXT_CHARS, MAX_TEXTS_PER_REQUEST
from privacy_pipeline.serving.page import PAGE_PATH
from privacy_pipeline.serving.process import ServerProcess

MESSAGES = [
    "Please delete my account and all the personal data you hold about me.",
    "I want a copy of all the data you have stored on me.",
    "Stop sending me marketing emails, unsubscribe me from everything.",
    "My parcel has not arrived yet, can you check the tracking number?",
    "How long do you keep my information and who do you share it with?",
    "I withdraw my consent for you to process my data.",
]
# Written into one request below; it must never reach the server's log.
CANARY = "zebra-canary-7731"


def _saved_pipeline_answers(trained: TrainedRegistry, texts: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """What the registered pipeline itself says: featurized as training does, then its predict_proba."""
    from privacy_pipeline.stages.featurize import featurize_frame

    pipeline = model_io.load_model(trained.model_uri)
    spec = storage.read_json(registry.RegistryLayout(trained.registry_uri).metadata(trained.version))["feature_spec"]
    features, _ = featurize_frame(pd.DataFrame({"id": range(len(texts)), "text": texts}), trained.config)
    proba = pipeline.predict_proba(modeling.model_inputs(features, spec, "test", "test"))
    classes = [str(c) for c in pipeline.classes_]
    return [classes[i] for i in proba.argmax(axis=1)], proba, classes


def _post(url: str, body: bytes | dict[str, Any]) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def _texts_body(texts: list[Any], **tensor: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts, **tensor}]}


def _text(value: bytes | str) -> str:
    """A BYTES tensor element: bytes from a binary tensor, str from a JSON one."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _outputs(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {output["name"]: output for output in answer["outputs"]}


# --- the "done when" test ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary_data", [False, True], ids=["json-tensors", "binary-tensors"])
def test_v2_answers_equal_the_saved_pipelines_predict_proba(
    model_server: ServerProcess, trained: TrainedRegistry, binary_data: bool
) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{model_server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    text_input = triton.InferInput("text", [len(MESSAGES)], "BYTES")
    text_input.set_data_from_numpy(np.array(MESSAGES, dtype=np.object_), binary_data=binary_data)
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary_data)
        for name in ("intent", "probabilities", "model_version")
    ]
    result = client.infer(MODEL_NAME, [text_input], outputs=outputs)

    intents = [_text(value) for value in result.as_numpy("intent")]
    probabilities = result.as_numpy("probabilities")
    versions = {_text(value) for value in result.as_numpy("model_version")}
    expected_intents, expected_proba, classes = _saved_pipeline_answers(trained, MESSAGES)

    assert intents == expected_intents
    assert probabilities.shape == (len(MESSAGES), len(classes))
    np.testing.assert_allclose(probabilities, expected_proba, rtol=0, atol=1e-6)
    assert result.get_output("probabilities")["parameters"]["intents"].split(",") == classes
    assert versions == {trained.version} and result.get_response()["model_version"] == trained.version
    # The model the pipeline trained knows a deletion request when it sees one.
    assert intents[0] == "data_deletion"


def test_concurrent_single_message_requests_each_get_their_own_answer(
    model_server: ServerProcess, trained: TrainedRegistry
) -> None:
    texts = [f"{message} (ticket {i})" for i, message in enumerate(MESSAGES * 4)]
    expected_intents, expected_proba, _ = _saved_pipeline_answers(trained, texts)

    def ask(text: str) -> tuple[str, list[float]]:
        status, answer = _post(model_server.infer_url, _texts_body([text]))
        assert status == 200, answer
        outputs = _outputs(answer)
        return outputs["intent"]["data"][0], outputs["probabilities"]["data"]

    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        answers = list(pool.map(ask, texts))
    assert [intent for intent, _ in answers] == expected_intents
    # Batched with strangers, each message still gets its own probabilities (padding differs, so float noise only).
    np.testing.assert_allclose(np.array([p for _, p in answers]), expected_proba, rtol=0, atol=1e-5)


# --- bad requests -----------------------------------------------------------------------------------------------

ONE_MB = 1024 * 1024
BAD_REQUESTS: dict[str, tuple[Any, str, int, str]] = {
    # case: (body, route suffix, status, what the error says)
    "malformed-json": (b'{"inputs": [{"name": "text", ', "infer", 422, "JSON decode error"),
    "no-inputs": ({"id": "x"}, "infer", 422, "inputs"),
    "wrong-input-name": (
        {"inputs": [{"name": "message", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]},
        "infer",
        400,
        'expected exactly one input named "text"',
    ),
    "wrong-datatype": (
        {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [0.5]}]},
        "infer",
        400,
        "has datatype FP32; send the messages as BYTES",
    ),
    "shape-disagrees-with-data": (_texts_body(["hi"], shape=[3]), "infer", 400, "has shape [3] but carries 1 values"),
    "two-dimensional-shape": (
        _texts_body(["a", "b", "c", "d"], shape=[2, 2]),
        "infer",
        400,
        "expected [n] or [n, 1] for n messages",
    ),
    "not-a-string": (_texts_body([42]), "infer", 400, "message 0 is not a string (got int)"),
    # JSON escapes a lone surrogate, which is no UTF-8 text; raw Latin-1 bytes make the body itself invalid.
    "lone-surrogate": (
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hi", "caf\\ud800"]}]}',
        "infer",
        400,
        "message 1 is not UTF-8 text (it holds a lone surrogate)",
    ),
    "latin1-json-body": (
        '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["caf\u00e9"]}]}'.encode("latin-1"),
        "infer",
        400,
        "error parsing the body",
    ),
    "empty-text": (_texts_body(["Hello", "   "]), "infer", 400, "message 1 is empty"),
    "one-megabyte-text": (
        _texts_body(["a" * ONE_MB]),
        "infer",
        400,
        f"message 0 has {ONE_MB:,} characters; at most {MAX_TEXT_CHARS:,}",
    ),
    "ten-thousand-messages": (
        _texts_body(["delete my data"] * 10_000),
        "infer",
        400,
        f"10000 messages in one request; at most {MAX_TEXTS_PER_REQUEST}, split the batch",
    ),
    "unknown-model": (_texts_body(["hi"]), "../nope/infer", 404, "Model with name nope does not exist"),
    "unknown-version": (_texts_body(["hi"]), "../privacy-intent/versions/19990101T000000Z-00000000/infer", 404, ""),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_that_says_what_to_fix_and_the_next_request_is_answered(
    model_server: ServerProcess, trained: TrainedRegistry, case: str
) -> None:
    body, suffix, status, message = BAD_REQUESTS[case]
    url = urllib.parse.urljoin(f"{model_server.url}/v2/models/{MODEL_NAME}/", suffix)
    got_status, answer = _post(url, body)
    assert got_status == status, answer
    # The SDK's own refusals (422) come as FastAPI's "detail", ours as "error".
    error_text = answer.get("error") or json.dumps(answer.get("detail"))
    assert message in error_text
    if case == "unknown-version":
        assert f"this server serves version {trained.version}" in answer["error"]

    good_status, good = _post(model_server.infer_url, _texts_body([MESSAGES[0]]))
    assert good_status == 200, good
    assert _outputs(good)["intent"]["data"] == ["data_deletion"]


def test_a_binary_message_that_is_not_utf8_gets_a_400_naming_it_and_its_bytes_stay_out_of_the_log(
    model_server: ServerProcess,
) -> None:
    # The SDK decodes binary BYTES tensors while parsing, before our model runs: without the data plane's
    # check this is a 500 whose message and traceback carry the raw bytes.
    client = triton.InferenceServerClient(url=f"127.0.0.1:{model_server.port}")
    latin1 = f"{CANARY}: efface mes donn\xe9es".encode("latin-1")
    text_input = triton.InferInput("text", [2], "BYTES")
    text_input.set_data_from_numpy(np.array([MESSAGES[0].encode(), latin1], dtype=np.object_), binary_data=True)

    with pytest.raises(triton.InferenceServerException) as refused:
        client.infer(MODEL_NAME, [text_input])

    assert refused.value.status() == "400"
    assert 'message 1 of input "text" is not UTF-8 text' in refused.value.message()
    assert CANARY not in refused.value.message()
    log_text = model_server.log_path.read_text(encoding="utf-8", errors="replace")
    assert CANARY not in log_text and "donn" not in log_text
    good_status, good = _post(model_server.infer_url, _texts_body([MESSAGES[0]]))
    assert good_status == 200 and _outputs(good)["intent"]["data"] == ["data_deletion"]


def test_the_version_being_served_answers_on_its_versioned_route(
    model_server: ServerProcess, trained: TrainedRegistry
) -> None:
    url = f"{model_server.url}/v2/models/{MODEL_NAME}/versions/{trained.version}/infer"
    status, answer = _post(url, _texts_body([MESSAGES[0]]))
    assert status == 200 and answer["model_version"] == trained.version
    assert _get(f"{model_server.url}/v2/models/{MODEL_NAME}/versions/{trained.version}/ready")[0] == 200
    assert _get(f"{model_server.url}/v2/models/{MODEL_NAME}/versions/other/ready")[0] == 404


# --- observability ----------------------------------------------------------------------------------------------


def _samples(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = _get(f"{server.url}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("privacy_intent_serving_")
    }


def test_metrics_count_requests_by_outcome_latency_batches_and_intents(model_server: ServerProcess) -> None:
    before = _samples(model_server)
    assert _post(model_server.infer_url, _texts_body(MESSAGES[:2]))[0] == 200
    assert _post(model_server.infer_url, _texts_body([""]))[0] == 400
    after = _samples(model_server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("privacy_intent_serving_requests_total", outcome="ok") == 1
    assert delta("privacy_intent_serving_requests_total", outcome="client_error") == 1
    assert delta("privacy_intent_serving_request_seconds_count", outcome="ok") == 1
    assert delta("privacy_intent_serving_request_seconds_count", outcome="client_error") == 1
    assert delta("privacy_intent_serving_batch_size_sum") == 2
    predicted = sum(
        after[key] - before.get(key, 0.0) for key in after if key[0] == "privacy_intent_serving_predictions_total"
    )
    assert predicted == 2
    assert delta("privacy_intent_serving_predictions_total", intent="data_deletion") >= 1


def test_request_logs_are_structured_and_never_hold_message_text(model_server: ServerProcess) -> None:
    secret = f"{CANARY}: please erase everything you know about me"
    assert _post(model_server.infer_url, _texts_body([secret, MESSAGES[2]]))[0] == 200
    assert _post(model_server.infer_url, _texts_body([secret + "x" * MAX_TEXT_CHARS]))[0] == 400
    log_text = model_server.log_path.read_text(encoding="utf-8")
    assert CANARY not in log_text and "erase everything" not in log_text
    records = [json.loads(line.split(": ", 1)[1]) for line in log_text.splitlines() if '{"event": "infer"' in line]
    answered = [r for r in records if r.get("texts") == 2 and r["text_chars"] == len(secret) + len(MESSAGES[2])]
    assert answered and answered[-1]["status"] == 200 and answered[-1]["outcome"] == "ok"
    assert set(answered[-1]) >= {"request_id", "seconds", "request_bytes", "model_version", "intents"}
    assert any(r["status"] == 400 and r["outcome"] == "client_error" for r in records)


def test_the_try_it_page_is_served_by_the_same_server(model_server: ServerProcess) -> None:
    status, page = _get(f"{model_server.url}{PAGE_PATH}")
    assert status == 200
    assert "/v2/models/${encodeURIComponent(MODEL)}/infer" in page and json.dumps(MODEL_NAME) in page


DELETION_REQUEST = "Hi, please delete my account and erase all the personal data you have on me. Thanks"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the page tests; each opens the page afresh."""
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


def test_make_serve_prints_the_servers_own_routes() -> None:
    from embedded import serve as make_serve

    assert (make_serve.MODEL_NAME, make_serve.PAGE_PATH) == (MODEL_NAME, PAGE_PATH)
    lines = make_serve.try_it_lines("http://127.0.0.1:8080")
    assert f"http://127.0.0.1:8080/v2/models/{MODEL_NAME}/infer" in lines and "http://127.0.0.1:8080/try" in lines


# --- versions that must never be served -------------------------------------------------------------------------


def _registry_copy(trained: TrainedRegistry, tmp_path: Path) -> tuple[str, registry.RegistryLayout]:
    copy = tmp_path / "registry"
    shutil.copytree(trained.registry_uri, copy)
    layout = registry.RegistryLayout(str(copy))
    # The pointer names its model by full URI: point it into the copy, so the damage below is what gets loaded.
    pointer = storage.read_json(layout.champion)
    storage.write_json(layout.champion, {**pointer, "model_uri": layout.model(trained.version)})
    return str(copy), layout


def _damage(case: str, trained: TrainedRegistry, tmp_path: Path) -> tuple[str, list[str], str]:
    """A registry whose champion (or asked-for version) cannot be served, the serve flags, and the error expected."""
    registry_uri, layout = _registry_copy(trained, tmp_path)
    model_file = layout.model(trained.version)
    if case == "missing-version":
        return registry_uri, ["--version", "20990101T000000Z-deadbeef"], "has no model file for version 20990101T"
    if case == "no-champion":
        os.remove(layout.champion)
        return registry_uri, [], "has no champion yet"
    if case == "corrupt-file":
        data = Path(model_file).read_bytes()
        Path(model_file).write_bytes(data[: len(data) // 2])
        return registry_uri, [], "is not a readable skops model file"
    if case == "untrusted-types":
        Path(model_file).write_bytes(sio.dumps(FunctionTransformer(func=os.system)))
        return registry_uri, [], "contains untrusted types ['posix.system']; refusing to load"
    if case == "embedded-mode-model":
        metadata = storage.read_json(layout.metadata(trained.version))
        metadata["feature_spec"]["mode"] = "embedded"
        storage.write_json(layout.metadata(trained.version), metadata)
        return registry_uri, [], "trained in embedded mode"
    raise AssertionError(case)


UNSERVABLE = ["missing-version", "no-champion", "corrupt-file", "untrusted-types", "embedded-mode-model"]


@pytest.mark.parametrize("case", UNSERVABLE)
def test_an_unservable_version_fails_the_command_with_one_line_before_anything_listens(
    trained: TrainedRegistry, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    registry_uri, flags, expected = _damage(case, trained, tmp_path)
    started: list[object] = []
    monkeypatch.setattr("privacy_pipeline.serving.server.serve", lambda *a, **k: started.append(a))
    code = cli.main(["serve", "--registry", registry_uri, "--port", "1", *flags])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == cli.EXIT_STAGE_ERROR
    assert error.startswith("error: serve: ") or error.startswith("error: model: ")
    assert expected in error
    assert started == [], "the server must not start with a model that failed to load"


@pytest.mark.parametrize("case", ["corrupt-file", "untrusted-types"])
def test_a_failed_load_leaves_the_model_not_ready_and_unpublished(
    trained: TrainedRegistry, tmp_path: Path, case: str
) -> None:
    registry_uri, _, expected = _damage(case, trained, tmp_path)
    model = serving_model.PrivacyIntentModel(registry_uri, config=PipelineConfig())
    with pytest.raises(StageError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        model.load()
    assert model.ready is False and model.loaded is None


def test_a_server_process_with_an_unservable_champion_exits_and_never_becomes_ready(
    trained: TrainedRegistry, tmp_path: Path
) -> None:
    registry_uri, _, expected = _damage("untrusted-types", trained, tmp_path)
    server = ServerProcess(registry_uri, log_path=tmp_path / "serve.log", ready_timeout=600)
    server.start()
    try:
        assert server.wait_exit(timeout=600) == cli.EXIT_STAGE_ERROR
    finally:
        server.stop()
    log_text = server.log_path.read_text(encoding="utf-8")
    assert expected in log_text
    assert "Uvicorn running" not in log_text and "serving privacy-intent" not in log_text
