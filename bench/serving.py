"""``make bench``'s serving section: the model server under concurrent load, against bare in-process prediction.

Side by side in one run, on one champion the pipeline trains here (text mode):

- bare: in-process featurize + ``predict_proba`` on batches of ``BATCH`` messages
  (the ceiling: no HTTP, no JSON, nothing waits) and on one message at a time;
- the server (``privacy-pipeline serve`` from the serving venv, on 127.0.0.1)
  under 1, 8 and 32 concurrent clients that each send one message per request
  over the Open Inference Protocol, with its micro-batcher on, then off.

The load client is tritonclient's HTTP client (the same protocol), one
greenlet per client on gevent, so the client itself costs little of the cores
the server is measured on; every request count is bounded. Each side is its
own process. The machine is shared: the numbers are as noisy as its load.

    .venv/pipeline/bin/python -m bench.run --sections serving   # this section alone, under bench/out/
    .venv/pipeline/bin/python -m bench.serving record           # ... and into bench/results.json and README
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.measure import REPO, BenchFailure, PeakRssSampler, kill_tree, load_average, run_measured

log = logging.getLogger("bench")

SERVING_BIN = REPO / ".venv" / "serving" / "bin"
# Messages per bare batch and the server's batch bound: KServe's batcher bound in the InferenceService.
BATCH = 32
CLIENT_COUNTS = (1, 8, 32)
# Requests per load level (enough for a p99), and a time bound per level so that a
# slow server (or a busy machine) ends the run anyway: no new request starts after it.
REQUESTS = {1: 100, 8: 240, 32: 480}
LEVEL_BUDGET_SECONDS = 90.0
SINGLE_REPEATS = 100
TRAIN_ROWS = 1_200
MESSAGES = 512
READY_TIMEOUT_SECONDS = 300
CHILD_TIMEOUT_SECONDS = 1_800
# The server's flag that turns its micro-batcher off (a batch is then one request).
BATCHING_OFF = ("--max-batch-size", "1")
# A quick tune: the section measures serving, not the search.
TRAIN_OVERRIDES = ("tune.n_trials=2",)

TARGET_THROUGHPUT_SHARE = 0.8
TARGET_P99_MS = 250.0
TARGET_SINGLE_P50_MULTIPLE = 1.5


# --- the measured sides (child processes) -------------------------------------------------------------------------


def _percentile_ms(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index] * 1000.0


def bare_side(registry_uri: str, texts_path: Path) -> dict[str, Any]:
    """The champion in this process: featurize + predict_proba, in batches of BATCH and one message at a time."""
    import pandas as pd

    from privacy_pipeline import model_io, modeling, registry
    from privacy_pipeline.config import PipelineConfig
    from privacy_pipeline.stages.featurize import featurize_frame

    config = PipelineConfig()
    champion = registry.champion(registry_uri)
    if champion is None:
        raise SystemExit(f"bench.serving: no champion in {registry_uri}")
    model = model_io.load_model(str(champion["model_uri"]))
    spec = storage_json(registry.RegistryLayout(registry_uri).metadata(str(champion["version"])))["feature_spec"]
    texts = json.loads(texts_path.read_text(encoding="utf-8"))

    def predict(batch: list[str]) -> Any:
        frame = pd.DataFrame({"id": [str(i) for i in range(len(batch))], "text": batch})
        features, _ = featurize_frame(frame, config, source="bench")
        return model.predict_proba(modeling.model_inputs(features, spec, "bench", "bench"))

    predict(texts[:BATCH])  # loads the encoder; not measured
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        predict(texts[start : start + BATCH])
    batch_seconds = time.perf_counter() - started
    single: list[float] = []
    for index in range(SINGLE_REPEATS):
        one = time.perf_counter()
        predict([texts[index % len(texts)]])
        single.append(time.perf_counter() - one)
    return {
        "messages": len(texts),
        "batch": BATCH,
        "batch_messages_per_second": len(texts) / batch_seconds,
        "single_p50_ms": _percentile_ms(single, 50),
        "single_p99_ms": _percentile_ms(single, 99),
        "single_repeats": SINGLE_REPEATS,
    }


def storage_json(uri: str) -> Any:
    from privacy_pipeline import storage

    return storage.read_json(uri)


def load_side(url: str, model_name: str, texts_path: Path, clients: list[int]) -> dict[str, Any]:
    """Each client count in turn: that many greenlets, each sending one message per request, until REQUESTS."""
    import gevent
    import numpy as np
    import tritonclient.http as httpclient

    texts = json.loads(texts_path.read_text(encoding="utf-8"))
    levels: dict[str, Any] = {}
    for count in clients:
        client = httpclient.InferenceServerClient(url, concurrency=count, network_timeout=120.0)
        metadata = client.get_model_metadata(model_name)
        declared = metadata["inputs"][0]
        shape = [1 if size == -1 else int(size) for size in declared["shape"]]

        def one(text: str, client: Any = client, declared: Any = declared, shape: list[int] = shape) -> float:
            tensor = httpclient.InferInput(declared["name"], shape, "BYTES")
            tensor.set_data_from_numpy(np.array([text.encode("utf-8")], dtype=np.object_).reshape(shape))
            started = time.perf_counter()
            client.infer(model_name, [tensor])
            return time.perf_counter() - started

        total = REQUESTS[count]
        latencies: list[float] = []
        warm_up = iter(range(2 * count))
        todo = iter(range(total))

        def worker(work: Any, sink: list[float] | None, deadline: float) -> None:
            # Greenlets share one iterator safely: they switch only on network waits.
            for index in work:
                if time.perf_counter() > deadline:
                    return
                elapsed = one(texts[index % len(texts)])
                if sink is not None:
                    sink.append(elapsed)

        warm_deadline = time.perf_counter() + LEVEL_BUDGET_SECONDS
        gevent.joinall([gevent.spawn(worker, warm_up, None, warm_deadline) for _ in range(count)], raise_error=True)
        started = time.perf_counter()
        deadline = started + LEVEL_BUDGET_SECONDS
        gevent.joinall([gevent.spawn(worker, todo, latencies, deadline) for _ in range(count)], raise_error=True)
        wall = time.perf_counter() - started
        client.close()
        levels[str(count)] = {
            "clients": count,
            "requests": len(latencies),
            "requests_planned": total,
            "wall_s": wall,
            "messages_per_second": len(latencies) / wall,
            "p50_ms": _percentile_ms(latencies, 50),
            "p99_ms": _percentile_ms(latencies, 99),
        }
    return {"model": model_name, "levels": levels}


# --- the section (in the bench's process) -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(url: str, server: subprocess.Popen[str], log_path: Path) -> str:
    """The served model's name, once the server says it is ready; a server that exits or never gets ready fails."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchFailure(f"the server exited {server.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    # KServe's V1 model list ({"models": [names]}); V2 has no list route.
                    with urllib.request.urlopen(f"http://{url}/v1/models", timeout=5) as listing:
                        return str(json.load(listing)["models"][0])
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise BenchFailure(f"the server was not ready after {READY_TIMEOUT_SECONDS}s; see {log_path}")


def _serve_and_load(
    registry_uri: str, texts_path: Path, work: Path, name: str, extra: tuple[str, ...]
) -> dict[str, Any]:
    port = _free_port()
    url = f"127.0.0.1:{port}"
    log_path = work / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [str(SERVING_BIN / "privacy-pipeline"), "serve", "--registry", registry_uri, "--port", str(port), *extra]
    log.info("  %s: %s", name, " ".join(command[1:]))
    with log_path.open("w", encoding="utf-8") as server_log:
        server = subprocess.Popen(
            command, cwd=REPO, env=_env(work), stdout=server_log, stderr=subprocess.STDOUT, text=True
        )
        try:
            with PeakRssSampler(server.pid) as sampler:
                model_name = _wait_ready(url, server, log_path)
                load = run_measured(
                    [str(SERVING_BIN / "python"), "-m", "bench.serving", "load", "--url", url, "--model", model_name,
                     "--texts", str(texts_path), "--clients", ",".join(map(str, CLIENT_COUNTS))],
                    env=_env(work),
                    timeout=CHILD_TIMEOUT_SECONDS,
                    log_path=work / "logs" / f"{name}-client.log",
                )  # fmt: skip
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                import psutil

                kill_tree(psutil.Process(server.pid))
    for level in load.report["levels"].values():
        log.info("    %2d clients: %6.0f msg/s, p50 %5.1f ms, p99 %6.1f ms", level["clients"],
                 level["messages_per_second"], level["p50_ms"], level["p99_ms"])  # fmt: skip
    return {**load.report, "server_peak_rss_mib": sampler.peak_mib, "client_peak_rss_mib": load.peak_rss_mib}


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLCONFIGDIR": str(work / "matplotlib"),
        "PYTHONUNBUFFERED": "1",
    }


def train_champion(work: Path) -> str:
    """A text-mode champion trained and registered by the pipeline's own stages; its registry URI."""
    from bench.run import run_stage

    logs, run, registry_uri = work / "logs", str(work / "run"), str(work / "registry")
    source = work / "data" / "part-0000.csv"
    cli = str(Path(sys.executable).with_name("privacy-pipeline"))
    subprocess.run(
        [cli, "synth", "--out", str(source), "--rows", str(TRAIN_ROWS), "--seed", "7"],
        env=_env(work),
        check=True,
        capture_output=True,
    )
    run_stage("ingest", ["--source", str(source), "--run", run], work, logs, TRAIN_OVERRIDES)
    for stage in ("validate", "featurize", "split", "tune", "select", "train", "evaluate"):
        run_stage(stage, ["--run", run], work, logs, TRAIN_OVERRIDES)
    run_stage("register", ["--run", run, "--registry", registry_uri], work, logs, TRAIN_OVERRIDES)
    return registry_uri


def _messages(work: Path) -> Path:
    """MESSAGES fresh synthetic messages (another seed than training's), as a JSON list."""
    import pandas as pd

    source = work / "data" / "messages.csv"
    cli = str(Path(sys.executable).with_name("privacy-pipeline"))
    subprocess.run(
        [cli, "synth", "--out", str(source), "--rows", str(MESSAGES), "--seed", "8"],
        env=_env(work),
        check=True,
        capture_output=True,
    )
    texts = pd.read_csv(source)["text"].astype(str).tolist()
    path = work / "data" / "messages.json"
    path.write_text(json.dumps(texts), encoding="utf-8")
    return path


def serving_section(sizes: Any = None) -> dict[str, Any]:
    """Train a champion, then the bare sides and the server with batching on and off, one after another."""
    if not (SERVING_BIN / "privacy-pipeline").exists():
        raise BenchFailure(f"{SERVING_BIN / 'privacy-pipeline'} is missing; `make serving-env` builds the serving venv")
    work = REPO / "bench" / "out" / "serving"
    shutil.rmtree(work, ignore_errors=True)
    log.info("serving: training a text-mode champion on %d rows", TRAIN_ROWS)
    registry_uri = train_champion(work)
    texts_path = _messages(work)
    bare = run_measured(
        [sys.executable, "-m", "bench.serving", "bare", "--registry", registry_uri, "--texts", str(texts_path)],
        env=_env(work),
        timeout=CHILD_TIMEOUT_SECONDS,
        log_path=work / "logs" / "bare.log",
    )
    report = bare.report
    log.info("  bare: %.0f msg/s in batches of %d, single p50 %.1f ms", report["batch_messages_per_second"], BATCH,
             report["single_p50_ms"])  # fmt: skip
    return {
        "messages": MESSAGES,
        "train_rows": TRAIN_ROWS,
        "bare": {**report, "peak_rss_mib": bare.peak_rss_mib},
        "batching_on": _serve_and_load(registry_uri, texts_path, work, "server-batching-on", ()),
        "batching_off": _serve_and_load(registry_uri, texts_path, work, "server-batching-off", BATCHING_OFF),
        "load_average_after": load_average(),
    }


# --- targets and table --------------------------------------------------------------------------------------------


def serving_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's three serving targets, in bench.run's check format."""
    if "serving" not in results:
        return {}
    serving = results["serving"]
    bare, busy = serving["bare"], serving["batching_on"]["levels"][str(max(CLIENT_COUNTS))]
    single = serving["batching_on"]["levels"][str(min(CLIENT_COUNTS))]
    share = busy["messages_per_second"] / bare["batch_messages_per_second"]
    multiple = single["p50_ms"] / bare["single_p50_ms"]

    def check(measured: str, ratio: float, target: str, met: bool) -> dict[str, Any]:
        return {"measured": measured, "ratio": ratio, "target": target, "met": met, "note": ""}

    return {
        "serving_throughput": check(
            f"{busy['messages_per_second']:.0f} msg/s with {busy['clients']} clients vs "
            f"{bare['batch_messages_per_second']:.0f} bare in batches of {bare['batch']}",
            share,
            f">= {TARGET_THROUGHPUT_SHARE}x the bare batch ceiling",
            share >= TARGET_THROUGHPUT_SHARE,
        ),
        "serving_p99": check(
            f"p99 {busy['p99_ms']:.0f} ms with {busy['clients']} clients",
            busy["p99_ms"] / TARGET_P99_MS,
            f"< {TARGET_P99_MS:.0f} ms",
            busy["p99_ms"] < TARGET_P99_MS,
        ),
        "serving_single": check(
            f"single-client p50 {single['p50_ms']:.1f} ms vs bare single-message {bare['single_p50_ms']:.1f} ms",
            multiple,
            f"<= {TARGET_SINGLE_P50_MULTIPLE}x bare single-message predict",
            multiple <= TARGET_SINGLE_P50_MULTIPLE,
        ),
    }


def _met(met: bool) -> str:
    return "yes" if met else "**no**"


def serving_table(results: dict[str, Any], checks: dict[str, dict[str, Any]]) -> list[str]:
    if "serving" not in results:
        return []
    serving = results["serving"]
    bare = serving["bare"]
    throughput, p99, single = checks["serving_throughput"], checks["serving_p99"], checks["serving_single"]
    lines = [
        "",
        f"Serving (`privacy-pipeline serve`, Open Inference Protocol over HTTP on 127.0.0.1; {serving['messages']} "
        f"synthetic messages, one per request; tritonclient, one greenlet per client; measured "
        f"{serving.get('date', results['date'])}, load average before/after "
        f"{serving.get('load_average_before', '?')} / {serving['load_average_after']}, on a machine shared with "
        f"other work, so expect spread; a load level starts no request after {LEVEL_BUDGET_SECONDS:.0f} s):",
        "",
        "| side | clients (requests) | msg/s | p50 ms | p99 ms | peak RSS MiB | ratio vs target | met? |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        f"| bare: featurize + predict_proba in-process, batches of {bare['batch']} (the ceiling) |  | "
        f"{bare['batch_messages_per_second']:.1f} |  |  | {bare['peak_rss_mib']:.0f} |  |  |",
        f"| bare: one message at a time | 1 ({bare['single_repeats']}) | {1000 / bare['single_p50_ms']:.1f} | "
        f"{bare['single_p50_ms']:.1f} | {bare['single_p99_ms']:.1f} |  |  |  |",
    ]
    for key, label in (("batching_on", "server, micro-batcher on"), ("batching_off", "server, batching off")):
        side = serving[key]
        for count in CLIENT_COUNTS:
            level = side["levels"][str(count)]
            ratio, met = "", ""
            if key == "batching_on" and count == max(CLIENT_COUNTS):
                ratio = f"{throughput['ratio']:.2f}x ceiling (>= 0.8x); p99 {p99['ratio']:.2f}x 250 ms (< 1x)"
                met = f"throughput {_met(throughput['met'])}, p99 {_met(p99['met'])}"
            if key == "batching_on" and count == min(CLIENT_COUNTS):
                ratio, met = f"p50 {single['ratio']:.2f}x bare single (<= 1.5x)", _met(single["met"])
            rss = f"{side['server_peak_rss_mib']:.0f}" if count == min(CLIENT_COUNTS) else ""
            lines.append(
                f"| {label} | {count} ({level['requests']}) | {level['messages_per_second']:.1f} | "
                f"{level['p50_ms']:.1f} | {level['p99_ms']:.1f} | {rss} | {ratio} | {met} |"
            )
    return lines


SERVING_BLOCK_START = "Serving (`privacy-pipeline serve`"


def splice_serving_block(text: str, block: str, before: str | None = None) -> str:
    """``text`` with its serving block (paragraph + table) replaced by ``block``, or ``block`` added.

    Added before the first ``before`` if given (README's end marker), else at the end.
    """
    lines = text.splitlines()
    if SERVING_BLOCK_START in text:
        start = next(i for i, line in enumerate(lines) if line.startswith(SERVING_BLOCK_START))
        # The paragraph, one blank line, then the table's rows.
        end = start + 2
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        # The blank line before the paragraph belongs to the block too.
        if start > 0 and not lines[start - 1].strip():
            start -= 1
        lines[start:end] = block.splitlines()
        return "\n".join(lines) + "\n"
    if before is not None and before in text:
        head, tail = text.split(before, 1)
        return head.rstrip("\n") + "\n" + block + "\n" + before + tail
    return text.rstrip("\n") + "\n" + block + "\n"


def record() -> int:
    """This section alone, merged into bench/results.json, results.md and README's Performance tables.

    Only the serving block is written: the other sections' tables stay as
    their last full run drew them.
    """
    from bench import run as bench_run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    path = REPO / "bench" / "results.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    started = load_average()
    serving = serving_section()
    results["serving"] = {
        **serving,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_before": started,
    }
    results.setdefault("targets", {}).update(serving_targets(results))
    path.write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    block = "\n".join(serving_table(results, results["targets"]))
    markdown = REPO / "bench" / "results.md"
    markdown.write_text(splice_serving_block(markdown.read_text(encoding="utf-8"), block), encoding="utf-8")
    readme = bench_run.README
    text = readme.read_text(encoding="utf-8")
    readme.write_text(splice_serving_block(text, block, before=bench_run.README_END), encoding="utf-8")
    print(block)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("record", help="run this section alone and merge it into bench/results.json")
    bare = commands.add_parser("bare", help="(child) the in-process sides")
    bare.add_argument("--registry", required=True)
    bare.add_argument("--texts", type=Path, required=True)
    load = commands.add_parser("load", help="(child, serving venv) the load client")
    load.add_argument("--url", required=True)
    load.add_argument("--model", required=True)
    load.add_argument("--texts", type=Path, required=True)
    load.add_argument("--clients", required=True)
    args = parser.parse_args(argv)
    if args.command == "record":
        return record()
    if args.command == "bare":
        report = bare_side(args.registry, args.texts)
    else:
        report = load_side(args.url, args.model, args.texts, [int(c) for c in args.clients.split(",")])
    print(json.dumps(report, default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
