"""The try-it page: type a message, see the intent, a bar per intent's probability and the model version.

Plain HTML and a few lines of JavaScript, served by the model server itself at
``/try``; it calls the same V2 ``infer`` route as any client.
"""

from __future__ import annotations

import json

PAGE_PATH = "/try"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Privacy intent: try it</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  textarea { width: 100%; font: inherit; padding: .5rem; box-sizing: border-box; }
  button { font: inherit; padding: .4rem 1.2rem; margin-top: .5rem; }
  #intent { font-size: 1.6rem; font-weight: 600; margin: 1rem 0 .5rem; }
  .row { display: grid; grid-template-columns: 12rem 1fr 4rem; gap: .5rem; align-items: center; margin: .25rem 0; }
  .track { background: #eee; height: 1rem; border-radius: .2rem; overflow: hidden; }
  .bar { background: #2f6fb0; height: 100%; }
  .row.top .bar { background: #c0392b; }
  #error { color: #b00020; }
  #version { color: #666; font-size: .9rem; margin-top: 1rem; }
</style>
</head>
<body>
<h1>Privacy intent</h1>
<p>Type a customer message; the champion model says which privacy request it is, if any.</p>
<form id="ask">
  <textarea id="message" rows="4" placeholder="e.g. Please delete my account and all my data."></textarea>
  <button id="classify" type="submit">Classify</button>
</form>
<div id="error" role="alert"></div>
<div id="result" hidden>
  <div>Intent: <span id="intent"></span></div>
  <div id="bars"></div>
  <div>Model version <span id="version"></span></div>
</div>
<script>
const MODEL = __MODEL__;
document.getElementById("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("error");
  error.textContent = "";
  const text = document.getElementById("message").value;
  const body = {inputs: [{name: "text", datatype: "BYTES", shape: [1], data: [text]}]};
  const response = await fetch(`/v2/models/${encodeURIComponent(MODEL)}/infer`, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) { error.textContent = answer.error || JSON.stringify(answer.detail || answer); return; }
  const out = Object.fromEntries(answer.outputs.map((o) => [o.name, o]));
  const intents = out.probabilities.parameters.intents.split(",");
  const intent = out.intent.data[0];
  document.getElementById("intent").textContent = intent;
  document.getElementById("version").textContent = answer.model_version;
  const bars = document.getElementById("bars");
  bars.replaceChildren(...intents.map((name, i) => {
    const p = out.probabilities.data[i];
    const row = document.createElement("div");
    row.className = name === intent ? "row top" : "row";
    row.dataset.intent = name;
    row.innerHTML = '<span class="name"></span><div class="track"><div class="bar"></div></div><span class="p"></span>';
    row.querySelector(".name").textContent = name;
    row.querySelector(".bar").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".p").textContent = `${(100 * p).toFixed(1)}%`;
    return row;
  }));
  document.getElementById("result").hidden = false;
});
</script>
</body>
</html>
"""


def page_html(model_name: str) -> str:
    """The page, calling ``model_name``'s infer route."""
    # A JSON string literal inside <script>: "<" escaped so no name can close the script element.
    return _PAGE.replace("__MODEL__", json.dumps(model_name).replace("<", "\\u003c"))
